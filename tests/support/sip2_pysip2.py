"""An independent SIP2 ACS for tests: pysip2's server (its framing, codec, required-field checks, login
gate, error detection and resend handling, none of them readerd's) with the fake library's catalogue
behind it (``simulators.sip2_acs.Library``: patrons, items, loans, limits).

``with PysipAcs(library, login=("kiosk", "secret")) as acs:`` serves on 127.0.0.1:<acs.port> from an AnyIO
event loop on a thread of its own (a blocking portal). pysip2 closes a connection on a message it cannot
decode or that lacks a required field, before login when ``login_required``, and after a refused login;
with ``error_detection="required"`` a message without a checksum gets a ``96``. The typed requests it
decoded are kept in ``requests`` (what readerd sent, as pysip2 read it), and ``logins`` counts the
accepted ``93`` Logins.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from typing import Literal, TypeVar

import anyio
import pysip2
from anyio.abc import SocketAttribute
from anyio.from_thread import start_blocking_portal

from protocols import sip2
from simulators.sip2_acs import Library

Loan = TypeVar("Loan", pysip2.CheckoutResponse, pysip2.RenewResponse)


class PysipAcs:
    def __init__(
        self,
        library: Library,
        *,
        login: tuple[str, str] | None = ("kiosk", "secret"),
        encoding: str = "utf-8",
        error_detection: Literal["auto", "required"] = "required",
        idle_timeout: float | None = None,
    ) -> None:
        self.library = library
        self.login = login
        self.requests: list[pysip2.SIPRequest] = []
        self.logins = 0
        self.statuses = 0
        self.port = 0
        self._lock = threading.Lock()
        self._stack = ExitStack()
        self.server = pysip2.SIP2Server(
            error_detection=error_detection,
            encoding=encoding,
            institution_id=library.institution,
            login_required=login is not None,
            idle_timeout=idle_timeout,
        )
        self._routes()

    def __enter__(self) -> PysipAcs:
        portal = self._stack.enter_context(start_blocking_portal())
        self.port = self._stack.enter_context(portal.wrap_async_context_manager(self._serve()))
        return self

    @asynccontextmanager
    async def _serve(self) -> AsyncIterator[int]:
        """``SIP2Server.start`` without its leak: pysip2 0.1.0 never closes the listening socket it made,
        so the listener is made and closed here and pysip2's connection handler serves it."""
        listener = await self.server.listen("127.0.0.1", 0)
        async with listener, anyio.create_task_group() as tasks:
            tasks.start_soon(listener.serve, self.server._handle_connection)  # pysip2 0.1.0: see above
            try:
                yield int(listener.extra(SocketAttribute.local_port))  # noqa: S610 - anyio, not Django
            finally:
                tasks.cancel_scope.cancel()

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()

    def _seen(self, request: pysip2.SIPRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _answer(self, code: sip2.Code, card: str | None, item: str | None) -> sip2.Message:
        """The catalogue's answer (``Library.answer`` reads AA and AB only)."""
        fields = {k: [v] for k, v in (("AA", card), ("AB", item)) if v is not None}
        return self.library.answer(sip2.Message(code, {}, fields))

    def _routes(self) -> None:
        server = self.server

        @server.route(pysip2.LOGIN)
        def login(req: pysip2.LoginRequest, _ctx: object) -> pysip2.LoginResponse:
            self._seen(req)
            ok = self.login is None or (req.login_user_id, req.login_password) == self.login
            with self._lock:
                self.logins += ok
            return pysip2.LoginResponse(ok="1" if ok else "0")

        @server.route(pysip2.SC_STATUS)
        def status(req: pysip2.SCStatusRequest, _ctx: object) -> pysip2.ACSStatusResponse:
            self._seen(req)
            with self._lock:
                self.statuses += 1
            return server.build_acs_status(req)

        @server.route(pysip2.PATRON_INFORMATION)
        def patron(req: pysip2.PatronInformationRequest, _ctx: object) -> pysip2.PatronInformationResponse:
            self._seen(req)
            a = self._answer(sip2.Code.PATRON_INFO, req.patron_identifier, None)
            f = a.fixed
            return pysip2.PatronInformationResponse(
                patron_status=f["patron_status"],
                language=f["language"],
                transaction_date=f["transaction_date"],
                hold_items_count=f["hold_items_count"],
                overdue_items_count=f["overdue_items_count"],
                charged_items_count=f["charged_items_count"],
                fine_items_count=f["fine_items_count"],
                recall_items_count=f["recall_items_count"],
                unavailable_holds_count=f["unavailable_holds_count"],
                institution_id=a.get("AO"),
                patron_identifier=a.get("AA"),
                personal_name=a.get("AE"),
                valid_patron=a.get("BL"),
                charged_items_limit=a.get("CB"),
                charged_items=tuple(a.fields.get("AU", [])),
            )

        @server.route(pysip2.CHECKOUT)
        def checkout(req: pysip2.CheckoutRequest, _ctx: object) -> pysip2.CheckoutResponse:
            self._seen(req)
            a = self._answer(sip2.Code.CHECKOUT, req.patron_identifier, req.item_identifier)
            return _loan_reply(pysip2.CheckoutResponse, a)

        @server.route(pysip2.RENEW)
        def renew(req: pysip2.RenewRequest, _ctx: object) -> pysip2.RenewResponse:
            self._seen(req)
            a = self._answer(sip2.Code.RENEW, req.patron_identifier, req.item_identifier)
            return _loan_reply(pysip2.RenewResponse, a)

        @server.route(pysip2.CHECKIN)
        def checkin(req: pysip2.CheckinRequest, _ctx: object) -> pysip2.CheckinResponse:
            self._seen(req)
            a = self._answer(sip2.Code.CHECKIN, None, req.item_identifier)
            return pysip2.CheckinResponse(
                ok=a.fixed["ok"],
                resensitize=a.fixed["resensitize"],
                magnetic_media=a.fixed["magnetic_media"],
                alert=a.fixed["alert"],
                transaction_date=a.fixed["transaction_date"],
                institution_id=a.get("AO"),
                item_identifier=a.get("AB"),
                permanent_location=a.get("AQ"),
                title_identifier=a.get("AJ") or None,
                screen_message=tuple(a.fields.get("AF", [])),
            )


def _loan_reply(kind: type[Loan], a: sip2.Message) -> Loan:
    """A 12 or 30 (the same layout): AJ and AH are required, empty when there is none."""
    return kind(
        ok=a.fixed["ok"],
        renewal_ok=a.fixed["renewal_ok"],
        magnetic_media=a.fixed["magnetic_media"],
        desensitize=a.fixed["desensitize"],
        transaction_date=a.fixed["transaction_date"],
        institution_id=a.get("AO"),
        patron_identifier=a.get("AA"),
        item_identifier=a.get("AB"),
        title_identifier=a.get("AJ"),
        due_date=a.get("AH"),
        screen_message=tuple(a.fields.get("AF", [])),
    )
