"""Commands that talk to a card: deferred control replies, and card operations on each backend.

A card operation (a PIN check, a signature) runs on the reader's own thread; its control reply comes
when the card has answered, while the bus thread goes on publishing and answering others.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from protocols.jpki import JpkiSession
from protocols.transport import Transport
from readerd.bus.control import ControlRequest
from readerd.bus.control_client import request
from readerd.bus.curve import CONTROL
from readerd.bus.server import Bus
from readerd.config import BusConfig, PcscConfig
from readerd.errors import CardAbsentError, UnknownReaderError
from readerd.errors import Refusal as CommandError
from simulators.mynumber import CardProfile, build_card
from simulators.pki import PkiStore
from simulators.vicc import ViccBridge
from tests.support.daemon import hardware_config, running_daemon, sim_config
from tests.support.pcscd import PrivatePcscd

pytestmark = pytest.mark.timeout(60)


def _tries(transport: Transport) -> dict[str, Any]:
    status = JpkiSession(transport).pin_status()
    return {"tries_left": status.tries_left}


def test_deferred_replies_do_not_hold_up_the_bus() -> None:
    release = threading.Event()
    pending: list[Future[dict[str, Any]]] = []

    def slow(_request: ControlRequest) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        pending.append(future)
        return future

    config = BusConfig(publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0")
    bus = Bus(config, kiosk="k", anonymous_role=CONTROL)
    bus.register_command("slow", slow)
    bus.register_command("boom", lambda _r: _failing(CommandError("no_luck", "refused later")))
    bus.register_command("bug", lambda _r: _failing(ZeroDivisionError()))
    bus.start()
    try:
        answers: dict[str, dict[str, Any]] = {}
        waiter = threading.Thread(
            target=lambda: answers.setdefault("slow", request(bus.control_endpoint, "slow"))
        )
        waiter.start()
        while not pending:
            threading.Event().wait(0.01)
        # The slow request is outstanding; the bus still answers others at once.
        assert request(bus.control_endpoint, "status")["ok"] is True
        assert "slow" not in answers
        pending[0].set_result({"done": True})
        waiter.join(5)
        failed = request(bus.control_endpoint, "boom")
        bug = request(bus.control_endpoint, "bug")
    finally:
        release.set()
        bus.stop()
    assert answers["slow"]["ok"] is True
    assert answers["slow"]["result"] == {"done": True}
    assert failed["error"] == {"code": "no_luck", "message": "refused later"}
    assert bug["error"]["code"] == "internal_error"


def _failing(error: BaseException) -> Future[dict[str, Any]]:
    future: Future[dict[str, Any]] = Future()
    threading.Timer(0.05, lambda: future.set_exception(error)).start()
    return future


def test_sim_card_operation_runs_on_the_present_card(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.identified") as sub:
        backend = d.daemon.backends[0]
        with pytest.raises(CardAbsentError):
            backend.on_card("Sim 00", _tries).result(5)
        with pytest.raises(UnknownReaderError):
            backend.on_card("Sim 99", _tries).result(5)
        d.tap("alice", tries=2)
        sub.next()
        assert backend.on_card("Sim 00", _tries).result(5) == {"tries_left": 2}


@pytest.mark.pcscd
def test_pcsc_card_operation_then_reset(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    card = build_card(CardProfile(name="alice", auth_tries_left=3), PkiStore(tmp_path / "pki"))
    config = hardware_config(tmp_path / "state", ("pcsc",), pcsc=PcscConfig(allow_virtual_readers=True))
    with running_daemon(config) as d, d.subscriber("card.") as sub:
        bridge = ViccBridge(card, port=private_pcscd.ports[0])
        bridge.insert()
        try:
            sub.until(lambda e: e["type"] == "card.identified", timeout=10)
            reader = private_pcscd.readers[0]
            backend = d.daemon.backends[0]
            before = len(card.log)
            assert backend.on_card(reader, _tries).result(10) == {"tries_left": 3}
            sent = [r.raw[:4].hex().upper() for r in card.log[before:]]
            with pytest.raises(CardAbsentError):
                backend.on_card(private_pcscd.readers[1], _tries).result(10)
            # The reset that ends the transaction is not a new tap: over 20 heartbeats (1 s, two presence
            # polls of pcscd) no second identification follows.
            later: list[str] = []
            while later.count("heartbeat") < 20:
                later.append(sub.next(5, heartbeats=True)["type"])
        finally:
            bridge.remove()
    assert sent == ["00A4040C", "00A4020C", "00200080"]  # SELECT AP, SELECT EF 0018, tries query
    assert set(later) == {"heartbeat"}, later
