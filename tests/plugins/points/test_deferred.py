"""A check-in accepted while the ward's PostgreSQL is down still earns its points, once, when it is back
(found by the soak: the earning used to be refused for good)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from plugins.points import PointsPlugin
from readerd.config import StoreConfig
from readerd.plugin.api import PluginContext, PluginEvent
from readerd.plugin.store import Store
from tests.support.postgres import PrivatePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def checked_in(reference: str) -> PluginEvent:
    data = {
        "event_id": "fest",
        "status": "accepted",
        "points": 50,
        "checkin_id": reference,
        "member_id": "M1",
    }
    return PluginEvent("plugin.checkin.result", 1, "id", "ts", "kiosk", "R", data)


def test_points_follow_an_offline_check_in(
    tmp_path: Path, postgres_url: str, postgres_cluster: PrivatePostgres
) -> None:
    published: list[tuple[str, dict[str, Any]]] = []
    config = StoreConfig(
        shared_url=postgres_url, connect_timeout=2, retries=1, retry_backoff=0.001, retry_backoff_max=0.01
    )
    with Store.open(config, tmp_path) as store:
        context = PluginContext(
            name="points",
            config={"earn_programme": "ward", "retry_interval": 3600},  # retried by hand below
            kiosk="k",
            store=store.for_plugin("points"),
            log=structlog.get_logger("test"),
            _publish=lambda plugin, event, data, reader: published.append((event, data)),
        )
        plugin = PointsPlugin()
        plugin.readerd_startup(context)
        try:
            plugin._service().define_programme(
                {
                    "programme_id": "ward",
                    "name": "w",
                    "last_earning_day": "2099-12-31",
                    "last_ticket_day": "2099-12-31",
                    "last_use_day": "2099-12-31",
                    "idempotency_key": "p",
                }
            )
            postgres_cluster.stop()
            try:
                plugin.readerd_plugin_result(checked_in("c-1"), context)
                plugin.readerd_plugin_result(checked_in("c-1"), context)  # the same result delivered again
                still_down = plugin.retry_deferred()
            finally:
                postgres_cluster.start()
            settled = plugin.retry_deferred()
            again = plugin.retry_deferred()
            balance = plugin._service().balance("member:M1")
        finally:
            plugin.readerd_shutdown()
    assert [event for event, _ in published] == ["earn_deferred", "earn_deferred", "earned"]
    assert still_down == 0
    assert (settled, again) == (1, 0)
    assert published[-1][1]["deferred"] is True
    assert balance == {"balances": {"ward": 50}}
