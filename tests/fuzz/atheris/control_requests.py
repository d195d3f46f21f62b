"""Control requests as bytes off the ROUTER socket: ``readerd.bus.control.answer`` with a few handlers.
It never raises by design, so the finding is a reply it should not give: ``internal_error`` (an
exception other than a ``ReaderdError`` escaped the parsing: these handlers never fail) or a reply
``encode_reply`` cannot send."""

from __future__ import annotations

from typing import Any

from tests.fuzz.atheris._common import instrument, run

with instrument():
    from readerd.bus.control import ControlRequest, answer, encode_reply
    from readerd.errors import Refusal

#: The modules scripts/fuzz reports coverage of (a replay of the corpus under coverage.py: _replay.py).
TARGETS = ("readerd.bus.control",)


def _echo(request: ControlRequest) -> dict[str, Any]:
    return {"cmd": request.cmd, "args": request.args, "id": request.request_id}


def _refuse(request: ControlRequest) -> dict[str, Any]:
    raise Refusal("no_card", "no card on the reader", reader=str(request.args.get("reader")))


HANDLERS = {"status": _echo, "echo": _echo, "refuse": _refuse}


def _authorize(cmd: str) -> None:
    if cmd == "refuse" and len(cmd) > 100:
        raise Refusal("forbidden", "never")


def TestOneInput(data: bytes) -> None:
    reply = answer(b"peer", data, HANDLERS, user="control:fuzz", authorize=_authorize)
    if not isinstance(reply, dict):
        raise AssertionError(f"a synchronous handler gave a {type(reply).__name__}")
    error = reply.get("error")
    if isinstance(error, dict) and error.get("code") == "internal_error":
        raise AssertionError(f"internal_error for a request: {error.get('message')}")
    encode_reply(reply)


if __name__ == "__main__":
    run(TestOneInput)
