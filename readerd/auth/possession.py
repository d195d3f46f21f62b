"""Value needs possession: the gate in front of every command that moves points, money or a membership.

A certificate is public: anyone who holds a citizen's My Number Card for a second can copy it onto
another card, which readerd then identifies as the citizen. Identification is enough for a check-in,
not for spending. A command whose spec says ``possession`` therefore passes this gate before its
handler runs (on the bus thread, before any plugin sees it):

- with a card on a reader it needs ``auth_id``: the caller's own ``auth.pin`` proof (PIN and a signature
  over a fresh challenge, which a copied certificate cannot make), made on that reader during this
  insertion, spent once. The handler gets the proven identity in ``args["proof"]``, so a plugin never
  races the feed to learn who is on the reader;
- with ``reader`` and no proof: ``authentication_required``, with the next step;
- by a bare ``member_id`` or ``mykey_id`` (an office correction): only an operator; anyone else is
  ``forbidden``. The bus audits every operator command.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future

import structlog

from readerd.auth.manager import AuthManager
from readerd.bus.control import ControlRequest, JsonObject
from readerd.bus.curve import OPERATOR
from readerd.errors import ForbiddenError, Refusal, StoreUnavailableError

log = structlog.get_logger("readerd.auth")

#: Forwards the checked request (with its arguments replaced) to whatever runs the command.
Forward = Callable[[ControlRequest, JsonObject], Future[JsonObject]]


def gate(auth: AuthManager | None, forward: Forward) -> Callable[[ControlRequest], Future[JsonObject]]:
    """The control handler of a ``possession`` command: checks, then ``forward(request, args)``."""

    def handle(request: ControlRequest) -> Future[JsonObject]:
        args = dict(request.args)
        args.pop("proof", None)  # only this gate writes it
        auth_id = args.pop("auth_id", None)
        reader = args.get("reader")
        if auth_id is not None:
            if auth is None:
                raise Refusal(
                    "auth_not_configured", "this kiosk has no JPKI authentication: ask at the counter"
                )
            identity = auth.spend_proof(auth_id, request.peer, reader)
            args.pop("member_id", None)
            args.pop("mykey_id", None)
            args["proof"] = {**identity.public_fields(), "reader": reader}
        elif reader is not None:
            raise Refusal(
                "authentication_required",
                f"{request.cmd} moves value: hold the card on {reader}, enter its PIN (auth.begin, "
                "auth.pin), then send the auth_id with this command",
                reader=reader,
            )
        else:
            if request.role not in (OPERATOR, None):
                raise ForbiddenError(
                    f"{request.cmd} by member ID is an office correction for the operator role; at a "
                    "shop, hold the card on the reader and enter its PIN"
                )
            done = forward(request, args)
            if auth is not None:
                done.add_done_callback(functools.partial(_audit_correction, auth, request))
            return done
        return forward(request, args)

    return handle


def _audit_correction(auth: AuthManager, request: ControlRequest, done: Future[JsonObject]) -> None:
    """Value moved by member ID, not by a card: who did it and how it ended (on the command's thread)."""
    error = done.exception()
    outcome = "ok" if error is None else getattr(error, "code", "internal_error")
    try:
        auth.audit.append("value_by_member_id", cmd=request.cmd, caller=request.caller, outcome=outcome)
    except StoreUnavailableError as e:
        log.error("office correction not audited", cmd=request.cmd, error=str(e))
