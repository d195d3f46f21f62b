"""Logging for the daemon and its tools, configured once per process.

JSON lines when the output is journald or a pipe (so the ward office's log shipping can parse them), a
readable console format on a terminal. ``protocols`` logs through stdlib ``logging``; those records are
rendered by the same structlog processors so an APDU trace and a daemon event look alike.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog

from protocols.guard import TRACE

LogFormat = Literal["auto", "json", "console"]


def _want_json(fmt: LogFormat) -> bool:
    if fmt != "auto":
        return fmt == "json"
    if os.environ.get("JOURNAL_STREAM"):  # set by systemd for services logging to the journal
        return True
    return not sys.stderr.isatty()


def configure(level: str | int = "INFO", fmt: LogFormat = "auto") -> None:
    """Route structlog and stdlib logging to stderr in one format. Safe to call again (tests, reloads)."""
    logging.addLevelName(TRACE, "TRACE")
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if _want_json(fmt):
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
