"""What plugins are given and give back: the public API of readerd for plugin authors.

Everything here is a plain dataclass, so a plugin can be tested without a daemon (``readerd.testing``
gives fixtures that run a real one on the simulator).
"""

from __future__ import annotations

import difflib
import re
import string
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from readerd.errors import Refusal
from readerd.events import Envelope

if TYPE_CHECKING:  # the store pulls in SQLAlchemy; plugin_api stays light to import
    from readerd.plugin.store import PluginStore

JsonObject = dict[str, Any]


#: Event types a plugin receives when it does not say otherwise.
DEFAULT_EVENT_TYPES = frozenset(
    {
        "card.identified",
        "card.authenticated",
        "card.removed",
        "card.read_aborted",
        "member.enrolled",
        "reader.added",
        "reader.removed",
        "reader.error",
    }
)

#: Event types every plugin receives whatever it declares: a withdrawal obliges each to forget the member.
ALWAYS_DELIVERED = frozenset({"member.withdrawn"})

#: Private fields a plugin may ask for, by event kind; anything else never reaches a plugin.
PRIVATE_FIELDS = frozenset(
    {"idm", "pmm", "blocks", "serial", "issuer_der", "subject_cn", "not_before", "not_after"}
)

#: The roles a command may need (readerd/bus/curve.py: a ``subscribe`` key sends no plugin command).
CONTROL = "control"
OPERATOR = "operator"
COMMAND_ROLES = (CONTROL, OPERATOR)
#: What the daemon adds to a ``possession`` command's arguments (``proof``) or takes from them
#: (``auth_id``, the caller's proof to spend).
POSSESSION_ARGS = frozenset({"auth_id", "proof"})

_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31})*")


#: Names no plugin may have: ``[plugins.routing]`` is the host's reader routing, not a plugin's table.
RESERVED_PLUGIN_NAMES = frozenset({"routing"})


def check_plugin_name(name: str) -> str:
    if not _PLUGIN_NAME.fullmatch(name):
        raise ValueError(f"plugin name {name!r}: lower case letters, digits and _, 1..32, a letter first")
    if name in RESERVED_PLUGIN_NAMES:
        raise ValueError(f"plugin name {name!r} is reserved: [plugins.{name}] is the host's reader routing")
    return name


@dataclass(frozen=True)
class EventInterest:
    """Which events a plugin receives, and which private fields of them (data minimisation).

    ``felica_services`` names configured FeliCa reads (``[[felica.reads]] name``) whose blocks the plugin
    may see; asking for ``blocks`` in ``private`` without naming services gives none.
    """

    types: frozenset[str] = DEFAULT_EVENT_TYPES
    private: frozenset[str] = frozenset()
    felica_services: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.private) - PRIVATE_FIELDS
        if unknown:
            raise ValueError(
                f"no private field(s) {', '.join(sorted(unknown))}; choose from {sorted(PRIVATE_FIELDS)}"
            )

    def wants(self, event_type: str) -> bool:
        return event_type in self.types or event_type in ALWAYS_DELIVERED

    def strip(self, private: Mapping[str, Any]) -> JsonObject:
        """The private fields this plugin may see; FeliCa blocks only for the services it named."""
        kept: JsonObject = {}
        for key, value in private.items():
            if key not in self.private:
                continue
            if key == "blocks" and isinstance(value, Mapping):
                kept[key] = {name: blocks for name, blocks in value.items() if name in self.felica_services}
            else:
                kept[key] = value
        return kept


@dataclass(frozen=True)
class PluginEvent:
    """One bus event as a plugin receives it (``private`` already reduced to what it declared)."""

    type: str
    seq: int
    id: str
    ts: str
    kiosk: str
    reader: str | None
    data: JsonObject
    private: JsonObject = field(default_factory=dict)
    run_id: str = ""
    #: Handed again after a restart: the daemon logged it but this plugin had not been given it when the
    #: last run ended (a crash). Record its effects (key them by ``id``, so they happen once), but the
    #: card is gone: do not treat it as the card on ``reader`` now. Results published while handling it
    #: carry ``"replayed": true`` in their envelope (kiosk screens skip them).
    replayed: bool = False

    @classmethod
    def from_envelope(
        cls, envelope: Envelope, private: JsonObject | None = None, *, replayed: bool = False
    ) -> PluginEvent:
        return cls(
            type=envelope.topic,
            seq=envelope.seq,
            id=envelope.id,
            ts=envelope.ts,
            kiosk=envelope.kiosk,
            reader=envelope.event.reader,
            data=dict(envelope.event.data),
            private=private or {},
            run_id=envelope.run_id,
            replayed=replayed,
        )


