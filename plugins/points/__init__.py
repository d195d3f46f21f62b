"""Municipal points (built-in plugin ``points``, the 自治体ポイント of the MyKey pilots).

Configuration (``[plugins.points]``)::

    earn_programme = "ward-points-2026"     # the programme check-in points are credited to

Accounts are keyed by MyKey ID or member ID (what ``card.identified`` carries once a card is enrolled) or
by a FeliCa card registered to one (``points.register_card``). Earning: ``plugin.checkin.result`` with
``status = "accepted"`` and ``points`` credits the event's participation points once per event and
person, whichever kiosk admitted them (the check-in plugin does not know this one exists: they meet on
the bus); an earning that cannot be credited now (the shared store down, the programme unknown or not
open yet) waits with its reason, is retried in the background and credited, or written off with the
reason once the programme's last earning day has passed (``points.pending``, ``readerctl points
pending``). ``points.grant`` for campaigns,
``points.import`` for converted points. Spending: ``points.redeem`` at shops, ``points.issue_ticket`` at
ticket stations and ``points.use_ticket`` at shops. Reports: ``points.settlement`` per shop and area;
``readerctl points settlement --from --to [--csv]``, ``readerctl points balance``, ``readerctl points
pending``.

A member's withdrawal (``member.withdrawn``) re-keys their accounts, ledger entries and tickets to
``withdrawn:<random>`` (the ward's books still balance; the balance is frozen), deletes their card links
and writes off their waiting earnings with reason ``withdrawn`` (docs/privacy.md, "Withdrawal and
retention, per built-in").

Results are published as ``plugin.points.<command>`` (``redeemed``, ``earned``, ...) with the reader when
there is one: amounts and balances, never names.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from plugins.common import Periodic, parse_date, persons_of_withdrawn
from plugins.points import settings, texts
from plugins.points.ctl import ctl_command
from plugins.points.service import WAITING, PointsService, account_of
from readerd.plugin import (
    OPERATOR,
    Arg,
    ArgType,
    CardsOnReaders,
    CommandSpec,
    ConfigKey,
    CtlCommand,
    EventInterest,
    JsonObject,
    PluginContext,
    PluginEvent,
    ReaderdError,
    Refusal,
    Schema,
    StoreBusyError,
    StoreUnavailableError,
    hookimpl,
)

__version__ = "1.0"

log = structlog.get_logger("plugins.points")

#: What each result carries (readerd publishes nothing else of it).
RESULT_FIELDS = {
    "redeemed": frozenset({"redeemed", "balance", "shop_id"}),
    "ticket_issued": frozenset({"amount", "expires_on", "balance"}),
    "ticket_used": frozenset({"amount", "shop_id"}),
    "earned": frozenset({"balance", "earned", "event_id", "deferred"}),
    "earn_deferred": frozenset({"event_id", "reason"}),
    "earn_refused": frozenset({"reason", "event_id"}),
    "earn_written_off": frozenset({"reason", "event_id"}),
}

S, INT = ArgType.STRING, ArgType.INTEGER
KEY = {"idempotency_key": Arg(S, help="the same key gets the same answer, applied once")}
WHO = {
    "member_id": Arg(S, required=False),
    "mykey_id": Arg(S, required=False),
    "reader": Arg(S, required=False, help="instead of an ID: the enrolled card on this reader"),
}


class PointsPlugin:
    def __init__(self) -> None:
        self.service: PointsService | None = None
        self.context: PluginContext | None = None
        self.earn_programme = ""
        self.cards = CardsOnReaders()
        self._retry: Periodic | None = None

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        if context.store is None:
            raise ValueError("the points plugin needs the store")
        self.context = context
        self.service = PointsService(context.store)
        self.earn_programme = str(context.config.get("earn_programme", ""))
        self._retry = Periodic(
            "points-retry", float(context.config.get("retry_interval", 10)), self.retry_deferred
        )
        self._retry.start()

    @hookimpl
    def readerd_shutdown(self) -> None:
        if self._retry is not None:
            self._retry.stop()

    def retry_deferred(self) -> int:
        """Credit the earnings that wait (the shared store was down, the programme unknown or not open);
        stops at the first that still cannot reach the store. One already credited for the event and
        person (the same person checked in at another kiosk offline) is settled without a credit; one
        whose programme's last earning day has passed is written off with the reason. Returns how many
        were settled (credited, found credited, or written off)."""
        service, settled = self._service(), 0
        if service.withdrawals_pending():
            try:
                done = service.retry_withdrawals()
            except (StoreUnavailableError, StoreBusyError):
                return settled
            log.info("member withdrawn: shared points records anonymised", **done)
        for row in service.deferred():
            checkin_id = row["checkin_id"] or row["reference"]  # rows from before: keyed by check-in id
            try:
                result = service.earn(
                    row["account"],
                    row["programme_id"],
                    int(row["amount"]),
                    checkin_id,
                    event_id=row["event_id"],
                )
            except (StoreUnavailableError, StoreBusyError):
                return settled
            except ReaderdError as e:
                if e.code in WAITING:  # the programme is still unknown or not open: it keeps waiting
                    if e.code != row["reason"]:
                        service.still_waiting(row["reference"], e.code)
                    continue
                service.write_off(row["reference"], e.code)  # the programme ended meanwhile: said, kept
                log.warning("pending earning written off", event_id=row["event_id"], reason=e.code)
                self._say("earn_written_off", {"reason": e.code, "event_id": row["event_id"]}, row["reader"])
                settled += 1
                continue
            if not result.get("replayed"):
                self._say("earned", {**result, "event_id": row["event_id"], "deferred": True}, row["reader"])
            service.settle_deferred(row["reference"])
            settled += 1
        return settled

    def _say(self, event: str, data: JsonObject, reader: str | None) -> None:
        if self.context is not None:
            self.context.publish(event, data, reader=reader or None)

    def _service(self) -> PointsService:
        if self.service is None:
            raise Refusal("not_ready", "the points plugin has not started")
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
        return EventInterest(types=frozenset({"card.identified", "card.removed", "plugin.checkin.result"}))

    @hookimpl
    def readerd_result_fields(self) -> texts.Declaration:
        return texts.RESULTS  # RESULT_FIELDS with what a citizen sees for each status (texts.py)

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        self.cards.identified(event)

    @hookimpl
    def readerd_card_removed(self, event: PluginEvent) -> None:
        self.cards.removed(event)

    @hookimpl
    def readerd_plugin_result(self, event: PluginEvent, context: PluginContext) -> None:
        data = event.data
        if event.type != "plugin.checkin.result" or data.get("status") != "accepted":
            return
        points, reference = data.get("points"), data.get("checkin_id")
        if not self.earn_programme or not isinstance(points, int) or points <= 0 or not reference:
            return
        try:
            account = account_of(data)
        except Refusal:
            return  # an anonymous check-in earns nothing
        event_id = str(data.get("event_id"))
        try:
            result = self._service().earn(
                account, self.earn_programme, points, str(reference), event_id=event_id
            )
        except (StoreUnavailableError, StoreBusyError, ReaderdError) as e:
            reason = "store_unavailable" if isinstance(e, StoreUnavailableError | StoreBusyError) else e.code
            if reason not in WAITING:  # an expired programme: said on the bus, not raised, not kept
                context.publish("earn_refused", {"reason": reason, "event_id": event_id}, reader=event.reader)
                return
            # kept, and credited when it can be (store back, programme defined or open)
            self._service().defer_earn(
                account,
                self.earn_programme,
                points,
                str(reference),
                event_id=event_id,
                reader=event.reader or "",
                reason=reason,
            )
            context.publish("earn_deferred", {"event_id": event_id, "reason": reason}, reader=event.reader)
            return
        context.publish("earned", {**result, "event_id": data.get("event_id")}, reader=event.reader)

    @hookimpl
    def readerd_member_withdrawn(self, event: PluginEvent, context: PluginContext) -> None:
        """Forget the member by docs/privacy.md while the books balance: their accounts, ledger entries and
        tickets re-keyed to ``withdrawn:<random>`` (the balance frozen), their cards deleted, their
        waiting earnings written off (``withdrawn``). Publishes nothing; idempotent."""
        counts = self._service().withdraw(persons_of_withdrawn(event.data))
        context.log.info("member withdrawn: records anonymised", plugin="points", **counts)

    # -- commands -------------------------------------------------------------------------------------
    def _who(self, args: JsonObject) -> JsonObject:
        """``reader`` replaced by the IDs of the enrolled card on it (what a shop terminal sends); for a
        spending command, the IDs the daemon proved with the card's PIN (``proof``)."""
        proof = args.get("proof")
        if isinstance(proof, dict):
            if not proof.get("mykey_id") and not proof.get("member_id"):
                raise Refusal("not_enrolled", "the card is not enrolled: enrol it with mykey.enroll first")
            rest = {k: v for k, v in args.items() if k not in ("proof", "reader")}
            return {**rest, "mykey_id": proof.get("mykey_id"), "member_id": proof.get("member_id")}
        reader = args.get("reader")
        if not isinstance(reader, str):
            return args
        card = self.cards.require(reader, refusal=f"no card on {reader}")
        if card.kind == "felica":
            account = self._service().account_for_card(card.pseudonym)
            if account is None:
                raise Refusal("unknown_card", "this FeliCa card is not registered for points")
            kind, value = account.split(":", 1)
            return {**args, f"{kind}_id": value}
        if not card.data.get("mykey_id") and not card.data.get("member_id"):
            raise Refusal("not_enrolled", "the card is not enrolled: enrol it with mykey.enroll first")
        return {**args, "mykey_id": card.data.get("mykey_id"), "member_id": card.data.get("member_id")}

    def _publishing(
        self, event: str, run: Callable[[JsonObject], JsonObject]
    ) -> Callable[[JsonObject], JsonObject]:
        def handler(args: JsonObject) -> JsonObject:
            result = run(self._who(args))
            if self.context is not None and not result.get("replayed"):
                public = {k: v for k, v in result.items() if k not in ("entry_id", "ticket")}
                self.context.publish(
                    event, public, reader=args.get("reader") if isinstance(args.get("reader"), str) else None
                )
            return result

        return handler

    def _register_card(self, args: JsonObject) -> JsonObject:
        reader = str(args["reader"])
        card = self.cards.require(reader, "felica", refusal=f"no FeliCa card on {reader}")
        return self._service().register_card(card.pseudonym, {k: v for k, v in args.items() if k != "reader"})

    @hookimpl
    def readerd_commands(self) -> list[CommandSpec]:
        s = self._service
        programme = {"programme_id": Arg(S)}
        return [
            CommandSpec(
                "points.define_programme",
                lambda a: s().define_programme(a),
                {
                    **programme,
                    "name": Arg(S),
                    "first_earning_day": Arg(S, required=False, help="YYYY-MM-DD (JST); earlier ones wait"),
                    "last_earning_day": Arg(S, help="YYYY-MM-DD (JST), inclusive"),
                    "last_ticket_day": Arg(S),
                    "last_use_day": Arg(S),
                    "ticket_valid_days": Arg(INT, required=False),
                    **KEY,
                },
                help="create or change a points programme",
                role=OPERATOR,
            ),
            CommandSpec(
                "points.define_shop",
                lambda a: s().define_shop(a),
                {"shop_id": Arg(S), "name": Arg(S), "area": Arg(S), **KEY},
                help="a participating shop and its area",
                role=OPERATOR,
            ),
            CommandSpec(
                "points.redeem",
                self._publishing("redeemed", lambda a: s().redeem(_proven(a))),
                {**programme, **WHO, "shop_id": Arg(S), "amount": Arg(INT), **KEY},
                help="spend points at a shop (the card's PIN proof: auth_id)",
                possession=True,
            ),
            CommandSpec(
                "points.issue_ticket",
                self._publishing("ticket_issued", lambda a: s().issue_ticket(_proven(a))),
                {**programme, **WHO, "amount": Arg(INT), **KEY},
                help="turn points into a single-use ticket (the card's PIN proof: auth_id)",
                possession=True,
            ),
            CommandSpec(
                "points.use_ticket",
                self._publishing("ticket_used", lambda a: s().use_ticket(a)),
                {"ticket": Arg(S), "shop_id": Arg(S), **KEY},
                help="take a ticket at a shop",
            ),
            CommandSpec(
                "points.grant",
                lambda a: s().grant(a),
                {**programme, "campaign": Arg(S), "amount": Arg(INT), "members": Arg(ArgType.ARRAY), **KEY},
                help="a campaign grant to eligible members",
                role=OPERATOR,
            ),
            CommandSpec(
                "points.import",
                lambda a: s().import_points(a),
                {**programme, **WHO, "amount": Arg(INT), "source_ref": Arg(S), **KEY},
                help="points converted from another scheme",
                role=OPERATOR,
            ),
            CommandSpec(
                "points.expire",
                lambda a: s().expire(a),
                {**programme, **KEY},
                help="write off what is left after the last use day",
                role=OPERATOR,
            ),
            CommandSpec(
                "points.balance",
                lambda a: s().balance(account_of(self._who(a))),
                WHO,
                help="an account's balance per programme",
            ),
            CommandSpec(
                "points.register_card",
                self._register_card,
                {
                    "reader": Arg(S),
                    "member_id": Arg(S, required=False),
                    "mykey_id": Arg(S, required=False),
                    **KEY,
                },
                help="use the FeliCa card on a reader for a member's points",
                role=OPERATOR,
            ),
            CommandSpec(
                "points.pending",
                lambda a: s().pending_report(),
                {},
                help="earnings waiting on this kiosk (and written off), with counts and reasons",
                role=OPERATOR,
            ),
            CommandSpec(
                "points.settlement",
                self._settlement,
                {"from": Arg(S, help="YYYY-MM-DD (JST)"), "to": Arg(S)},
                help="per-shop and per-area totals for a period",
                role=OPERATOR,
            ),
        ]

    def _settlement(self, args: JsonObject) -> JsonObject:
        return self._service().settlement(parse_date(args["from"], "from"), parse_date(args["to"], "to"))

    @hookimpl
    def readerd_ctl_commands(self) -> list[CtlCommand]:
        return [ctl_command()]


def _proven(args: JsonObject) -> JsonObject:
    """A spending command's arguments after :meth:`PointsPlugin._who`: a card on a reader counts only
    with the daemon's proof (the daemon refuses without one; this holds wherever the plugin runs)."""
    if isinstance(args.get("reader"), str) and "proof" not in args:
        raise Refusal("authentication_required", "hold the card on the reader and enter its PIN first")
    return {k: v for k, v in args.items() if k not in ("proof", "reader")}
