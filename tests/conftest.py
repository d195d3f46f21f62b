"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.pcscd import PrivatePcscd, missing_tools


@pytest.fixture(scope="session")
def pcscd_socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One socket path per test process: libpcsclite reads PCSCLITE_CSOCK_NAME once (see support/pcscd.py)."""
    directory = tmp_path_factory.mktemp("pcscd")
    os.environ["PCSCLITE_CSOCK_NAME"] = str(directory / "pcscd.comm")
    return directory


@pytest.fixture
def private_pcscd(pcscd_socket_dir: Path, request: pytest.FixtureRequest) -> Iterator[PrivatePcscd]:
    """A fresh private pcscd with one vpcd entry (readers ``Virtual PCD 00 00`` and ``00 01``).

    Outside CI a machine without pcscd/vpcd skips these tests; with CI=true they fail instead, so a
    missing install step cannot pass unnoticed.
    """
    missing = missing_tools()
    if missing:
        message = f"pcscd tests need {', '.join(missing)} (scripts/bootstrap --test installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pcscd = PrivatePcscd(pcscd_socket_dir)
    pcscd.start()
    yield pcscd
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(f"--- private pcscd log ---\n{pcscd.log_text()}")
    pcscd.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can attach logs to a failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
