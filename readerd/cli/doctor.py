"""``readerctl doctor``: what is wrong with this kiosk, and how to fix it.

A kiosk nobody watches fails in a handful of ways that all look alike from the counter ("the reader does
nothing"): pcscd down, the reader unplugged or named differently, the kernel's ``port100`` driver holding
the RC-S380, a udev rule missing, a configuration typo, a state directory owned by root, a stale CRL, a
wrong clock. Each check here looks at one of them *from outside the daemon* (it runs whether the daemon
is up or not, and never changes anything: no file is created, the store is opened read-only) and says
what it saw, and the fix, in words a contractor can act on. Plugins add their own checks through the
``readerd_doctor_checks`` hook. docs/kiosk.md has a section per check.

Everything the checks touch (paths, the clock, pcscd, USB enumeration, the daemon's user) comes from a
:class:`DoctorEnv`, so tests build a bad and a good environment for each check.
"""

from __future__ import annotations

import difflib
import functools
import grp
import os
import pwd
import sqlite3
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from protocols.errors import ReaderdError
from protocols.mykey import key_fingerprint
from readerd.auth import jlis
from readerd.auth.certvalidation import TrustAnchor, load_trust_anchors
from readerd.bus.control_client import request
from readerd.cli.human import JST
from readerd.config import DEFAULT_CONFIG, Config, is_loopback_endpoint, load_config
from readerd.errors import ConfigError, StoreUnavailableError, TrustAnchorError
from readerd.ops.keys import load_pseudonym_key
from readerd.plugin.api import CheckResult, CheckStatus
from readerd.reading.backends.usb import HOTPLUG, UsbReader

if TYPE_CHECKING:
    from readerd.plugin.store import RecordedMigration, Schema

OK, WARNING, PROBLEM, SKIPPED = CheckStatus.OK, CheckStatus.WARNING, CheckStatus.PROBLEM, CheckStatus.SKIPPED

#: No kiosk clock is earlier than this version's release: an earlier clock is a dead RTC battery.
CLOCK_FLOOR = datetime(2025, 1, 1, tzinfo=UTC)
#: A CRL whose next update is nearer than this is reported as a warning (the download job may be late).
CRL_WARN_BEFORE = timedelta(hours=24)
DAEMON_TIMEOUT_MS = 2000  # the daemon answers status from its bus thread at once; a hung one does not
VIRTUAL_READER_PREFIX = (
    "Virtual PCD"  # vpcd's readers (readerd.reading.backends.pcsc, without loading pyscard)
)


def _pcscd_readers() -> list[str]:
    from readerd.reading.backends.pcsc import list_pcscd_readers  # noqa: PLC0415 - loads libpcsclite

    return list_pcscd_readers()


def _usb_readers() -> list[UsbReader]:
    from readerd.reading.backends.usb import supported_readers  # noqa: PLC0415 - loads nfcpy and libusb

    return supported_readers()


def utc_now() -> datetime:
    return datetime.now(UTC)


def _control_request(endpoint: str, cmd: str) -> dict[str, Any]:
    """One control request; ``Unreachable`` when nothing answers."""
    return request(endpoint, cmd, timeout_ms=DAEMON_TIMEOUT_MS)


@dataclass
class DoctorEnv:
    """What the checks look at; the defaults are the real kiosk's."""

    config_path: Path = DEFAULT_CONFIG
    proc_modules: Path = Path("/proc/modules")
    sys_module: Path = Path("/sys/module")
    usb_dev_root: Path = Path("/dev/bus/usb")
    daemon_user: str = "readerd"
    daemon_group: str = "readerd"
    now: Callable[[], datetime] = utc_now
    pcscd_readers: Callable[[], list[str]] = _pcscd_readers
    usb_readers: Callable[[], list[UsbReader]] = _usb_readers
    control_request: Callable[[str, str], dict[str, Any]] = _control_request
    load_plugins: bool = True
    #: Filled by the config check; the other checks read it (the defaults when the file is bad).
    config: Config = field(default_factory=Config)
    config_ok: bool = False


@dataclass(frozen=True)
class Finding:
    """One check's result as reported: which check, who contributed it, and the verdict."""

    name: str
    status: CheckStatus
    message: str
    fix: str = ""
    source: str = "readerd"

    def as_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "source": self.source,
            "status": str(self.status),
            "message": self.message,
            "fix": self.fix,
        }


Check = Callable[[DoctorEnv], CheckResult]


