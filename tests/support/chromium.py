"""Debian's chromium driven headless by Playwright, for the tests that show a page to a person.

Playwright's own browser download is not reachable from our machines, so ``executable_path`` points at
the Debian package that ``scripts/bootstrap --test`` installs. Outside CI a machine without it skips;
CI (which installs it) fails instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps calling home, which floods a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(reason: str) -> None:
    """Skip, or fail under CI=true, where bootstrap installs what is missing."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: scripts/bootstrap --test installs it)")
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless chromium (a Playwright Browser), closed on exit."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        missing("Debian's chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only where chromium is
    except ImportError:
        missing("the playwright package is not installed (the [dev] extra)")
        raise
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