class ArgType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    OBJECT = "object"
    ARRAY = "array"


_PY_TYPES: dict[ArgType, tuple[type, ...]] = {
    ArgType.STRING: (str,),
    ArgType.INTEGER: (int,),
    ArgType.NUMBER: (int, float),
    ArgType.BOOLEAN: (bool,),
    ArgType.OBJECT: (dict,),
    ArgType.ARRAY: (list,),
}


@dataclass(frozen=True)
class Arg:
    """One argument of a plugin command: its JSON type, whether it must be given, and what it means."""

    type: ArgType
    required: bool = True
    help: str = ""

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool) and self.type is not ArgType.BOOLEAN:
            return False
        return isinstance(value, _PY_TYPES[self.type])


CommandHandler = Callable[[JsonObject], JsonObject]


@dataclass(frozen=True)
class CommandSpec:
    """A control command a plugin answers: ``name`` is ``<plugin>.<verb>`` (``points.redeem``)."""

    name: str
    handler: CommandHandler
    args: Mapping[str, Arg] = field(default_factory=dict)
    help: str = ""
    #: What a LAN client's CURVE key needs to send it: ``CONTROL`` (a terminal, a kiosk screen) or
    #: ``OPERATOR`` (staff: definitions, registrations, grants, reports with personal data). Loopback
    #: callers (readerctl on the kiosk) have no key and may send every command.
    role: str = CONTROL
    #: The command moves value (points, money, a membership): with a card on a reader it needs the
    #: ``auth_id`` of a PIN and signature proof made on that reader during this insertion, which the
    #: daemon checks and spends, handing the handler ``args["proof"]`` (the proven ``pseudonym``,
    #: ``member_id``, ``mykey_id`` and ``reader``); by a bare member ID only an operator may send it.
    possession: bool = False

    def __post_init__(self) -> None:
        if self.role not in COMMAND_ROLES:
            raise ValueError(f"{self.name}: role is one of {', '.join(COMMAND_ROLES)}, not {self.role!r}")

    def check_args(self, args: Mapping[str, Any]) -> JsonObject:
        """The arguments if they match the schema; ValueError naming the first mismatch otherwise."""
        unknown = set(args) - set(self.args) - (POSSESSION_ARGS if self.possession else set())
        if unknown:
            raise ValueError(f"{self.name}: unknown argument(s) {', '.join(sorted(unknown))}")
        for name, spec in self.args.items():
            if name not in args:
                if spec.required:
                    raise ValueError(f"{self.name}: missing argument {name!r}")
                continue
            if not spec.accepts(args[name]):
                raise ValueError(f"{self.name}: argument {name!r} must be a {spec.type}")
        return dict(args)

    def schema(self) -> JsonObject:
        return {
            "name": self.name,
            "help": self.help,
            "role": self.role,
            "args": {
                n: {"type": str(a.type), "required": a.required, "help": a.help} for n, a in self.args.items()
            },
        }


@dataclass(frozen=True)
class CtlCommand:
    """A ``readerctl`` subcommand: ``configure(parser)`` adds its arguments, ``run(args, call)`` does it,
    where ``call(cmd, args)`` sends a control request to the daemon and returns the result object."""

    name: str
    help: str
    configure: Callable[[Any], None]
    run: Callable[[Any, Callable[[str, JsonObject], JsonObject]], int]


class CheckStatus(StrEnum):
    """A doctor check's verdict: only ``problem`` makes ``readerctl doctor`` exit non-zero; ``skipped``
    is a check that does not apply to this configuration (the message says why)."""

    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    status: CheckStatus
    message: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorCheck:
    """One ``readerctl doctor`` check contributed by a plugin."""

    name: str
    run: Callable[[], CheckResult]


class Publisher(Protocol):
    def __call__(self, plugin: str, event: str, data: JsonObject, reader: str | None) -> None: ...


