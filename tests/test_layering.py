"""Layers point one way: ``protocols`` is pure (no I/O, no reader, bus or logging-setup library)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ROOT / "protocols"

#: Libraries that do I/O or configure the process; none of them may be imported by protocols/.
BANNED = {
    "smartcard", "nfc", "usb", "zmq", "structlog", "socket", "ssl", "select", "selectors", "asyncio",
    "subprocess", "threading", "multiprocessing", "sqlite3", "sqlalchemy", "psycopg", "urllib", "http",
    "requests", "pluggy", "os", "shutil", "tempfile", "pathlib", "readerd", "simulators", "plugins",
}  # fmt: skip
BANNED_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def _protocol_files() -> list[Path]:
    files = sorted(PROTOCOLS.glob("*.py"))
    assert len(files) >= 8, "protocols/ went missing"
    return files


@pytest.mark.parametrize("path", _protocol_files(), ids=lambda p: p.name)
def test_protocols_source_imports_nothing_banned(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in BANNED, (
                f"{path.name}:{getattr(node, 'lineno', 0)} imports {name}"
            )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in BANNED_CALLS, f"{path.name}:{node.lineno} calls {node.func.id}()"


def test_importing_protocols_loads_no_io_library() -> None:
    """Transitive imports count too: import every module in a clean interpreter and look."""
    code = (
        "import sys, importlib, pkgutil, protocols\n"
        "for m in pkgutil.iter_modules(protocols.__path__): importlib.import_module('protocols.' + m.name)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in out.stdout.split()}
    for lib in (
        "smartcard",
        "nfc",
        "usb",
        "zmq",
        "structlog",
        "sqlalchemy",
        "pluggy",
        "readerd",
        "simulators",
    ):
        assert lib not in loaded, f"importing protocols loads {lib}"


def test_only_the_pcsc_backend_imports_pyscard() -> None:
    offenders = []
    for path in ROOT.glob("**/*.py"):
        rel = path.relative_to(ROOT)
        if (
            rel.parts[0] in {".venv", "build", "tests", "bench"}
            or rel.as_posix() == "readerd/reading/backends/pcsc.py"
        ):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            if any(m.split(".")[0] == "smartcard" for m in mods):
                offenders.append(str(rel))
    assert offenders == []
