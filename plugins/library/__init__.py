"""Library lending (built-in plugin ``library``).

Configuration (``[plugins.library]``)::

    library_id = "chuo"             # this kiosk's library (a person is a patron of each library apart)
    ils = "sip2"                    # or "local": loans in readerd's store, for a library without a system
    sip2_host = "10.0.0.5"          # the library system's SIP2 server (ils = "sip2")
    sip2_port = 6001
    institution = "chuo"            # SIP2 AO
    terminal_password = ""          # SIP2 AC, if the ACS wants one
    loan_limit = 10                 # ils = "local": loans per patron
    loan_days = 14
    renewals = 2
    registration_years = 1          # a registration runs this long, then needs a renewal by JPKI
    auth_window = 120               # seconds a card.authenticated on a reader counts for register/renew
    auto_renew_registration = true  # a JPKI authentication at the counter renews an expiring registration

A tap publishes ``plugin.library.patron`` ``{status, loans?, overdue?, limit?, valid_until?}``; commands
``library.register``, ``library.renew_registration``, ``library.checkout``, ``library.renew``,
``library.return``, ``library.receipt``, ``library.overdue`` publish ``plugin.library.<command>`` with
status codes, counts and due dates. Titles and names never leave the library system.

A member's withdrawal (``member.withdrawn``) deletes their patron links in readerd's tables; loans stay the
library system's until returned (docs/privacy.md, "Withdrawal and retention, per built-in").
"""

from __future__ import annotations

import threading
import time
from datetime import date, timedelta
from typing import Any

import structlog

from plugins.common import Periodic, config_int, person_of, persons_of_withdrawn
from plugins.library import settings, texts
from plugins.library.ils import (
    IlsAdapter,
    IlsUnavailableError,
    LoanRules,
    LocalIls,
    LoginRefusedError,
    Sip2Ils,
)
from plugins.library.service import LibraryService
from readerd.plugin import (
    OPERATOR,
    Arg,
    ArgType,
    CardsOnReaders,
    CommandSpec,
    ConfigKey,
    EventInterest,
    JsonObject,
    PluginContext,
    PluginEvent,
    PluginStore,
    ReaderdError,
    Refusal,
    Schema,
    StoreBusyError,
    StoreUnavailableError,
    hookimpl,
)

__version__ = "1.0"

log = structlog.get_logger("plugins.library")

S = ArgType.STRING
#: Seconds a command that needs a JPKI proof waits for the card.authenticated event still in flight.
PROOF_WAIT = 2.0
#: Seconds between retries of a withdrawal whose patron links the shared store missed (it was down).
WITHDRAWAL_RETRY = 30.0
KEY = {"idempotency_key": Arg(S)}
READER = {"reader": Arg(S, help="the reader the patron's card is on")}
LOAN = frozenset({"status", "due"})
#: What each result carries (readerd publishes nothing else of it): never titles, names or card numbers.
RESULT_FIELDS = {
    "patron": frozenset({"status", "loans", "overdue", "limit", "valid_until", "reason", "login_refused"}),
    "register": frozenset({"status", "library_id", "registered", "valid_until"}),
    "registration_renewed": frozenset({"status", "library_id", "valid_until"}),
    "checkout": LOAN,
    "renew": LOAN,
    "return": LOAN,
    "receipt": frozenset({"status", "count", "due_dates"}),
}


