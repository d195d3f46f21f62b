"""Fixtures shared by the whole suite (the code lives in tests/support; this file only wires it in)."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from simulators.mynumber import VirtualMyNumberCard, observe_cards
from tests.support.pcscd import PrivatePcscd, attach_logs_on_failure, private_pcscd_fixture
from tests.support.postgres import PrivatePostgres, private_postgres_fixture


@pytest.fixture(scope="session")
def pcscd_socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One socket path per test process: libpcsclite reads PCSCLITE_CSOCK_NAME once (support/pcscd.py)."""
    directory = tmp_path_factory.mktemp("pcscd")
    os.environ["PCSCLITE_CSOCK_NAME"] = str(directory / "pcscd.comm")
    return directory


@pytest.fixture
def private_pcscd(pcscd_socket_dir: Path) -> Iterator[PrivatePcscd]:
    """A fresh private pcscd per test with one vpcd entry: ``Virtual PCD 00 00`` and ``00 01``.

    Skips when pcscd/vpcd are missing, except under CI (CI set), where that fails. A failed test gets
    the pcscd log as a report section.
    """
    pcscd = private_pcscd_fixture(pcscd_socket_dir)
    yield pcscd
    pcscd.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PrivatePostgres]:
    """One private PostgreSQL cluster for the whole session (tests/support/postgres.py), removed at the end.

    Skips when the server binaries are missing, except under CI (CI set), where that fails.
    """
    cluster = private_postgres_fixture()
    yield cluster
    cluster.remove()


@pytest.fixture
def postgres_url(postgres_cluster: PrivatePostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database in the private cluster for this test (its SQLAlchemy URL); a failed test gets
    the cluster's log as a report section."""
    if not postgres_cluster.running:  # a test stopped it and failed before starting it again
        postgres_cluster.start()
    yield postgres_cluster.create_database()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        postgres_cluster.attach_log(report)


@pytest.fixture(autouse=True)
def _no_card_info_select(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every virtual My Number Card a test makes is checked afterwards: no card-info AP was selected.

    The card records every APDU it receives, so this holds over the whole suite on the card's own
    record, whatever path (in-process, vpcd, nfcpy udp) the APDUs took. Tests that probe the card-info
    APs of the simulator on purpose carry the ``touches_card_info`` marker.
    """
    cards: list[VirtualMyNumberCard] = []
    stop = observe_cards(cards.append)
    try:
        yield
    finally:
        stop()
    if request.node.get_closest_marker("touches_card_info") is None:
        touched = [card.selected_aids for card in cards if card.touched_card_info()]
        assert touched == [], f"a card-info AP reached a simulated card: {touched}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item; attach private pcscd logs to a failed phase."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    attach_logs_on_failure(item, report)
    return report