@dataclass
class PluginContext:
    """What a plugin gets at startup and with every hook call."""

    name: str
    config: JsonObject
    kiosk: str
    # Its own tables in the local and shared databases (docs/plugins.md, "Storing data"). The daemon and
    # the `readerd` test fixture always give one; None only in a PluginHost built without a store.
    store: PluginStore | None
    log: Any  # structlog logger bound to the plugin's name
    _publish: Publisher

    def publish(self, event: str, data: JsonObject, *, reader: str | None = None) -> None:
        """Publish a result as ``plugin.<name>.<event>`` (kiosk screens show these); the daemon gives it
        its ``seq``. ``data`` must be JSON and carry no personal data beyond what the screen needs."""
        if not _EVENT_NAME.fullmatch(event):
            raise ValueError(f"plugin event name {event!r}: lower case words joined by dots")
        self._publish(self.name, event, data, reader)


@dataclass(frozen=True)
class CardOnReader:
    """The card identified on a reader: ``card.identified``'s public fields (``data``) and its event."""

    reader: str
    kind: str  # jpki | felica | unknown
    data: JsonObject
    event_id: str

    @property
    def pseudonym(self) -> str:
        return str(self.data.get("pseudonym", ""))


class CardsOnReaders:
    """Which card is on which reader now, from ``card.identified`` until ``card.removed``.

    A counter command (register this card, redeem with the card on the reader) asks for the card on a
    reader; every plugin with such commands needs this. Hooks and commands run on different threads of
    the plugin host, so it locks. A replayed ``card.identified`` (handed again after a crash) is
    long gone from the reader and is not recorded.

    In a plugin: ``cards.identified(event)`` in ``readerd_card_identified``, ``cards.removed(event)`` in
    ``readerd_card_removed``, and ``cards.require(reader, "felica", refusal="hold the card ...")`` in a
    command.
    """

    def __init__(self) -> None:
        self._cards: dict[str, CardOnReader] = {}
        self._lock = threading.Lock()

    def identified(self, event: PluginEvent) -> CardOnReader | None:
        """Record the card of a ``card.identified`` (None, and nothing recorded, when replayed)."""
        if event.replayed or not event.reader:
            return None
        card = CardOnReader(event.reader, str(event.data.get("kind", "")), dict(event.data), event.id)
        with self._lock:
            self._cards[event.reader] = card
        return card

    def removed(self, event: PluginEvent) -> None:
        with self._lock:
            self._cards.pop(event.reader or "", None)

    def enrolled(self, event: PluginEvent) -> CardOnReader | None:
        """A ``member.enrolled`` for the card on its reader: the card's data now says ``enrolled`` with
        its ``member_id`` (and ``mykey_id``), as a new tap would; the updated card, or None when another
        card (or none) is on that reader."""
        pseudonym = event.data.get("pseudonym")
        with self._lock:
            card = self._cards.get(event.reader or "")
            if card is None or not pseudonym or card.pseudonym != pseudonym:
                return None
            data = {**card.data, "enrolled": True, "member_id": event.data.get("member_id")}
            if event.data.get("mykey_id"):
                data["mykey_id"] = event.data["mykey_id"]
            updated = CardOnReader(card.reader, card.kind, data, card.event_id)
            self._cards[card.reader] = updated
        return updated

    def get(self, reader: str, kind: str | None = None) -> CardOnReader | None:
        """The card on ``reader`` (of ``kind``, if given), or None."""
        with self._lock:
            card = self._cards.get(reader)
        return card if card is not None and (kind is None or card.kind == kind) else None

    def require(self, reader: str, kind: str | None = None, *, refusal: str) -> CardOnReader:
        """The card on ``reader`` (of ``kind``), or :class:`Refusal` ``no_card`` with ``refusal``: the
        words a kiosk screen shows, saying what to do."""
        card = self.get(reader, kind)
        if card is None:
            raise Refusal("no_card", refusal)
        return card


# --- what a citizen sees (readerd_result_fields' ResultSpec) ----------------------------------------------
class Level(StrEnum):
    """How much a result matters to the citizen at the reader: a screen shows a ``refusal`` first (they
    cannot go in, or must do something), then ``success``, then ``info``."""

    REFUSAL = "refusal"
    SUCCESS = "success"
    INFO = "info"


