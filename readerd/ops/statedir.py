"""The state directory is the daemon's alone: the directory 0700, every file in it 0600.

It holds the member directory, the event log, the plugin store, the audit log and keys. systemd's
``StateDirectoryMode=0700`` and ``UMask=0077`` give those modes under the shipped unit; these helpers give
them to a daemon started any other way (by hand, a test bench, an older install whose directory was made
0755) and fix at every start what an earlier run or a copy left loose. The process umask is not changed:
daemons also run inside other processes (the plugin authors' pytest fixture), whose files are not ours.

SQLite makes its ``-wal``, ``-shm`` and ``-journal`` files with the mode of the database file, so a
database that is 0600 before its first connection keeps its companions 0600 too.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

#: The directory's mode, and the bits no file or directory under it keeps.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
OTHERS = 0o077

#: The files SQLite makes beside a database.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> int | None:
    """Make ``path`` (and missing parents) with mode 0700, or set an existing one to 0700.

    Returns the loose mode it had (the caller logs it), None when it was already private. ``OSError``
    (not the owner, a read-only file system) goes to the caller: a state directory that others may list
    must stop the start.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode == PRIVATE_DIR:
        return None
    os.chmod(path, PRIVATE_DIR)
    return mode


def private_file(path: Path) -> bool:
    """Take the group and other bits off one file (not through a symlink); True when it changed.

    A missing file is fine; other ``OSError`` go to the caller."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) or not st.st_mode & OTHERS:
        return False
    os.chmod(path, stat.S_IMODE(st.st_mode) & ~OTHERS)  # a file or directory: lstat said so
    return True


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it is missing (before SQLite opens it), and make an
    existing one and its SQLite companions private."""
    path = Path(path)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    private_sqlite(path)


def private_sqlite(path: Path) -> None:
    """A SQLite database and its ``-wal``/``-shm``/``-journal`` files, if present, 0600."""
    path = Path(path)
    for name in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS)):
        private_file(name)


def private_tree(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Take the group and other bits off every file and directory under ``root`` (symlinks are not
    followed, sockets and other special files are left alone).

    Returns the paths changed and those that could not be changed, with the reason (a file another
    user owns): the caller logs both; neither stops the daemon.
    """
    changed: list[Path] = []
    failed: list[tuple[Path, str]] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            path = Path(directory) / name
            try:
                if private_file(path):
                    changed.append(path)
            except OSError as e:
                failed.append((path, e.strerror or str(e)))
    return changed, failed
