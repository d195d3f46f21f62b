"""The daemon's configuration: TOML, every key with a default, documented in docs/configuration.md.

Unknown keys are errors, not warnings: a misspelt ``alow_virtual_readers`` on a kiosk must stop the
daemon at start (exit 78) rather than silently keep the safe default the operator meant to change.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from readerd.errors import ConfigError

BACKENDS = ("pcsc", "nfc", "sim")


@dataclass(frozen=True)
class BusConfig:
    publish: str = "tcp://127.0.0.1:7410"
    control: str = "tcp://127.0.0.1:7411"
    heartbeat_interval: float = 5.0
    send_hwm: int = 1000
    queue_size: int = 10000
    insecure_lan: bool = False


@dataclass(frozen=True)
class IdentityConfig:
    pseudonym_key_file: str = "/etc/readerd/pseudonym.key"


@dataclass(frozen=True)
class SessionConfig:
    deadline: float = 5.0  # seconds one card read may take before card.read_aborted(timeout)
    repeat_window: float = 10.0  # a re-tap of the same card within this many seconds is flagged repeat


@dataclass(frozen=True)
class PcscConfig:
    readers: tuple[str, ...] = ()  # name prefixes to use; empty: every reader
    allow_virtual_readers: bool = False  # vpcd readers listen on 0.0.0.0: never on a kiosk


@dataclass(frozen=True)
class NfcConfig:
    devices: tuple[str, ...] = ("usb",)


@dataclass(frozen=True)
class SimConfig:
    readers: tuple[str, ...] = ("Simulated Reader 00",)
    extended_length: bool = True


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
    sim: SimConfig = field(default_factory=SimConfig)

    @property
    def simulated(self) -> bool:
        return "sim" in self.backends

    def validate(self) -> Config:
        for backend in self.backends:
            if backend not in BACKENDS:
                raise ConfigError(
                    f"backends: unknown backend {backend!r} (choose from {', '.join(BACKENDS)})"
                )
        for name in ("publish", "control"):
            endpoint = getattr(self.bus, name)
            if not is_loopback_endpoint(endpoint) and not self.bus.insecure_lan:
                raise ConfigError(
                    f"bus.{name} = {endpoint!r} is not loopback; LAN endpoints need CURVE "
                    "(or insecure_lan = true, which is logged as a warning at every start)"
                )
            if self.simulated and not is_loopback_endpoint(endpoint):
                raise ConfigError("the sim backend only runs with loopback endpoints (no injection on a LAN)")
        if self.bus.heartbeat_interval <= 0 or self.sessions.deadline <= 0:
            raise ConfigError("intervals and deadlines must be positive")
        if not self.kiosk or len(self.kiosk) > 64:
            raise ConfigError("kiosk must be 1..64 characters")
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


def _convert(default: object, value: object, key: str) -> object:
    """Check ``value`` against the type of the key's default; tables recurse."""
    if is_dataclass(default) and not isinstance(default, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return _build(type(default), value, key)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings")
        return tuple(value)
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


def _build(cls: type[_T], section: dict[str, object], where: str) -> _T:
    defaults = cls()
    known = {f.name for f in fields(defaults)}  # type: ignore[arg-type] # cls is a config dataclass
    unknown = set(section) - known
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) {', '.join(sorted(unknown))}")
    values = {
        name: _convert(getattr(defaults, name), value, f"{where}.{name}" if where else name)
        for name, value in section.items()
    }
    return replace(defaults, **values)  # type: ignore[type-var] # cls is a config dataclass


def load_config(path: Path | None) -> Config:
    """Read ``path`` (``None``: defaults only). Raises :class:`ConfigError` with the key at fault."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file") from e
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
