"""The daemon: wires configuration, identity, the bus and the backends, and lives until told to stop.

Start order: state directory (0700, its files 0600: readerd/ops/statedir.py), pseudonym key, member
directory, plugin store (with plugins enabled; a local file that cannot be opened exits 69), bus (binds,
so a port conflict fails before any reader is touched), backends, then ``READY=1``. The main thread only
waits: it pings the systemd watchdog while every backend thread and the bus thread are alive, so a hung
or dead thread gets the daemon restarted. Stop order is the reverse, within ``SHUTDOWN_BUDGET`` seconds.
"""

from __future__ import annotations

import functools
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from protocols.mykey import key_fingerprint
from readerd import __version__
from readerd import events as ev
from readerd.auth import possession
from readerd.auth.audit import AuditLog
from readerd.auth.manager import AuthManager, build_validator
from readerd.bus.control import ArgDoc, CommandDoc, CommandHandler, ControlRequest, JsonObject
from readerd.bus.curve import Allowlist, allowlist_dir, load_or_create_server_keys
from readerd.bus.eventlog import DAY, EventLog
from readerd.bus.roles import RoleSockets
from readerd.bus.server import Bus, CurveServer
from readerd.config import Config, IdentityConfig, is_loopback_endpoint
from readerd.errors import (
    ConfigError,
    MetricsUnavailableError,
    Refusal,
    StoreBusyError,
    StoreUnavailableError,
)
from readerd.exitcodes import ExitCode
from readerd.ops.database import Database, pin_deployment_key, postgres_database
from readerd.ops.keys import load_or_create_pseudonym_key, load_pseudonym_key
from readerd.ops.sdnotify import Notifier
from readerd.ops.statedir import private_dir, private_sqlite, private_tree
from readerd.plugin.host import PluginHost
from readerd.plugin.link import SplitHostLink, prepare_runtime_dir
from readerd.plugin.link import endpoints as split_endpoints
from readerd.plugin.replay import log_backlog
from readerd.plugin.store import Store
from readerd.reading.backends import Backend
from readerd.reading.identity import LOCAL_DIRECTORY, IdentityResolver, MyKeyDirectory, SqliteDirectory
from readerd.reading.sessions import CardSessions
from readerd.reading.ward import CACHE_FILE, WardDirectory, WardDirectorySettings, import_local_directory

if TYPE_CHECKING:
    from readerd.ops.metrics import MetricsServer

log = structlog.get_logger("readerd")

SHUTDOWN_BUDGET = 2.0
PRIVATE_FEED = "inproc://readerd-private"


def _plugin_command(host: PluginHost, request: ControlRequest) -> Future[JsonObject]:
    return _plugin_command_with(host, request, request.args)


def _plugin_command_with(host: PluginHost, request: ControlRequest, args: JsonObject) -> Future[JsonObject]:
    try:
        return host.run_command(request.cmd, args)
    except ValueError as e:  # the arguments do not match the command's schema
        raise Refusal("bad_request", str(e)) from e


