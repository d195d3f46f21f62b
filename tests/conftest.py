"""Fixtures shared by the whole suite (the code lives in tests/support; this file only wires it in)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from simulators.mynumber import CARD_AUDIT_ENV, VirtualMyNumberCard, observe_cards
from tests.support import card_audit
from tests.support.pcscd import PrivatePcscd, attach_logs_on_failure, private_pcscd_fixture
from tests.support.postgres import PrivatePostgres, private_postgres_fixture

_AUDIT_FILE = pytest.StashKey[Path]()
_AUDIT_PREVIOUS = pytest.StashKey[str | None]()
_AUDIT_EXCUSED = pytest.StashKey[set[str]]()
_AUDIT_REPORT = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Start the session's card-info audit (tests/support/card_audit.py) before any test or subprocess.

    A fresh file per session, also for a pytest run inside a test: its cards report to it, not to ours.
    """
    config.stash[_AUDIT_PREVIOUS] = os.environ.get(CARD_AUDIT_ENV)
    config.stash[_AUDIT_FILE] = card_audit.start()
    config.stash[_AUDIT_EXCUSED] = set()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests whose card-info SELECTs (and their subprocesses') the audit excuses."""
    marked = {item.nodeid for item in items if item.get_closest_marker("touches_card_info") is not None}
    config.stash[_AUDIT_EXCUSED] = marked


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session on a card-info SELECT no ``touches_card_info`` test explains, in any process."""
    path = session.config.stash.get(_AUDIT_FILE, None)
    if path is None:
        return
    try:
        found = card_audit.findings(path, session.config.stash.get(_AUDIT_EXCUSED, set()))
    except card_audit.CardAuditError as e:
        message = f"card-info audit: {e}"
    else:
        if not found:
            return
        message = card_audit.report(found)
    session.config.stash[_AUDIT_REPORT] = message
    if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    message = config.stash.get(_AUDIT_REPORT, None)
    if message is not None:
        terminalreporter.section("card-info audit", sep="=", red=True, bold=True)
        terminalreporter.line(message, red=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Restore the outer session's audit file (a pytest run inside a test) and remove ours: the report
    lists every finding, and a kept file per failing inner session would pile up in /tmp."""
    path = config.stash.get(_AUDIT_FILE, None)
    if path is None:
        return
    previous = config.stash[_AUDIT_PREVIOUS]
    if previous is None:
        os.environ.pop(CARD_AUDIT_ENV, None)
    else:
        os.environ[CARD_AUDIT_ENV] = previous
    shutil.rmtree(path.parent, ignore_errors=True)


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
