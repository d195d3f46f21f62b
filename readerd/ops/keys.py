"""The deployment pseudonym key: 32 random bytes, the same on every kiosk of a deployment.

The key turns certificate serials and IDms into pseudonyms; whoever holds it can test whether a given
card was seen, so the file is 0640 root:readerd in production (systemd/readerd.tmpfiles, docs/kiosk.md)
and never logged; only its fingerprint is.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from protocols.mykey import PSEUDONYM_KEY_LENGTH
from readerd.errors import ConfigError


def load_pseudonym_key(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(
            f"pseudonym key {path} is missing (create it with `readerctl keys init-deployment`)"
        ) from e
    except OSError as e:
        raise ConfigError(f"pseudonym key {path}: {e}") from e
    if mode & stat.S_IROTH:
        raise ConfigError(f"pseudonym key {path} is world-readable; chmod 0640 it")
    if len(key) != PSEUDONYM_KEY_LENGTH:
        raise ConfigError(f"pseudonym key {path} must hold exactly {PSEUDONYM_KEY_LENGTH} bytes")
    return key


def create_pseudonym_key(path: Path) -> bytes:
    """Write a fresh key (0600, never overwriting); for the demo state dir and key initialisation."""
    key = secrets.token_bytes(PSEUDONYM_KEY_LENGTH)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def load_or_create_pseudonym_key(path: Path) -> bytes:
    if path.exists():
        return load_pseudonym_key(path)
    return create_pseudonym_key(path)
