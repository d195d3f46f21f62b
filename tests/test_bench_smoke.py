"""The benchmarks still run and still print their numbers (docs/performance.md). No timing is asserted:
the figures depend on the machine; these tests only keep the benches from rotting."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.chromium import CHROMIUM
from tests.support.pcscd import missing_tools
from tests.support.postgres import missing_tools as missing_postgres

ROOT = Path(__file__).resolve().parent.parent


def run_bench(
    *args: str, timeout: float = 90, tmpdir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``tmpdir``: the bench's temporary directory (``TMPDIR``), to see that it leaves nothing there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    env.pop("PCSCLITE_CSOCK_NAME", None)  # the suite's own private pcscd; a bench starts its own
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_bench_lists_the_benchmarks() -> None:
    done = run_bench("bench")
    assert done.returncode == 0, done.stderr
    assert "plugin_pipeline" in done.stdout
    assert "tap_latency" in done.stdout


def test_plugin_pipeline_prints_taps_and_raw_messages_per_second(tmp_path) -> None:
    out = tmp_path / "pipeline.json"
    work = tmp_path / "tmp"
    work.mkdir()
    args = ("--quick", "--taps", "5", "--runs", "1", "--json", str(out))
    done = run_bench("bench.plugin_pipeline", *args, tmpdir=work)
    assert done.returncode == 0, done.stderr
    assert list(work.iterdir()) == []  # the daemon's state directory went with the run
    number = r"\|\s*([\d,]+(?:\.\d+)?)\s*\|"
    taps = re.search(r"\| taps through daemon -> bus -> host -> 4 no-op plugins [^|]*" + number, done.stdout)
    raw = re.search(r"\| raw pyzmq PUB/SUB messages[^|]*" + number, done.stdout)
    assert taps, done.stdout
    assert raw, done.stdout
    assert float(taps.group(1).replace(",", "")) > 0
    assert float(raw.group(1).replace(",", "")) > 0
    assert "ratio raw msgs/s : taps/s" in done.stdout
    result = json.loads(out.read_text())
    assert result["pipeline"]["taps_per_s"]["median"] > 0
    assert result["raw_pubsub"]["msgs_per_s"]["median"] > 0
    assert result["payload_bytes"]["private"] > result["payload_bytes"]["public"] > 0
    assert result["daemon"]["plugin_calls"] >= 4 * 5
    assert not result["daemon"]["bus_dropped"]
    # the daemon's threads apart from the bench's driver (its own thread and its zmq context's)
    pipe = result["pipeline"]
    assert pipe["driver_threads"] >= 2
    assert 0 < pipe["daemon_cpu_ms_per_tap"]["median"] < pipe["cpu_ms_per_tap"]["median"]
    assert pipe["sim_card_build_cpu_ms_per_tap"]["median"] > 0
    assert {"bus", "plugin-host", "backend-sim"} <= set(pipe["daemon_cpu_by_thread_ms_per_tap"])
    assert result["daemon_cpu_per_tap_in_raw_messages"]["median"] > 0
    assert "raw messages' worth" in done.stdout
    # taps as a reader's detection; the same taps as control requests beside them, in alternating runs
    assert pipe["tap_via"] == "reader"
    control = pipe["by_control_request"]
    assert len(control["taps_per_s"]["runs"]) == len(pipe["taps_per_s"]["runs"]) == 1
    assert 0 < control["daemon_cpu_ms_per_tap"]["median"] < control["cpu_ms_per_tap"]["median"]
    assert result["daemon_cpu_per_tap_in_raw_messages_by_control_request"]["median"] > 0
    assert "the same taps as the control request `tap`" in done.stdout


@pytest.mark.pcscd
def test_tap_latency_prints_its_numbers() -> None:
    missing = missing_tools()
    if missing:
        message = f"bench.tap_latency needs {', '.join(missing)} (scripts/bootstrap --test installs them)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(message)
        pytest.skip(message)
    # A short directory: pcscd's socket path must fit a Unix socket address (108 bytes).
    with tempfile.TemporaryDirectory(prefix="rdtl-") as tmp:
        done = run_bench("bench.tap_latency", "--taps", "1", "--runs", "2", tmpdir=Path(tmp))
        left = sorted(p.name for p in Path(tmp).iterdir())
    assert done.returncode == 0, done.stderr
    assert left == []  # its work directory (the test PKI's keys, pcscd's log) went with the run
    # The daemon's log lines share stdout with the result (structlog's default when logging is not
    # configured): the result is the JSON object that closes the output.
    found = re.search(r"^\{$.*", done.stdout, re.MULTILINE | re.DOTALL)
    assert found, done.stdout
    result = json.loads(found.group(0))
    assert result["daemon_first_apdu_to_event"]["n"] == 2  # 2 runs of 1 tap
    assert result["bare_pyscard_identification_apdus"]["n"] == 2
    assert result["apdus_per_identification"] == [2]  # the bare rounds are not counted as taps
    overhead = result["overhead_ms"]
    assert len(overhead["runs"]) == 2
    assert overhead["min"] <= overhead["max"]
    daemon_p50 = result["daemon_first_apdu_to_event"]["p50_ms"]
    bare_p50 = result["bare_pyscard_identification_apdus"]["p50_ms"]
    assert overhead["p50"] == pytest.approx(daemon_p50 - bare_p50, abs=0.002)  # each rounded to 1 us
    idle = result["bare_after_idle"]  # the same pairs, each after the idle a tap comes after
    assert (idle["n"], idle["idle_s"]) == (2, 0.4)
    idle_over = daemon_p50 - idle["p50_ms"]
    assert result["overhead_over_idle_floor_ms"] == pytest.approx(idle_over, abs=0.002)
    assert result["card_build_ms"] > 0


@pytest.mark.timeout(60)
def test_web_screen_times_the_parts_from_the_first_apdu(tmp_path: Path) -> None:
    """``bench.web_screen --taps 2``: 2 taps (after a warm-up) into headless chromium, about 5 s."""
    if not Path(CHROMIUM).exists() or importlib.util.find_spec("playwright") is None:
        message = "bench.web_screen needs chromium and playwright (scripts/bootstrap --test installs them)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path / "web.json"
    done = run_bench("bench.web_screen", "--taps", "2", "--json", str(out), timeout=50)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["taps"] == 2
    parts = result["parts"]
    assert list(parts) == [
        "first_apdu_to_identified",
        "identified_to_handled",
        "handled_to_pixels",
        "first_apdu_to_pixels",
    ]
    for part in parts.values():  # a part is a difference of two clocks' stamps: no sign asserted
        assert part["p50_ms"] <= part["p90_ms"] <= part["max_ms"], part
        assert f"| {part['what']} | {part['p50_ms']} |" in done.stdout
    # the whole is at least its largest part (each p50 is over the same taps)
    whole = parts["first_apdu_to_pixels"]["p50_ms"]
    assert whole > 0
    assert whole >= max(p["p50_ms"] for k, p in parts.items() if k != "first_apdu_to_pixels")
    assert result["p50_ms"] == whole
    assert result["card_build_ms_per_card"] > 0  # built before the run, reported apart


@pytest.mark.timeout(120)
def test_plugins_db_prints_redemptions_on_both_backends(tmp_path: Path) -> None:
    out = tmp_path / "db.json"
    done = run_bench(
        "bench.plugins_db",
        "--quick",
        "--kiosks",
        "1,2",
        "--runs",
        "1",
        "--requests",
        "3",
        "--baseline-inserts",
        "20",
        "--dir",
        str(tmp_path),
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    number = r"\|\s*([\d,]+(?:\.\d+)?)\s"
    for backend in ("sqlite", "postgresql"):
        skipped = re.search(rf"^\| {backend} \| skipped: ([^|]*)", done.stdout, re.MULTILINE)
        if skipped:
            in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
            assert backend == "postgresql", done.stdout
            assert not in_ci, f"PostgreSQL skipped under CI: {skipped.group(1)}"
            assert missing_postgres(), done.stdout  # skipped only when the tools are really missing
            continue
        for scenario in ("many", "hot"):
            for kiosks in (1, 2):
                line = re.search(
                    rf"^\| {backend} \| {scenario} \| {kiosks} " + number, done.stdout, re.MULTILINE
                )
                assert line, done.stdout
                assert float(line.group(1).replace(",", "")) > 0
        assert re.search(rf"^\| {backend} \| baseline: ", done.stdout, re.MULTILINE), done.stdout
    assert "ledger check: ok on every run" in done.stdout
    result = json.loads(out.read_text())
    assert result["ledger_ok"] is True
    sqlite = result["backends"]["sqlite"]["scenarios"]["hot/2"]
    assert sqlite["ok"] == 2 * 3
    assert sqlite["redemptions_per_s"]["median"] > 0


@pytest.mark.timeout(150)
def test_fleet_prints_tap_to_result_with_postgres_cpu_apart(tmp_path: Path) -> None:
    """``bench.fleet --quick`` with 2 kiosk processes (one of them a bath house) on a private PostgreSQL:
    about 20 s (the cluster, two kiosks, 6 citizens registered, a 4 s human-rate phase, a 2 s burst)."""
    out = tmp_path / "fleet.json"
    done = run_bench("bench.fleet", "--quick", "--kiosks", "2", "--json", str(out), timeout=140)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    if "skipped" in result:
        assert os.environ.get("CI", "").lower() in ("", "0", "false", "no"), result["skipped"]
        assert missing_postgres(), result["skipped"]  # skipped only when the tools are really missing
        pytest.skip(f"bench.fleet: {result['skipped']}")
    assert result["baseline"]["select1"]["p50_ms"] > 0
    assert result["baseline"]["insert_commit"]["per_s"] > 0
    [fleet] = result["fleets"]
    assert (fleet["kiosks"], fleet["bath_kiosks"]) == (2, 1)
    assert set(fleet["exit_codes"].values()) == {0}, fleet["exit_codes"]
    for mode in ("human", "burst"):
        phase = fleet["phases"][mode]
        assert phase["results"] > 0, phase
        assert phase["results_per_s"] > 0
        assert phase["tap_to_result"]["n"] == phase["results"]
        assert 0 < phase["tap_to_result"]["p50_ms"] <= phase["tap_to_result"]["p99_ms"]
        assert phase["tap_to_bath_visit"]["n"] > 0  # the bath-house kiosk's second result
        assert phase["pg_select1_during"]["n"] > 0
        cpu = phase["cpu"]
        assert {"postgres_s", "kiosks_s", "driver_s", "machine_busy_s", "other_s"} <= set(cpu)
        assert set(cpu["per_result_ms"]) == {"postgres", "kiosks", "driver", "machine_busy", "other"}
        assert cpu["postgres_s"] > 0
        assert cpu["kiosks_s"] > 0
        assert not [k for k in phase["other"] if k.startswith("tap refused")], phase
    assert re.search(r"^\| 2 \| burst \| \d+ \|", done.stdout, re.MULTILINE), done.stdout


def test_bench_all_writes_a_table_and_a_plot(tmp_path) -> None:
    """``python -m bench all`` (bench/run_all.py): every bench but those tested above, one quick run."""
    done = run_bench(
        "bench",
        "all",
        "--quick",
        "--runs",
        "1",
        "--skip",
        "tap_latency",
        "plugins_db",
        "fleet",
        "web_screen",
        "--out",
        str(tmp_path),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "results.md").read_text()
    for bench in ("plugin_pipeline", "bus", "startup"):
        assert f"| {bench} |" in table, table
    assert "Not run: tap_latency, plugins_db, fleet, web_screen." in table
    assert "| plugin_pipeline | CPU per tap, the daemon's threads |" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert all(row["ratios"] and row["baselines"] for row in rows)