class Daemon:
    def __init__(
        self, config: Config, notifier: Notifier | None = None, *, plugins: dict[str, object] | None = None
    ) -> None:
        """``plugins``: plugin objects loaded beside the discovered ones (tests, embedding applications)."""
        self.config = config.validate()
        self.extra_plugins = plugins
        self.host: PluginHost | None = None
        self.started = threading.Event()  # set once the bus, the plugins and every backend run
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        # One audit log for the daemon (auth, possession, operator commands): one lock around its appends.
        self.audit = AuditLog(Path(config.state_dir) / "audit.log", kiosk=config.kiosk)
        self._audit_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        self.backends: list[Backend] = []
        self.bus: Bus | None = None
        self.auth: AuthManager | None = None
        self.metrics: MetricsServer | None = None
        self.directory: MyKeyDirectory | None = None  # the member directory, open while the daemon runs
        self.store: Store | None = None  # the plugins' store, open while the daemon runs with plugins
        # Main-loop rounds that pinged the watchdog and that withheld the ping (tests wait on these).
        self.watchdog_pings = 0
        self.watchdog_withheld = 0

    def _build_backends(self, sessions: CardSessions, state_dir: Path) -> list[Backend]:
        backends: list[Backend] = []
        for name in self.config.backends:
            if name == "sim":
                # Imported here: production installs never load the simulator.
                from readerd.reading.backends.sim import SimBackend  # noqa: PLC0415

                backends.append(SimBackend(self.config.sim, sessions, state_dir / "sim-pki"))
            elif name == "pcsc":
                from readerd.reading.backends.pcsc import PcscBackend  # noqa: PLC0415 - loads libpcsclite

                backends.append(PcscBackend(self.config.pcsc, sessions))
            elif name == "nfc":
                from readerd.reading.backends.nfc import NfcBackend  # noqa: PLC0415 - loads nfcpy and libusb

                backends.append(NfcBackend(self.config.nfc, sessions))
            else:
                raise ConfigError(f"the {name} backend is not available in this version yet")
        return backends

    def _pseudonym_key(self, state_dir: Path) -> bytes:
        """The deployment key; without one at the default path, this kiosk's own key in the state dir.

        A kiosk on its own must start from the README's one command; a deployment of several kiosks
        shares one key (``readerctl keys init-deployment``), or their pseudonyms would differ. A key file
        named in the configuration must exist (exit 78 otherwise): that is a deployment that lost its key.
        So must the default one when the kiosk is part of a ward (``store.shared_url``) or its key is
        pinned (``identity.pseudonym_key_fingerprint``): a ward has one key, and a kiosk with another
        would split its members' pseudonyms from everyone else's. The sim backend alone uses the state
        dir's key unless the configuration names one, so a ward of simulated kiosks runs in tests.
        """
        config = self.config
        configured = Path(config.identity.pseudonym_key_file)
        default = Path(IdentityConfig().pseudonym_key_file)
        pin = config.identity.pseudonym_key_fingerprint
        ward = bool(config.store.shared_url)
        sim_only = config.simulated and not config.hardware
        if configured == default and (sim_only or not configured.exists()) and not (pin or ward):
            own = state_dir / "pseudonym.key"
            created = not own.exists()
            key = load_or_create_pseudonym_key(own)
            if not sim_only:
                log.warning(
                    "no deployment pseudonym key: using this kiosk's own",
                    path=str(own),
                    created=created,
                    fingerprint=key_fingerprint(key),
                    hint=f"a deployment shares one key at {default} (readerctl keys init-deployment)",
                )
            return key
        if not configured.exists():
            why = "the key is pinned" if pin else "this kiosk is part of a ward (store.shared_url)"
            expected = f"; expected fingerprint {pin}" if pin else ""
            raise ConfigError(
                f"no deployment pseudonym key at {configured}, and {why}: copy the ward's key there "
                f"(readerctl keys init-deployment on the first kiosk){expected}"
            )
        key = load_pseudonym_key(configured)
        fingerprint = key_fingerprint(key)
        if pin and fingerprint != pin:
            raise ConfigError(
                f"the pseudonym key {configured} has fingerprint {fingerprint}, but "
                f"identity.pseudonym_key_fingerprint is {pin}: this is not the deployment's key"
            )
        log.info("pseudonym key loaded", fingerprint=fingerprint, pinned=bool(pin))
        return key

    def _member_directory(self, state_dir: Path, key: bytes) -> MyKeyDirectory:
        """The kiosk's own SQLite directory, or with a shared store the ward's (readerd/reading/ward.py),
        on a connection of the daemon's own, so a tap never queues behind plugin transactions."""
        config = self.config
        fingerprint = key_fingerprint(key)
        if not config.store.shared_url:
            local = SqliteDirectory(state_dir / LOCAL_DIRECTORY)
            recorded = local.record_key(fingerprint)
            if recorded != fingerprint:
                log.warning(
                    "the member directory was made under another pseudonym key: its members are not "
                    "recognised with this one",
                    recorded=recorded,
                    fingerprint=fingerprint,
                )
            return local
        database = postgres_database(config.store.shared_url, replace(config.store, pool_size=2))
        self._check_ward_key(database, fingerprint)
        identity = config.identity
        ward = WardDirectory(
            database,
            state_dir / CACHE_FILE,
            kiosk=config.kiosk,
            settings=WardDirectorySettings(
                budget=identity.directory_budget,
                cache_ttl=identity.directory_cache_ttl,
                negative_ttl=identity.directory_negative_ttl,
                retry=identity.directory_retry,
            ),
        )
        try:
            ward.ensure_schema()
        except (StoreUnavailableError, StoreBusyError) as e:
            log.warning("the ward's member directory is offline at start: taps use the cache", error=str(e))
        return ward

    def _check_ward_key(self, database: Database, fingerprint: str) -> None:
        """The ward's shared store knows the deployment key's fingerprint (the first kiosk's): a kiosk
        with another key must not write into the ward's data (exit 78). Offline, it starts unchecked."""
        try:
            recorded = pin_deployment_key(database, fingerprint)
        except (StoreUnavailableError, StoreBusyError) as e:
            log.warning("deployment key not checked against the ward: shared store down", error=str(e))
            return
        if recorded != fingerprint:
            database.close()
            raise ConfigError(
                f"this kiosk's pseudonym key has fingerprint {fingerprint}, but the ward's shared store "
                f"was first used with {recorded}: install the ward's key (readerctl keys fingerprint)"
            )

    def _make_bus(self, event_log: EventLog) -> Bus:
        """The bus. Without the embedded host, the private feed and the split host's link are ipc
        sockets (``readerd plugins``, readerd/plugin/link.py); with it, the feed stays in the process."""
        config = self.config
        split = not config.plugins.enabled
        if split:
            prepare_runtime_dir(config)
        feed, plugin_control = split_endpoints(config) if split else (PRIVATE_FEED, None)
        bus = Bus(
            config.bus,
            kiosk=config.kiosk,
            private_endpoint=feed,
            event_log=event_log,
            curve=self._curve(),
            private_control=plugin_control,
            role_sockets=RoleSockets(
                config.bus.sockets_path(config.state_dir),
                operator_group=config.bus.operator_group,
                control_group=config.bus.control_group,
            ),
        )
        bus.add_command_observer(self._audit_command)
        if split:
            SplitHostLink(bus, guard=lambda forward: possession.gate(self.auth, forward))
        return bus

    def _audit_command(self, request: ControlRequest, role: str, outcome: str) -> None:
        """An operator command, answered: who (uid or key name), what, the outcome (no arguments: they
        may hold member IDs), written off the bus thread since the audit log fsyncs."""

        def write() -> None:
            try:
                self.audit.append(
                    "operator_command", cmd=request.cmd, caller=request.caller, role=role, outcome=outcome
                )
            except StoreUnavailableError as e:
                log.error("operator command not audited", cmd=request.cmd, error=str(e))

        self._audit_writer.submit(write)

    def _curve(self) -> CurveServer | None:
        """The bus's CURVE keys and allowlist (``bus.curve``); the server key is made on first start."""
        bus = self.config.bus
        if not bus.curve:
            return None
        directory = bus.curve_path(self.config.state_dir)
        keys, created = load_or_create_server_keys(directory)
        allowlist = Allowlist(allowlist_dir(directory))
        log.info(
            "CURVE on the bus",
            server_key=keys.public.decode(),
            created=created,
            allowed_keys=len(allowlist.keys),
            allowlist=str(allowlist.directory),
        )
        return CurveServer(keys, allowlist, poll=bus.allowlist_poll)

    def run(self) -> int:
        config = self.config
        if not config.backends:
            log.error("no reader backend configured", hint="use `readerd run --simulate` or --backend pcsc")
            return ExitCode.CONFIG
        self._warn_unsafe()
        state_dir = Path(config.state_dir)
        self._private_state_dir(state_dir)
        key = self._pseudonym_key(state_dir)
        directory = self._member_directory(state_dir, key)
        self.directory = directory
        if config.plugins.enabled:  # only plugins use it: without them a broken store must not stop readers
            self.store = Store.open(config.store, state_dir)
        event_log = EventLog(
            state_dir / "events.db",
            max_events=config.bus.log_max_events,
            max_age_s=config.bus.log_retention_days * DAY,
        )
        bus = self._make_bus(event_log)
        self.bus = bus
        resolver = IdentityResolver(key, directory)
        sessions = CardSessions(
            resolver,
            bus.publish,
            deadline=config.sessions.deadline,
            repeat_window=config.sessions.repeat_window,
            felica_reads=config.felica.reads,
            progress=functools.partial(bus.publish, lazy=True),  # card.presented: see CardSessions
            nudge=bus.nudge,
        )
        self.backends = self._build_backends(sessions, state_dir)
        self._register_commands(bus, state_dir, key)
        self.auth = self._auth(sessions, resolver, bus, state_dir)
        self._private_state_files(state_dir, found=False)  # made by now: databases, keys, the sim's PKI
        bus.start()
        try:
            self.metrics = self._start_metrics(bus)
            if config.plugins.enabled:
                self.host = self._start_plugins(bus, self.store)
            for backend in self.backends:
                backend.start()
            bus.commands_complete.set()
            self.started.set()
            self.notifier.ready(f"{len(self.readers())} readers")
            log.info(
                "readerd started",
                kiosk=config.kiosk,
                backends=list(config.backends),
                publish=bus.publish_endpoint,
                control=bus.control_endpoint,
                state_dir=str(state_dir),
            )
            if config.simulated:
                log.info("simulated readers ready", hint="try: readerctl tap alice; readerctl tail")
            self._wait()
        finally:
            self.notifier.stopping()
            for backend in reversed(self.backends):
                backend.stop(SHUTDOWN_BUDGET / 2)
            if self.host is not None:
                self.host.stop(SHUTDOWN_BUDGET / 4)
            if self.metrics is not None:
                self.metrics.stop(SHUTDOWN_BUDGET / 4)
            bus.stop(SHUTDOWN_BUDGET / 4)
            self._audit_writer.shutdown(wait=True)  # what the last operator commands did is recorded
            directory.close()
            event_log.close()
            if self.store is not None:
                self.store.close()  # after the host: readerd_shutdown hooks may still write
            log.info("readerd stopped")
        return ExitCode.OK

    def _warn_unsafe(self) -> None:
        """Settings that are allowed but must not go unnoticed: logged at every start."""
        config = self.config
        for endpoint in (config.bus.publish, config.bus.control):
            if not is_loopback_endpoint(endpoint) and not config.bus.curve:
                log.warning(
                    "insecure LAN endpoint: events travel unencrypted and anyone may connect",
                    endpoint=endpoint,
                    hint="bus.curve = true (docs/clients.md)",
                )
        if config.simulated and config.hardware:
            log.warning(
                "simulated cards beside real readers (sim.allow_simulated_cards): a test bench, not a kiosk",
                hint="their events say simulated: true; tap works on the simulated readers only",
            )

    def _private_state_dir(self, state_dir: Path) -> None:
        """The state directory, 0700: made so, or an existing one with a looser mode set to it (logged),
        and the files in it 0600. One that cannot be made private (another owner) stops the start
        (exit 78)."""
        try:
            loose = private_dir(state_dir)
        except OSError as e:
            raise ConfigError(
                f"state_dir {state_dir}: cannot make it private (0700): {e.strerror or e}; it must belong "
                "to the daemon's user (docs/kiosk.md, state_dir)"
            ) from e
        if loose is not None:
            log.warning("state directory was open to others: now 0700", path=str(state_dir), was=oct(loose))
        self._private_state_files(state_dir, found=True)  # before SQLite reopens a loose -wal

    def _private_state_files(self, state_dir: Path, *, found: bool) -> None:
        """Every file under the state directory 0600 (directories 0700), the local store's too when it
        lives elsewhere. ``found``: the files an earlier version, a copy or a restore left readable,
        fixed before they are opened (logged); else the files this start made (curve keys, the
        simulator's certificates), quietly."""
        store = self.config.store
        if store.local_path and self.config.plugins.enabled:
            private_sqlite(Path(store.local_path))
        changed, failed = private_tree(state_dir)
        if changed and found:
            log.warning(
                "state files were open to others: set to owner only",
                files=len(changed),
                first=str(changed[0].relative_to(state_dir)),
            )
        for path, reason in failed:
            log.warning("cannot make a state file private", path=str(path), error=reason)

    def _auth(
        self, sessions: CardSessions, resolver: IdentityResolver, bus: Bus, state_dir: Path
    ) -> AuthManager:
        """Real readers' cards are checked against the configured anchors only; the sim backend's against
        the simulator's CA (unless anchors are configured), which never vouches for a real card."""
        simulated_trust = None
        for backend in self.backends:
            trust_files = getattr(backend, "trust_files", None)  # the sim backend's test CA and CRL
            if callable(trust_files):
                simulated_trust = trust_files()
        auth_config = self.config.auth
        validator = build_validator(auth_config, simulated_trust=None) if self.config.hardware else None
        simulated_validator = (
            build_validator(auth_config, simulated_trust=simulated_trust) if self.config.simulated else None
        )
        if self.config.hardware and validator is None:
            log.warning("no trust anchors configured: JPKI authentication is refused", hint="see [auth]")
        auth = AuthManager(
            auth_config,
            kiosk=self.config.kiosk,
            sessions=sessions,
            backends=self.backends,
            resolver=resolver,
            validator=validator,
            simulated_validator=simulated_validator,
            publish=bus.publish,
            audit=self.audit,
        )
        auth.register(bus)
        return auth

    def _start_metrics(self, bus: Bus) -> MetricsServer | None:
        """The Prometheus endpoint (``[metrics] listen``), counting the private feed; None when off.

        Started before the plugins and backends, so the first ``reader.added`` events are counted."""
        address = self.config.metrics.address()
        if address is None:
            return None
        from readerd.ops.metrics import DaemonView, Metrics, MetricsServer  # noqa: PLC0415 - only when on

        view = DaemonView(
            published=lambda: bus.stats.published,
            dropped=lambda: dict(bus.stats.dropped),
            queue_depth=lambda: int(bus.status()["queue_depth"]),
            healthy=self.healthy,
            subscribers=lambda: bus.stats.subscribers,
            since_by_peer=bus.since_by_peer,
        )
        server = MetricsServer(Metrics(view), *address)
        try:
            # The bus's private feed: in process, or the ipc socket of the split plugin host's mode.
            server.start(bus.private_endpoint or PRIVATE_FEED, bus.context, bus.heartbeat_now)
        except OSError as e:
            server.stop()
            raise MetricsUnavailableError(f"metrics.listen = {self.config.metrics.listen}: {e}") from e
        return server

    def _wait(self) -> None:
        interval = (self.notifier.watchdog_interval or 20.0) / 2
        while not self.stop_event.wait(interval):
            if self.healthy():
                self.notifier.watchdog()
                self.watchdog_pings += 1
            else:
                self.watchdog_withheld += 1
                log.error(
                    "unhealthy (a backend or the bus died or is wedged, the event log refuses appends, "
                    "or a card event was lost); withholding the watchdog ping"
                )

    def healthy(self) -> bool:
        """Every backend and the plugin host alive, and the bus healthy: its thread advances, the event
        log takes appends, and no card event was lost without its screen being told (Bus.healthy)."""
        host_ok = self.host is None or self.host.alive
        bus_ok = self.bus is not None and self.bus.healthy
        return bus_ok and host_ok and all(b.alive() for b in self.backends)

    def _start_plugins(self, bus: Bus, store: Store | None) -> PluginHost:
        """The embedded plugin host: an in-process subscriber of the bus (the private feed's envelopes,
        as objects); its results go out through the bus."""

        def report(plugin: str, hook: str, error: str, message: str, quarantined: bool) -> None:
            bus.publish(ev.plugin_error(plugin, hook, error, message, quarantined=quarantined))

        host = PluginHost(
            self.config.plugins,
            kiosk=self.config.kiosk,
            publish=bus.publish,
            report=report,
            plugins=self.extra_plugins,
            store=store,
            backlog=log_backlog(bus.event_log) if bus.event_log is not None else None,
            flushed=bus.flushed,
            publish_lazily=functools.partial(bus.publish, lazy=True),
            nudge=bus.nudge,
        )
        host.load()
        for name, (_owner, spec) in host.commands.items():
            handler: CommandHandler = functools.partial(_plugin_command, host)
            if spec.possession:  # value moves: a PIN proof on the reader, or an operator (auth.possession)
                handler = possession.gate(self.auth, functools.partial(_plugin_command_with, host))
            doc = CommandDoc.from_schema(spec.schema(), possession=spec.possession)
            bus.register_command(name, handler, role=spec.role, spec=doc)
        bus.register_command(
            "plugins",
            lambda _req: host.status(),
            spec=CommandDoc("the loaded plugins: versions, hooks, quarantine, what they receive"),
        )
        bus.register_command(
            "plugins.reinstate",
            lambda req: host.reinstate_command(req.args),
            role="operator",
            spec=CommandDoc(
                "bring a quarantined plugin back now (a new store handle)",
                {"name": ArgDoc("string", True, "the plugin's name")},
            ),
        )
        bus.add_status(
            lambda: {
                "plugins_quarantined": host.status()["quarantined"],
                "plugins_results_screened": {
                    p.name: {"fields_dropped": p.fields_dropped, "values_redacted": p.values_redacted}
                    for p in host.plugins.values()
                    if p.fields_dropped or p.values_redacted
                },
            }
        )
        if store is not None:
            bus.add_status(lambda: {"store": store.status()})  # databases (password hidden) and counters
        # In process: the host takes the stamped envelopes off the bus, no JSON (readerd/bus/localfeed.py).
        host.start(bus.local_feed(), heartbeat_now=bus.heartbeat_now)
        return host

    def readers(self) -> list[JsonObject]:
        return [reader for backend in self.backends for reader in backend.readers()]

    def _register_commands(self, bus: Bus, state_dir: Path, key: bytes) -> None:
        reader = ArgDoc("string", False, "reader name (default: the first simulated reader)")
        docs = {  # the sim backend's commands (readerd run --simulate)
            "tap": CommandDoc(
                "put a simulated card on a reader",
                {
                    "card": ArgDoc("string", False, "card profile name (default alice); a FeliCa number"),
                    "reader": reader,
                    "tries": ArgDoc("integer", False, "user-auth PIN tries left on this card"),
                    "pin": ArgDoc("string", False, "the card's 4-digit user-auth PIN (default 1234)"),
                    "no_extended": ArgDoc("boolean", False, "the card refuses extended length"),
                    "expired": ArgDoc("boolean", False, "the card's certificate has expired"),
                    "revoked": ArgDoc("boolean", False, "the simulator's CRL lists the certificate"),
                    "cloned_from": ArgDoc("string", False, "carry this card's certificate (a copy)"),
                    "blank": ArgDoc("boolean", False, "a card without the JPKI application"),
                    "felica": ArgDoc("string", False, "a FeliCa card: bathhouse, checkin or transport"),
                    "faults": ArgDoc("object", False, "a fault script for this card"),
                    "hold": ArgDoc("boolean", False, "false: take the card away right after the read"),
                },
            ),
            "remove": CommandDoc("take the simulated card off a reader", {"reader": reader}),
            "unplug": CommandDoc("unplug a simulated reader (its card leaves first)", {"reader": reader}),
            "plug": CommandDoc("plug a simulated reader back in", {"reader": reader}),
        }
        bus.register_command(
            "readers",
            lambda _req: {"readers": self.readers()},
            spec=CommandDoc("the readers and what is on them (subscribe role)"),
        )
        bus.add_status(lambda: {"readers": self.readers(), "healthy": self.healthy(), "version": __version__})
        directory = self.directory
        if isinstance(directory, WardDirectory):
            ward = directory
            bus.add_status(lambda: {"directory": ward.status()})

            def import_members(request: ControlRequest) -> JsonObject:
                dry_run = request.args.get("dry_run", False)
                if not isinstance(dry_run, bool):
                    raise Refusal("bad_request", "dry_run: true or false")
                try:
                    return import_local_directory(ward, state_dir, key_fingerprint(key), dry_run=dry_run)
                except (StoreUnavailableError, StoreBusyError) as e:
                    raise Refusal(
                        "directory_unavailable",
                        f"the ward's member directory cannot be reached ({e}): nothing was imported; "
                        "run it again when readerctl doctor finds the shared store",
                    ) from e

            bus.register_command(
                "members.import",
                import_members,
                role="operator",
                spec=CommandDoc(
                    "move this kiosk's own member directory into the ward's",
                    {"dry_run": ArgDoc("boolean", False, "report what would be imported and the conflicts")},
                ),
            )
        for backend in self.backends:
            for name, handler in backend.commands().items():  # only the sim backend offers tap/remove
                bus.register_command(name, handler, spec=docs.get(name))

    def request_stop(self, signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
