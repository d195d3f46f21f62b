"""The hooks a readerd plugin implements, with pluggy (project name ``readerd``).

A plugin is a module, an object or a class (one instance per host) with functions marked ``@hookimpl``
(``from readerd.plugin import hookimpl``), named like the specs below and taking any subset of the spec's
arguments, which pluggy passes by name; an argument the spec does not have gets the plugin rejected when
it is loaded. Plugins come from the ``readerd`` entry-point group and from the built-in ``plugins``
package (those named in ``[plugins] builtins``), an entry point only when ``[plugins] load`` names it;
``docs/plugins.md`` is the tutorial and ends with these docstrings (``python -m readerd.plugin.docs``).

Where and when the hooks run:

- The **plugin host** runs in ``readerd run`` (its feed thread) or as ``readerd plugins`` (its main loop),
  subscribed to the daemon's private event feed like any client: a slow plugin delays only the plugins,
  never card reading. At load it calls ``readerd_event_interest``, ``readerd_startup`` and
  ``readerd_commands`` of each plugin, before any event; then the event hooks; ``readerd_shutdown`` when
  it stops. ``readerd_ctl_commands`` and ``readerd_doctor_checks`` are called only by ``readerctl``, a
  short-lived process of its own, never by the daemon.
- Event hooks are called one event at a time, in ``seq`` order; each event is handed to every plugin
  that wants it before the host waits for any (each plugin on its own worker thread, so they handle it
  side by side), and each call is waited for at most ``plugins.hook_timeout`` (5 s). A plugin never has
  two hooks running at once. The results published meanwhile go out in the plugins' load order
  (built-ins as configured, then entry points), whichever finished first. The events a start hands
  again come first, marked ``event.replayed``. Not pluggy's all-at-once ``hook()``: one plugin raising
  does not keep the event from the others.
- Command handlers (from ``readerd_commands``) run on the host's four command threads, concurrently with
  the event hooks and with each other: state both touch needs a lock (:class:`CardsOnReaders` has one).
- A hook that raises is logged and published as ``plugin.error``; ``plugins.quarantine_after`` (3)
  failures in a row, or one timeout, quarantine the plugin: it gets no more events, its commands are
  refused and its store is revoked, until the host restarts. ``StoreUnavailableError`` and
  ``StoreBusyError`` are published too but never count: the fault is the database's.
- A plugin sees only what it declared with :func:`readerd_event_interest`: by default the public fields of
  card and reader events; FeliCa blocks, the IDm or certificate details only when asked for by name and
  granted by the kiosk (``[plugins.<name>] grants``). What it publishes reaches the bus only as far as
  :func:`readerd_result_fields` declares it.
- ``[plugins.routing]`` (the kiosk's) may limit a plugin to some readers: it is then handed no card
  event and no other plugin's result of another reader, and its results there carry no screen text.
- Once every plugin's hooks have returned for a tap (``card.identified``, ``card.authenticated``) and
  for every result it led to, the host publishes ``plugin.handled`` (docs/plugins.md, "Screen texts
  and plugin.handled").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from readerd.plugin.api import (
        CommandSpec,
        ConfigKey,
        CtlCommand,
        DoctorCheck,
        EventInterest,
        PluginContext,
        PluginEvent,
        ResultSpec,
    )
    from readerd.plugin.store import Schema

PROJECT = "readerd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- lifecycle ---------------------------------------------------------------------------------------
@hookspec
def readerd_startup(context: PluginContext) -> None:
    """Set the plugin up: create or migrate its tables, read its configuration, start its own threads.

    ``context`` is the plugin's :class:`PluginContext`, the same object every later hook gets: ``name``,
    ``config`` (its ``[plugins.<name>]`` table, ``{}`` when there is none), ``kiosk``, ``store`` (its
    :class:`PluginStore`; None only in a ``PluginHost`` built without a store), ``log`` (a structlog
    logger named ``readerd.plugin.<name>``) and ``publish(event, data, reader=)`` for results.

    Runs once, when the host loads the plugin: after ``readerd_event_interest``, before
    ``readerd_commands`` and before any event (in ``readerd run``, before the readers start), so no
    event hook or command of the plugin runs yet. ``hook_timeout`` applies: a migration that takes
    longer quarantines the plugin.

    Returns nothing; a return value is ignored. Raising counts as one failure (``plugin.error``) but does
    not keep the plugin out unless that quarantines it: its commands are still asked for and it still
    receives events. A plugin that cannot work without its startup refuses in its hooks and commands
    itself (``Refusal("not_ready", ...)``).

    Example::

        @hookimpl
        def readerd_startup(context: PluginContext) -> None:
            context.store.shared.migrate(MIGRATIONS)
            context.log.info("ready", greeting=context.config.get("greeting", "ようこそ"))
    """


@hookspec
def readerd_shutdown(context: PluginContext) -> None:
    """Release what ``readerd_startup`` took: stop the plugin's own threads, write what it holds in memory.

    ``context`` is the plugin's :class:`PluginContext`; its store is still open (the daemon closes the
    store after the host).

    Runs once, when the host stops (``readerd run`` shutting down, ``readerd plugins`` ending), called
    from the thread that stops it, once the feed thread has handed over what had already arrived
    (within half the stop budget). Command handlers may still run meanwhile. ``hook_timeout`` applies.
    Not called for a plugin that is quarantined or was not loaded; called for one whose startup raised
    without quarantining it.

    Returns nothing; a return value is ignored. Raising is reported as ``plugin.error`` like any failure;
    the host stops anyway.

    Example::

        @hookimpl
        def readerd_shutdown(context: PluginContext) -> None:
            sync_timer.stop()  # started in readerd_startup
    """


# --- what a plugin receives --------------------------------------------------------------------------
@hookspec(firstresult=True)
def readerd_event_interest() -> EventInterest | None:
    """Declare which events this plugin receives and which of their private fields (data minimisation).

    Takes no argument: it runs before ``readerd_startup``, once per plugin when the host loads it, under
    ``hook_timeout``. The host asks each plugin on its own, so ``firstresult`` never mixes two plugins'
    answers.

    Returns an :class:`EventInterest`, or None for the default: the public fields of every ``card.*`` and
    ``reader.*`` event (``card.identified``, ``card.authenticated``, ``card.removed``,
    ``card.read_aborted``, ``reader.added``, ``reader.removed``, ``reader.error``) and of
    ``member.enrolled``. ``types`` replaces that set (exact names), so list the card events still wanted
    beside other plugins' results. ``member.withdrawn`` reaches every plugin whatever it declares.
    ``private`` names fields from ``idm``, ``pmm``, ``blocks`` (FeliCa) and ``serial``, ``issuer_der``,
    ``subject_cn``, ``not_before``, ``not_after`` (the certificate); ``blocks`` only of the FeliCa reads
    named in ``felica_services``. ``private`` is what the plugin asks for; it gets only those the kiosk
    also lists in ``[plugins.<name>] grants`` (asking without a grant is logged once). Anything but an
    ``EventInterest`` or None quarantines the plugin at once (``bad_result``): it is never started.
    Raising counts as a failure and leaves the default.

    Example::

        @hookimpl
        def readerd_event_interest() -> EventInterest:
            wanted = {"card.identified", "card.removed", "plugin.checkin.result"}
            return EventInterest(types=frozenset(wanted))
    """


@hookspec
def readerd_card_identified(event: PluginEvent, context: PluginContext) -> None:
    """A card was identified on a reader (``card.identified``): the tap a use case acts on.

    ``event`` is a :class:`PluginEvent`. ``event.data`` has ``kind`` (``jpki`` / ``felica``),
    ``pseudonym`` (stable per card: key records by it), ``enrolled``, ``member_id`` / ``mykey_id`` when
    enrolled, ``repeat`` (true when the same card left this reader less than ``sessions.repeat_window``
    ago: a re-tap) and how it was read (``apdus``, ``read_path``; FeliCa ``system_code``, ``services``,
    ``frames``). ``event.private`` holds only the fields asked for in ``readerd_event_interest`` and
    granted. ``event.reader`` names the reader, ``event.id`` the event (key writes by it: an event may
    come twice). ``context`` is the plugin's :class:`PluginContext`.

    Called from the host's feed thread, one plugin and one event at a time in ``seq`` order,
    concurrently with command handlers (this plugin's too), never with another of its hooks;
    ``hook_timeout`` applies. ``event.replayed`` is true when a start hands the event again after a
    crash: record its effects, but the card is gone.

    Returns nothing; a return value is ignored. What it publishes carries ``cause`` (this event's id).

    Example::

        @hookimpl
        def readerd_card_identified(event: PluginEvent, context: PluginContext) -> None:
            if event.data["repeat"] or event.replayed:
                return  # a re-tap, or a card long gone: no greeting
            context.publish("greeting", {"message": "ようこそ"}, reader=event.reader)
    """


@hookspec
def readerd_card_authenticated(event: PluginEvent, context: PluginContext) -> None:
    """The citizen proved possession of the card with its PIN (``card.authenticated``).

    ``event.data`` has ``pseudonym``, ``enrolled``, ``member_id`` / ``mykey_id`` when enrolled,
    ``assurance`` (``jpki_pin_signature``), ``validation`` (``valid``: the certificate was checked),
    ``expires_within_days`` (``30``, ``90``, ``365``, ``more``) and ``validation_warnings`` when there are
    some; ``event.reader`` names the reader. It carries no private field. ``context`` is the plugin's
    :class:`PluginContext`.

    Called from the host's feed thread, one plugin and one event at a time in ``seq`` order,
    concurrently with command handlers, never with another of its hooks; ``hook_timeout`` applies;
    ``event.replayed`` as for ``readerd_card_identified``.

    Returns nothing; a return value is ignored.

    Example::

        @hookimpl
        def readerd_card_authenticated(event: PluginEvent, context: PluginContext) -> None:
            if event.data["expires_within_days"] == "30" and not event.replayed:
                context.publish("renew_card_soon", {}, reader=event.reader)
    """


@hookspec
def readerd_card_removed(event: PluginEvent, context: PluginContext) -> None:
    """The card left the reader (``card.removed``), whether its read succeeded or not.

    ``event.reader`` names the reader; ``event.data`` has ``kind`` only (no identity: match it to the
    card by reader, as :class:`CardsOnReaders` does). ``context`` is the plugin's :class:`PluginContext`.

    Called from the host's feed thread, one plugin and one event at a time in ``seq`` order,
    concurrently with command handlers, never with another of its hooks; ``hook_timeout`` applies;
    ``event.replayed`` as for ``readerd_card_identified``.

    Returns nothing; a return value is ignored.

    Example::

        cards = CardsOnReaders()  # filled by cards.identified(event) in readerd_card_identified

        @hookimpl
        def readerd_card_removed(event: PluginEvent) -> None:
            cards.removed(event)
    """


@hookspec
def readerd_member_enrolled(event: PluginEvent, context: PluginContext) -> None:
    """The card on a reader is enrolled (``member.enrolled``): after ``mykey.enroll`` or ``mykey.relink``.

    ``event.data`` has ``member_id``, ``pseudonym``, ``mykey_id`` when there is one, and ``created``
    (false when the card was enrolled already, e.g. at another kiosk while this one could not ask the
    ward). ``event.reader`` names the reader the citizen proved possession on. A plugin that keeps the
    card's ``card.identified`` for counter commands updates it (``CardsOnReaders.enrolled(event)``), so
    the next command needs no second tap. Delivered with the default interest; a plugin declaring
    ``types`` lists ``member.enrolled`` to get it. ``context`` is the plugin's :class:`PluginContext`.

    Called from the host's feed thread, one plugin and one event at a time in ``seq`` order,
    concurrently with command handlers, never with another of its hooks; ``hook_timeout`` applies;
    ``event.replayed`` as for ``readerd_card_identified`` (a replayed one concerns a card long gone).

    Returns nothing; a return value is ignored.

    Example::

        @hookimpl
        def readerd_member_enrolled(event: PluginEvent) -> None:
            cards.enrolled(event)  # the CardsOnReaders filled in readerd_card_identified
    """


@hookspec
def readerd_member_withdrawn(event: PluginEvent, context: PluginContext) -> None:
    """A citizen withdrew their enrolment (``member.withdrawn``): forget them by your retention rule.

    ``event.data`` has ``member_id`` and ``pseudonym``: the keys the plugin's records of the member
    carry. Delete what the plugin keeps of the member, or anonymise what the ward must keep by law or
    audit (a points ledger's sums, a subsidy's visit counts), and say which in docs/privacy.md. Every
    plugin receives this event, whatever its ``readerd_event_interest`` declares. It arrives at the kiosk
    where the member withdrew: records in the shared store are that kiosk's to clean up, records in
    another kiosk's local store expire by the plugin's retention rule. ``context`` is the plugin's
    :class:`PluginContext`.

    Called from the host's feed thread, one plugin and one event at a time in ``seq`` order,
    concurrently with command handlers, never with another of its hooks; ``hook_timeout`` applies; a
    replayed withdrawal (``event.replayed``) must be handled all the same, and twice without harm.

    Returns nothing; a return value is ignored.

    Example::

        @hookimpl
        def readerd_member_withdrawn(event: PluginEvent, context: PluginContext) -> None:
            member = event.data["member_id"]
            context.store.shared.transaction(
                lambda conn: conn.execute(greetings.delete().where(greetings.c.member_id == member))
            )
    """


@hookspec
def readerd_card_read_aborted(event: PluginEvent, context: PluginContext) -> None:
    """A read ended without an identity (``card.read_aborted``).

    ``event.data`` has ``kind``, ``reason`` (``removed``, ``malformed``, ``timeout``, ``transport``,
    ``auth_required``, ``card_error``, ``denied``, ``internal_error``: docs/events.md), ``apdus`` (sent
    before the abort) and ``error`` (a fixed code); never a pseudonym. ``event.reader`` names the reader.
    ``context`` is the plugin's :class:`PluginContext`.

    Called from the host's feed thread, one plugin and one event at a time in ``seq`` order,
    concurrently with command handlers, never with another of its hooks; ``hook_timeout`` applies;
    ``event.replayed`` as for ``readerd_card_identified``.

    Returns nothing; a return value is ignored.

    Example::

        @hookimpl
        def readerd_card_read_aborted(event: PluginEvent, context: PluginContext) -> None:
            if event.data["reason"] == "removed" and not event.replayed:
                context.publish("hold_longer", {}, reader=event.reader)
    """


@hookspec
def readerd_reader_changed(event: PluginEvent, context: PluginContext) -> None:
    """A reader came, went or failed (``reader.added`` / ``reader.removed`` / ``reader.error``).

    ``event.type`` says which. ``event.data`` has ``backend`` (``pcsc``, ``nfc``, ``sim``; ``session``
    for a wedged card), and for ``reader.error`` also ``reason`` (``pcscd_unavailable``, ``wedged``,
    ``simulator``) and ``message``. ``event.reader`` names the reader (None when the error concerns no
    single reader: ``pcscd_unavailable``). ``context`` is the plugin's :class:`PluginContext`. In
    ``readerd run`` the host starts before the readers, so a plugin gets ``reader.added`` for each.

    Called from the host's feed thread, one plugin and one event at a time in ``seq`` order,
    concurrently with command handlers, never with another of its hooks; ``hook_timeout`` applies;
    ``event.replayed`` as for ``readerd_card_identified``.

    Returns nothing; a return value is ignored.

    Example::

        @hookimpl
        def readerd_reader_changed(event: PluginEvent, context: PluginContext) -> None:
            if event.type == "reader.error":
                context.log.warning("reader failed", reader=event.reader, reason=event.data["reason"])
    """


@hookspec
def readerd_plugin_result(event: PluginEvent, context: PluginContext) -> None:
    """Another plugin published a result (``plugin.<name>.<event>``): how plugins cooperate without
    importing each other (the points plugin awards points for ``plugin.checkin.result`` with
    ``status`` ``accepted``).

    Only the types declared in ``readerd_event_interest`` arrive (exact names, e.g.
    ``"plugin.checkin.result"``; never ``plugin.error`` nor the host's ``plugin.handled``), and never
    the plugin's own results.
    ``event.type`` is the result's type, ``event.data`` what the other plugin published,
    ``event.reader`` the reader it named. ``context`` is the plugin's :class:`PluginContext`.

    Called from the host's feed thread, one plugin and one event at a time in ``seq`` order,
    concurrently with command handlers, never with another of its hooks; ``hook_timeout`` applies.
    ``event.replayed`` is true only when this delivery is itself a replay after a crash.

    Returns nothing; a return value is ignored.

    Example::

        @hookimpl
        def readerd_plugin_result(event: PluginEvent, context: PluginContext) -> None:
            if event.type == "plugin.checkin.result" and event.data.get("status") == "accepted":
                context.publish("welcome_back", {"event_id": event.data["event_id"]}, reader=event.reader)
    """


# --- what a plugin offers ----------------------------------------------------------------------------
@hookspec(firstresult=True)
def readerd_result_fields() -> dict[str, ResultSpec | frozenset[str]] | None:
    """Declare the results this plugin publishes, the fields of each, and what a citizen sees for each of
    their statuses: what may reach the LAN, the event log and the kiosk screens.

    Takes no argument: it runs once per plugin when the host loads it, after ``readerd_event_interest``
    and before ``readerd_startup``, under ``hook_timeout``; ``readerctl plugins`` shows the answer.

    Returns a dict of event name (what the plugin passes to ``context.publish``, e.g. ``"greeting"`` for
    ``plugin.hello.greeting``) to a :class:`ResultSpec` ``(fields, texts)``, or to the bare set of its
    top-level ``data`` field names (the older form: no texts), or None for no results. The host
    publishes only declared fields: an undeclared field is dropped, and a result of an undeclared name
    is published with empty ``data`` (a screen still sees that it happened). A value that is, or
    contains, a certificate serial, subject CN or FeliCa IDm (one this plugin was handed, or the card's
    on a reader) becomes ``"[redacted]"`` even in a declared field. What is dropped or redacted is
    counted per plugin (``readerctl plugins``) and logged once.

    ``texts`` maps a value of the result's ``status`` field (``"*"``: every other status, and results
    without one) to a :class:`ScreenText` ``(level, ja, en, when)``, or to a list of them tried in order:
    the first whose ``{field}`` placeholders the result carries (present, not null) and whose ``when``
    fields are true is used. ``level`` is a :class:`Level`: ``REFUSAL`` (the citizen cannot go on, or
    must do something), ``SUCCESS``, ``INFO`` (nothing to do; never hides another plugin's answer); a
    screen shows the highest first. For each result the host renders the text from the published
    (declared, redacted) fields and adds it as ``data.screen = {level, ja, en}``, except at a reader
    ``[plugins.routing]`` keeps the plugin off; ``screen`` cannot be a declared field beside texts.

    A malformed answer (not a dict of event name to a ``ResultSpec`` or a set of field names; a
    template naming an undeclared field, with a conversion, format spec, index or attribute, or not
    parsing; a text that is not a ``ScreenText`` with a ``Level``) quarantines the plugin at once
    (``bad_result``), before its start.

    Example::

        ACCEPTED = ScreenText(Level.SUCCESS, "ようこそ（{visits} 回目）", "Welcome (visit {visits})")

        @hookimpl
        def readerd_result_fields() -> dict[str, ResultSpec]:
            return {"greeting": ResultSpec(frozenset({"message", "visits"}), {"*": ACCEPTED})}
    """


@hookspec
def readerd_commands(context: PluginContext) -> list[CommandSpec]:
    """Control commands this plugin answers (``points.redeem``, ``hello.visits``...), sent on the control
    socket as ``{"cmd": "hello.visits", "args": {...}}`` by readerctl, kiosk screens and terminals.

    ``context`` is the plugin's :class:`PluginContext`. Runs once, when the host loads the plugin, right
    after ``readerd_startup`` (not if that quarantined it), under ``hook_timeout``; the commands are
    registered then and the hook is never asked again.

    Returns a list of :class:`CommandSpec`: ``name`` is ``<plugin>.<verb>``; ``args`` maps each argument
    to an :class:`Arg` (type, required); ``role`` is ``CONTROL`` (default) or ``OPERATOR`` (staff: on the
    LAN only operator keys may send it). A spec that is not a ``CommandSpec`` or lacks the prefix is
    skipped and reported (``bad_result``, counted as a failure); a return that is not a list registers
    nothing.

    The handler gets the arguments as a dict, checked first (unknown, missing or mistyped: the caller
    gets ``bad_request`` and the handler is not called). It runs on one of the host's four command
    threads, concurrently with the event hooks and other commands (its own too), under ``hook_timeout``:
    a timeout quarantines the plugin. It returns a JSON object (anything else: the caller gets
    ``plugin_error``). :class:`Refusal` or any other ``ReaderdError`` (``StoreUnavailableError``...)
    reaches the caller with its code, and is not a failure; another exception is published as
    ``plugin.error``, counts towards quarantine and gives the caller ``plugin_error``.

    Example::

        @hookimpl
        def readerd_commands(context: PluginContext) -> list[CommandSpec]:
            def card(args: JsonObject) -> JsonObject:
                return {"pseudonym": cards.require(args["reader"], refusal="hold the card").pseudonym}

            return [CommandSpec("hello.card", card, {"reader": Arg(ArgType.STRING)}, help="who is there")]
    """


@hookspec
def readerd_ctl_commands() -> list[CtlCommand]:
    """``readerctl`` subcommands this plugin contributes (``readerctl points settlement``...).

    Takes no argument. Runs in ``readerctl``, a short-lived process, never in the daemon: at each start
    readerctl loads the plugins the configuration enables (built-ins named in ``[plugins] builtins``,
    entry points named in ``[plugins] load``, or every installed one with ``autoload`` on and
    ``READERD_DISABLE_PLUGIN_AUTOLOAD`` unset; minus ``disabled``), makes a class plugin's instance and
    calls this hook to build its parser. Nothing else runs there: no ``readerd_startup``, no context, no
    store, no timeout; keep it cheap.

    Returns a list of :class:`CtlCommand` ``(name, help, configure, run)``: ``configure(parser)`` adds
    argparse arguments; ``run(args, call)`` returns the exit code, where ``call(cmd, args)`` sends a
    control request to the daemon and returns the result or raises :class:`Refusal` (readerctl prints
    ``readerctl <name>: <code>: <message>`` and exits 1). A name readerctl or an earlier plugin has, or an
    element that is not a ``CtlCommand``, is left out and reported on stderr; a hook that raises is
    reported and its plugin contributes nothing. A return that cannot be iterated is not caught: readerctl
    stops with a ``TypeError``.

    Example::

        @hookimpl
        def readerd_ctl_commands() -> list[CtlCommand]:
            def run(args: argparse.Namespace, call: Callable[[str, JsonObject], JsonObject]) -> int:
                print(call("hello.visits", {"pseudonym": args.pseudonym})["visits"])
                return 0

            def configure(parser: argparse.ArgumentParser) -> None:
                parser.add_argument("pseudonym")

            return [CtlCommand("hello", "how often a card was greeted", configure, run)]
    """


@hookspec
def readerd_doctor_checks() -> list[DoctorCheck]:
    """Checks this plugin adds to ``readerctl doctor`` (its configuration, a server it needs...).

    Takes no argument. Runs in the ``readerctl doctor`` process (the daemon need not run), never in the
    daemon, after readerd's own checks; the plugins are loaded as for ``readerd_ctl_commands``, not
    started. Skipped with ``--no-plugins`` or when the configuration does not load.

    Returns a list of :class:`DoctorCheck` ``(name, run)``, shown as ``<plugin>.<name>``: ``run()`` returns
    a :class:`CheckResult` ``(status, message, fix)``; only ``CheckStatus.PROBLEM`` makes doctor exit 1.
    A ``run`` that raises or returns something else is a problem ("the check failed"); a hook that raises
    is the problem ``<plugin>.load``; an element that is not a ``DoctorCheck`` is skipped unreported; a
    return that cannot be iterated is not caught (doctor stops with a ``TypeError``).

    Example::

        @hookimpl
        def readerd_doctor_checks() -> list[DoctorCheck]:
            def server() -> CheckResult:
                if reachable(ILS_HOST):
                    return CheckResult(CheckStatus.OK, f"{ILS_HOST} answers")
                return CheckResult(CheckStatus.PROBLEM, f"{ILS_HOST} does not answer", "check the VPN")

            return [DoctorCheck("ils", server)]
    """


# --- what a plugin declares about itself ------------------------------------------------------------------
@hookspec(firstresult=True)
def readerd_config_keys() -> list[ConfigKey] | None:
    """Declare the keys of the plugin's ``[plugins.<name>]`` table: name, type, default and help.

    Takes no argument. Called when a process loads the plugin: by the host (``readerd run``, ``readerd
    plugins``, ``readerd migrate``) before any plugin's ``readerd_event_interest``, by ``readerctl doctor``
    and by ``readerctl help config``; under ``hook_timeout`` in the host. Keep it a constant.

    Returns a list of :class:`ConfigKey` ``(name, type, default, help)``, ``type`` an :class:`ArgType`
    (``OBJECT`` for a TOML table, ``NUMBER`` takes integers too), or None to declare nothing: such a plugin's
    table is not checked (logged once at load). With a declaration, a key of the table the plugin does not
    declare, or a value of another type, stops the process that loads it (exit 78, naming the plugin, the
    key and the closest declared key) and is a problem for ``readerctl doctor``. ``grants`` is the daemon's
    key and never needs declaring. A malformed answer (not a list of ``ConfigKey``, a name twice) is a
    configuration error too. ``ConfigKey.get(context.config)`` reads a key with its declared default.

    Example::

        GREETING = ConfigKey("greeting", ArgType.STRING, "ようこそ", "what the screen says at a tap")

        @hookimpl
        def readerd_config_keys() -> list[ConfigKey]:
            return [GREETING]
    """


@hookspec
def readerd_schemas() -> list[Schema]:
    """Declare the plugin's migration lists, so tools outside the daemon can compare them with what the
    databases record (``readerctl doctor``'s ``<plugin>.migrations`` check).

    Takes no argument. Called by ``readerctl doctor`` (the plugins loaded, not started); the daemon never
    calls it: a plugin migrates in ``readerd_startup`` or at first use, as before.

    Returns a list of :class:`Schema` ``(role, migrations, name)``: ``role`` ``"local"`` or ``"shared"``,
    ``migrations`` the same list the plugin passes to ``context.store.<role>.migrate``, ``name`` the
    schema name it passes there (``""``: the default schema). Doctor reports a problem when the names
    ``readerd_migrations`` records for a version differ from the code's (a migration edited or reordered
    after release, or two lists recorded under one schema), or when a contract migration beyond the
    code's list was applied.

    Example::

        @hookimpl
        def readerd_schemas() -> list[Schema]:
            return [Schema("shared", MIGRATIONS), Schema("local", LOCAL_MIGRATIONS, "queue")]
    """