#: The order a screen shows results in: lower first.
LEVEL_RANK = {Level.REFUSAL: 0, Level.SUCCESS: 1, Level.INFO: 2}
#: The key of :attr:`ResultSpec.texts` for every status not listed (and results without ``status``).
ANY_STATUS = "*"
#: The field of a published result the host writes the rendered text into (a plugin cannot declare it).
SCREEN_FIELD = "screen"

_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class ScreenText:
    """The words a citizen sees for one result status, in Japanese and English, and its :class:`Level`.

    ``ja`` and ``en`` are templates: ``{field}`` is replaced by that top-level field of the result's
    ``data`` (a declared field only; ``{{`` and ``}}`` are braces); no conversions, format specs,
    attributes or indexes. A list value is joined with ``、`` (ja) or ``, `` (en), ``true``/``false``
    are 「はい」/「いいえ」 and yes/no. ``when``: declared fields that must be true (present, not false,
    0, empty or null) for this text to apply, e.g. ``{"offline"}`` for the words of an offline decision
    listed before the usual ones."""

    level: Level
    ja: str
    en: str
    when: frozenset[str] = frozenset()

    def fields(self) -> frozenset[str]:
        """The fields both templates name; ValueError for a template that is not one."""
        names: set[str] = set()
        for template in (self.ja, self.en):
            if not isinstance(template, str) or not template.strip():
                raise ValueError("a text is a non-empty string")
            try:
                parsed = list(_FORMATTER.parse(template))
            except ValueError as e:
                raise ValueError(f"{template!r}: {e}") from e
            for _literal, name, spec, conversion in parsed:
                if name is None:
                    continue
                if spec or conversion or not name.isidentifier():
                    raise ValueError(f"{template!r}: only {{field}}, no conversion, spec, attribute or index")
                names.add(name)
        return frozenset(names)

    def render(self, data: Mapping[str, Any]) -> JsonObject | None:
        """``{level, ja, en}`` with the fields of ``data`` put in; None when one is absent or null."""
        names = self.fields()
        if any(data.get(name) is None for name in names) or not all(data.get(n) for n in self.when):
            return None
        return {
            "level": str(self.level),
            "ja": self.ja.format_map({n: _shown(data[n], "ja") for n in names}),
            "en": self.en.format_map({n: _shown(data[n], "en") for n in names}),
        }


def _shown(value: object, lang: str) -> str:
    if isinstance(value, bool):
        return ("はい" if value else "いいえ") if lang == "ja" else ("yes" if value else "no")
    if isinstance(value, list | tuple):
        return ("、" if lang == "ja" else ", ").join(_shown(v, lang) for v in value)
    return str(value)


Texts = ScreenText | Sequence[ScreenText]


@dataclass(frozen=True)
class ResultSpec:
    """One result's declaration in ``readerd_result_fields``: its ``data`` fields, and what a citizen
    sees for each of its statuses (``data["status"]``; :data:`ANY_STATUS` ``"*"`` for the others and
    for a result without ``status``). A status may have several texts: the first whose fields the
    result carries (present, not null) is shown, so ``("受付しました {count}/{capacity}", "受付しました")``
    covers an offline check-in without a count. A status without text, or whose texts all lack a field,
    shows nothing of this result."""

    fields: frozenset[str]
    texts: Mapping[str, Texts] = field(default_factory=dict)

    def variants(self, status: str) -> tuple[ScreenText, ...]:
        given = self.texts.get(status, self.texts.get(ANY_STATUS))
        if given is None:
            return ()
        return (given,) if isinstance(given, ScreenText) else tuple(given)

    def problems(self) -> list[str]:
        """What is wrong with this declaration (empty: nothing): the host quarantines on any."""
        found: list[str] = []
        if not isinstance(self.fields, frozenset | set) or not all(isinstance(f, str) for f in self.fields):
            return ["fields: a set of field names"]
        if self.texts and SCREEN_FIELD in self.fields:
            found.append(f"{SCREEN_FIELD!r} is the host's field (the rendered text): do not declare it")
        texts: object = self.texts  # a plugin's answer, whatever its annotation says
        if not isinstance(texts, Mapping):
            return [*found, "texts: a dict of status to ScreenText"]
        for status, given in texts.items():
            variants = [given] if isinstance(given, ScreenText) else given
            if not isinstance(status, str) or not isinstance(variants, Sequence) or not variants:
                found.append(f"texts[{status!r}]: a ScreenText or a list of them")
                continue
            for text in variants:
                if not isinstance(text, ScreenText) or text.level not in set(Level):
                    found.append(f"texts[{status!r}]: {text!r} is not a ScreenText with a Level")
                    continue
                try:
                    unknown = (text.fields() | set(text.when)) - self.fields
                except ValueError as e:
                    found.append(f"texts[{status!r}]: {e}")
                    continue
                if unknown:
                    found.append(f"texts[{status!r}]: {', '.join(sorted(unknown))} not among the fields")
        return found

    def render(self, data: Mapping[str, Any]) -> JsonObject | None:
        """What the screen shows for ``data`` (``{level, ja, en}``), or None."""
        status = data.get("status")
        for text in self.variants(status if isinstance(status, str) else ANY_STATUS):
            shown = text.render(data)
            if shown is not None:
                return shown
        return None


