"""What every atheris harness shares: a typed face on atheris (which has no type hints) and the answer
splitter. Imports nothing of the code under test, so that each harness imports (and instruments) that
code itself inside :func:`instrument` (``_transcript`` is imported there too)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import cast

import atheris  # type: ignore[import-untyped]
import structlog
from structlog.types import EventDict, WrappedLogger

#: The packages whose code is instrumented for coverage feedback.
INSTRUMENTED = ["protocols", "readerd"]


# The code under test logs what it refuses (a warning per bad input): millions of lines would cost more
# than the parsing and bury libFuzzer's report. The calls still run; their output goes nowhere.
def _drop(_logger: WrappedLogger, _method: str, _event: EventDict) -> EventDict:
    raise structlog.DropEvent


structlog.configure(processors=[_drop], wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
logging.disable(logging.CRITICAL)


def instrument() -> AbstractContextManager[None]:
    """Instrument the project's modules imported inside the ``with`` block."""
    return cast("AbstractContextManager[None]", atheris.instrument_imports(include=INSTRUMENTED))


def run(test_one_input: Callable[[bytes], None]) -> None:
    """Hand the process to libFuzzer (it parses the libFuzzer flags in ``sys.argv``); never returns."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def split_answers(data: bytes, limit: int = 64) -> list[bytes]:
    """Cut the input into answers: each a length byte, then that many bytes (the last may be short); a
    length byte of FF takes the rest of the input (answers of 255 bytes and more: a signature)."""
    answers: list[bytes] = []
    pos = 0
    while pos < len(data) and len(answers) < limit:
        n = data[pos]
        end = len(data) if n == 0xFF else pos + 1 + n
        answers.append(data[pos + 1 : end])
        pos = end
    return answers
