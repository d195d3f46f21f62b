"""``readerd migrate [--contract]``: the operator's schema step, run in-process on a configuration that
loads a test plugin as a built-in (the plugin migrates in ``readerd_startup``, as the hook reference shows).

Every test with a database runs on SQLite and on a private PostgreSQL (the ``backend`` fixture).
Cost: about 2 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from readerd.cli.main import INTERRUPTED_EXIT, MIGRATE_FAILED_EXIT, main
from readerd.exitcodes import ExitCode
from readerd.plugin import PluginContext, hookimpl, loader
from readerd.plugin.host import PluginHost
from tests.store.conftest import Backend
from tests.store.test_rolling_upgrade import NEW, OLD, people_v1

pytestmark = pytest.mark.timeout(60)


class PeoplePlugin:
    """The "people" plugin of test_rolling_upgrade, at the version ``[plugins.people] version`` names."""

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        assert context.store is not None
        context.store.shared.migrate(NEW if context.config.get("version") == "new" else OLD)


@pytest.fixture(autouse=True)
def people_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(loader.BUILTIN, "people", f"{__name__}:PeoplePlugin")


def configure(tmp_path: Path, shared_url: str, version: str) -> str:
    path = tmp_path / f"readerd-{version}.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[store]\nshared_url = "{shared_url}"\n'
        f'[plugins]\nbuiltins = ["people"]\n[plugins.people]\nversion = "{version}"\n',
        encoding="utf-8",
    )
    return str(path)


def migrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["migrate", *args])
    return code, capsys.readouterr().out


def shared_url(backend: Backend) -> str:
    return backend.config.shared_url


def test_migrate_applies_expand_reports_and_contract_only_when_asked(
    backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state").mkdir()
    new, old = (
        configure(tmp_path, shared_url(backend), "new"),
        configure(tmp_path, shared_url(backend), "old"),
    )
    if not backend.pg:  # SQLite: the shared store is the state directory's file, as the backend's is
        backend.state_dir = tmp_path / "state"
    backend.open().for_plugin("archive").shared.migrate([people_v1])  # a plugin this configuration lacks
    capsys.readouterr()  # the store's log lines, on stdout before logging is configured

    code, out = migrate(capsys, "--config", new, "--json")
    assert code == ExitCode.OK
    report = json.loads(out)
    assert report["ok"] is True
    assert report["contract"] is False
    [run] = report["runs"]
    assert (run["plugin"], run["role"], run["before"], run["after"], run["known"]) == (
        "people",
        "shared",
        0,
        3,
        4,
    )
    assert run["applied"] == [1, 2, 3]
    assert run["held_back"] == [{"version": 4, "name": "people_v4", "kind": "contract"}]
    assert [(s["plugin"], s["version"]) for s in report["not_reached"]] == [("archive", 1)]

    code, out = migrate(capsys, "--config", new)  # the same, for people: nothing left to apply
    assert code == ExitCode.OK
    assert ": version 3, this code knows 4: nothing applied" in out
    assert "  held back: v4 (people_v4) is a contract migration\n" in out
    assert "next: once every kiosk of the ward runs this version, `readerd migrate --contract`" in out
    assert "archive shared" in out

    code, out = migrate(capsys, "--config", old)  # a kiosk not upgraded yet still runs
    assert code == ExitCode.OK
    assert ": version 3, this code knows 2: the database is ahead by expand migrations" in out

    code, out = migrate(capsys, "--config", new, "--contract", "--json")
    assert code == ExitCode.OK
    [run] = json.loads(out)["runs"]
    assert (run["before"], run["after"], run["applied"], run["held_back"]) == (3, 4, [4], [])

    code, out = migrate(capsys, "--config", old, "--json")  # the old version is now refused
    assert code == MIGRATE_FAILED_EXIT
    report = json.loads(out)
    assert report["ok"] is False
    assert report["runs"] == []
    [failure] = report["failures"]
    assert failure["plugin"] == "people"
    assert failure["hook"] == "readerd_startup"
    assert "version 4 (people_v4) beyond it is a contract migration" in str(failure["message"])


def test_migrate_with_the_shared_database_down_exits_69(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = configure(tmp_path, "postgresql+psycopg://readerd@127.0.0.1:1/readerd", "new")
    (tmp_path / "state").mkdir()
    code, out = migrate(capsys, "--config", config, "--json")
    assert code == ExitCode.UNAVAILABLE
    report = json.loads(out)
    assert report["runs"] == []
    assert {f["error"] for f in report["failures"]} == {"store_unavailable"}


def test_migrate_without_a_usable_local_store_exits_69(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = configure(tmp_path, "", "new")  # the state directory does not exist
    code, out = migrate(capsys, "--config", config, "--json")
    assert code == ExitCode.UNAVAILABLE
    [failure] = json.loads(out)["failures"]
    assert failure["error"] == "store_unavailable"
    assert "local store" in str(failure["message"])


def test_ctrl_c_ends_migrate_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: PluginHost) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(PluginHost, "load", interrupted)
    config = configure(tmp_path, "", "new")
    (tmp_path / "state").mkdir()
    assert main(["migrate", "--config", config]) == INTERRUPTED_EXIT
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "interrupted; a migration under way is rolled back" in captured.err


def test_migrate_help_names_the_operator_role_and_the_contract_step(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["migrate", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Operator role: it needs the configuration" in out
    assert "credentials of [store] shared_url" in out
    assert "--contract also apply contract migrations" in out
