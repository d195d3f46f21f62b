"""``readerd-sim``: simulated cards for development and tests, without hardware."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

from readerd import logging as rlog
from simulators.demo import run_demo
from simulators.faults import FaultScript, FaultScriptError, FaultyCard
from simulators.felica import FelicaPcscCard
from simulators.felica_udp import (
    add_felica_parser,
    parse_loopback_endpoint,
    profile_from_args,
    run_felica_command,
)
from simulators.inprocess import CardModel
from simulators.mynumber import ATR_NAMES, CardBehavior, CardProfile, build_card
from simulators.mynumber_nfc import MyNumberUdpCard
from simulators.pki import PkiStore, default_store_root
from simulators.vicc import DEFAULT_VPCD_PORT, MAX_ATR, ViccBridge, parse_endpoint

log = structlog.get_logger("readerd.sim")


def _vpcd_endpoint(text: str) -> tuple[str, int]:
    """``--vpcd``: refused at parse time, with the reason, unless it is a loopback endpoint.

    The card's APDUs (certificates, PINs typed in tests) must not cross a network, so a remote vpcd is
    an error of the command line (exit 2 with the message), not a traceback.
    """
    try:
        host, port = parse_endpoint(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not 0 < port <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"port {port} out of range")
    return host, port


def _atr_argument(text: str) -> str | bytes:
    """``--atr``: a name of :data:`ATR_NAMES`, or 2..33 bytes of hex (spaces allowed)."""
    if text in ATR_NAMES:
        return text
    try:
        atr = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"neither an ATR name ({', '.join(ATR_NAMES)}) nor hex") from None
    if not 2 <= len(atr) <= MAX_ATR:
        raise argparse.ArgumentTypeError(f"an ATR has 2..{MAX_ATR} bytes, not {len(atr)}")
    return atr


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="readerd-sim",
        description="Simulated My Number and FeliCa cards, in-process or behind the real reader stacks.",
    )
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="tap simulated cards on an in-process reader and log the events")
    demo.add_argument("--taps", type=int, default=0, help="stop after this many taps (0: until Ctrl-C)")
    demo.add_argument("--state-dir", type=Path, default=Path(".readerd"))
    demo.add_argument("--interval", type=float, default=1.5, help="seconds between taps")

    card = sub.add_parser(
        "mynumber",
        help="a virtual My Number Card behind pcscd's vpcd driver, or on nfcpy's udp driver",
        description="Connects a virtual My Number Card to vsmartcard's vpcd (inside pcscd), or with --udp "
        "serves it as a Type B ISO-DEP card to readers that open nfcpy's 'udp:HOST:PORT'. Reads commands "
        "from stdin, one per line: 'insert', 'remove', 'quit' (end of input also quits).",
    )
    where = card.add_mutually_exclusive_group()
    where.add_argument(
        "--vpcd",
        type=_vpcd_endpoint,
        default=("127.0.0.1", DEFAULT_VPCD_PORT),
        help="vpcd endpoint host:port (loopback only; the default)",
    )
    where.add_argument(
        "--udp",
        type=parse_loopback_endpoint,
        default=None,
        help="instead: nfcpy udp host:port to listen on (loopback only, port 0 picks one), the RC-S380 path",
    )
    card.add_argument(
        "--profile", default="alice", help="card name: keys and certificate are cached per name"
    )
    card.add_argument("--pin", default="1234", help="user-authentication PIN (4 digits)")
    card.add_argument("--tries", type=int, default=3, help="user-auth PIN tries left (0 = blocked)")
    card.add_argument("--no-extended", action="store_true", help="the card refuses extended-length APDUs")
    card.add_argument("--contact", action="store_true", help="present the contact ATR instead of contactless")
    card.add_argument(
        "--atr",
        type=_atr_argument,
        default=None,
        metavar="NAME|HEX",
        help=f"present this ATR: one a real card shows ({', '.join(ATR_NAMES)}) or any hex ATR",
    )
    card.add_argument("--expired", action="store_true", help="the user-auth certificate has expired")
    card.add_argument(
        "--cloned-from",
        metavar="OTHER",
        help="carry OTHER's user-auth certificate with this card's own key (a copied certificate)",
    )
    card.add_argument("--faults", type=Path, help="fault script (JSON or TOML), see docs/simulator.md")
    card.add_argument(
        "--cache", type=Path, default=None, help="PKI cache directory (default ~/.cache/readerd-sim)"
    )
    card.add_argument("--removed", action="store_true", help="start with the card off the reader")

    felica = add_felica_parser(sub)
    felica.add_argument(
        "--vpcd",
        type=_vpcd_endpoint,
        default=None,
        help="instead of --udp: behind pcscd's vpcd driver at host:port, as on an RC-S300 (loopback only)",
    )
    return parser


def _card_from_args(args: argparse.Namespace) -> CardModel:
    profile = CardProfile(
        name=args.profile,
        auth_pin=args.pin,
        auth_tries_left=args.tries,
        expired=args.expired,
        contactless=not args.contact,
        atr=args.atr,
        behavior=CardBehavior(extended_length=not args.no_extended),
        cloned_from=args.cloned_from,
    )
    card: CardModel = build_card(profile, PkiStore(args.cache or default_store_root()))
    if args.faults:
        card = FaultyCard(card, FaultScript.load(args.faults))
    return card


def run_mynumber(args: argparse.Namespace) -> int:
    """0 on a clean quit; 78 for a bad profile or fault script, 69 when no vpcd answers (as readerd)."""
    try:
        card = _card_from_args(args)
    except (FaultScriptError, OSError, ValueError) as e:
        log.error("cannot build the card", error=str(e))
        return 78
    if args.udp is not None:
        return serve_on_udp(card, args.udp, removed=args.removed, profile=args.profile)
    return serve_on_vpcd(
        card, args.vpcd, removed=args.removed, what="virtual My Number Card", profile=args.profile
    )


def run_felica(args: argparse.Namespace) -> int:
    """``readerd-sim felica``: on nfcpy's udp driver, or with ``--vpcd`` behind pcscd (RC-S300 style)."""
    if args.vpcd is None:
        return run_felica_command(args)
    try:
        profile = profile_from_args(args)
    except ValueError as e:
        log.error("cannot build the FeliCa card", error=str(e))
        return 78
    return serve_on_vpcd(
        FelicaPcscCard(profile),
        args.vpcd,
        removed=args.removed,
        what="virtual FeliCa card (PC/SC)",
        kind=profile.kind.value,
        idm=profile.idm.hex(),
    )