# --- configuration keys (readerd_config_keys) -------------------------------------------------------------
#: Keys of ``[plugins.<name>]`` that are the daemon's, never the plugin's (config.py checks them).
DAEMON_KEYS = frozenset({"grants"})


@dataclass(frozen=True)
class ConfigKey:
    """One key of a plugin's ``[plugins.<name>]`` table: its TOML type (``ArgType.OBJECT`` for a table),
    the default the plugin uses when it is absent (None: no default, the key is needed where it is used),
    and what it means (``readerctl help config`` shows it)."""

    name: str
    type: ArgType
    default: object = None
    help: str = ""

    def accepts(self, value: object) -> bool:
        return Arg(self.type).accepts(value)

    def get(self, config: Mapping[str, Any]) -> Any:  # noqa: ANN401 - a TOML value of the declared type
        """The key's value in ``config`` (a plugin's ``context.config``), else its default."""
        return config.get(self.name, self.default)

    def describe(self) -> JsonObject:
        return {"name": self.name, "type": str(self.type), "default": self.default, "help": self.help}


@dataclass(frozen=True)
class ConfigProblem:
    """A key of ``[plugins.<plugin>]`` the plugin does not declare, or of the wrong type."""

    plugin: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"[plugins.{self.plugin}] {self.key}: {self.message}"


def check_config_keys(
    plugin: str, declared: Sequence[ConfigKey], section: Mapping[str, Any]
) -> list[ConfigProblem]:
    """Each key of ``section`` (a plugin's ``[plugins.<name>]`` table) the plugin does not declare (with
    the closest declared one) or whose value is not of the declared type; ``grants`` is the daemon's."""
    keys = {key.name: key for key in declared}
    problems: list[ConfigProblem] = []
    for name, value in section.items():
        if name in DAEMON_KEYS:
            continue
        key = keys.get(name)
        if key is None:
            close = difflib.get_close_matches(name, list(keys), n=1, cutoff=0.6)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            known = ", ".join(sorted(keys)) or "none"
            problems.append(ConfigProblem(plugin, name, f"unknown key{hint} (known keys: {known})"))
        elif not key.accepts(value):
            problems.append(ConfigProblem(plugin, name, f"expected {_A[key.type]}, not {value!r}"))
    return problems


def config_keys_of(answer: object) -> list[ConfigKey] | None:
    """A ``readerd_config_keys`` answer as a list of keys; None when it declares nothing (None) and
    ValueError when it is not a list of :class:`ConfigKey` with distinct names."""
    if answer is None:
        return None
    if not isinstance(answer, list | tuple) or not all(isinstance(k, ConfigKey) for k in answer):
        raise ValueError("readerd_config_keys: not a list of ConfigKey")
    names = [k.name for k in answer]
    if len(set(names)) != len(names):
        raise ValueError("readerd_config_keys: a key is declared twice")
    return list(answer)


_A = {
    ArgType.STRING: "a string",
    ArgType.INTEGER: "an integer",
    ArgType.NUMBER: "a number",
    ArgType.BOOLEAN: "true or false",
    ArgType.OBJECT: "a table",
    ArgType.ARRAY: "a list",
}
