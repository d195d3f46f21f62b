"""The append-only audit log a security reviewer asks for (docs/design.md D21).

One JSON object per line in ``<state_dir>/audit.log`` (mode 0600), written and fsynced before the action
it records is reported as done: enrolments, unenrolments and relinks, a PIN sent on its last try, and
refused authentications that matter to a reviewer (another caller's ``auth_id``). Lines carry the
pseudonym or member ID and fixed codes, never a PIN, a certificate or its fields.

The file is only ever opened for appending; rotation is the operator's (logrotate ``copytruncate`` is
not needed: readerd reopens the file for every record).
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from readerd.errors import StoreUnavailableError


class AuditLog:
    def __init__(self, path: Path, *, kiosk: str) -> None:
        self.path = Path(path)
        self.kiosk = kiosk
        self._lock = threading.Lock()

    def append(self, action: str, **fields: object) -> None:
        """Record ``action``; raises :class:`StoreUnavailableError` when it cannot be written, so that the
        caller does not report done what it could not record."""
        record: dict[str, object] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "kiosk": self.kiosk,
            "action": action,
            **fields,
        }
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as e:
            raise StoreUnavailableError(f"audit log {self.path}: {e.strerror}") from e

    def records(self) -> list[dict[str, object]]:
        """Every record, oldest first (``readerctl``, tests)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]
