"""The senior bath-house card (built-in plugin ``bathhouse``, the おたっしゃカード).

Configuration (``[plugins.bathhouse]``)::

    bath_house = "matsu-no-yu"      # this kiosk's bath house (none: a registration counter)
    min_age = 65                    # eligible from this age in law (JST business date)
    monthly_cap = 4                 # subsidised visits per JST calendar month, all bath houses together
    reissue_fee = 300               # yen recorded at a reissue unless the command says otherwise

A tap at a bath house publishes ``plugin.bathhouse.visit`` ``{bath_house, status, monthly_cap,
visits_this_month?}``; see :mod:`plugins.bathhouse.service` for the statuses. Counter commands:
``bathhouse.register``, ``bathhouse.reissue``, ``bathhouse.link_mynumber`` (each with the card on a
reader), ``bathhouse.report``; ``readerctl bathhouse report --month YYYY-MM [--csv]``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable

from plugins.bathhouse.service import BathhouseService, Rules
from plugins.common import config_int, person_of
from readerd.plugin import (
    OPERATOR,
    Arg,
    ArgType,
    CardsOnReaders,
    CommandSpec,
    CtlCommand,
    EventInterest,
    JsonObject,
    PluginContext,
    PluginEvent,
    Refusal,
    hookimpl,
)

__version__ = "1.0"

S, INT = ArgType.STRING, ArgType.INTEGER
KEY = {"idempotency_key": Arg(S)}
#: What each result carries (readerd publishes nothing else of it).
RESULT_FIELDS = {"visit": frozenset({"bath_house", "status", "monthly_cap", "visits_this_month"})}


class BathhousePlugin:
    def __init__(self) -> None:
        self.service: BathhouseService | None = None
        self.bath_house = ""
        self.cards = CardsOnReaders()

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
        self.service = BathhouseService(context.store, rules)

    def _service(self) -> BathhouseService:
        if self.service is None:
            raise Refusal("not_ready", "the bathhouse plugin has not started")
        return self.service

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"card.identified", "card.removed"}))

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return RESULT_FIELDS

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


def _run(args: argparse.Namespace, call: Callable[[str, JsonObject], JsonObject]) -> int:
    request: JsonObject = {"month": args.month}
    if args.bath_house:
        request["bath_house"] = args.bath_house
    result = call("bathhouse.report", request)
    out = sys.stdout
    if args.csv:
        writer = csv.DictWriter(out, fieldnames=("bath_house", "visits", "members"), lineterminator="\n")
        writer.writeheader()
        writer.writerows(result["bath_houses"])
        return 0
    out.write(f"{result['month']}: {result['total_visits']} visits\n")
    for row in result["bath_houses"]:
        out.write(f"  {row['bath_house']:<20} {row['visits']:>6} visits {row['members']:>5} members\n")
    return 0
