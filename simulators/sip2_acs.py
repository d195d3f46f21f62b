"""A fake library system (SIP2 ACS) for tests and demos: patrons, items with titles, loans in memory.

It listens on loopback only, answers 63, 11, 09 and 29 as an ILS does (with the error-detection fields
when the request has them), keeps every circulation request it received in ``received`` (tests check what
readerd sent) and the session messages (93, 99) in ``sessions``, and puts a short refusal code in AF
(``limit_reached``, ``not_on_loan``...). Titles are here so tests can prove that none of them reaches a
readerd event.

As a library system does, it checks the format (docs/sip2.md): a message without a field the SIP2 2.00
specification marks required is refused and the connection closed; with ``login`` set, the first message
of a connection must be a ``93`` Login with that user and password (else ``94`` ok=0, or nothing, and the
connection closed); a bad checksum is answered by ``96``, a ``97`` by the last answer again. ``encoding``
is the text on the wire (``utf-8`` or ``cp932``). Each refusal is noted in ``refused``.
"""

from __future__ import annotations

import socketserver
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from protocols import sip2
from protocols.errors import BadResponseError


@dataclass
class Item:
    title: str
    on_loan_to: str | None = None
    due: date | None = None
    renewals: int = 0


@dataclass
class Library:
    institution: str = "chuo"
    patrons: dict[str, bool] = field(default_factory=dict)  # card -> valid
    items: dict[str, Item] = field(default_factory=dict)
    limit: int = 5
    days: int = 14
    max_renewals: int = 1
    today: date = field(default_factory=date.today)
    received: list[sip2.Message] = field(default_factory=list)
    login: tuple[str, str] | None = None  # (CN, CO) a connection must log in with; None: no login
    encoding: str = "utf-8"
    sessions: list[sip2.Message] = field(default_factory=list)  # the 93 and 99 received
    refused: list[str] = field(default_factory=list)  # why a message or connection was refused
    lock: threading.Lock = field(default_factory=threading.Lock)

    def loans_of(self, card: str) -> list[Item]:
        return [item for item in self.items.values() if item.on_loan_to == card]

    def answer(self, request: sip2.Message) -> sip2.Message:
        with self.lock:
            self.received.append(request)
            handler = {
                sip2.Code.PATRON_INFO: self._patron,
                sip2.Code.CHECKOUT: self._checkout,
                sip2.Code.CHECKIN: self._checkin,
                sip2.Code.RENEW: self._renew,
            }[request.code]
            reply = handler(request)
        return sip2.Message(reply.code, reply.fixed, reply.fields, request.sequence)

    def now(self) -> str:
        return sip2.sip_date(datetime.combine(self.today, datetime.min.time()))

    def _patron(self, request: sip2.Message) -> sip2.Message:
        card = request.get("AA")
        loans = self.loans_of(card)
        overdue = [i for i in loans if i.due is not None and i.due < self.today]
        fixed = {
            "patron_status": " " * 14,
            "language": "000",
            "transaction_date": self.now(),
            "hold_items_count": "0000",
            "overdue_items_count": f"{len(overdue):04d}",
            "charged_items_count": f"{len(loans):04d}",
            "fine_items_count": "0000",
            "recall_items_count": "0000",
            "unavailable_holds_count": "0000",
        }
        fields = {
            "AO": [self.institution],
            "AA": [card],
            "AE": ["図書 太郎"],  # a personal name: what a real ACS sends, and readerd must not publish
            "BL": ["Y" if self.patrons.get(card) else "N"],
            "CB": [f"{self.limit:04d}"],
            "AU": [i.title for i in loans],
        }
        return sip2.Message(sip2.Code.PATRON_INFO_RESPONSE, fixed, fields)

    def _loan_reply(
        self, code: sip2.Code, request: sip2.Message, ok: bool, reason: str, item: Item | None
    ) -> sip2.Message:
        fixed = {
            "ok": "1" if ok else "0",
            "renewal_ok": "N",
            "magnetic_media": "N",
            "desensitize": "Y" if ok else "N",
        }
        fixed["transaction_date"] = self.now()
        fields = {"AO": [self.institution], "AA": [request.get("AA")], "AB": [request.get("AB")]}
        if item is not None:
            fields["AJ"] = [item.title]
        if ok and item is not None and item.due is not None:
            fields["AH"] = [sip2.sip_date(datetime.combine(item.due, datetime.min.time()))]
        if reason:
            fields["AF"] = [reason]
        return sip2.Message(code, fixed, fields)

    def _checkout(self, request: sip2.Message) -> sip2.Message:
        card, barcode = request.get("AA"), request.get("AB")
        item = self.items.get(barcode)
        code = sip2.Code.CHECKOUT_RESPONSE
        if not self.patrons.get(card):
            return self._loan_reply(code, request, False, "not_a_patron", item)
        if item is None:
            return self._loan_reply(code, request, False, "unknown_item", None)
        if item.on_loan_to is not None:
            return self._loan_reply(code, request, False, "already_on_loan", item)
        if len(self.loans_of(card)) >= self.limit:
            return self._loan_reply(code, request, False, "limit_reached", item)
        item.on_loan_to, item.due, item.renewals = card, self.today + timedelta(days=self.days), 0
        return self._loan_reply(code, request, True, "", item)

    def _checkin(self, request: sip2.Message) -> sip2.Message:
        item = self.items.get(request.get("AB"))
        ok = item is not None and item.on_loan_to is not None
        if ok and item is not None:
            item.on_loan_to, item.due = None, None
        fixed = {"ok": "1" if ok else "0", "resensitize": "Y", "magnetic_media": "N", "alert": "N"}
        fixed["transaction_date"] = self.now()
        fields = {"AO": [self.institution], "AB": [request.get("AB")], "AQ": ["main"]}
        if item is not None:
            fields["AJ"] = [item.title]
        if not ok:
            fields["AF"] = ["not_on_loan" if item is not None else "unknown_item"]
        return sip2.Message(sip2.Code.CHECKIN_RESPONSE, fixed, fields)

    def _renew(self, request: sip2.Message) -> sip2.Message:
        card, item = request.get("AA"), self.items.get(request.get("AB"))
        code = sip2.Code.RENEW_RESPONSE
        if item is None or item.on_loan_to != card:
            return self._loan_reply(code, request, False, "not_on_loan", item)
        if item.renewals >= self.max_renewals:
            return self._loan_reply(code, request, False, "no_renewals_left", item)
        item.renewals += 1
        item.due = max(self.today, item.due or self.today) + timedelta(days=self.days)
        return self._loan_reply(code, request, True, "", item)


