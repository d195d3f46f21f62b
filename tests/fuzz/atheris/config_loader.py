"""The TOML configuration file (``readerd.config.load_config``): whatever the file holds, a ``Config``
or a ``ConfigError`` (which carries the TOML decode error) comes out; anything else is a finding.

Its first finding, fixed: a file that is not UTF-8 raised ``UnicodeDecodeError`` from ``load_config``
instead of ``ConfigError`` (input ``b"\\n\\xd3\""``, three bytes); the regression test is
tests/daemon/test_config_and_cli.py::test_a_config_file_that_is_not_utf8_is_a_config_error."""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from pathlib import Path

from tests.fuzz.atheris._common import instrument, run

with instrument():
    from readerd.config import load_config
    from readerd.errors import ConfigError

#: The modules scripts/fuzz reports coverage of (a replay of the corpus under coverage.py: _replay.py).
TARGETS = ("readerd.config",)

#: The file each input is written to; scripts/fuzz points READERD_FUZZ_TMPDIR at a directory it removes.
_FILE = (
    Path(os.environ.get("READERD_FUZZ_TMPDIR") or tempfile.gettempdir()) / f"readerd-fuzz-{os.getpid()}.toml"
)
atexit.register(lambda: _FILE.unlink(missing_ok=True))


def TestOneInput(data: bytes) -> None:
    _FILE.write_bytes(data)
    with contextlib.suppress(ConfigError):  # a bad file is refused by name; anything else is a finding
        load_config(_FILE)


if __name__ == "__main__":
    run(TestOneInput)
