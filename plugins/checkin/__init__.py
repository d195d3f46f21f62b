"""Event check-in (built-in plugin ``checkin``): a tap at the door of an event admits the person once.

Configuration (``[plugins.checkin]``)::

    event = "bon-odori-2026"            # the event this kiosk admits to (or per reader, below)
    readers = { "Reader 1" = "bon-odori-2026", "Reader 2" = "health-fair" }
    allow_unenrolled = false            # admit My Number Cards not enrolled in MyKey, by pseudonym
    sync_interval = 10                  # seconds between pushes of offline check-ins
    retry_after = 30                    # seconds a failed shared store is left alone at taps

Who: a My Number Card by its MyKey ID or member ID (``card.identified``), a FeliCa check-in card by the
person it was registered to (``checkin.register_card``). Each tap publishes ``plugin.checkin.result``
``{event_id, status, count?, capacity?, checkin_id?, points?, member_id?, offline?}`` with ``status`` one
of ``accepted``, ``already_checked_in``, ``full``, ``not_open``, ``closed``, ``unknown_event``,
``unknown_card``, ``not_enrolled``. The points plugin awards the event's participation points for
``accepted`` results (through the bus: this plugin does not know it exists).

A member's withdrawal (``member.withdrawn``) re-keys their check-ins to ``withdrawn:<random>`` (they keep
counting) and deletes their check-in cards (docs/privacy.md, "Withdrawal and retention, per built-in").

Commands: ``checkin.define_event``, ``checkin.register_card``, ``checkin.status``, ``checkin.attendance``,
``checkin.sync``; ``readerctl checkin status|attendance|sync``.
"""

from __future__ import annotations

import structlog

from plugins.checkin import settings, texts
from plugins.checkin.ctl import ctl_command
from plugins.checkin.service import CheckinService
from plugins.common import Periodic, person_of, persons_of_withdrawn, push_offline
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

__version__ = "1.0"

log = structlog.get_logger("plugins.checkin")

KEY = Arg(ArgType.STRING, help="idempotency key: the same key gets the same answer, applied once")

#: What each result carries (readerd publishes nothing else of it).
RESULT_FIELDS = {
    "result": frozenset(
        {"event_id", "status", "count", "capacity", "checkin_id", "points", "member_id", "mykey_id"}
        | {"offline", "starts_at"}
    ),
}


class CheckinPlugin:
    def __init__(self) -> None:
        self.service: CheckinService | None = None
        self.config: JsonObject = {}
        self.cards = CardsOnReaders()
        self._sync: Periodic | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        self.config = context.config
        readers = self.config.get("readers", {})
        if not isinstance(readers, dict) or not all(isinstance(v, str) for v in readers.values()):
            raise ValueError("[plugins.checkin] readers: a table of reader name = event id")
        if context.store is None:
            raise ValueError("the checkin plugin needs the store")
        self.service = CheckinService(
            context.store, context.kiosk, retry_after=float(self.config.get("retry_after", 30))
        )
        self._sync = Periodic("checkin-sync", float(self.config.get("sync_interval", 10)), self._sync_once)
        self._sync.start()

    @hookimpl
    def readerd_shutdown(self) -> None:
        if self._sync is not None:
            self._sync.stop()

    def _sync_once(self) -> None:
        push_offline(self._service(), log, "check-ins")

    def _service(self) -> CheckinService:
        if self.service is None:
            raise Refusal("not_ready", "the checkin plugin has not started")
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
        return EventInterest(types=frozenset({"card.identified", "card.removed"}))

    @hookimpl
    def readerd_result_fields(self) -> texts.Declaration:
        return texts.RESULTS  # RESULT_FIELDS with what a citizen sees for each status (texts.py)

    def event_for(self, reader: str) -> str | None:
        readers: dict[str, str] = self.config.get("readers", {})
        event = readers.get(reader) or self.config.get("event")
        return str(event) if event else None

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        reader, data = event.reader or "", event.data
        kind, pseudonym = str(data.get("kind")), str(data.get("pseudonym"))
        self.cards.identified(event)  # not a replayed one: long gone from the reader, its check-in counts
        event_id = self.event_for(reader)
        if event_id is None:
            return  # this reader admits to nothing
        service = self._service()
        if kind == "felica":
            person = service.person_for_card(pseudonym)
            refusal = "unknown_card"
        else:
            person = person_of(data, allow_unenrolled=bool(self.config.get("allow_unenrolled", False)))
            refusal = "not_enrolled"
        if person is None:
            result: JsonObject = {"event_id": event_id, "status": refusal}
        else:
            result = service.check_in(event_id, person, kind, reader, tap=event.id)
            if person.startswith(("member:", "mykey:")) and result["status"] == "accepted":
                result["member_id" if person.startswith("member:") else "mykey_id"] = person.split(":", 1)[1]
        context.publish("result", result, reader=reader)

    @hookimpl
    def readerd_card_removed(self, event: PluginEvent) -> None:
        self.cards.removed(event)

    @hookimpl
    def readerd_member_withdrawn(self, event: PluginEvent, context: PluginContext) -> None:
        """Forget the member by docs/privacy.md: their check-ins stay, counted, under ``withdrawn:<random>``;
        their FeliCa check-in cards are deleted. Publishes nothing; idempotent (a replay finds nothing)."""
        counts = self._service().withdraw(persons_of_withdrawn(event.data))
        context.log.info("member withdrawn: records anonymised", plugin="checkin", **counts)

    # -- commands -------------------------------------------------------------------------------------
    def _register_card(self, args: JsonObject) -> JsonObject:
        reader = str(args["reader"])
        card = self.cards.require(
            reader, "felica", refusal=f"no FeliCa card on {reader}: hold the check-in card on the reader"
        )
        member = str(args["member_id"]).strip()
        if not member or len(member) > 32:
            raise Refusal("bad_request", "member_id: 1..32 characters")
        return self._service().register_card(card.pseudonym, f"member:{member}", args)

    @hookimpl
    def readerd_commands(self) -> list[CommandSpec]:
        text, integer = ArgType.STRING, ArgType.INTEGER
        event_id = {"event_id": Arg(text, help="the event")}
        return [
            CommandSpec(
                "checkin.define_event",
                lambda args: self._service().define_event(args),
                {
                    **event_id,
                    "name": Arg(text),
                    "place": Arg(text),
                    "starts_at": Arg(text, help="ISO-8601 with offset, e.g. 2026-08-15T17:00:00+09:00"),
                    "ends_at": Arg(text),
                    "capacity": Arg(integer, required=False),
                    "points": Arg(integer, required=False, help="participation points for each check-in"),
                    "idempotency_key": KEY,
                },
                help="create or change an event",
                role=OPERATOR,
            ),
            CommandSpec(
                "checkin.register_card",
                self._register_card,
                {"reader": Arg(text), "member_id": Arg(text), "idempotency_key": KEY},
                help="link the FeliCa check-in card on a reader to a member",
                role=OPERATOR,
            ),
            CommandSpec(
                "checkin.status",
                lambda args: self._service().status(str(args["event_id"])),
                event_id,
                help="an event, its window and how many are in",
            ),
            CommandSpec(
                "checkin.attendance",
                lambda args: self._service().attendance(str(args["event_id"])),
                event_id,
                help="every check-in of an event (for the CSV export)",
                role=OPERATOR,
            ),
            CommandSpec(
                "checkin.sync", lambda _args: self._service().sync(), {}, help="push offline check-ins now"
            ),
        ]

    @hookimpl
    def readerd_ctl_commands(self) -> list[CtlCommand]:
        return [ctl_command()]