# --- configuration ---------------------------------------------------------------------------------
def check_config(env: DoctorEnv) -> CheckResult:
    path = env.config_path
    if not path.exists():
        return CheckResult(
            PROBLEM,
            f"no configuration file at {path}; readerd.service starts the daemon with it",
            "run scripts/install-kiosk (it writes a first one), or write it from docs/configuration.md",
        )
    try:
        config = load_config(path).validate()
    except ConfigError as e:
        return CheckResult(
            PROBLEM,
            f"{path}: {e}; the daemon would exit 78 and systemd would not restart it",
            "correct that key (every key and its default: docs/configuration.md)",
        )
    except OSError as e:
        return CheckResult(PROBLEM, f"{path}: {e.strerror or e}", f"make it readable: chmod 0640 {path}")
    env.config, env.config_ok = config, True
    if not config.backends:
        return CheckResult(
            PROBLEM,
            "no reader backend configured: the daemon exits 78",
            'set backends = ["pcsc"] (and/or "nfc") in the configuration',
        )
    if config.simulated:
        return CheckResult(
            PROBLEM,
            "the sim backend is configured: simulated cards, no real reader",
            'backends = ["pcsc"] on a kiosk; the simulator is for `readerd run --simulate` only',
        )
    return CheckResult(OK, f"{path} is valid (backends: {', '.join(config.backends)})")


def check_virtual_readers(env: DoctorEnv) -> CheckResult:
    if not env.config.pcsc.allow_virtual_readers:
        return CheckResult(OK, "virtual (vpcd) readers are ignored")
    return CheckResult(
        PROBLEM,
        "pcsc.allow_virtual_readers = true: vpcd listens on every interface, so anyone on the network "
        "could present a fake card",
        "remove allow_virtual_readers from the configuration and uninstall vsmartcard-vpcd on kiosks",
    )


def check_daemon(env: DoctorEnv) -> CheckResult:
    """The daemon itself, over the control endpoint: running, and healthy (what the watchdog sees)."""
    bus = env.config.bus
    if getattr(bus, "curve", False) and bus.control.startswith("tcp://"):
        return CheckResult(
            SKIPPED, "the control endpoint needs CURVE keys: `readerctl --client-key K status`"
        )
    try:
        reply = env.control_request(bus.control, "status")
    except Exception as e:  # Unreachable, a zmq error: the daemon is not there to ask
        return CheckResult(
            PROBLEM,
            f"readerd does not answer at {bus.control} ({e})",
            "systemctl status readerd; journalctl -u readerd -b says why it stopped (exit 78: the config)",
        )
    result = reply.get("result") or {}
    if not reply.get("ok") or not isinstance(result, dict):
        return CheckResult(
            PROBLEM, f"readerd refused status: {reply.get('error')}", "journalctl -u readerd -b"
        )
    if result.get("healthy") is False:
        return CheckResult(
            PROBLEM,
            "readerd runs but a backend or the bus thread is dead or wedged: the watchdog pings are withheld",
            "systemd restarts it within WatchdogSec; if it keeps happening, journalctl -u readerd -b shows "
            "the thread and the reader involved",
        )
    readers = result.get("readers") or []
    return CheckResult(
        OK, f"readerd runs and is healthy ({len(readers)} reader(s), up {result.get('uptime_s')} s)"
    )


# --- PC/SC -----------------------------------------------------------------------------------------
def _pcsc_readers(env: DoctorEnv) -> tuple[list[str] | None, str]:
    try:
        return env.pcscd_readers(), ""
    except ReaderdError as e:
        return None, str(e)


def check_pcscd(env: DoctorEnv) -> CheckResult:
    if "pcsc" not in env.config.backends:
        return CheckResult(SKIPPED, "the pcsc backend is not configured")
    readers, error = _pcsc_readers(env)
    if readers is None:
        return CheckResult(
            PROBLEM,
            f"pcscd cannot be reached ({error})",
            "systemctl enable --now pcscd.socket; `journalctl -u pcscd` says why it stopped",
        )
    return CheckResult(OK, f"pcscd answers ({len(readers)} reader(s))")


def _usable(env: DoctorEnv, readers: Iterable[str]) -> list[str]:
    allow_virtual = env.config.pcsc.allow_virtual_readers
    return [r for r in readers if allow_virtual or not r.startswith(VIRTUAL_READER_PREFIX)]


