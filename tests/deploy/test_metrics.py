"""The Prometheus endpoint: scraped over HTTP after simulated taps and parsed with prometheus_client's
own parser; the counters from constructed envelopes; the loopback rule; a port in use."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import zmq
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from readerd.cli import ctl
from readerd.config import Config, MetricsConfig, PluginsConfig
from readerd.daemon import Daemon
from readerd.errors import BusError, ConfigError, MetricsUnavailableError
from readerd.ops import metrics as metrics_module
from readerd.ops.metrics import DaemonView, Metrics, MetricsServer
from tests.support.daemon import running_daemon, sim_config

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own loopback endpoint
        assert response.headers["Content-Type"].startswith("text/plain")
        return _samples(response.read().decode())


def _scrape_until(url: str, done: Callable[[Samples], bool]) -> Samples:
    while not done(samples := _scrape(url)):  # bounded by the suite's pytest-timeout
        time.sleep(0.02)
    return samples


# --- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("", None),
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_addresses(listen: str, address: tuple[str, int] | None) -> None:
    assert MetricsConfig(listen=listen).address() == address


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9464", "192.0.2.7:9464", "[::]:9464", "9464", "kiosk:9464", "127.0.0.1:70000"]
)
def test_refused_addresses(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        Config(metrics=MetricsConfig(listen=listen)).validate()


def test_non_loopback_only_when_allowed() -> None:
    allowed = MetricsConfig(listen="192.0.2.7:9464", allow_non_loopback=True)
    assert allowed.address() == ("192.0.2.7", 9464)


# --- the endpoint of a running daemon --------------------------------------------------------------
def test_scrape_after_simulated_taps(tmp_path: Any) -> None:
    config = sim_config(tmp_path, metrics=MetricsConfig(listen="127.0.0.1:0"))
    with running_daemon(config) as d:
        server = d.daemon.metrics
        assert server is not None
        url = server.address
        assert url.startswith("http://127.0.0.1:")
        assert not url.endswith(":0/metrics")
        d.tap("alice", hold=False)
        d.tap("bob", reader="Sim 01", hold=False)
        d.tap("carol", faults=[{"action": "remove", "after_apdus": 1}])  # pulled mid-read: aborted
        samples = _scrape_until(
            url, lambda s: _value(s, "readerd_tap_to_event_seconds_count", outcome="aborted") >= 1
        )
        caught_up = d.request("events.since", {"seq": 0, "limit": 3})  # a subscriber catching up
        since = _scrape(url)
    assert _value(samples, "readerd_taps_total", reader="Sim 00", kind="jpki") == 2
    assert _value(samples, "readerd_taps_total", reader="Sim 01", kind="jpki") == 1
    assert _value(samples, "readerd_identifications_total", kind="jpki") == 2
    aborted = {labels: v for (name, labels), v in samples.items() if name == "readerd_reads_aborted_total"}
    assert sum(aborted.values()) == 1
    assert _value(samples, "readerd_tap_to_event_seconds_count", outcome="identified") == 2
    assert _value(samples, "readerd_tap_to_event_seconds_bucket", outcome="identified", le="+Inf") == 2
    assert _value(samples, "readerd_reader_up", reader="Sim 00", backend="sim") == 1
    assert _value(samples, "readerd_reader_up", reader="Sim 01", backend="sim") == 1
    assert _value(samples, "readerd_events_published_total") >= 9
    assert _value(samples, "readerd_healthy") == 1
    assert _value(samples, "readerd_bus_queue_depth") >= 0
    assert caught_up["ok"], caught_up
    peer = f"uid:{os.getuid()}"  # the tests' control endpoint is the local role socket
    assert _value(since, "readerd_events_since_answers_total", peer=peer) == 1  # counted per caller
    assert _value(since, "readerd_events_since_events_total", peer=peer) == 3
    assert not any(name == "readerd_events_dropped_total" for name, _labels in since)  # nothing dropped
    label_values = {value for (_name, labels) in samples for _key, value in labels}
    assert not {"alice", "bob", "carol"} & label_values  # no personal data in any label


def test_scrape_counts_taps_with_the_split_plugin_host(tmp_path: Any) -> None:
    """Without the embedded host the private feed is an ipc socket: the metrics follow it there (they
    subscribed to the in-process endpoint, which is not bound then, and counted nothing)."""
    config = sim_config(
        tmp_path, metrics=MetricsConfig(listen="127.0.0.1:0"), plugins=PluginsConfig(enabled=False)
    )
    with running_daemon(config) as d:
        server = d.daemon.metrics
        assert server is not None
        d.tap("alice", hold=False)
        samples = _scrape_until(
            server.address, lambda s: _value(s, "readerd_identifications_total", kind="jpki") >= 1
        )
    assert _value(samples, "readerd_taps_total", reader="Sim 00", kind="jpki") == 1
    assert _value(samples, "readerd_identifications_total", kind="jpki") == 1


def test_no_endpoint_unless_configured(tmp_path: Any) -> None:
    with running_daemon(sim_config(tmp_path)) as d:
        assert d.daemon.metrics is None


def test_a_port_in_use_is_a_bus_error(tmp_path: Any) -> None:
    """Like a bus bind failure: the command line maps BusError to exit 69."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = sim_config(tmp_path, metrics=MetricsConfig(listen=f"127.0.0.1:{port}"))
        with pytest.raises(MetricsUnavailableError) as raised:
            Daemon(config).run()
    assert isinstance(raised.value, BusError)


