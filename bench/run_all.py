"""Every benchmark, several times: a markdown table and a PNG plot in bench/results/ (`python -m bench all`).

Each benchmark runs as its own process (``python -m bench.NAME ... --json``), ``--runs`` times in turn,
and every figure is taken with the baseline measured in the same process, so each run gives a ratio of
its own; the table reports, over the runs, the median and the spread (min-max) of the figure, of its
baseline and of their ratio. The plot shows the ratios (median, with the min-max as an error bar).

Figures and baselines (docs/performance.md says what each number means):

- ``tap_latency`` (needs pcscd + vpcd): first APDU -> ``card.identified`` on a SUB socket, p50, against
  bare pyscard sending the same two APDUs; the overhead (daemon p50 - bare p50, 5 runs of 40 taps) against
  the bare p50; APDUs per identification against the short-APDU path for the same certificate.
- ``plugin_pipeline``: taps/s through daemon -> bus -> plugin host -> 4 no-op plugins, against raw pyzmq
  PUB/SUB messages/s with the same payload (the ratio: raw messages in the time of one tap); CPU per tap
  of the whole process and of the daemon's own threads, against raw pyzmq CPU per message.
- ``bus``: events/s and p50 latency of readerd's bus against raw pyzmq, 1 and 10 subscribers, CURVE off
  and on.
- ``plugins_db``: points redemptions/s on SQLite and PostgreSQL, 1 and 4 kiosk processes, many accounts
  and one hot account, against a bare INSERT + COMMIT loop in the same database.
- ``startup``: spawn -> ``READY=1`` and VmRSS of ``readerd run --simulate`` with 1, 8 and 32 simulated
  readers, against a bare Python importing the same libraries.
- ``fleet``: 8 kiosk processes on one PostgreSQL, a human-rate phase and a burst: tap -> check-in result
  p50 against a bare ``SELECT 1`` round trip, results/s of the burst against bare INSERT + COMMIT/s,
  PostgreSQL's CPU per result against its CPU per bare INSERT + COMMIT (32 kiosks: ``python -m
  bench.fleet`` on its own).
- ``web_screen`` (needs chromium): first APDU -> the kiosk page's frame with the composed result, p50,
  against its target (50 ms: no baseline is measured; the ratio is the fraction of the target).

Run: ``python -m bench all [--runs 3] [--quick] [--skip tap_latency] [--out bench/results]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BENCHES = ("tap_latency", "plugin_pipeline", "bus", "plugins_db", "startup", "fleet", "web_screen")


@dataclass(frozen=True)
class Figure:
    """One measured figure of one run, with the baseline measured beside it."""

    bench: str
    name: str
    unit: str
    value: float
    baseline_name: str
    baseline: float
    higher_is_better: bool = False

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else math.nan


def _args(name: str, quick: bool) -> list[str]:
    if name == "tap_latency":  # 5 runs of 40 taps (about 3 min): the overhead over 200 taps
        return ["--quick"] if quick else []
    if name == "plugin_pipeline":
        return ["--quick", "--taps", "20", "--runs", "1", "--messages", "5000"] if quick else ["--runs", "1"]
    if name == "bus":
        return ["--quick", "--subscribers", "1"] if quick else ["--subscribers", "1", "10"]
    if name == "plugins_db":
        if quick:
            return [
                "--quick",
                "--kiosks",
                "1,2",
                "--runs",
                "1",
                "--requests",
                "3",
                "--baseline-inserts",
                "20",
            ]
        return ["--kiosks", "1,4", "--runs", "1", "--requests", "50"]
    if name == "startup":
        return ["--runs", "1", "--readers", "1"] if quick else ["--runs", "3"]
    if name == "fleet":  # about 1 min a run (8 kiosks); the 32-kiosk fleet is not part of `all`
        if quick:
            return ["--quick", "--kiosks", "2"]
        return [
            "--kiosks",
            "8",
            "--seconds",
            "20",
            "--burst-seconds",
            "8",
            "--citizens",
            "200",
            "--settle",
            "0",
        ]
    if name == "web_screen":
        return ["--quick"] if quick else ["--taps", "30"]
    raise ValueError(name)


def run_bench(name: str, quick: bool, work: Path) -> dict[str, Any]:
    """One run of one bench in its own process; its JSON result."""
    out = work / f"{name}.json"
    command = [sys.executable, "-m", f"bench.{name}", *_args(name, quick)]
    if name != "tap_latency":
        command += ["--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PCSCLITE_CSOCK_NAME", None)  # a bench starts its own private pcscd
    done = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench {name} exited {done.returncode}:\n{done.stderr[-3000:]}")
    if name == "tap_latency":  # the result is the JSON object that closes stdout
        found = re.search(r"^\{$.*", done.stdout, re.MULTILINE | re.DOTALL)
        if found is None:
            raise RuntimeError(f"bench tap_latency printed no result:\n{done.stdout[-3000:]}")
        result: dict[str, Any] = json.loads(found.group(0))
        return result
    loaded: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return loaded


def figures_of(name: str, result: dict[str, Any]) -> list[Figure]:
    extract: dict[str, Callable[[dict[str, Any]], list[Figure]]] = {
        "tap_latency": _tap_latency,
        "plugin_pipeline": _plugin_pipeline,
        "bus": _bus,
        "plugins_db": _plugins_db,
        "startup": _startup,
        "fleet": _fleet,
        "web_screen": _web_screen,
    }
    return extract[name](result)


def _tap_latency(r: dict[str, Any]) -> list[Figure]:
    apdus = max(r["apdus_per_identification"])
    short_path = 3 + math.ceil(r["certificate_bytes"] / 256)  # SELECT AP, SELECT EF, header, chunks
    return [
        Figure(
            "tap_latency",
            "first APDU -> card.identified, p50",
            "ms",
            r["daemon_first_apdu_to_event"]["p50_ms"],
            "bare pyscard, the same 2 APDUs, p50",
            r["bare_pyscard_identification_apdus"]["p50_ms"],
        ),
        Figure(
            "tap_latency",
            f"overhead: daemon p50 - bare p50, {r['runs']} x {r['taps']} taps",
            "ms",
            r["overhead_ms"]["p50"],
            "bare pyscard, the same 2 APDUs, p50",
            r["bare_pyscard_identification_apdus"]["p50_ms"],
        ),
        *(
            [
                Figure(
                    "tap_latency",
                    f"overhead over the idle floor (each bare pair after {r['bare_after_idle']['idle_s']} s)",
                    "ms",
                    r["overhead_over_idle_floor_ms"],
                    "bare pyscard after idle, p50",
                    r["bare_after_idle"]["p50_ms"],
                )
            ]
            if "bare_after_idle" in r
            else []
        ),
        Figure(
            "tap_latency",
            "APDUs per identification",
            "APDUs",
            apdus,
            "short-APDU path, same certificate",
            short_path,
        ),
    ]


def _plugin_pipeline(r: dict[str, Any]) -> list[Figure]:
    return [
        Figure(
            "plugin_pipeline",
            f"taps/s, daemon -> {r['pipeline']['plugins']} no-op plugins",
            "taps/s",
            r["pipeline"]["taps_per_s"]["median"],
            f"raw pyzmq PUB/SUB msgs/s, {r['payload_bytes']['private']} B",
            r["raw_pubsub"]["msgs_per_s"]["median"],
            higher_is_better=True,
        ),
        Figure(
            "plugin_pipeline",
            "CPU per tap, whole process",
            "ms",
            r["pipeline"]["cpu_ms_per_tap"]["median"],
            "raw pyzmq CPU per message",
            r["raw_pubsub"]["cpu_us_per_msg"]["median"] / 1000,
        ),
        Figure(
            "plugin_pipeline",
            "CPU per tap, the daemon's threads",
            "ms",
            r["pipeline"]["daemon_cpu_ms_per_tap"]["median"],
            "raw pyzmq CPU per message",
            r["raw_pubsub"]["cpu_us_per_msg"]["median"] / 1000,
        ),
        Figure(
            "plugin_pipeline",
            "CPU per tap, the daemon's threads, tapped by control request",
            "ms",
            r["pipeline"]["by_control_request"]["daemon_cpu_ms_per_tap"]["median"],
            "raw pyzmq CPU per message",
            r["raw_pubsub"]["cpu_us_per_msg"]["median"] / 1000,
        ),
    ]


def _web_screen(r: dict[str, Any]) -> list[Figure]:
    return [
        Figure(
            "web_screen",
            "first APDU -> composed kiosk screen (chromium), p50",
            "ms",
            r["p50_ms"],
            "target (not a measurement)",
            r["target_ms"],
        )
    ]


def _bus(r: dict[str, Any]) -> list[Figure]:
    raw = {(row["subscribers"], row["curve"]): row for row in r["rows"] if row["kind"] == "raw"}
    out: list[Figure] = []
    for row in r["rows"]:
        if row["kind"] != "readerd":
            continue
        base = raw[(row["subscribers"], row["curve"])]
        where = f"{row['subscribers']} sub, CURVE {'on' if row['curve'] else 'off'}"
        out.append(
            Figure(
                "bus",
                f"events/s, {where}",
                "events/s",
                row["events_per_s"],
                "raw pyzmq, same frames",
                base["events_per_s"],
                higher_is_better=True,
            )
        )
        out.append(Figure("bus", f"p50 latency, {where}", "ms", row["p50_ms"], "raw pyzmq", base["p50_ms"]))
    return out


def _plugins_db(r: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    for backend, data in r["backends"].items():
        if "skipped" in data:
            continue
        base = data["baseline_inserts_per_s"]["median"]
        for fig in data["scenarios"].values():
            out.append(
                Figure(
                    "plugins_db",
                    f"{backend}: redemptions/s, {fig['scenario']}, {fig['kiosks']} kiosk(s)",
                    "redemptions/s",
                    fig["redemptions_per_s"]["median"],
                    "bare INSERT + COMMIT, 1 connection",
                    base,
                    higher_is_better=True,
                )
            )
    return out


def _startup(r: dict[str, Any]) -> list[Figure]:
    base = next(row for row in r["rows"] if row["kind"] == "baseline")
    out: list[Figure] = []
    for row in r["rows"]:
        if row["kind"] != "readerd":
            continue
        n = row["readers"]
        out.append(
            Figure(
                "startup",
                f"spawn -> READY=1, {n} sim readers",
                "ms",
                row["ready_ms"]["median"],
                "bare python importing the libraries",
                base["ready_ms"]["median"],
            )
        )
        out.append(
            Figure(
                "startup",
                f"VmRSS at READY, {n} sim readers",
                "MiB",
                row["rss_mib"]["median"],
                "bare python importing the libraries",
                base["rss_mib"]["median"],
            )
        )
    return out


def _fleet(r: dict[str, Any]) -> list[Figure]:
    if "skipped" in r:
        return []
    base = r["baseline"]
    out: list[Figure] = []
    for fleet in r["fleets"]:
        for mode, p in fleet["phases"].items():
            where = f"{fleet['kiosks']} kiosks, {mode}"
            out.append(
                Figure(
                    "fleet",
                    f"tap -> check-in result p50, {where}",
                    "ms",
                    p["tap_to_result"]["p50_ms"],
                    "bare PostgreSQL SELECT 1 round trip, p50",
                    base["select1"]["p50_ms"],
                )
            )
            if mode == "burst":  # at a human rate, results/s is the rate the bench taps at
                out.append(
                    Figure(
                        "fleet",
                        f"results/s, {where}",
                        "results/s",
                        p["results_per_s"],
                        "bare INSERT + COMMIT/s, 1 connection",
                        base["insert_commit"]["per_s"],
                        higher_is_better=True,
                    )
                )
            per = p["cpu"]["per_result_ms"]
            if per:
                out.append(
                    Figure(
                        "fleet",
                        f"PostgreSQL CPU per result, {where}",
                        "ms",
                        per["postgres"],
                        "PostgreSQL CPU per bare INSERT + COMMIT",
                        base["insert_commit_cpu_per_op_ms"]["postgres"],
                    )
                )
    return out


# -- aggregation and output -----------------------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _fmt(values: list[float]) -> str:
    """Median, and (min-max) when there are several runs."""
    med = _num(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({_num(min(values))}-{_num(max(values))})"


def aggregate(runs: list[list[Figure]]) -> list[dict[str, Any]]:
    """Figures of several runs, matched by (bench, name): value, baseline and ratio lists."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for figures in runs:
        for f in figures:
            row = rows.setdefault(
                (f.bench, f.name),
                {
                    "bench": f.bench,
                    "name": f.name,
                    "unit": f.unit,
                    "baseline_name": f.baseline_name,
                    "higher_is_better": f.higher_is_better,
                    "values": [],
                    "baselines": [],
                    "ratios": [],
                },
            )
            row["values"].append(f.value)
            row["baselines"].append(f.baseline)
            row["ratios"].append(f.ratio)
    return list(rows.values())


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# readerd benchmarks, {meta['date']}",
        "",
        f"{meta['runs']} run(s) of each bench{' (quick counts)' if meta['quick'] else ''}; "
        f"Python {meta['python']}, {meta['cpus']} CPUs, load average {meta['load']}. Median (min-max) "
        "over the runs; each run's ratio is its figure over the baseline measured in the same process.",
        "",
        "| bench | figure | value | baseline (same run) | baseline value | ratio |",
        "|---|---|---:|---|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['bench']} | {row['name']} | {_fmt(row['values'])} {row['unit']} "
            f"| {row['baseline_name']} | {_fmt(row['baselines'])} | {_fmt(row['ratios'])} |"
        )
    if meta["skipped"]:
        lines += ["", f"Not run: {', '.join(meta['skipped'])}."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['bench']}: {r['name']}" for r in rows]
    medians = [statistics.median(r["ratios"]) for r in rows]
    low = [m - min(r["ratios"]) for m, r in zip(medians, rows, strict=True)]
    high = [max(r["ratios"]) - m for m, r in zip(medians, rows, strict=True)]
    benches = sorted({r["bench"] for r in rows})
    colours = {b: f"C{i}" for i, b in enumerate(benches)}
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.6))
    y = list(range(len(rows)))
    ax.barh(y, medians, xerr=[low, high], color=[colours[r["bench"]] for r in rows], capsize=3)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio to the baseline measured in the same run (log scale; 1 = baseline)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of every bench (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks that it all runs")
    parser.add_argument("--skip", nargs="*", default=[], choices=BENCHES, help="benches not to run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write (default bench/results)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be positive")
    skipped = list(args.skip)
    if "tap_latency" not in skipped and _missing_pcscd():
        sys.stderr.write("bench all: no pcscd/vpcd here, tap_latency skipped (make test installs them)\n")
        skipped.append("tap_latency")
    if "web_screen" not in skipped and _missing_chromium():
        sys.stderr.write("bench all: no chromium here, web_screen skipped (make test installs it)\n")
        skipped.append("web_screen")
    names = [n for n in BENCHES if n not in skipped]
    runs: list[list[Figure]] = []
    with tempfile.TemporaryDirectory(prefix="readerd-bench-all-") as tmp:
        for i in range(args.runs):
            figures: list[Figure] = []
            for name in names:
                sys.stderr.write(f"bench all: run {i + 1}/{args.runs}: {name}\n")
                work = Path(tmp) / f"{i}-{name}"
                work.mkdir()
                figures += figures_of(name, run_bench(name, args.quick, work))
            runs.append(figures)
    rows = aggregate(runs)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": args.runs,
        "quick": args.quick,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "skipped": skipped,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, meta)
    (args.out / "results.md").write_text(table, encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    plot(rows, args.out / "results.png", f"readerd vs same-run baselines, {meta['date']}")
    sys.stdout.write(table)
    sys.stdout.write(f"\nwritten: {args.out / 'results.md'}, {args.out / 'results.png'}\n")
    return 0


def _missing_chromium() -> bool:
    import importlib.util

    from tests.support.chromium import CHROMIUM

    return not Path(CHROMIUM).exists() or importlib.util.find_spec("playwright") is None


def _missing_pcscd() -> bool:
    from tests.support.pcscd import missing_tools

    return bool(missing_tools())


if __name__ == "__main__":
    sys.exit(main())