def check_readers_seen(env: DoctorEnv) -> CheckResult:
    if "pcsc" not in env.config.backends:
        return CheckResult(SKIPPED, "the pcsc backend is not configured")
    readers, error = _pcsc_readers(env)
    if readers is None:
        return CheckResult(SKIPPED, f"pcscd cannot be reached ({error})")
    usable = _usable(env, readers)
    if not usable:
        ignored = f" (ignored: {', '.join(readers)})" if readers else ""
        return CheckResult(
            PROBLEM,
            f"pcscd sees no reader readerd would use{ignored}",
            "plug the reader in (a USB port of its own, not a hub); `pcsc_scan` (pcsc-tools) should list "
            "it; a CCID reader needs the libccid package",
        )
    return CheckResult(OK, f"readers: {', '.join(usable)}")


def check_configured_readers(env: DoctorEnv) -> CheckResult:
    wanted = env.config.pcsc.readers
    if "pcsc" not in env.config.backends or not wanted:
        return CheckResult(SKIPPED, "no reader names configured (pcsc.readers): every reader is used")
    readers, error = _pcsc_readers(env)
    if readers is None:
        return CheckResult(SKIPPED, f"pcscd cannot be reached ({error})")
    usable = _usable(env, readers)
    missing = [prefix for prefix in wanted if not any(r.startswith(prefix) for r in usable)]
    if missing:
        return CheckResult(
            PROBLEM,
            f"configured reader(s) not present: {', '.join(missing)} "
            f"(pcscd has: {', '.join(usable) or 'none'})",
            "plug that reader in, or correct pcsc.readers to a prefix of a name `pcsc_scan` shows",
        )
    return CheckResult(OK, f"every configured reader is present ({', '.join(wanted)})")


# --- USB NFC (nfcpy) -------------------------------------------------------------------------------
def _nfc_usb(env: DoctorEnv) -> bool:
    return "nfc" in env.config.backends and any(
        d == HOTPLUG or d.startswith("usb") for d in env.config.nfc.devices
    )


def check_usb_access(env: DoctorEnv) -> CheckResult:
    if not _nfc_usb(env):
        return CheckResult(SKIPPED, "no USB NFC reader configured (nfc backend with a usb device)")
    found = env.usb_readers()
    if not found:
        return CheckResult(
            PROBLEM,
            "no supported USB NFC reader is plugged in (RC-S380, RC-S330, ...)",
            "plug it in; `lsusb` should show it (Sony 054c:06c1 / 06c3 for the RC-S380)",
        )
    try:
        gid = grp.getgrnam(env.daemon_group).gr_gid
    except KeyError:
        return CheckResult(
            PROBLEM,
            f"there is no {env.daemon_group} group",
            "systemd-sysusers /etc/sysusers.d/readerd.conf (scripts/install-kiosk does it)",
        )
    bad = []
    for reader in found:
        node = env.usb_dev_root / f"{reader.bus:03d}" / f"{reader.address:03d}"
        try:
            st = node.stat()
        except OSError:
            bad.append(f"{reader.ids} at {node} (no device node)")
            continue
        if st.st_gid != gid or stat.S_IMODE(st.st_mode) & 0o060 != 0o060:
            bad.append(f"{reader.ids} at {node} (mode {stat.S_IMODE(st.st_mode):04o}, gid {st.st_gid})")
    if bad:
        return CheckResult(
            PROBLEM,
            f"the {env.daemon_group} group cannot open: {'; '.join(bad)}",
            "install the udev rule (scripts/install-kiosk), then `udevadm control --reload && "
            "udevadm trigger --subsystem-match=usb --action=add` or re-plug the reader",
        )
    return CheckResult(OK, f"{len(found)} USB NFC reader(s) accessible to {env.daemon_group}")


def check_port100(env: DoctorEnv) -> CheckResult:
    if not _nfc_usb(env):
        return CheckResult(SKIPPED, "no USB NFC reader configured")
    try:
        modules = env.proc_modules.read_text()
    except OSError:
        modules = ""
    loaded = any(line.split(" ", 1)[0] == "port100" for line in modules.splitlines())
    if loaded or (env.sys_module / "port100").exists():
        return CheckResult(
            PROBLEM,
            "the kernel's port100 driver is loaded: it holds the RC-S380, so nfcpy cannot open it",
            "modprobe -r port100; /etc/modprobe.d/readerd-blacklist-port100.conf (scripts/install-kiosk) "
            "keeps it from loading again",
        )
    return CheckResult(OK, "port100 is not loaded")


# --- state and store -------------------------------------------------------------------------------
def _daemon_uid(env: DoctorEnv) -> int | None:
    try:
        return pwd.getpwnam(env.daemon_user).pw_uid
    except KeyError:
        return None


