"""The senior bath-house card (built-in plugin ``bathhouse``, the おたっしゃカード).

Configuration (``[plugins.bathhouse]``)::

    bath_house = "matsu-no-yu"      # this kiosk's bath house (none: a registration counter)
    min_age = 65                    # eligible from this age in law (JST business date)
    monthly_cap = 4                 # subsidised visits per JST calendar month, all bath houses together
    reissue_fee = 300               # yen recorded at a reissue unless the command says otherwise
    sync_interval = 10              # seconds between pushes of visits admitted offline
    retry_after = 30                # seconds a failed shared store is left alone at taps

A tap at a bath house publishes ``plugin.bathhouse.visit`` ``{bath_house, status, monthly_cap,
visits_this_month?, offline?, message?}``; see :mod:`plugins.bathhouse.service` for the statuses and the
offline rule, :mod:`plugins.bathhouse.offline` for what the kiosk keeps to apply it (no names, no birth
dates). Counter commands: ``bathhouse.register``, ``bathhouse.reissue``, ``bathhouse.link_mynumber``
(each with the card on a reader), ``bathhouse.report``; ``bathhouse.sync`` pushes offline visits now.
``readerctl bathhouse report --month YYYY-MM [--csv]``, ``readerctl bathhouse sync``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable

import structlog

from plugins.bathhouse import settings, texts
from plugins.bathhouse.service import BathhouseService, Rules
from plugins.common import Periodic, config_int, person_of, persons_of_withdrawn, push_offline
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
    Refusal,
    Schema,
    hookimpl,
)

__version__ = "1.1"

log = structlog.get_logger("plugins.bathhouse")

S, INT = ArgType.STRING, ArgType.INTEGER
KEY = {"idempotency_key": Arg(S)}
#: The CSV's columns: ``over_cap`` (visits past the monthly cap, admitted offline) last, so a reader of
#: the first three columns is unaffected.
CSV_COLUMNS = ("bath_house", "visits", "members", "over_cap")
#: What each result carries (readerd publishes nothing else of it).
RESULT_FIELDS = {
    "visit": frozenset({"bath_house", "status", "monthly_cap", "visits_this_month", "offline", "message"})
}


class BathhousePlugin:
    def __init__(self) -> None:
        self.service: BathhouseService | None = None
        self.bath_house = ""
        self.cards = CardsOnReaders()
        self._sync: Periodic | None = None

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        if context.store is None:
            raise ValueError("the bathhouse plugin needs the store")
        config = context.config
        rules = Rules(
            min_age=config_int(config, "bathhouse", "min_age", 65),
            monthly_cap=config_int(config, "bathhouse", "monthly_cap", 4),
            reissue_fee=config_int(config, "bathhouse", "reissue_fee", 0),
        )
        self.bath_house = str(config.get("bath_house", ""))
        self.service = BathhouseService(
            context.store, rules, retry_after=float(config.get("retry_after", 30))
        )
        # Started on every kiosk: a counter kiosk has nothing to push, and costs one local query a period.
        self._sync = Periodic("bathhouse-sync", float(config.get("sync_interval", 10)), self._sync_once)
        self._sync.start()

    @hookimpl
    def readerd_shutdown(self) -> None:
        if self._sync is not None:
            self._sync.stop()

    def _sync_once(self) -> None:
        push_offline(self._service(), log, "visits")

    def _service(self) -> BathhouseService:
        if self.service is None:
            raise Refusal("not_ready", "the bathhouse plugin has not started")
        return self.service

    @hookimpl
    def readerd_config_keys(self) -> list[ConfigKey]:
        return settings.KEYS

    @hookimpl
    def readerd_schemas(self) -> list[Schema]:
        return settings.SCHEMAS

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"card.identified", "card.removed"}))

    @hookimpl
    def readerd_result_fields(self) -> texts.Declaration:
        return texts.RESULTS  # RESULT_FIELDS with what a citizen sees for each status (texts.py)

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        if event.replayed:
            return  # a gate decides while the senior stands there: after a crash they tap again
        reader, data = event.reader or "", dict(event.data)
        self.cards.identified(event)
        if not self.bath_house:
            return  # a registration counter: taps are for the commands
        if data.get("kind") == "felica":
            result = self._service().visit(self.bath_house, card=str(data.get("pseudonym")), via="felica")
        else:
            person = person_of(data)
            if person is None:
                result = {"bath_house": self.bath_house, "status": "unknown_card"}
            else:
                result = self._service().visit(self.bath_house, person=person, via="jpki")
        context.publish("visit", result, reader=reader)

    @hookimpl
    def readerd_card_removed(self, event: PluginEvent) -> None:
        self.cards.removed(event)

    @hookimpl
    def readerd_member_withdrawn(self, event: PluginEvent, context: PluginContext) -> None:
        """Forget the member by docs/privacy.md: the My Number Card's link to the bath-house membership is
        deleted; the senior card, member number and visits stay for the subsidy settlement."""
        counts = self._service().withdraw(persons_of_withdrawn(event.data))
        context.log.info("member withdrawn: records anonymised", plugin="bathhouse", **counts)

    # -- counter commands -----------------------------------------------------------------------------
    def _felica_on(self, args: JsonObject) -> str:
        card = self.cards.require(
            str(args["reader"]), "felica", refusal="hold the bath-house card on the reader"
        )
        return card.pseudonym

    def _link(self, args: JsonObject) -> JsonObject:
        card = self.cards.get(str(args["reader"]), "jpki")
        person = None if card is None else person_of(card.data)
        if person is None:
            raise Refusal("no_card", "hold the member's enrolled My Number Card on the reader")
        return self._service().link(person, {k: v for k, v in args.items() if k != "reader"})

    @hookimpl
    def readerd_commands(self) -> list[CommandSpec]:
        s = self._service
        member = {"member_number": Arg(S), "reader": Arg(S)}
        return [
            CommandSpec(
                "bathhouse.register",
                lambda a: s().register(self._felica_on(a), {k: v for k, v in a.items() if k != "reader"}),
                {**member, "birth_date": Arg(S, help="YYYY-MM-DD"), "ward": Arg(INT), **KEY},
                help="a new member and their first card",
                role=OPERATOR,
            ),
            CommandSpec(
                "bathhouse.reissue",
                lambda a: s().reissue(self._felica_on(a), {k: v for k, v in a.items() if k != "reader"}),
                {**member, "reason": Arg(S), "fee": Arg(INT, required=False), **KEY},
                help="a new card; the old one is revoked",
                role=OPERATOR,
            ),
            CommandSpec(
                "bathhouse.link_mynumber",
                self._link,
                {**member, **KEY},
                help="the member's My Number Card stands for the bath-house card",
                role=OPERATOR,
            ),
            CommandSpec(
                "bathhouse.report",
                lambda a: s().report(str(a["month"]), a.get("bath_house")),
                {"month": Arg(S, help="YYYY-MM (JST)"), "bath_house": Arg(S, required=False)},
                help="visits per bath house in a month, for the subsidy settlement",
                role=OPERATOR,
            ),
            CommandSpec("bathhouse.sync", lambda _a: s().sync(), {}, help="push offline visits now"),
        ]

    @hookimpl
    def readerd_ctl_commands(self) -> list[CtlCommand]:
        return [CtlCommand("bathhouse", "bath-house card: monthly report (CSV)", _configure, _run)]


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="bathhouse_action", metavar="ACTION", required=True)
    report = actions.add_parser("report", help="visits per bath house in a JST month")
    report.add_argument("--month", required=True, help="YYYY-MM")
    report.add_argument("--bath-house", help="one bath house only")
    report.add_argument("--csv", action="store_true", help="CSV with a header row")
    actions.add_parser("sync", help="push this kiosk's offline visits now")


def _run(args: argparse.Namespace, call: Callable[[str, JsonObject], JsonObject]) -> int:
    out = sys.stdout
    if args.bathhouse_action == "sync":
        synced = call("bathhouse.sync", {})
        out.write(f"synced {synced['synced']}, already there {synced['already_there']}\n")
        return 0
    request: JsonObject = {"month": args.month}
    if args.bath_house:
        request["bath_house"] = args.bath_house
    result = call("bathhouse.report", request)
    if args.csv:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(result["bath_houses"])
        return 0
    over = result.get("total_over_cap", 0)
    out.write(f"{result['month']}: {result['total_visits']} visits")
    out.write(f", {over} over the monthly cap\n" if over else "\n")
    for row in result["bath_houses"]:
        extra = f" {row['over_cap']:>4} over the cap" if row.get("over_cap") else ""
        out.write(f"  {row['bath_house']:<20} {row['visits']:>6} visits {row['members']:>5} members{extra}\n")
    return 0
