"""The daemon's configuration: TOML, every key with a default, documented in docs/configuration.md.

Unknown keys are errors, not warnings: a misspelt ``alow_virtual_readers`` on a kiosk must stop the
daemon at start (exit 78) rather than silently keep the safe default the operator meant to change.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from readerd.errors import ConfigError

BACKENDS = ("pcsc", "nfc", "sim")
#: The backends with real readers: beside them, the sim backend needs ``sim.allow_simulated_cards``.
HARDWARE_BACKENDS = ("pcsc", "nfc")

#: The built-in plugins (``plugins/``), name -> ``module:object``: a kiosk names those it runs in
#: ``[plugins] builtins`` (opt-in; ``readerd.plugin.loader`` loads them).
BUILTIN_PLUGINS: dict[str, str] = {
    "checkin": "plugins.checkin:CheckinPlugin",
    "points": "plugins.points:PointsPlugin",
    "bathhouse": "plugins.bathhouse:BathhousePlugin",
    "library": "plugins.library:LibraryPlugin",
}

#: What ``[plugins.<name>] grants`` may list: ``readerd.plugin.api.PRIVATE_FIELDS`` (a test keeps them
#: equal; the plugin API is not imported here, it imports the store and this module).
GRANTABLE_FIELDS = frozenset(
    {"idm", "pmm", "blocks", "serial", "issuer_der", "subject_cn", "not_before", "not_after"}
)

#: Where a kiosk keeps its configuration: read when no ``--config`` is given and it exists.
DEFAULT_CONFIG = Path("/etc/readerd/readerd.toml")


@dataclass(frozen=True)
class BusConfig:
    publish: str = "tcp://127.0.0.1:7410"
    control: str = "tcp://127.0.0.1:7411"
    heartbeat_interval: float = 5.0
    send_hwm: int = 1000
    queue_size: int = 10000
    insecure_lan: bool = False
    log_retention_days: float = 7.0  # the event log (events.since) keeps events this long ...
    log_max_events: int = 100_000  # ... and at most this many
    curve: bool = False  # CURVE on every tcp:// endpoint (a non-loopback one needs it or insecure_lan)
    curve_dir: str = ""  # server.key(_secret) and clients/ (the allowlist); empty: <state_dir>/curve
    allowlist_poll: float = 0.5  # seconds between looks at the allowlist (a revocation re-binds)
    max_request_bytes: int = 65536  # a larger control message disconnects its sender (ZMQ_MAXMSGSIZE)
    since_rate: float = 5.0  # events.since requests per second and client, on average ...
    since_burst: int = 10  # ... in bursts of at most this many; beyond: rate_limited (2x for all clients)
    # the local role sockets (operator.sock, control.sock, status.sock: readerd.bus.roles); empty: systemd's
    # $RUNTIME_DIRECTORY (/run/readerd), else <state_dir>/run
    sockets_dir: str = ""
    operator_group: str = "readerd-operator"  # may connect to operator.sock (0660); a name or a gid
    control_group: str = "readerd-control"  # may connect to control.sock (0660); a name or a gid

    def curve_path(self, state_dir: str) -> Path:
        return Path(self.curve_dir) if self.curve_dir else Path(state_dir) / "curve"

    def sockets_path(self, state_dir: str) -> Path:
        """Where the role sockets are bound (see ``sockets_dir``)."""
        if self.sockets_dir:
            return Path(self.sockets_dir)
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        return Path(runtime) if runtime else Path(state_dir) / "run"

    def validate(self) -> BusConfig:
        if self.allowlist_poll <= 0:
            raise ConfigError("bus.allowlist_poll must be positive")
        if self.max_request_bytes < 1024:
            raise ConfigError(
                "bus.max_request_bytes must be at least 1024 (a tap or a PIN request is ~200 bytes)"
            )
        if self.since_rate <= 0 or self.since_burst < 1:
            raise ConfigError("bus.since_rate and bus.since_burst must be positive")
        if self.log_retention_days <= 0 or self.log_max_events < 1:
            raise ConfigError("bus.log_retention_days and bus.log_max_events must be positive")
        return self


@dataclass(frozen=True)
class IdentityConfig:
    pseudonym_key_file: str = "/etc/readerd/pseudonym.key"
    # the deployment key's fingerprint (`readerctl keys fingerprint`): a kiosk whose key file is missing
    # or has another one refuses to start (exit 78); empty: not pinned
    pseudonym_key_fingerprint: str = ""
    # the ward's member directory (with store.shared_url; readerd/reading/ward.py): seconds a tap waits for
    # it, seconds a cached enrolled / not-enrolled answer is used without asking, seconds it is left alone
    # after it failed to answer
    directory_budget: float = 0.2
    directory_cache_ttl: float = 300.0
    directory_negative_ttl: float = 10.0
    directory_retry: float = 5.0

    def validate(self) -> IdentityConfig:
        if not 0 < self.directory_budget <= 0.2:
            raise ConfigError("identity.directory_budget: more than 0 and at most 0.2 seconds (a tap waits)")
        if min(self.directory_cache_ttl, self.directory_negative_ttl, self.directory_retry) < 0:
            raise ConfigError("identity.directory_cache_ttl, directory_negative_ttl, directory_retry: >= 0")
        pin = self.pseudonym_key_fingerprint
        if pin and (len(pin) != 16 or any(c not in "0123456789abcdef" for c in pin)):
            raise ConfigError(
                "identity.pseudonym_key_fingerprint: 16 lower-case hex digits, as "
                "`readerctl keys fingerprint` prints them"
            )
        return self


@dataclass(frozen=True)
class SessionConfig:
    deadline: float = 5.0  # seconds one card read may take before card.read_aborted(timeout)
    repeat_window: float = 10.0  # a re-tap of the same card within this many seconds is flagged repeat


@dataclass(frozen=True)
class PcscConfig:
    readers: tuple[str, ...] = ()  # name prefixes to use; empty: every reader
    allow_virtual_readers: bool = False  # vpcd readers listen on 0.0.0.0: never on a kiosk
    # FeliCa block reads through the reader's PC/SC part-3 transparent session (RC-S300 class readers);
    # off: a FeliCa card on a PC/SC reader is identified by its IDm only
    felica_transparent: bool = False


@dataclass(frozen=True)
class NfcConfig:
    devices: tuple[str, ...] = ("usb",)


def _hex16(text: str, key: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a 4-digit hex code") from None
    if len(text) != 4 or not 0 <= value <= 0xFFFF:
        raise ConfigError(f"{key}: {text!r} is not a 4-digit hex code")
    return value


@dataclass(frozen=True)
class FelicaRead:
    """One service a FeliCa card is asked for after Polling: ``blocks`` of ``service_code``, unencrypted.

    ``system_code`` limits the read to cards polled on that system (a transit card tapped at a kiosk set
    up for bath-house cards is not asked for the bath-house service); empty: any system.
    """

    name: str = ""
    service_code: str = ""
    blocks: tuple[int, ...] = field(default=(), metadata={"item": int})
    system_code: str = ""

    def validate(self, key: str) -> FelicaRead:
        if not self.name or len(self.name) > 32 or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"{key}.name: 1..32 letters, digits or _")
        _hex16(self.service_code, f"{key}.service_code")
        if self.system_code:
            _hex16(self.system_code, f"{key}.system_code")
        if not 1 <= len(self.blocks) <= MAX_FELICA_BLOCKS or any(not 0 <= b <= 0xFFFF for b in self.blocks):
            raise ConfigError(f"{key}.blocks: 1..{MAX_FELICA_BLOCKS} block numbers of 0..65535")
        return self

    @property
    def service(self) -> int:
        return int(self.service_code, 16)

    @property
    def system(self) -> int | None:
        return int(self.system_code, 16) if self.system_code else None


MAX_FELICA_BLOCKS = 64


@dataclass(frozen=True)
class FelicaConfig:
    reads: tuple[FelicaRead, ...] = field(default=(), metadata={"item": FelicaRead})


@dataclass(frozen=True)
class PluginsConfig:
    """The plugin host; ``[plugins.<name>]`` tables are the plugins' own sections (free-form)."""

    enabled: bool = True  # run the embedded plugin host in `readerd run`
    # built-in plugins to run (checkin, points, bathhouse...): opt-in, a plugin a kiosk does not use must
    # not see its cards
    builtins: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()  # plugin names not to load
    # third-party plugins (the `readerd` entry-point group) to run, by name: an installed plugin a kiosk
    # does not name is not loaded
    load: tuple[str, ...] = ()
    autoload: bool = False  # true: every installed third-party plugin, named or not (not for kiosks)
    hook_timeout: float = 5.0  # seconds one hook call may take; then the plugin is quarantined
    quarantine_after: int = 3  # failures in a row before a plugin is quarantined
    # seconds after which a quarantined plugin is reinstated (a fresh store handle); 0: only by
    # `readerctl plugins reinstate NAME` (or a restart)
    quarantine_cooldown: float = 300.0
    trace: bool = False  # log every hook call with its duration
    # seconds: at a start, events a plugin was not given (a crash) that the event log holds and that are
    # younger than this are handed to it again, marked replayed; older ones are reported as missed.
    # 0: replay nothing
    replay_window: float = 600.0
    # with enabled = false: where the daemon binds the split host's ipc sockets (readerd plugins);
    # empty: <state_dir>/run (systemd: /run/readerd)
    runtime_dir: str = ""
    # [plugins.routing]: reader name = [plugin names] acting on that reader (its card events, its screen);
    # a reader not listed: every plugin. A name no loaded plugin has stops the start (exit 78). `routing`
    # is therefore no plugin's own table, and no plugin may be named so (docs/configuration.md)
    routing: dict[str, list[str]] = field(default_factory=dict)
    sections: dict[str, dict[str, object]] = field(default_factory=dict, metadata={"extra_tables": True})

    def validate(self) -> PluginsConfig:
        unknown = set(self.builtins) - set(BUILTIN_PLUGINS)
        if unknown:
            missing, known = ", ".join(sorted(unknown)), ", ".join(BUILTIN_PLUGINS)
            raise ConfigError(f"plugins.builtins: no built-in plugin {missing} (there are: {known})")
        if self.replay_window < 0:
            raise ConfigError("plugins.replay_window must be 0 (no replay) or a number of seconds")
        if self.quarantine_cooldown < 0:
            raise ConfigError("plugins.quarantine_cooldown must be 0 (no automatic reinstatement) or seconds")
        for name, section in self.sections.items():
            self.grants(name, section)
        self.routed_names()
        return self

    def routed_names(self) -> frozenset[str]:
        """Every plugin name ``[plugins.routing]`` lists; ConfigError (exit 78) for a malformed table."""
        names: set[str] = set()
        for reader, plugins in self.routing.items():
            if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
                raise ConfigError(f'plugins.routing."{reader}": expected a list of plugin names')
            names.update(plugins)
        return frozenset(names)

    def routed(self, plugin: str, reader: str | None) -> bool:
        """Whether ``plugin`` acts on ``reader``: every plugin on a reader ``routing`` does not list (and
        on events of no reader)."""
        plugins = self.routing.get(reader) if reader is not None else None
        return plugins is None or plugin in plugins

    def grants(self, name: str, section: dict[str, object] | None = None) -> frozenset[str]:
        """The private fields ``[plugins.<name>] grants`` lets the plugin see (``grants`` is the daemon's
        key, not the plugin's); ConfigError (exit 78) for a field that is not a private field."""
        value = (self.sections.get(name, {}) if section is None else section).get("grants", [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"plugins.{name}.grants: expected a list of strings")
        unknown = set(value) - GRANTABLE_FIELDS
        if unknown:
            raise ConfigError(
                f"plugins.{name}.grants: no private field {', '.join(sorted(unknown))} "
                f"(there are: {', '.join(sorted(GRANTABLE_FIELDS))})"
            )
        return frozenset(value)


@dataclass(frozen=True)
class SimConfig:
    readers: tuple[str, ...] = ("Simulated Reader 00",)
    extended_length: bool = True
    # sim beside pcsc or nfc (a test bench): refused at start unless true; then every simulated card's
    # events and authentications say "simulated": true, and the simulator's CA never vouches for a real card
    allow_simulated_cards: bool = False


@dataclass(frozen=True)
class StoreConfig:
    """Plugin data (``readerd.plugin.store``, docs/design.md D16): ``local`` is always a SQLite file,
    ``shared`` is PostgreSQL when ``shared_url`` is set and otherwise the same SQLite file."""

    local_path: str = ""  # SQLite file of the local store; empty: <state_dir>/store.db
    shared_url: str = ""  # postgresql+psycopg://user@host/db for ledgers shared by kiosks; empty: local
    busy_timeout: float = 5.0  # seconds a write waits for a lock (SQLite busy_timeout, PG lock_timeout)
    connect_timeout: float = 2.0  # seconds to reach PostgreSQL before store_unavailable (whole seconds, >= 2)
    retries: int = 10  # further attempts after a serialization failure, deadlock or lock timeout
    retry_backoff: float = 0.01  # seconds before the first retry, doubled each time, with full jitter
    retry_backoff_max: float = 0.5  # longest single wait between attempts
    pool_size: int = 5  # connections kept open per database (as many again are opened on demand)
    # PostgreSQL: seconds one statement may run (statement_timeout), and the bound on a link that silently
    # drops packets (tcp_user_timeout, keepalives); must stay below [plugins] hook_timeout
    statement_timeout: float = 2.5

    def validate(self) -> StoreConfig:
        if self.shared_url and not self.shared_url.startswith(("postgresql+psycopg://", "postgresql://")):
            raise ConfigError("store.shared_url: a postgresql+psycopg:// URL (or empty for the local SQLite)")
        if self.busy_timeout <= 0 or self.connect_timeout <= 0 or self.statement_timeout <= 0:
            raise ConfigError(
                "store.busy_timeout, store.connect_timeout and store.statement_timeout must be positive"
            )
        if not 0 <= self.retries <= 100:
            raise ConfigError("store.retries: 0..100")
        if not 0 <= self.retry_backoff <= self.retry_backoff_max:
            raise ConfigError("store.retry_backoff: 0 <= retry_backoff <= retry_backoff_max")
        if not 1 <= self.pool_size <= 100:
            raise ConfigError("store.pool_size: 1..100")
        return self


@dataclass(frozen=True)
class AuthConfig:
    """JPKI proof of possession (``auth.begin`` / ``auth.pin``, docs/authentication.md).

    With the sim backend and no anchors configured, the simulator's test CA and CRL are used; on real
    readers, no anchors means every authentication is refused (``auth_not_configured``).
    """

    trust_anchors: tuple[str, ...] = ()  # PEM files or directories of the JPKI user-auth CA certificates
    crl_files: tuple[str, ...] = ()  # the user-auth CRLs (PEM or DER), re-read when a file changes
    stale_crl: str = "refuse"  # or "allow_with_warning": past nextUpdate or older than crl_max_age_hours
    crl_max_age_hours: float = 0.0  # 0: a CRL is stale only after its nextUpdate
    session_ttl: float = 60.0  # seconds between auth.begin and auth.pin (and an enrolment after it)

    def validate(self) -> AuthConfig:
        if self.stale_crl not in ("refuse", "allow_with_warning"):
            raise ConfigError('auth.stale_crl: "refuse" or "allow_with_warning"')
        if self.crl_max_age_hours < 0 or not 5 <= self.session_ttl <= 600:
            raise ConfigError("auth.crl_max_age_hours >= 0 and 5 <= auth.session_ttl <= 600")
        if bool(self.trust_anchors) != bool(self.crl_files):
            raise ConfigError("auth.trust_anchors and auth.crl_files go together (a validator needs both)")
        return self


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint (readerd/ops/metrics.py); loopback only unless explicitly allowed, since tap
    counts per reader and minute say when people come and go."""

    listen: str = ""  # host:port, e.g. 127.0.0.1:9464 ([::1]:9464); empty: no endpoint
    allow_non_loopback: bool = False

    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, None when off; ConfigError (exit 78) for a malformed or refused one."""
        if not self.listen:
            return None
        host, sep, port_text = self.listen.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
            raise ConfigError(f"metrics.listen = {self.listen!r}: host:port, e.g. 127.0.0.1:9464")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise ConfigError(f"metrics.listen = {self.listen!r}: the host must be an IP address") from None
        if not loopback and not self.allow_non_loopback:
            raise ConfigError(
                f"metrics.listen = {self.listen!r} is not loopback (tap counts would be on the network); "
                "metrics.allow_non_loopback = true allows it"
            )
        return host, int(port_text)


@dataclass(frozen=True)
class WebKiosk:
    """Another kiosk's daemon the console shows in its fleet table (``status`` over its control endpoint,
    which a ``subscribe`` CURVE key may send)."""

    name: str = ""
    control: str = ""  # e.g. tcp://kiosk-3:7411
    server_key: str = ""  # that daemon's server.key; CURVE with readerd web's --client-key


@dataclass(frozen=True)
class WebConfig:
    """``readerd web``, the kiosk screen and operator console (readerd/web, docs/web.md): loopback by
    default, since the kiosk page can start a PIN entry and the console shows every reader's events."""

    listen: str = "127.0.0.1:8470"  # host:port of the web server
    allow_non_loopback: bool = False  # a LAN address needs this (the PIN travels in a POST body)
    console_token: str = ""  # the operator console's token; empty: the console is closed
    events_kept: int = 200  # recent events the console shows (and the tap chart counts from)
    kiosks: tuple[WebKiosk, ...] = field(default=(), metadata={"item": WebKiosk})  # the console's fleet
    kiosk_secret_file: str = ""  # the kiosk page's per-boot secret; "": $RUNTIME_DIRECTORY/kiosk-secret
    kiosk_secret_group: str = ""  # the kiosk session's group, which may read that file (0640); "": 0600
    hosts: tuple[str, ...] = ()  # Host names served besides 127.0.0.1, localhost, [::1] (DNS rebinding)
    console_idle: float = 1800.0  # seconds: a console session unused this long ends
    console_max_age: float = 28800.0  # seconds: and this long after its login, used or not
    console_login_attempts: int = 5  # failed logins a minute per client address before a lockout

    def address(self) -> tuple[str, int]:
        """(host, port); ConfigError (exit 78) for a malformed one or a refused non-loopback host."""
        host, sep, port_text = self.listen.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
            raise ConfigError(f"web.listen = {self.listen!r}: host:port, e.g. 127.0.0.1:8470")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise ConfigError(f"web.listen = {self.listen!r}: the host must be an IP address") from None
        if not loopback and not self.allow_non_loopback:
            raise ConfigError(
                f"web.listen = {self.listen!r} is not loopback; web.allow_non_loopback = true allows it"
            )
        if self.events_kept < 1:
            raise ConfigError("web.events_kept must be positive")
        for i, kiosk in enumerate(self.kiosks):
            if not kiosk.name or not kiosk.control:
                raise ConfigError(f"web.kiosks[{i}]: name and control are required")
        return host, int(port_text)


@dataclass(frozen=True)
class Config:
    kiosk: str = "kiosk"
    state_dir: str = "/var/lib/readerd"
    backends: tuple[str, ...] = ()
    log_level: str = "INFO"
    bus: BusConfig = field(default_factory=BusConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    sessions: SessionConfig = field(default_factory=SessionConfig)
    pcsc: PcscConfig = field(default_factory=PcscConfig)
    nfc: NfcConfig = field(default_factory=NfcConfig)
    felica: FelicaConfig = field(default_factory=FelicaConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    web: WebConfig = field(default_factory=WebConfig)

    @property
    def simulated(self) -> bool:
        return "sim" in self.backends

    @property
    def hardware(self) -> bool:
        """A backend with real readers is configured (pcsc, nfc)."""
        return any(backend in HARDWARE_BACKENDS for backend in self.backends)

    def validate(self) -> Config:
        for backend in self.backends:
            if backend not in BACKENDS:
                raise ConfigError(
                    f"backends: unknown backend {backend!r} (choose from {', '.join(BACKENDS)})"
                )
        for name in ("publish", "control"):
            endpoint = getattr(self.bus, name)
            if not is_loopback_endpoint(endpoint) and not self.bus.curve and not self.bus.insecure_lan:
                raise ConfigError(
                    f"bus.{name} = {endpoint!r} is not loopback; LAN endpoints need CURVE (bus.curve = true) "
                    "or insecure_lan = true, which is logged as a warning at every start"
                )
            if self.simulated and not is_loopback_endpoint(endpoint):
                raise ConfigError("the sim backend only runs with loopback endpoints (no injection on a LAN)")
        if self.simulated and self.hardware and not self.sim.allow_simulated_cards:
            hardware = " and ".join(b for b in self.backends if b in HARDWARE_BACKENDS)
            raise ConfigError(
                f"backends: sim beside {hardware} would put simulated cards (and the tap command) on a "
                'kiosk with real readers; remove "sim" from backends, or, on a test bench only, set '
                "allow_simulated_cards = true in [sim] (their events are then marked simulated)"
            )
        self.bus.validate()
        if self.bus.heartbeat_interval <= 0 or self.sessions.deadline <= 0:
            raise ConfigError("intervals and deadlines must be positive")
        if not self.kiosk or len(self.kiosk) > 64:
            raise ConfigError("kiosk must be 1..64 characters")
        names = [read.name for read in self.felica.reads]
        for i, read in enumerate(self.felica.reads):
            read.validate(f"felica.reads[{i}]")
        if len(set(names)) != len(names):
            raise ConfigError("felica.reads: names must be unique")
        self.identity.validate()
        self.auth.validate()
        self.metrics.address()
        self.web.address()
        self.plugins.validate()
        self.store.validate()
        # A hook's worst case on a dying link: a pooled connection's check that waits out tcp_user_timeout
        # (= statement_timeout), then a new connection that waits out connect_timeout (libpq: whole
        # seconds, at least 2). Both must end, as store_unavailable, before the hook times out.
        connect = max(2, math.ceil(self.store.connect_timeout))
        if self.store.shared_url and self.store.statement_timeout + connect >= self.plugins.hook_timeout:
            raise ConfigError(
                f"store.statement_timeout = {self.store.statement_timeout:g} plus store.connect_timeout "
                f"(effective {connect}) must be below plugins.hook_timeout = {self.plugins.hook_timeout:g}: "
                "a PostgreSQL statement or a dropped link must fail as store_unavailable before the hook "
                "times out and quarantines its plugin"
            )
        return self


def is_loopback_endpoint(endpoint: str) -> bool:
    """``inproc://`` and ``ipc://`` never leave the machine; ``tcp://`` only to 127.0.0.0/8 or ::1."""
    parsed = urlparse(endpoint)
    if parsed.scheme in ("inproc", "ipc"):
        return True
    if parsed.scheme != "tcp":
        return False
    host = (parsed.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_T = TypeVar("_T")


def _convert(default: object, value: object, key: str, item: type | None = None) -> object:
    """Check ``value`` against the type of the key's default; tables recurse.

    A tuple's items are strings unless the field says otherwise (``metadata={"item": ...}``): a table
    type (an array of tables in TOML) or ``int``.
    """
    if is_dataclass(default) and not isinstance(default, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return _build(type(default), value, key)
    if isinstance(default, tuple):
        return _convert_list(value, key, item)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return {str(k): dict(v) if isinstance(v, dict) else v for k, v in value.items()}
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if isinstance(default, int | float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{key}: expected a number")
    if isinstance(default, float):
        return float(value)  # type: ignore[arg-type] # checked just above
    if isinstance(default, int):
        if not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string")
    return value


def _convert_list(value: object, key: str, item: type | None) -> tuple[object, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list")
    if item is not None and is_dataclass(item):
        return tuple(_convert(item(), v, f"{key}[{i}]") for i, v in enumerate(value))
    wanted = item or str
    if not all(isinstance(v, wanted) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{key}: expected a list of {'integers' if wanted is int else 'strings'}")
    return tuple(value)


def _build(cls: type[_T], section: dict[str, object], where: str) -> _T:
    defaults = cls()
    known = {f.name: f for f in fields(defaults)}  # type: ignore[arg-type] # cls is a config dataclass
    extra = next((f.name for f in known.values() if f.metadata.get("extra_tables")), None)
    if extra is not None:
        # Unknown keys holding tables belong to the free-form field (plugins' own sections).
        tables = {k: v for k, v in section.items() if k not in known and isinstance(v, dict)}
        section = {k: v for k, v in section.items() if k not in tables}
        if tables:
            section[extra] = {**dict(section.get(extra) or {}), **tables}  # type: ignore[call-overload]
    unknown = set(section) - set(known)
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) {', '.join(sorted(unknown))}")
    values = {
        name: _convert(
            getattr(defaults, name),
            value,
            f"{where}.{name}" if where else name,
            known[name].metadata.get("item"),
        )
        for name, value in section.items()
    }
    return replace(defaults, **values)  # type: ignore[type-var] # cls is a config dataclass


def config_path(given: Path | None) -> Path | None:
    """The file to read: the one given, else :data:`DEFAULT_CONFIG` when it exists (the daemon and
    readerctl also run with no file at all)."""
    return given or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)


def load_config(path: Path | None) -> Config:
    """Read ``path`` (``None``: defaults only). Raises :class:`ConfigError` with the key at fault."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file") from e
    except UnicodeDecodeError as e:  # found by the config_loader fuzzer (tests/fuzz/atheris)
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {e.start}): save the file as UTF-8 (TOML requires it)"
        ) from e
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    return _build(Config, data, "")


def with_overrides(config: Config, overrides: dict[str, object]) -> Config:
    """Command-line flags over the file. Keys are dotted (``bus.publish``); ``None`` means "not given".

    The merged settings go through the same checks as the file, so a flag cannot smuggle in a wrong type.
    """
    data: dict[str, object] = asdict(config, dict_factory=lambda items: {k: _plain(v) for k, v in items})
    for dotted, value in overrides.items():
        if value is None:
            continue
        *path, key = dotted.split(".")
        table = data
        for part in path:
            nested = table[part]
            if not isinstance(nested, dict):
                raise ConfigError(f"{dotted}: not a table")
            table = nested
        table[key] = _plain(value)
    return _build(Config, data, "")


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value
