"""PostgreSQL faults are bounded below ``hook_timeout``: ``statement_timeout``, ``tcp_user_timeout`` and
keepalives on every connection; a cancelled statement is ``store_unavailable``, never a quarantine; the
configuration keeps ``statement_timeout`` below ``hook_timeout``. Cost: about 3 s in all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from readerd.config import IdentityConfig, PluginsConfig, StoreConfig, load_config
from readerd.errors import ConfigError, StoreUnavailableError
from readerd.exitcodes import ExitCode
from readerd.ops.database import postgres_connect_args
from readerd.ops.keys import create_pseudonym_key
from readerd.plugin.api import PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.store import PluginStore, Store
from tests.store.conftest import FAST
from tests.support.daemon import running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "readerd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_connect_args_are_derived_from_statement_timeout() -> None:
    """Cost: < 0.01 s."""
    args = postgres_connect_args(StoreConfig(statement_timeout=3.0, busy_timeout=5.0))
    assert args["options"] == "-c lock_timeout=1500 -c statement_timeout=3000"
    assert (args["tcp_user_timeout"], args["keepalives"], args["keepalives_count"]) == (3000, 1, 2)
    assert args["keepalives_idle"] == args["keepalives_interval"] == 1
    fast = postgres_connect_args(StoreConfig(statement_timeout=0.4, busy_timeout=0.05))
    assert fast["options"] == "-c lock_timeout=50 -c statement_timeout=400"


def test_statement_timeout_must_stay_below_hook_timeout(tmp_path: Path) -> None:
    """Cost: ~0.05 s. Checked at load (exit 78), naming the values; without shared_url it is unused. The
    bound is statement_timeout plus the effective connect_timeout (a stale connection's check, then a
    new connection), so the defaults (2.5 + 2) fit under the default hook_timeout (5)."""
    text = '[store]\nshared_url = "postgresql+psycopg://readerd@db/readerd"\nstatement_timeout = 3\n'
    with pytest.raises(
        ConfigError, match=r"store.statement_timeout = 3 .*effective 2.*plugins.hook_timeout = 5"
    ):
        load_config(write(tmp_path, text)).validate()
    ok = load_config(write(tmp_path, text + "[plugins]\nhook_timeout = 6\n")).validate()
    assert ok.store.statement_timeout == 3.0
    slow_connect = text.replace("statement_timeout = 3", "statement_timeout = 1\nconnect_timeout = 4.5")
    with pytest.raises(ConfigError, match=r"effective 5"):
        load_config(write(tmp_path, slow_connect)).validate()
    load_config(write(tmp_path, '[store]\nshared_url = "postgresql+psycopg://r@db/r"\n')).validate()
    load_config(write(tmp_path, "[store]\nstatement_timeout = 9\n")).validate()
    from readerd.cli.main import main  # noqa: PLC0415

    assert main(["run", "--config", str(write(tmp_path, text))]) == ExitCode.CONFIG  # 78


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[store]\nstatement_timeout = 0\n", "store.statement_timeout"),
        ("[plugins]\nquarantine_cooldown = -1\n", "plugins.quarantine_cooldown"),
    ],
)
def test_bad_timeouts_stop_the_start(tmp_path: Path, text: str, message: str) -> None:
    """Cost: < 0.01 s each."""
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text)).validate()


@pytest.mark.postgres
def test_a_statement_past_statement_timeout_is_unavailable_not_retried(
    tmp_path: Path, postgres_url: str
) -> None:
    """Cost: ~0.5 s. SQLSTATE 57014 (query_canceled) is class 57: unavailable, one attempt; the
    connection carries tcp_user_timeout and keepalives."""
    config = StoreConfig(**{**vars(FAST), "shared_url": postgres_url, "statement_timeout": 0.3})
    with Store.open(config, tmp_path) as store:
        shared = store.shared
        with shared.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "300ms"
            params = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        assert (params["tcp_user_timeout"], params["keepalives"]) == ("300", "1")
        with pytest.raises(StoreUnavailableError, match="canceling statement due to statement timeout"):
            shared.transaction(lambda c: c.exec_driver_sql("SELECT pg_sleep(5)"))
        assert (shared.stats.unavailable, shared.stats.retries) == (1, 0)
        assert shared.transaction(lambda c: c.exec_driver_sql("SELECT 1").scalar_one()) == 1  # usable again


class Sleeper:
    """Each tap runs a statement longer than statement_timeout on the shared PostgreSQL."""

    def __init__(self) -> None:
        self.store: PluginStore | None = None

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        self.store = context.store

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        assert self.store is not None
        self.store.shared.transaction(lambda c: c.execute(sa.text("SELECT pg_sleep(3)")))


@pytest.mark.postgres
def test_a_hook_past_statement_timeout_is_store_unavailable_never_quarantined(
    tmp_path: Path, postgres_url: str
) -> None:
    """Cost: ~2 s (a daemon, three taps of 0.3 s)."""
    store = StoreConfig(shared_url=postgres_url, statement_timeout=0.3)
    plugins = PluginsConfig(autoload=False, hook_timeout=3.0, quarantine_after=2)  # > 0.3 + connect 2
    key = tmp_path / "pseudonym.key"  # a ward (shared_url) needs its deployment key
    create_pseudonym_key(key)
    config = sim_config(tmp_path, plugins=plugins, store=store, identity=IdentityConfig(str(key)))
    errors: list[dict[str, Any]] = []
    with (
        running_daemon(config, plugins={"sleeper": Sleeper()}) as d,
        d.subscriber("plugin.error") as sub,
    ):
        for _ in range(3):
            d.tap("alice", hold=False)
            errors.append(sub.next(timeout=5)["data"])
        info = next(p for p in d.request("plugins")["result"]["plugins"] if p["name"] == "sleeper")
    assert [(e["error"], e["quarantined"]) for e in errors] == [("store_unavailable", False)] * 3
    assert "statement timeout" in errors[0]["message"]
    assert (info["quarantined"], info["failures_in_a_row"], info["store_failures"]) == (None, 0, 3)