class LibraryPlugin:
    def __init__(self) -> None:
        self.service: LibraryService | None = None
        self.context: PluginContext | None = None
        self.auth_window = 120.0
        self.auto_renew = True
        self.cards = CardsOnReaders()
        self.authenticated: dict[str, tuple[str, float]] = {}  # reader -> (person, when) of a JPKI proof
        self._proof_arrived = threading.Condition()
        self.receipts: dict[str, list[JsonObject]] = {}  # reader -> this visit's checkouts
        self._retry: Periodic | None = None

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        if context.store is None:
            raise ValueError("the library plugin needs the store")
        config = context.config
        self.context = context
        self.auth_window = float(config.get("auth_window", 120))
        self.auto_renew = bool(config.get("auto_renew_registration", True))
        self.service = LibraryService(
            context.store,
            str(config.get("library_id", "library")),
            registration_years=config_int(config, "library", "registration_years", 1),
        )
        self.service.ils = self._ils(config, self.service, context.store)
        self._retry = Periodic("library-withdrawals", WITHDRAWAL_RETRY, self._retry_withdrawals)
        self._retry.start()

    def _retry_withdrawals(self) -> None:
        try:
            done = self._service().retry_withdrawals()
        except (StoreUnavailableError, StoreBusyError):
            return  # still down: the queue waits
        if done:
            log.info("member withdrawn: patron links deleted", persons=done)

    def _ils(self, config: JsonObject, service: LibraryService, store: PluginStore) -> IlsAdapter:
        kind = config.get("ils", "local")
        if kind == "sip2":  # login, keep-alive, error detection, encoding: docs/sip2.md
            return Sip2Ils.from_config(config, service.library_id)
        if kind != "local":
            raise ValueError('[plugins.library] ils: "sip2" or "local"')
        rules = LoanRules(
            config_int(config, "library", "loan_limit", 10),
            config_int(config, "library", "loan_days", 14),
            config_int(config, "library", "renewals", 2),
        )
        return LocalIls(store, rules, service.is_card)

    @hookimpl
    def readerd_shutdown(self) -> None:
        if self._retry is not None:
            self._retry.stop()
        ils = self.service.ils if self.service is not None else None
        if isinstance(ils, Sip2Ils):
            ils.close()

    def _service(self) -> LibraryService:
        if self.service is None:
            raise Refusal("not_ready", "the library plugin has not started")
        return self.service

    # -- events ---------------------------------------------------------------------------------------
    @hookimpl
    def readerd_config_keys(self) -> list[ConfigKey]:
        return settings.KEYS

    @hookimpl
    def readerd_schemas(self) -> list[Schema]:
        return settings.SCHEMAS

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        wanted = {"card.identified", "card.authenticated", "card.removed", "member.enrolled"}
        return EventInterest(types=frozenset(wanted))

    @hookimpl
    def readerd_result_fields(self) -> texts.Declaration:
        return texts.RESULTS  # RESULT_FIELDS with what a citizen sees for each status (texts.py)

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        if event.replayed:
            return  # the patron screen is for the card on the reader now
        reader = event.reader or ""
        person = person_of(event.data) if event.data.get("kind") == "jpki" else None
        self.cards.identified(event)
        self.receipts[reader] = []
        if person is None:
            return
        try:
            status = self._service().status(person)
        except IlsUnavailableError as e:
            context.log.warning("library system unavailable", reason=e.reason, error=str(e))
            status = {"status": "ils_unavailable", "reason": e.reason}
            if isinstance(e, LoginRefusedError):
                status["login_refused"] = True
        context.publish("patron", status, reader=reader)

    @hookimpl
    def readerd_card_authenticated(self, event: PluginEvent, context: PluginContext) -> None:
        if event.replayed:
            return  # a proof of possession counts while the card is on the reader, not after a crash
        reader = event.reader or ""
        person = person_of(event.data)
        if person is None:
            return
        with self._proof_arrived:
            self.authenticated[reader] = (person, time.monotonic())
            self._proof_arrived.notify_all()
        if not self.auto_renew:
            return
        service = self._service()
        patron = service.patron(person)
        soon = service.today() + timedelta(days=30)
        if patron is not None and date.fromisoformat(patron.valid_until) <= soon:
            context.publish("registration_renewed", service.renew_registration(person), reader=reader)

    @hookimpl
    def readerd_card_removed(self, event: PluginEvent) -> None:
        reader = event.reader or ""
        self.cards.removed(event)
        self.authenticated.pop(reader, None)
        self.receipts.pop(reader, None)

    @hookimpl
    def readerd_member_enrolled(self, event: PluginEvent) -> None:
        self.cards.enrolled(event)  # enrolled at this counter just now: library.register needs no new tap

    @hookimpl
    def readerd_member_withdrawn(self, event: PluginEvent, context: PluginContext) -> None:
        """Forget the member by docs/privacy.md: their patron links deleted (loans stay the library
        system's, by library card, until returned). Publishes nothing; idempotent."""
        persons = persons_of_withdrawn(event.data)
        for reader, (person, _when) in list(self.authenticated.items()):
            if person in persons:
                self.authenticated.pop(reader, None)
        counts = self._service().withdraw(persons)
        context.log.info("member withdrawn: records anonymised", plugin="library", **counts)

    # -- commands -------------------------------------------------------------------------------------
    def _person(self, args: JsonObject) -> str:
        reader = str(args.get("reader"))
        card = self.cards.get(reader, "jpki")
        person = None if card is None else person_of(card.data)
        if person is None:
            raise Refusal(
                "no_card",
                f"no enrolled My Number Card on {reader}: hold the card on the reader; if it is not "
                "enrolled yet, enrol it with the PIN first (readerctl auth --enroll)",
            )
        return person

    def _proven(self, args: JsonObject) -> str:
        """The person on the reader, if they proved possession there within ``auth_window`` seconds.

        A UI sends the command as soon as ``auth.pin`` answers; the ``card.authenticated`` event is then
        still on its way through the bus to this plugin, so it is waited for, briefly (``PROOF_WAIT``).
        """
        person = self._person(args)
        reader = str(args.get("reader"))

        def fresh() -> bool:
            proof = self.authenticated.get(reader)
            return (
                proof is not None and proof[0] == person and time.monotonic() - proof[1] <= self.auth_window
            )

        with self._proof_arrived:
            if not self._proof_arrived.wait_for(fresh, timeout=PROOF_WAIT):
                raise Refusal(
                    "authentication_required", "authenticate with the PIN on this reader first (auth.begin)"
                )
        return person

    def _publish(self, event: str, result: JsonObject, reader: Any) -> JsonObject:  # noqa: ANN401 - a JSON value
        if self.context is not None and not result.get("replayed"):
            public = {k: v for k, v in result.items() if k not in ("item", "library_card")}
            self.context.publish(
                event, {"status": "ok", **public}, reader=reader if isinstance(reader, str) else None
            )
        return result

    def _register(self, args: JsonObject) -> JsonObject:
        person = self._proven(args)
        return self._publish(
            "register", self._service().register(person, _without(args, "reader")), args.get("reader")
        )

    def _renew_registration(self, args: JsonObject) -> JsonObject:
        person = self._proven(args)
        return self._publish(
            "registration_renewed", self._service().renew_registration(person), args.get("reader")
        )

    def _checkout(self, args: JsonObject) -> JsonObject:
        reader = str(args["reader"])
        result = self._loan(
            "checkout", lambda: self._service().checkout(self._person(args), _without(args, "reader")), reader
        )
        if not result.get("replayed"):
            self.receipts.setdefault(reader, []).append({"item": result["item"], "due": result["due"]})
        return result

    def _renew(self, args: JsonObject) -> JsonObject:
        return self._loan(
            "renew",
            lambda: self._service().renew(self._person(args), _without(args, "reader")),
            args.get("reader"),
        )

    def _return(self, args: JsonObject) -> JsonObject:
        return self._loan("return", lambda: self._service().checkin(args), None)

    def _loan(self, event: str, run: Any, reader: Any) -> JsonObject:  # noqa: ANN401
        try:
            result: JsonObject = run()
        except ReaderdError as e:
            if self.context is not None:
                self.context.publish(
                    event, {"status": e.code}, reader=reader if isinstance(reader, str) else None
                )
            raise
        return self._publish(event, result, reader)

    def _receipt(self, args: JsonObject) -> JsonObject:
        reader = str(args["reader"])
        items = self.receipts.get(reader, [])
        dues = sorted({str(i["due"]) for i in items if i.get("due")})
        if self.context is not None:
            self.context.publish(
                "receipt", {"status": "ok", "count": len(items), "due_dates": dues}, reader=reader
            )
        return {"count": len(items), "items": list(items), "due_dates": dues}

    def _overdue(self, _args: JsonObject) -> JsonObject:
        ils = self._service().ils
        if not isinstance(ils, LocalIls):
            raise Refusal("not_supported", "the overdue list is the library system's (ils = sip2)")
        rows = ils.overdue()
        return {"count": len(rows), "rows": rows}

    @hookimpl
    def readerd_commands(self) -> list[CommandSpec]:
        return [
            CommandSpec(
                "library.register",
                self._register,
                {**READER, "library_card": Arg(S), **KEY},
                help="link a library card to the authenticated card",
            ),
            CommandSpec(
                "library.renew_registration",
                self._renew_registration,
                {**READER, **KEY},
                help="another year, after a JPKI authentication",
            ),
            CommandSpec(
                "library.checkout", self._checkout, {**READER, "item": Arg(S), **KEY}, help="lend an item"
            ),
            CommandSpec(
                "library.renew", self._renew, {**READER, "item": Arg(S), **KEY}, help="extend a loan"
            ),
            CommandSpec("library.return", self._return, {"item": Arg(S), **KEY}, help="take an item back"),
            CommandSpec("library.receipt", self._receipt, READER, help="this visit's loans and due dates"),
            CommandSpec(
                "library.overdue", self._overdue, {}, help="overdue loans (ils = local)", role=OPERATOR
            ),
        ]


def _without(args: JsonObject, key: str) -> JsonObject:
    return {k: v for k, v in args.items() if k != key}
