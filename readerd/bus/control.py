"""The control plane's requests and replies, apart from the sockets that carry them.

A request is ``{"id", "cmd", "args"}``; its reply ``{"id", "ok": true, "result"}`` or ``{"id", "ok":
false, "error": {"code", "message", "details"?}}`` (docs/events.md). The daemon's control socket, its
private socket for the split plugin host and the split host itself answer through :func:`answer` and the
reply builders here, so every peer gets one format. A handler refuses by raising a
:class:`readerd.errors.ReaderdError` (usually :class:`readerd.errors.Refusal`): its ``code`` and
``details`` become the error. A handler may return a Future (work on a reader's or a plugin's thread):
its reply is built when it is done, errors included, as for an immediate answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import structlog

from readerd.errors import ReaderdError, Refusal

log = structlog.get_logger("readerd.bus")

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class ControlRequest:
    """One control request as a handler sees it: ``peer`` is the caller's ROUTER identity (an
    ``auth_id`` is bound to it), ``user`` the CURVE ``<role>:<name>`` of the caller, if any."""

    cmd: str
    args: JsonObject
    peer: bytes
    request_id: str | None = None
    user: str | None = None
    #: Who asked, for the audit log: ``uid:<n>`` (a local role socket), ``key:<name>`` (CURVE), ``tcp``.
    caller: str | None = None
    #: The caller's role on this connection (subscribe, control, operator); None on the private socket.
    role: str | None = None


#: The JSON types an argument may have (as :class:`readerd.plugin.api.ArgType` names them).
ARG_TYPES = ("string", "integer", "number", "boolean", "object", "array")
#: What a ``possession`` command takes beside its own arguments (readerd/auth/possession.py).
AUTH_ID_HELP = "the auth_id of a PIN proof made on the reader in this session (auth.begin, auth.pin)"


@dataclass(frozen=True)
class ArgDoc:
    """One argument of a control command as the ``commands`` command describes it: its JSON type,
    whether it must be given, what it means, and for a string the pattern it must match (dates)."""

    type: str = "string"
    required: bool = False
    help: str = ""
    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.type not in ARG_TYPES:
            raise ValueError(f"argument type {self.type!r}: one of {', '.join(ARG_TYPES)}")

    def schema(self) -> JsonObject:
        out: JsonObject = {"type": self.type, "required": self.required, "help": self.help}
        if self.pattern is not None:
            out["pattern"] = self.pattern
        return out


@dataclass(frozen=True)
class CommandDoc:
    """What a control command does and takes, for ``commands`` (``readerctl help`` and ``call``): the
    daemon's own commands give one where they are registered, plugin commands their ``CommandSpec``'s.
    It describes; it checks nothing (each handler checks its own arguments, as before)."""

    help: str = ""
    args: Mapping[str, ArgDoc] = field(default_factory=dict)
    #: Moves value: with a card on a reader it needs a PIN proof (``auth_id``), see auth/possession.py.
    possession: bool = False

    def schema(self, name: str, role: str) -> JsonObject:
        args = {key: arg.schema() for key, arg in self.args.items()}
        if self.possession and "auth_id" not in args:
            args["auth_id"] = ArgDoc("string", False, AUTH_ID_HELP).schema()
        return {
            "name": name,
            "help": self.help,
            "role": role,
            "args": args,
            "possession": self.possession,
            "described": True,
        }

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any], *, possession: bool = False) -> CommandDoc:
        """From a plugin's ``CommandSpec.schema()`` (``{"help", "args": {name: {type, required,
        help, pattern?}}}``)."""
        raw = schema.get("args")
        args = {
            str(name): ArgDoc(
                str(arg.get("type", "string")),
                bool(arg.get("required", False)),
                str(arg.get("help", "")),
                str(arg["pattern"]) if arg.get("pattern") else None,
            )
            for name, arg in (raw.items() if isinstance(raw, Mapping) else ())
            if isinstance(arg, Mapping)
        }
        return cls(str(schema.get("help", "")), args, possession or bool(schema.get("possession", False)))


def undescribed(name: str, role: str) -> JsonObject:
    """``commands``' entry for a command registered without a :class:`CommandDoc` (a split host's)."""
    return {"name": name, "help": "", "role": role, "args": None, "possession": False, "described": False}


#: A handler's answer: a JSON object, or a Future of one when the work runs elsewhere.
CommandResult = JsonObject | Future[JsonObject]
CommandHandler = Callable[[ControlRequest], CommandResult]
#: ``(request, role, outcome)`` after an operator command was answered (outcome: ``ok`` or an error code).
CommandObserver = Callable[[ControlRequest, str, str], None]


class RawJson(str):
    """A result already encoded as a JSON object (the event log's stored envelopes): sent as it is,
    so a catch-up answer of 1,000 events is not decoded and encoded again on its way out."""


def encode_reply(reply: JsonObject) -> bytes:
    """The bytes of a reply on the wire; a :class:`RawJson` result is spliced in unchanged."""
    result = reply.get("result")
    if isinstance(result, RawJson):
        head = json.dumps({"id": reply.get("id"), "ok": True}, ensure_ascii=False)
        return f'{head[:-1]}, "result": {result}}}'.encode()
    return json.dumps(reply, ensure_ascii=False).encode()


def ok_reply(request_id: object, result: JsonObject) -> JsonObject:
    return {"id": request_id, "ok": True, "result": result}


def error_reply(
    request_id: object, code: str, message: str, details: Mapping[str, object] | None = None
) -> JsonObject:
    error: JsonObject = {"code": code, "message": message}
    if details:
        error["details"] = dict(details)
    return {"id": request_id, "ok": False, "error": error}


def failure_reply(request_id: object, error: BaseException) -> JsonObject:
    """A handler's exception as a reply: a readerd error keeps its code and details; anything else is
    a bug of the handler, answered ``internal_error`` with only the exception's type."""
    if isinstance(error, ReaderdError):
        return error_reply(request_id, error.code, str(error), error.details())
    log.error("control handler failed", error_type=type(error).__name__, exc_info=error)
    return error_reply(request_id, "internal_error", type(error).__name__)


def reply_when_done(request_id: object, result: Future[JsonObject]) -> Future[JsonObject]:
    """The reply a deferred result becomes, errors included, as the immediate path builds them."""
    reply: Future[JsonObject] = Future()

    def settle(done: Future[JsonObject]) -> None:
        error = done.exception()
        reply.set_result(
            ok_reply(request_id, done.result()) if error is None else failure_reply(request_id, error)
        )

    result.add_done_callback(settle)
    return reply


def refusal_of(reply: Mapping[str, Any]) -> Refusal:
    """The error of an ``ok: false`` reply as the exception a caller catches (code and details kept)."""
    raw = reply.get("error")
    error: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    raw_details = error.get("details")
    details: Mapping[str, Any] = raw_details if isinstance(raw_details, dict) else {}
    return Refusal(str(error.get("code")), str(error.get("message")), **details)


def result_of(reply: Mapping[str, Any]) -> JsonObject:
    """A reply's ``result``, or its error raised as :class:`Refusal`."""
    if not reply.get("ok"):
        raise refusal_of(reply)
    result = reply.get("result")
    if isinstance(result, RawJson):
        result = json.loads(result)
    return result if isinstance(result, dict) else {}


def answer(
    peer: bytes,
    body: bytes,
    handlers: Mapping[str, CommandHandler],
    *,
    user: str | None = None,
    caller: str | None = None,
    role: str | None = None,
    authorize: Callable[[str], None] | None = None,
    starting: bool = False,
) -> JsonObject | Future[JsonObject]:
    """Answer one request with the handler of its ``cmd``: a reply, or a Future of one.

    ``authorize(cmd)`` checks the caller's right to the command before its handler runs (raises
    ForbiddenError); ``user``, ``caller`` and ``role`` are handed to the handler. ``starting``: the daemon
    has not registered every command yet, so a command it does not know may be one about to exist
    (``not_ready``, retry) rather than ``unknown_command``."""
    request_id: str | None = None
    try:
        obj = json.loads(body)
        if not isinstance(obj, dict) or not isinstance(obj.get("cmd"), str):
            raise Refusal("bad_request", 'a request is {"id": ..., "cmd": "...", "args": {...}}')
        rid = obj.get("id")
        request_id = str(rid) if rid is not None else None
        args = obj.get("args") or {}
        if not isinstance(args, dict):
            raise Refusal("bad_request", "args must be an object")
        handler = handlers.get(obj["cmd"])
        if handler is None and starting:
            raise Refusal("not_ready", "readerd is starting and has not registered every command: retry")
        if handler is None:
            raise Refusal("unknown_command", f"no command {obj['cmd']!r}")
        if authorize is not None:
            authorize(obj["cmd"])
        result = handler(ControlRequest(obj["cmd"], args, peer, request_id, user, caller, role))
        if isinstance(result, Future):
            return reply_when_done(request_id, result)
        return ok_reply(request_id, result)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error_reply(request_id, "bad_request", "the request is not JSON")
    except Exception as e:  # a handler bug must not kill the thread that answers
        return failure_reply(request_id, e)
