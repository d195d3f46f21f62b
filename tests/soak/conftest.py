"""The soak's summary goes to pytest's terminal summary (shown with or without ``-q``/``-s``)."""

from __future__ import annotations

import pytest

SOAK_LINES = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(SOAK_LINES, [])
    if lines:
        terminalreporter.section("soak report")
        for line in lines:
            terminalreporter.write_line(line)