class _Handler(socketserver.StreamRequestHandler):
    server: FakeAcs
    logged_in: bool
    last: bytes

    def handle(self) -> None:
        self.logged_in = self.server.library.login is None
        self.last = b""  # the last answer, for a 97
        buffer = b""
        while True:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            buffer += chunk
            while sip2.TERMINATOR in buffer:
                line, _, buffer = buffer.partition(sip2.TERMINATOR)
                if self.server.drop_next.is_set():  # a network failure: the connection dies mid-request
                    self.server.drop_next.clear()
                    return
                reply = self._answer(line)
                if reply is None:
                    return  # as library systems do: the connection is closed
                self.request.sendall(reply)

    def _answer(self, line: bytes) -> bytes | None:
        """The bytes that answer ``line``; None to close the connection."""
        library = self.server.library
        resend = sip2.resend_request(sip2.Code.REQUEST_SC_RESEND, error_detection=True).encode("ascii")
        try:
            request = sip2.parse(line, library.encoding)
        except sip2.ChecksumError:
            return resend
        except BadResponseError as e:  # not a message it can read
            with library.lock:
                library.refused.append(str(e))
            return None
        if request.code == sip2.Code.REQUEST_ACS_RESEND:
            return self.last
        if self.server.resend_next.is_set():  # as if the request had arrived garbled
            self.server.resend_next.clear()
            return resend
        problem = self._problem(request)
        if problem:
            with library.lock:
                library.refused.append(problem)
            if request.code == sip2.Code.LOGIN:
                self.request.sendall(self._session_reply(request, ok=False))
            return None
        if request.code in (sip2.Code.LOGIN, sip2.Code.SC_STATUS):
            with library.lock:
                library.sessions.append(request)
            self.logged_in = self.logged_in or request.code == sip2.Code.LOGIN
            self.last = self._session_reply(request, ok=True)
        else:
            self.last = self._encode(library.answer(request), request)
        if self.server.corrupt_next.is_set():  # the answer garbled on its way: a wrong checksum
            self.server.corrupt_next.clear()
            return self.last[:-2] + (b"0" if self.last[-2:-1] != b"0" else b"1") + b"\r"
        return self.last

    def _problem(self, request: sip2.Message) -> str:
        """Why the ACS refuses this message ("" if it does not)."""
        missing = request.missing()
        if missing:
            return f"{request.code}: missing required field {missing[0]}"
        login = self.server.library.login
        if request.code == sip2.Code.LOGIN:
            if login is not None and (request.get("CN"), request.get("CO")) != login:
                return "93: wrong login user or password"
            return ""
        if not self.logged_in:
            return f"{request.code}: login required first"
        return ""

    def _encode(self, reply: sip2.Message, request: sip2.Message) -> bytes:
        return sip2.Message(reply.code, reply.fixed, reply.fields, request.sequence).encode(
            self.server.library.encoding, error_detection=request.checked
        )

    def _session_reply(self, request: sip2.Message, *, ok: bool) -> bytes:
        library = self.server.library
        if request.code == sip2.Code.LOGIN:
            reply = sip2.Message(sip2.Code.LOGIN_RESPONSE, {"ok": "1" if ok else "0"})
        else:
            fixed = {
                "online_status": "Y",
                "checkin_ok": "Y",
                "checkout_ok": "Y",
                "acs_renewal_policy": "Y",
                "status_update_ok": "N",
                "offline_ok": "N",
                "timeout_period": "030",
                "retries_allowed": "003",
                "date_time_sync": library.now(),
                "protocol_version": "2.00",
            }
            # BX: which messages this ACS answers (99, 97, 93, 63, 11, 09, 29 of the sixteen).
            fields = {"AO": [library.institution], "BX": ["NYYNYYYYNNNNNNYN"]}
            reply = sip2.Message(sip2.Code.ACS_STATUS, fixed, fields)
        return self._encode(reply, request)


class FakeAcs(socketserver.ThreadingTCPServer):
    """``with FakeAcs(library) as acs:`` a SIP2 server on 127.0.0.1:<acs.port>."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, library: Library) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.library = library
        self.drop_next = threading.Event()  # close the connection instead of reading the next request
        self.resend_next = threading.Event()  # answer the next request with a 96 (send it again)
        self.corrupt_next = threading.Event()  # send the next answer with a wrong checksum
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-acs", daemon=True
        )  # a short poll: shutdown() returns within it

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def __enter__(self) -> FakeAcs:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.shutdown()
        self.server_close()