def serve_on_udp(card: CardModel, udp: tuple[str, int], *, removed: bool, **details: object) -> int:
    """Serve ``card`` as a Type B card on nfcpy's udp driver; stdin commands as for vpcd."""
    host, port = udp
    try:
        sim = MyNumberUdpCard(card, host, port)
    except (OSError, ValueError) as e:
        log.error("cannot listen for nfcpy readers", udp=f"{host}:{port}", error=str(e))
        return 78
    if removed:
        sim.remove()
    sim.start()
    log.info("virtual My Number Card ready", path=sim.path, commands="insert|remove|quit", **details)
    try:
        for command in _commands():
            if command == "insert":
                sim.insert()
                log.info("card inserted", port=sim.port)
            elif command == "remove":
                sim.remove()
                log.info("card removed", port=sim.port)
    finally:
        sim.stop()
    return 1 if sim.error is not None else 0


def _commands() -> Iterator[str]:
    """'insert' and 'remove' from stdin until 'quit', end of input or Ctrl-C; others are warned about."""
    try:
        for line in sys.stdin:
            command = line.strip().lower()
            if command in ("insert", "remove"):
                yield command
            elif command in ("quit", "exit"):
                return
            elif command:
                log.warning("unknown command", command=command, known="insert|remove|quit")
    except KeyboardInterrupt:
        return


def serve_on_vpcd(
    card: CardModel, vpcd: tuple[str, int], *, removed: bool, what: str, **details: object
) -> int:
    """Attach ``card`` to vpcd and take 'insert', 'remove', 'quit' from stdin until quit or end of input."""
    host, port = vpcd
    bridge = ViccBridge(card, host, port, on_event=lambda e: log.info("card " + e, port=port))
    if not removed:
        try:
            bridge.insert()
        except OSError as e:
            log.error(
                "no vpcd listening (is pcscd with vsmartcard-vpcd running?)",
                vpcd=f"{host}:{port}",
                error=str(e),
            )
            return 69
    log.info(f"{what} ready", vpcd=f"{host}:{port}", commands="insert|remove|quit", **details)
    try:
        for command in _commands():
            if command == "insert":
                try:
                    bridge.insert()
                except OSError as e:  # pcscd went away meanwhile: say so and keep taking commands
                    log.warning("no vpcd listening", vpcd=f"{host}:{port}", error=str(e))
            else:
                bridge.remove()
                log.info("card removed", port=port)
    finally:
        if isinstance(card, FaultyCard):
            card.interrupt()  # a stall in progress must not hold the exit up
        bridge.remove()
    return 1 if bridge.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rlog.configure(args.log_level)
    if args.command == "demo":
        return run_demo(taps=args.taps, state_dir=args.state_dir, interval=args.interval)
    if args.command == "mynumber":
        return run_mynumber(args)
    if args.command == "felica":
        return run_felica(args)
    parser.print_help()
    return 64


if __name__ == "__main__":
    sys.exit(main())