def check_state_dir(env: DoctorEnv) -> CheckResult:
    path = Path(env.config.state_dir)
    if not path.exists():
        return CheckResult(
            WARNING,
            f"{path} does not exist yet",
            "systemd creates it at the first start (StateDirectory=readerd); never by hand as root",
        )
    if not path.is_dir():
        return CheckResult(PROBLEM, f"{path} is not a directory", f"move it away; systemd recreates {path}")
    uid = _daemon_uid(env)
    st = path.stat()
    if uid is not None and st.st_uid != uid:
        return CheckResult(
            PROBLEM,
            f"{path} belongs to uid {st.st_uid}, not {env.daemon_user}: the daemon cannot write its state",
            f"chown -R {env.daemon_user}:{env.daemon_group} {path}",
        )
    if uid is None and not os.access(path, os.W_OK):
        return CheckResult(PROBLEM, f"{path} is not writable", "chown it to the user running readerd")
    if stat.S_IMODE(st.st_mode) & 0o077:
        return CheckResult(
            WARNING,
            f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); it holds personal data",
            f"chmod 0700 {path}",
        )
    return CheckResult(OK, f"{path} is the daemon's and private")


def _sqlite_readonly(path: Path) -> None:
    """Open without creating (doctor often runs as root: a root-owned file would lock the daemon out)."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as e:
        raise StoreUnavailableError(f"{path}: {e}") from e


def check_store(env: DoctorEnv) -> CheckResult:
    config = env.config
    state = Path(config.state_dir)
    files = [state / "members.db"]
    if config.plugins.enabled:
        files.append(Path(config.store.local_path) if config.store.local_path else state / "store.db")
    present = [f for f in files if f.exists()]
    try:
        for path in present:
            _sqlite_readonly(path)
        if config.store.shared_url and config.plugins.enabled:
            from readerd.ops.database import postgres_database  # noqa: PLC0415 - SQLAlchemy only when needed

            shared = postgres_database(config.store.shared_url, config.store)
            try:
                shared.ping()
            finally:
                shared.close()
    except StoreUnavailableError as e:
        return CheckResult(
            PROBLEM,
            f"store unreachable: {e}",
            "SQLite: check the file's owner and the disk (`df`); PostgreSQL: the server, the network and "
            "store.shared_url (redemptions are refused while it is down; check-in queues offline)",
        )
    where = [str(p) for p in present] + (["PostgreSQL"] if config.store.shared_url else [])
    if not where:
        return CheckResult(WARNING, "no store yet", "the daemon creates its databases at the first start")
    return CheckResult(OK, f"store reachable: {', '.join(where)}")


# --- certificates, bus keys, clock ------------------------------------------------------------------
#: What an anchor that is not a J-LIS CA means (the simulator's CA on a test kiosk, on purpose or not).
NOT_JLIS = (
    "not a J-LIS user-authentication CA: a test or foreign CA; real My Number Cards will not validate "
    "against it"
)


def _jst(moment: datetime) -> str:
    return moment.astimezone(JST).isoformat(sep=" ")


def _describe_anchor(anchor: TrustAnchor, now: datetime) -> tuple[jlis.JlisCa | None, bool, str]:
    """The J-LIS CA the anchor is (None: another CA), whether it has expired, and a line saying so."""
    sha256 = anchor.certificate.fingerprint(hashes.SHA256()).hex(":").upper()
    known = jlis.lookup(sha256)
    not_after = anchor.certificate.not_valid_after_utc
    expired = now > not_after
    validity = f"expired {_jst(not_after)}" if expired else f"valid to {_jst(not_after)}"
    if known is not None:
        return known, expired, f"{anchor.source}: {known.name} (serial {known.serial}), {validity}"
    return None, expired, f"{anchor.source}: SHA-256 {sha256} is {NOT_JLIS}; {validity}"


def check_trust_anchors(env: DoctorEnv) -> CheckResult:
    """Each configured trust anchor (``auth.trust_anchors``) by SHA-256 fingerprint against the known J-LIS
    user-authentication CAs (:mod:`readerd.auth.jlis`): a warning for a test or foreign CA, and when every
    J-LIS CA configured has expired."""
    sources = env.config.auth.trust_anchors
    if not sources:
        return CheckResult(SKIPPED, "not configured (auth.trust_anchors): JPKI authentication is off")
    try:
        anchors = load_trust_anchors(sources)  # the daemon's own loader: what it would refuse, this does
    except TrustAnchorError as e:
        return CheckResult(
            PROBLEM,
            f"{e}; the daemon would exit 78",
            "put the J-LIS CA certificates (PEM) there; compare their fingerprints with this check's",
        )
    now = env.now()
    described = [_describe_anchor(anchor, now) for anchor in anchors]
    lines = "; ".join(line for _ca, _expired, line in described)
    current = [ca for ca, expired, _line in described if ca is not None and not expired]
    foreign = any(ca is None for ca, _expired, _line in described)
    fix = (
        "install the J-LIS CA certificates J-LIS publishes and check their SHA-256 fingerprints here "
        "(docs/kiosk.md, trust_anchors); a test kiosk may use the simulator's CA on purpose"
    )
    if not current and any(ca is not None for ca, _expired, _line in described):
        return CheckResult(
            WARNING,
            f"{lines}; the only J-LIS CA configured has expired: cards whose certificates a newer J-LIS CA "
            "issued will not validate",
            "add the current J-LIS user-authentication CA (2023) next to it and check its SHA-256 "
            "fingerprint here (docs/kiosk.md, trust_anchors)",
        )
    if foreign:
        return CheckResult(WARNING, lines, fix)
    return CheckResult(OK, lines)


def _read_crl(path: Path) -> x509.CertificateRevocationList:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def check_crl(env: DoctorEnv) -> CheckResult:
    """The kiosk's revocation source: local CRL files (``auth.crl_files``) and their freshness, or none.
    J-LIS gives revocation information only to verifiers the Minister certified or to those acting through
    a platform operator; this version has no setting for a platform operator's verification service, so
    the source is a local CRL or nothing."""
    auth = env.config.auth
    if not auth.crl_files:
        if auth.trust_anchors:
            return CheckResult(
                PROBLEM,
                "revocation source: none (no auth.crl_files): without revocation information a revoked "
                "card's certificate is accepted, so readerd refuses trust anchors without a CRL (exit 78)",
                "J-LIS gives CRLs only to certified verifiers or through a platform operator: set "
                "auth.crl_files to the CRL that route delivers (docs/kiosk.md, crl)",
            )
        return CheckResult(SKIPPED, "not configured (auth.crl_files): JPKI authentication is off")
    now = env.now()
    problems, warnings, oldest_next, stale = [], [], None, False
    for name in auth.crl_files:
        path = Path(name)
        try:
            crl = _read_crl(path)
        except OSError as e:
            problems.append(f"{path}: {e.strerror or e}")
            continue
        except ValueError:
            problems.append(f"{path}: not a CRL")
            continue
        next_update = crl.next_update_utc
        age = now - crl.last_update_utc
        if next_update is None or now > next_update:
            problems.append(f"{path}: stale since {next_update:%Y-%m-%d %H:%M} UTC" if next_update else
                            f"{path}: no nextUpdate")  # fmt: skip
            stale = True
        elif auth.crl_max_age_hours and age > timedelta(hours=auth.crl_max_age_hours):
            problems.append(f"{path}: {age.total_seconds() / 3600:.0f} h old (crl_max_age_hours)")
            stale = True
        elif next_update - now < CRL_WARN_BEFORE:
            warnings.append(f"{path}: next update due {next_update:%Y-%m-%d %H:%M} UTC")
        if next_update is not None and (oldest_next is None or next_update < oldest_next):
            oldest_next = next_update
    fix = (
        "fetch the current CRL into that path (the job that downloads it from J-LIS or the approved "
        "platform); authentication is refused with crl_stale/crl_unavailable until then"
    )
    source = "revocation source: local CRL file(s): "
    if problems:
        if stale and auth.stale_crl == "allow_with_warning":
            problems.append("auth.stale_crl = allow_with_warning: a card revoked since it is accepted")
        return CheckResult(PROBLEM, source + "; ".join(problems), fix)
    if warnings:
        return CheckResult(WARNING, source + "; ".join(warnings), fix)
    due = f", next update {oldest_next:%Y-%m-%d %H:%M} UTC" if oldest_next else ""
    return CheckResult(OK, f"{source}{len(auth.crl_files)} CRL(s) current{due}")


def check_bus_keys(env: DoctorEnv) -> CheckResult:
    """The LAN bus's CURVE keys (``bus.curve``): the daemon's pair and the allowlisted clients."""
    bus = env.config.bus
    lan = [e for e in (bus.publish, bus.control) if not is_loopback_endpoint(e)]
    if not getattr(bus, "curve", False):
        if lan and bus.insecure_lan:
            return CheckResult(
                PROBLEM,
                f"LAN endpoint(s) {', '.join(lan)} without CURVE (insecure_lan = true): events in clear",
                "set bus.curve = true with the bus's keys (docs/configuration.md [bus]); drop insecure_lan",
            )
        return CheckResult(SKIPPED, "not configured (bus.curve is off): the bus is loopback only")
    curve_dir = Path(str(getattr(bus, "curve_dir", "") or Path(env.config.state_dir) / "curve"))
    fix = f"create the server key pair and client keys in {curve_dir} (readerctl keys; docs/configuration.md)"
    public, secret = curve_dir / "server.key", curve_dir / "server.key_secret"
    if not secret.exists() and not public.exists():  # a fresh install: the daemon makes the pair
        return CheckResult(
            WARNING,
            f"no server key pair in {curve_dir} yet: readerd creates it at its first start",
            "start readerd once, then give LAN clients its public key (readerctl keys list) and allow "
            "theirs (readerctl keys allow)",
        )
    if not secret.exists():
        return CheckResult(
            PROBLEM,
            f"{secret} is gone but {public.name} is there: readerd would make a new pair, and every "
            "client pinning the old public key would be refused",
            f"restore {secret} from the backup (or remove {public} and give clients the new public key)",
        )
    if not public.exists():
        return CheckResult(
            WARNING, f"{public} is missing (the secret file holds it too)", f"restore {public} for clients"
        )
    if stat.S_IMODE(secret.stat().st_mode) & 0o077:
        return CheckResult(
            PROBLEM,
            f"{secret} is readable by others: anyone could impersonate the daemon",
            f"chmod 0600 {secret}",
        )
    clients = sorted((curve_dir / "clients").glob("*.key"))
    if not clients:
        return CheckResult(
            WARNING, f"no client key in {curve_dir / 'clients'}: no LAN client can connect", fix
        )
    return CheckResult(OK, f"server key and {len(clients)} client key(s) in {curve_dir}")


def check_clock(env: DoctorEnv) -> CheckResult:
    now = env.now()
    if now < CLOCK_FLOOR:
        return CheckResult(
            PROBLEM,
            f"the clock says {now:%Y-%m-%d %H:%M} UTC, before this version was released",
            "set the time (timedatectl set-ntp true, or the ward's NTP server in timesyncd.conf); a dead "
            "RTC battery resets it at every boot",
        )
    newest: datetime | None = None
    for name in env.config.auth.crl_files:
        try:
            issued = _read_crl(Path(name)).last_update_utc
        except (OSError, ValueError):
            continue
        newest = issued if newest is None or issued > newest else newest
    if newest is not None and now + timedelta(minutes=5) < newest:
        return CheckResult(
            PROBLEM,
            f"the clock ({now:%Y-%m-%d %H:%M} UTC) is behind a CRL issued {newest:%Y-%m-%d %H:%M} UTC",
            "set the time (timedatectl set-ntp true, or the ward's NTP server); certificates and "
            "business dates depend on it",
        )
    return CheckResult(OK, f"{now:%Y-%m-%d %H:%M} UTC")


def check_deployment_key(env: DoctorEnv) -> CheckResult:
    """The pseudonym key against its pin (``identity.pseudonym_key_fingerprint``): a ward has one key."""
    identity = env.config.identity
    path, pin = Path(identity.pseudonym_key_file), identity.pseudonym_key_fingerprint
    if not pin:
        if env.config.store.shared_url:
            return CheckResult(
                WARNING,
                "this kiosk shares a store with a ward but its key is not pinned",
                "set identity.pseudonym_key_fingerprint to `readerctl keys fingerprint` of the ward's key",
            )
        return CheckResult(SKIPPED, "no key fingerprint pinned (a kiosk on its own)")
    try:
        found = key_fingerprint(load_pseudonym_key(path))
    except (ConfigError, OSError) as e:
        return CheckResult(PROBLEM, f"{path}: {e}", "copy the ward's key there (0640 root:readerd)")
    if found != pin:
        return CheckResult(
            PROBLEM,
            f"{path} has fingerprint {found}, the configuration pins {pin}",
            "install the ward's key, or correct identity.pseudonym_key_fingerprint",
        )
    return CheckResult(OK, f"{path} is the ward's key ({pin})")


#: The built-in checks, in the order a person would work through them.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("config", check_config),
    ("virtual_readers", check_virtual_readers),
    ("daemon", check_daemon),
    ("pcscd", check_pcscd),
    ("readers_seen", check_readers_seen),
    ("configured_readers", check_configured_readers),
    ("usb_access", check_usb_access),
    ("port100", check_port100),
    ("state_dir", check_state_dir),
    ("deployment_key", check_deployment_key),
    ("store", check_store),
    ("trust_anchors", check_trust_anchors),
    ("crl", check_crl),
    ("bus_keys", check_bus_keys),
    ("clock", check_clock),
)


def _run_one(name: str, check: Callable[[], CheckResult], source: str) -> Finding:
    try:
        result: object = check()  # a plugin's check may return anything
    except Exception as e:  # a broken check (a plugin's above all) is a finding, not a crash
        return Finding(name, PROBLEM, f"the check failed: {type(e).__name__}: {e}", "report it", source)
    if not isinstance(result, CheckResult):
        return Finding(name, PROBLEM, f"the check returned {type(result).__name__}", "report it", source)
    return Finding(name, result.status, result.message, result.fix, source)


def plugin_findings(env: DoctorEnv) -> list[Finding]:
    """Checks the enabled plugins contribute (loaded as readerctl loads them, not started)."""
    from readerd.plugin.discovery import discover  # noqa: PLC0415 - imports every plugin

    found = discover(env.config.plugins)
    findings = config_findings(env, found.pm)
    findings += migration_findings(env, found.pm)
    findings += [
        _run_one(f"{plugin}.{check.name}", check.run, plugin) for plugin, check in found.doctor_checks()
    ]
    findings += [
        Finding(f"{plugin}.load", PROBLEM, f"plugin not loaded: {why}", "fix or disable the plugin", plugin)
        for plugin, why in found.problems.items()
    ]
    return findings


def _answers(pm: pluggy.PluginManager, hook: str) -> tuple[dict[str, object], dict[str, str]]:
    """Each loaded plugin's answer to a hook that takes no argument (plugins without it left out), and
    the plugins whose hook raised."""
    answers: dict[str, object] = {}
    failed: dict[str, str] = {}
    for impl in getattr(pm.hook, hook).get_hookimpls():
        try:
            answers[impl.plugin_name] = impl.function()
        except Exception as e:  # a plugin's failure is its own finding
            failed[impl.plugin_name] = f"{hook}: {type(e).__name__}: {e}"
    return answers, failed


def config_findings(env: DoctorEnv, pm: pluggy.PluginManager) -> list[Finding]:
    """Each plugin's ``[plugins.<name>]`` against the keys it declares, as the host checks it at load: a
    problem per unknown or mistyped key (``<plugin>.config.<key>``); skipped for a plugin that declares
    none. Nothing is started."""
    from readerd.plugin.api import check_config_keys, config_keys_of  # noqa: PLC0415 - with the plugins

    answers, failed = _answers(pm, "readerd_config_keys")
    findings: list[Finding] = []
    fix = "correct or remove the key (readerctl help config lists every key of the configured plugins)"
    for plugin, _object in pm.list_name_plugin():
        name = f"{plugin}.config"
        if plugin in failed:
            findings.append(Finding(name, PROBLEM, failed[plugin], "fix or disable the plugin", plugin))
            continue
        try:
            keys = config_keys_of(answers.get(plugin))
        except ValueError as e:
            findings.append(Finding(name, PROBLEM, str(e), "fix the plugin's declaration", plugin))
            continue
        if keys is None:
            message = f"the plugin declares no configuration keys: [plugins.{plugin}] is not checked"
            findings.append(Finding(name, SKIPPED, message, source=plugin))
            continue
        section = env.config.plugins.sections.get(plugin, {})
        problems = check_config_keys(plugin, keys, section)
        findings += [Finding(f"{name}.{p.key}", PROBLEM, str(p), fix, plugin) for p in problems]
        if not problems:
            findings.append(
                Finding(name, OK, f"[plugins.{plugin}]: {len(section)} key(s), all declared", "", plugin)
            )
    loaded = {plugin for plugin, _object in pm.list_name_plugin()}
    for section_name in sorted(set(env.config.plugins.sections) - loaded - set(env.config.plugins.disabled)):
        close = difflib.get_close_matches(section_name, sorted(loaded), n=1)
        hint = f"; did you mean [plugins.{close[0]}]?" if close else ""
        findings.append(
            Finding(
                f"config.plugins.{section_name}",
                WARNING,
                f"[plugins.{section_name}] belongs to no plugin this configuration loads{hint}",
                "correct the table's name, or name the plugin in [plugins] builtins or load",
            )
        )
    return findings


def _recorded_rows(env: DoctorEnv) -> list[RecordedMigration] | None:
    """Every ``readerd_migrations`` row the plugins' databases hold, read only (None: no store yet);
    rows of role ``shared`` from PostgreSQL when ``store.shared_url`` is set."""
    import sqlalchemy as sa  # noqa: PLC0415 - only when plugins are checked

    from readerd.plugin.store import recorded_migrations  # noqa: PLC0415

    config = env.config
    path = Path(config.store.local_path) if config.store.local_path else Path(config.state_dir) / "store.db"
    rows: list[RecordedMigration] = []
    if path.exists():
        engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
        try:
            with engine.connect() as conn:
                rows = recorded_migrations(conn)
        except sa.exc.SQLAlchemyError as e:
            raise StoreUnavailableError(f"{path}: {e}") from e
        finally:
            engine.dispose()
    elif not config.store.shared_url:
        return None
    if config.store.shared_url:
        from readerd.ops.database import postgres_database  # noqa: PLC0415

        rows = [r for r in rows if r.role == "local"]
        shared = postgres_database(config.store.shared_url, config.store)
        try:
            rows += [r for r in shared.transaction(recorded_migrations, readonly=True) if r.role == "shared"]
        finally:
            shared.close()
    return rows


def _schema_mismatches(plugin: str, schema: Schema, rows: list[RecordedMigration]) -> list[str]:
    """What differs between one declared schema and the rows recorded for it."""
    recorded = sorted(
        (r for r in rows if r.plugin == plugin and r.role == schema.role and r.schema == schema.name),
        key=lambda r: r.version,
    )
    names = schema.names()
    where = f"{schema.role} schema {schema.name or '(default)'}"
    found: list[str] = []
    for row in recorded:
        if row.version <= len(names) and row.name != names[row.version - 1]:
            found.append(
                f"{where} version {row.version}: recorded {row.name!r}, "
                f"the code has {names[row.version - 1]!r}"
            )
        elif row.version > len(names) and row.kind == "contract":
            found.append(
                f"{where} version {row.version} ({row.name}) is a contract migration beyond this code"
            )
    return found


def migration_findings(env: DoctorEnv, pm: pluggy.PluginManager) -> list[Finding]:
    """Each plugin's declared migration lists (``readerd_schemas``) against what ``readerd_migrations``
    records: a problem when a recorded name differs from the code's for that version (a migration edited
    or reordered after release, or two lists recorded under one schema) or a contract migration beyond
    the code was applied. Skipped for plugins that declare none, and when there is no store yet."""
    from readerd.plugin.store import Schema  # noqa: PLC0415 - with the plugins

    answers, failed = _answers(pm, "readerd_schemas")
    findings = [
        Finding(f"{plugin}.migrations", PROBLEM, why, "fix or disable the plugin", plugin)
        for plugin, why in failed.items()
    ]
    if not answers:
        return findings
    try:
        rows = _recorded_rows(env)
    except (StoreUnavailableError, ReaderdError) as e:
        return [
            *findings,
            *(
                Finding(f"{p}.migrations", WARNING, f"not compared: {e}", "see the store check", p)
                for p in answers
            ),
        ]
    for plugin, answer in answers.items():
        name = f"{plugin}.migrations"
        schemas = list(answer) if isinstance(answer, list | tuple) else None
        if schemas is None or not all(isinstance(s, Schema) for s in schemas):
            findings.append(
                Finding(name, PROBLEM, "readerd_schemas: not a list of Schema", "report it", plugin)
            )
            continue
        if rows is None:
            findings.append(Finding(name, SKIPPED, "no store yet: nothing recorded", source=plugin))
            continue
        mismatches = [m for schema in schemas for m in _schema_mismatches(plugin, schema, rows)]
        if mismatches:
            findings.append(
                Finding(
                    name,
                    PROBLEM,
                    "applied migrations differ from the code's: " + "; ".join(mismatches),
                    "run the plugin version that recorded them, or repair the plugin's tables and its "
                    'readerd_migrations rows by hand (docs/plugins.md, "Schema names"); the plugin\'s '
                    "tables may be missing meanwhile",
                    plugin,
                )
            )
        else:
            listed = ", ".join(f"{s.role}/{s.name or 'default'}" for s in schemas)
            findings.append(Finding(name, OK, f"applied migrations match the code ({listed})", "", plugin))
    return findings


def run_doctor(env: DoctorEnv) -> list[Finding]:
    findings = [_run_one(name, functools.partial(check, env), "readerd") for name, check in CHECKS]
    # Plugins are checked in split deployments too ([plugins] enabled = false: readerd-plugins.service).
    if env.load_plugins and env.config_ok:
        findings += plugin_findings(env)
    return findings


def healthy(findings: Iterable[Finding]) -> bool:
    return not any(f.status is PROBLEM for f in findings)