# --- counters from envelopes -----------------------------------------------------------------------
def _env(
    event_type: str, reader: str | None = None, ts: str = "2026-06-01T03:00:00.000Z", /, **data: object
) -> dict[str, Any]:
    return {"type": event_type, "reader": reader, "ts": ts, "data": data}


def test_counters_from_envelopes() -> None:
    view = DaemonView(
        published=lambda: 41,
        dropped=lambda: {"card.identified": 2, "reader.added": 5},
        queue_depth=lambda: 3,
        healthy=lambda: False,
        since_by_peer=lambda: {
            "key:counter-1": {"answers": 4, "events": 1200},
            "tcp": {"answers": 1, "events": 0},
        },
    )
    metrics = Metrics(view)
    for envelope in (
        _env("reader.added", "R1", backend="pcsc"),
        _env("card.presented", "R1", kind="jpki"),
        _env("card.identified", "R1", "2026-06-01T03:00:00.240Z", kind="jpki"),
        _env("card.presented", "R1", "2026-06-01T03:00:05.000Z", kind="felica"),
        _env("card.read_aborted", "R1", "2026-06-01T03:00:06.500Z", kind="felica", reason="timeout"),
        _env("reader.error", "R1", backend="pcsc", reason="wedged"),
        _env("plugin.error", None, plugin="points", hook="readerd_card_identified", error="timeout"),
        _env("card.authenticated", "R1"),
        _env("card.auth_failed", "R1", reason="wrong_pin"),
        _env("reader.removed", "R1", backend="pcsc"),
        _env("heartbeat", None),
    ):
        metrics.observe(envelope)
    s = _samples(generate_latest(metrics.registry).decode())
    assert _value(s, "readerd_taps_total", reader="R1", kind="jpki") == 1
    assert _value(s, "readerd_taps_total", reader="R1", kind="felica") == 1
    assert _value(s, "readerd_reads_aborted_total", reason="timeout") == 1
    assert _value(s, "readerd_tap_to_event_seconds_bucket", outcome="identified", le="0.2") == 0
    assert _value(s, "readerd_tap_to_event_seconds_bucket", outcome="identified", le="0.3") == 1
    assert _value(s, "readerd_tap_to_event_seconds_sum", outcome="aborted") == pytest.approx(1.5)
    assert _value(s, "readerd_reader_up", reader="R1", backend="pcsc") == 0  # removed
    assert _value(s, "readerd_reader_errors_total", backend="pcsc", reason="wedged") == 1
    assert _value(s, "readerd_plugin_errors_total", plugin="points", error="timeout") == 1
    assert _value(s, "readerd_authentications_total", result="ok") == 1
    assert _value(s, "readerd_authentications_total", result="wrong_pin") == 1
    assert _value(s, "readerd_events_published_total") == 41
    assert _value(s, "readerd_events_dropped_total", type="card.identified") == 2
    assert _value(s, "readerd_events_dropped_total", type="reader.added") == 5
    assert _value(s, "readerd_events_since_answers_total", peer="key:counter-1") == 4
    assert _value(s, "readerd_events_since_events_total", peer="key:counter-1") == 1200
    assert _value(s, "readerd_events_since_answers_total", peer="tcp") == 1
    assert _value(s, "readerd_bus_queue_depth") == 3
    assert _value(s, "readerd_healthy") == 0


def test_a_silent_feed_does_not_hold_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the private feed never speaks (a broken bus), the daemon still starts; the watchdog handles
    the bus, not the metrics."""
    monkeypatch.setattr(metrics_module, "START_TIMEOUT", 0.2)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    server = MetricsServer(Metrics(), "127.0.0.1", 0)
    try:
        server.start("inproc://nobody-publishes-here", context, lambda: None)
        samples = _scrape(server.address)
        assert ("readerd_taps_total", ()) not in samples  # served, and nothing counted
    finally:
        server.stop()
        context.term()


def test_bus_subscribers_are_counted(tmp_path: Any) -> None:
    """Connections to the public PUB, from the bus's socket monitor: up with a subscriber, down again."""
    config = sim_config(tmp_path, metrics=MetricsConfig(listen="127.0.0.1:0"))
    with running_daemon(config) as d:
        server = d.daemon.metrics
        assert server is not None

        def subscribers(s: Samples) -> float:
            return _value(s, "readerd_bus_subscribers")

        _scrape_until(server.address, lambda s: subscribers(s) == 0)
        with d.subscriber(), d.subscriber("card."):
            _scrape_until(server.address, lambda s: subscribers(s) == 2)
            assert d.request("status")["result"]["subscribers"] == 2
        _scrape_until(server.address, lambda s: subscribers(s) == 0)


def test_readerctl_status_shows_the_subscribers(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber():
        assert ctl.main(["--control", d.control, "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "subscribers: 1" in [line.strip() for line in lines]
