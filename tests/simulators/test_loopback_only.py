"""The simulator never listens on anything but loopback: reachable from the network, it would let anyone
present a fake card (docs/design.md D6).

Three layers: every socket a simulator server opens is bound to 127.0.0.1 according to the kernel (not
only ``getsockname``); every way to ask for another address is refused with a message saying why; and no
module of ``simulators/`` binds a socket anywhere but in the one class that checks the address, so a new
listener cannot slip in unnoticed. The subprocess side (``readerd-sim`` itself) is checked in
test_readerd_sim_cli.py.
"""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import pytest

import simulators
from simulators.felica import checkin_card
from simulators.felica_udp import FelicaUdpCard
from simulators.mynumber import CardProfile, build_card
from simulators.mynumber_nfc import LoopbackListenerDevice, MyNumberUdpCard
from simulators.pki import PkiStore
from simulators.sip2_acs import FakeAcs, Library
from simulators.vicc import ViccBridge, parse_endpoint
from tests.simulators.netsockets import inet_sockets, inode_of

NOT_LOOPBACK = ["0.0.0.0", "192.0.2.1", "::", "2001:db8::1"]  # noqa: S104 - refusing them is the test


def kernel_view(sock: socket.socket | None) -> list[tuple[str, str]]:
    """``(table, local address)`` of this one socket, from /proc/self/net."""
    assert sock is not None, "the server has no socket"
    return [(s.table, str(s.address)) for s in inet_sockets("self", {inode_of(sock.fileno())})]


def test_felica_card_server_is_bound_to_loopback_in_the_kernel() -> None:
    sim = FelicaUdpCard(checkin_card("1")).start()
    try:
        assert kernel_view(sim._device.socket) == [("udp", "127.0.0.1")]
    finally:
        sim.stop()


def test_my_number_nfc_card_server_is_bound_to_loopback_in_the_kernel(pki_store: PkiStore) -> None:
    sim = MyNumberUdpCard(build_card(CardProfile(name="alice"), pki_store)).start()
    try:
        assert kernel_view(sim._device.socket) == [("udp", "127.0.0.1")]
    finally:
        sim.stop()


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_every_server_refuses_a_non_loopback_address(host: str, pki_store: PkiStore) -> None:
    card = build_card(CardProfile(name="alice"), pki_store)
    with pytest.raises(ValueError, match="loopback only"):
        FelicaUdpCard(checkin_card("1"), host, 0)
    with pytest.raises(ValueError, match="loopback only"):
        MyNumberUdpCard(card, host, 0)
    with pytest.raises(ValueError, match="loopback only"):
        LoopbackListenerDevice(host, 0)
    # The vicc bridge dials vpcd rather than listening, but its APDUs must not leave the host either.
    with pytest.raises(ValueError, match="loopback only"):
        ViccBridge(card, host, 35963)
    with pytest.raises(ValueError, match="loopback only"):
        parse_endpoint(f"[{host}]:35963" if ":" in host else f"{host}:35963")


def test_ipv6_loopback_is_refused_where_nfcpy_cannot_use_it() -> None:
    with pytest.raises(ValueError, match="IPv4 only"):
        LoopbackListenerDevice("::1", 0)


def _binding_calls(path: Path) -> list[tuple[str, str]]:
    """``(enclosing class.function, callee)`` of every bind/listen-like call in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                # A server class (socketserver, asyncio, http.server ...) binds in its base's constructor.
                for base in map(ast.unparse, child.bases):
                    if base.endswith("Server"):
                        found.append((".".join([*scope, child.name]), f"class({base})"))
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call):
                callee = ast.unparse(child.func)
                name = callee.rsplit(".", 1)[-1]
                if name in ("bind", "listen", "_bind_socket", "create_server", "start_server") or (
                    name.endswith("Server") and not callee.startswith("super")
                ):
                    found.append((".".join(scope), callee))
            visit(child, scope)

    visit(tree, [])
    return found


def test_no_simulator_module_binds_outside_the_checked_listener() -> None:
    """A new server in simulators/ must go through LoopbackListenerDevice (or be added here, with a test)."""
    package = Path(simulators.__file__).parent
    calls = {path.name: _binding_calls(path) for path in sorted(package.glob("*.py"))}
    assert {name: found for name, found in calls.items() if found} == {
        "mynumber_nfc.py": [
            ("LoopbackListenerDevice.__init__", "sock.bind"),  # the checked loopback address
            # nfcpy's listen for a reader's activation: no socket call, it runs on that device.
            ("MyNumberUdpCard._one_activation", "self._clf.listen"),
        ],
        # The fake SIP2 library system: 127.0.0.1 is fixed in its constructor (checked in the kernel below).
        "sip2_acs.py": [("FakeAcs", "class(socketserver.ThreadingTCPServer)")],
    }


def test_fake_sip2_server_listens_on_loopback_in_the_kernel() -> None:
    with FakeAcs(Library()) as acs:
        sockets = inet_sockets("self", {inode_of(acs.socket.fileno())})
        assert [(s.table, str(s.address), s.port) for s in sockets] == [("tcp", "127.0.0.1", acs.port)]
        assert sockets[0].listening
