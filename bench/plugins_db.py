"""Points redemptions/s on SQLite and PostgreSQL with 1, 4 and 16 kiosks, beside a bare INSERT loop.

What is measured, all in one run on one machine:

- ``redeem``: completed ``PointsService.redeem`` calls per second. Each **kiosk** is its own process with
  its own ``Store`` (its own connection pool), as in tests/plugins/points/test_concurrency.py. All kiosks
  open their store and touch the database, wait at a barrier, then each sends ``--requests`` redemptions
  of 1 point at one shop, each with its own idempotency key. The rate is all completed redemptions divided
  by the wall clock from the barrier to the last kiosk's last reply. Two scenarios:
  ``many``: requests spread over ``--accounts`` accounts (a ward's citizens at several counters), and
  ``hot``: every request on ONE account (every kiosk queues on that account's row lock).
- ``baseline``: one connection, one process, a loop of single-row INSERT + COMMIT into a plain table of
  the same database (the same SQLite file settings: WAL, synchronous=FULL; the same PostgreSQL cluster):
  the floor of one committed write. The ratio is baseline inserts/s : redemptions/s.
- after every run, the ledger is checked: the ledger sums to the balances (imported minus redeemed), no
  account is negative, every redemption that answered ok has its entry. A failed check is printed and
  makes the exit status 1.

SQLite: one store file per run in a temporary directory under ``--dir`` (default: the system temp dir,
on the normal disk; every commit fsyncs). PostgreSQL: a private throwaway cluster
(tests/support/postgres.py) started with ``fsync=off`` and ``synchronous_commit=off``: its figures leave
the disk out, unlike SQLite's. Without the server binaries, PostgreSQL is reported as skipped.

Run: ``python -m bench.plugins_db [--kiosks 1,4,16] [--runs 3] [--requests 100] [--quick] [--json out.json]``;
results and how to read them: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import platform
import queue
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from plugins.points.service import PointsService
from readerd.config import StoreConfig
from readerd.errors import StoreBusyError, StoreUnavailableError
from readerd.logging import configure as configure_logging
from readerd.plugin import Refusal
from readerd.plugin.store import Store
from tests.support.postgres import PostgresUnavailable, PrivatePostgres, missing_tools

PROGRAMME: Final = "bench"
SHOP: Final = "shop-1"
TIMEOUT: Final = 300.0  # seconds a run may take before it is declared stuck
# Like the concurrency test: many quick retries, so sixteen writers queue instead of failing.
CONFIG: Final = StoreConfig(
    busy_timeout=30.0, retries=100, retry_backoff=0.002, retry_backoff_max=0.05, pool_size=1
)
SCENARIOS: Final = ("many", "hot")


@dataclass(frozen=True)
class Plan:
    kiosks: tuple[int, ...]
    runs: int
    requests: int
    accounts: int
    baseline_inserts: int


def spread(values: list[float], digits: int = 1) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def account_for(scenario: str, kiosk: int, request: int, accounts: int) -> str:
    if scenario == "hot":
        return "HOT"
    return f"A{(kiosk * 7919 + request) % accounts:05d}"  # spread, with the odd collision


# -- one kiosk (a process) ----------------------------------------------------------------------------
def _kiosk(
    config: StoreConfig,
    state_dir: str,
    number: int,
    *,
    job: dict[str, Any],
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.queues.Queue[dict[str, Any]],
) -> None:
    configure_logging("WARNING", "console")  # the store's retry lines would drown the figures
    own = Path(state_dir) / f"kiosk-{number}"
    own.mkdir()
    ok = refused = gave_up = 0
    errors: list[str] = []
    with Store.open(config, own) as store:
        points = PointsService(store.for_plugin("points"))
        points.balance("member:WARMUP")  # migration check and a connection, before the clock starts
        barrier.wait(60)
        started = time.monotonic()
        for i in range(job["requests"]):
            args = {
                "programme_id": PROGRAMME,
                "member_id": account_for(job["scenario"], number, i, job["accounts"]),
                "shop_id": SHOP,
                "amount": 1,
                "idempotency_key": f"{job['tag']}-k{number}-{i}",
            }
            try:
                points.redeem(args)
                ok += 1
            except Refusal as e:
                refused += 1
                if len(errors) < 3:
                    errors.append(f"{e.code}: {e}")
            except (StoreBusyError, StoreUnavailableError) as e:  # the store gave up: the kiosk says so
                gave_up += 1
                if len(errors) < 3:
                    errors.append(f"{type(e).__name__}: {str(e)[:160]}")
        finished = time.monotonic()
        stats = store.shared.stats
        retries, busy = stats.retries, stats.busy
    results.put(
        {
            "kiosk": number,
            "started": started,
            "finished": finished,
            "ok": ok,
            "refused": refused,
            "gave_up": gave_up,
            "errors": errors,
            "retries": retries,
            "busy": busy,
        }
    )


# -- one run ------------------------------------------------------------------------------------------
def prepare(config: StoreConfig, office_dir: Path, scenario: str, plan: Plan, kiosks: int) -> dict[str, int]:
    """Programme, shop and the accounts' points (enough for every request); returns what was imported."""
    office_dir.mkdir()
    needed: dict[str, int] = {}
    for n in range(kiosks):
        for i in range(plan.requests):
            account = account_for(scenario, n, i, plan.accounts)
            needed[account] = needed.get(account, 0) + 1
    with Store.open(config, office_dir) as store:
        office = PointsService(store.for_plugin("points"))
        office.define_programme(
            {
                "programme_id": PROGRAMME,
                "name": "bench",
                "last_earning_day": "2099-12-31",
                "last_ticket_day": "2099-12-31",
                "last_use_day": "2099-12-31",
                "idempotency_key": "programme",
            }
        )
        office.define_shop({"shop_id": SHOP, "name": "shop", "area": "ward", "idempotency_key": "shop"})
        imported = {}
        for account, count in sorted(needed.items()):
            amount = count + 10
            office.import_points(
                {
                    "programme_id": PROGRAMME,
                    "member_id": account,
                    "amount": amount,
                    "source_ref": "bench",
                    "idempotency_key": f"import-{account}",
                }
            )
            imported[f"member:{account}"] = amount
    return imported


def check_ledger(config: StoreConfig, office_dir: Path, imported: dict[str, int], ok: int) -> dict[str, Any]:
    """The ledger after a run: it sums to the balances, none negative, one entry per ok redemption."""
    with Store.open(config, office_dir) as store:
        office = PointsService(store.for_plugin("points"))
        check = office.ledger_check()
        balances = {a: int(office.balance(a)["balances"].get(PROGRAMME, 0)) for a in imported}
    expected = sum(imported.values()) - ok
    problems = []
    if check["outstanding_points"] != expected:
        problems.append(f"ledger sums to {check['outstanding_points']}, expected {expected}")
    if sum(balances.values()) != check["outstanding_points"]:
        problems.append(f"balances sum to {sum(balances.values())}, ledger to {check['outstanding_points']}")
    if check["negative_accounts"]:
        problems.append(f"{check['negative_accounts']} negative accounts")
    negative = [a for a, b in balances.items() if b < 0]
    if negative:
        problems.append(f"negative balances: {negative[:5]}")
    return {
        "ledger_sum": check["outstanding_points"],
        "balances_sum": sum(balances.values()),
        "expected": expected,
        "negative_accounts": check["negative_accounts"],
        "ok": not problems,
        "problems": problems,
    }


def run_once(
    config: StoreConfig, work: Path, scenario: str, plan: Plan, kiosks: int, *, tag: str
) -> dict[str, Any]:
    office = work / "office"
    imported = prepare(config, office, scenario, plan, kiosks)
    # fork: a kiosk starts in milliseconds instead of re-importing everything; the parent holds no open
    # connection at this point (the office's store is closed), so each kiosk opens its own.
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(kiosks)
    results: multiprocessing.queues.Queue[dict[str, Any]] = context.Queue()
    job = {"scenario": scenario, "requests": plan.requests, "accounts": plan.accounts, "tag": tag}
    processes = [
        context.Process(
            target=_kiosk,
            args=(config, str(work), n),
            kwargs={"job": job, "barrier": barrier, "results": results},
        )
        for n in range(kiosks)
    ]
    for process in processes:
        process.start()
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(reports) < kiosks and time.monotonic() < deadline:
            try:
                reports.append(results.get(timeout=0.5))
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and results.empty():
                    break  # a kiosk died without its report: its exit code below says so
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    if not reports:
        raise RuntimeError(f"no kiosk reported; exit codes {[p.exitcode for p in processes]}")
    ok = sum(r["ok"] for r in reports)
    elapsed = max(r["finished"] for r in reports) - min(r["started"] for r in reports)
    return {
        "per_s": ok / elapsed if elapsed > 0 else 0.0,
        "ok": ok,
        "refused": sum(r["refused"] for r in reports),
        "gave_up": sum(r["gave_up"] for r in reports),
        "errors": [e for r in reports for e in r["errors"]][:3],
        "retries": sum(r["retries"] for r in reports),
        "busy": sum(r["busy"] for r in reports),
        "exitcodes": [p.exitcode for p in processes],
        "missing_reports": kiosks - len(reports),
        "ledger": check_ledger(config, office, imported, ok),
    }


# -- the baselines ------------------------------------------------------------------------------------
def baseline_sqlite(path: Path, inserts: int) -> float:
    """Single-row INSERT + COMMIT on one connection, the store's pragmas (WAL, synchronous=FULL)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL"):
            conn.execute(f"PRAGMA {pragma}").close()
        conn.execute("CREATE TABLE bench_baseline (id INTEGER PRIMARY KEY, account TEXT, amount INTEGER)")
        t0 = time.perf_counter()
        for i in range(inserts):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO bench_baseline (account, amount) VALUES (?, ?)", (f"A{i}", -1))
            conn.execute("COMMIT")
        return inserts / (time.perf_counter() - t0)
    finally:
        conn.close()


def baseline_postgres(cluster: PrivatePostgres, database: str, inserts: int) -> float:
    """Single-row INSERT + COMMIT on one psycopg connection over TCP loopback, as the kiosks connect."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=cluster.port, user="postgres", dbname=database) as conn:
        conn.execute("CREATE TABLE bench_baseline (id BIGSERIAL PRIMARY KEY, account TEXT, amount INTEGER)")
        conn.commit()
        t0 = time.perf_counter()
        for i in range(inserts):
            conn.execute("INSERT INTO bench_baseline (account, amount) VALUES (%s, %s)", (f"A{i}", -1))
            conn.commit()
        return inserts / (time.perf_counter() - t0)


# -- per backend --------------------------------------------------------------------------------------
def measure_backend(
    backend: str, plan: Plan, base_dir: Path | None, cluster: PrivatePostgres | None
) -> dict[str, Any]:
    counter = 0
    figures: dict[str, Any] = {}

    def fresh() -> tuple[StoreConfig, Path, str]:
        nonlocal counter
        counter += 1
        work = Path(tempfile.mkdtemp(prefix="readerd-bench-db-", dir=base_dir))
        if cluster is not None:
            name = f"bench_{counter}"
            return replace(CONFIG, shared_url=cluster.create_database(name)), work, name
        return replace(CONFIG, local_path=str(work / "ward.db")), work, str(work / "ward.db")

    for scenario in SCENARIOS:
        for kiosks in plan.kiosks:
            runs = []
            for run in range(plan.runs):
                config, work, _ = fresh()
                try:
                    runs.append(run_once(config, work, scenario, plan, kiosks, tag=f"r{run}"))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            figures[f"{scenario}/{kiosks}"] = {
                "scenario": scenario,
                "kiosks": kiosks,
                "redemptions_per_s": spread([r["per_s"] for r in runs]),
                "ok": sum(r["ok"] for r in runs),
                "refused": sum(r["refused"] for r in runs),
                "gave_up": sum(r["gave_up"] for r in runs),
                "errors": [e for r in runs for e in r["errors"]][:3],
                "retries": sum(r["retries"] for r in runs),
                "busy": sum(r["busy"] for r in runs),
                "kiosk_failures": sum(1 for r in runs for code in r["exitcodes"] if code != 0)
                + sum(r["missing_reports"] for r in runs),
                "ledger_ok": all(r["ledger"]["ok"] for r in runs),
                "ledger": [r["ledger"] for r in runs],
            }
    rates = []
    for _ in range(plan.runs):
        _, work, target = fresh()
        try:
            if cluster is not None:
                rates.append(baseline_postgres(cluster, target, plan.baseline_inserts))
            else:
                rates.append(baseline_sqlite(Path(target), plan.baseline_inserts))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {"baseline_inserts_per_s": spread(rates), "scenarios": figures}


# -- output -------------------------------------------------------------------------------------------
def fmt(value: float) -> str:
    return f"{value:,.1f}"


def report(result: dict[str, Any]) -> str:
    lines = [
        f"# bench.plugins_db  {result['date']}  {result['machine']['cpus']} CPUs, "
        f"load {result['machine']['load']}",
        f"# {result['plan']['runs']} runs x {result['plan']['requests']} requests per kiosk, "
        f"{result['plan']['accounts']} accounts (many), 1 account (hot); 1 point per redemption",
        "",
        "| backend | scenario | kiosks | redemptions/s median (min-max) | baseline inserts/s | ratio | "
        "retries | refused | gave up | ledger |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for backend, data in result["backends"].items():
        if "skipped" in data:
            lines.append(f"| {backend} | skipped: {data['skipped']} | | | | | | | | |")
            continue
        base = data["baseline_inserts_per_s"]
        for fig in data["scenarios"].values():
            r = fig["redemptions_per_s"]
            ratio = base["median"] / r["median"] if r["median"] else float("inf")
            ledger = (
                "ok"
                if fig["ledger_ok"]
                else "CORRUPT: " + "; ".join(p for entry in fig["ledger"] for p in entry["problems"])
            )
            lines.append(
                f"| {backend} | {fig['scenario']} | {fig['kiosks']} | {fmt(r['median'])} "
                f"({fmt(r['min'])}-{fmt(r['max'])}) | {fmt(base['median'])} | {ratio:.1f} | "
                f"{fig['retries']} | {fig['refused']} | {fig['gave_up']} | {ledger} |"
            )
        lines.append(
            f"| {backend} | baseline: bare INSERT+COMMIT, 1 connection | 1 | | {fmt(base['median'])} "
            f"({fmt(base['min'])}-{fmt(base['max'])}) | 1.0 | | | | |"
        )
    lines += [
        "",
        "ratio = baseline inserts/s : redemptions/s (bare committed inserts in the time of one redemption)",
        f"ledger check: {'ok on every run' if result['ledger_ok'] else 'FAILED: the bench corrupted data'}",
    ]
    for backend, data in result["backends"].items():
        for fig in data.get("scenarios", {}).values():
            if fig["errors"] or fig["kiosk_failures"] or fig["busy"] or fig["gave_up"]:
                lines.append(
                    f"  {backend} {fig['scenario']}/{fig['kiosks']}: errors {fig['errors']}, "
                    f"gave up {fig['gave_up']}, kiosk processes failed {fig['kiosk_failures']}"
                )
    return "\n".join(lines) + "\n"


def postgres_cluster() -> tuple[PrivatePostgres | None, str | None]:
    """A started PrivatePostgres, or None and why not."""
    missing = missing_tools()
    if missing:
        return None, f"needs {', '.join(missing)} (scripts/bootstrap --test installs them)"
    try:
        return PrivatePostgres().start(), None
    except (PostgresUnavailable, OSError) as e:
        return None, str(e)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kiosks", default="1,4,16", help="concurrent kiosk processes (default 1,4,16)")
    parser.add_argument("--runs", type=int, help="runs of each figure (default 3, quick 1)")
    parser.add_argument("--requests", type=int, help="redemptions per kiosk per run (default 100, quick 10)")
    parser.add_argument("--accounts", type=int, default=64, help="accounts of 'many' (default 64)")
    parser.add_argument("--baseline-inserts", type=int, help="per baseline run (default 2000, quick 200)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="default sqlite,postgresql")
    parser.add_argument("--dir", type=Path, help="where the SQLite files go (default: the system temp dir)")
    parser.add_argument("--quick", action="store_true", help="small counts: well under 30 s")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        kiosks = tuple(int(k) for k in args.kiosks.split(","))
    except ValueError:
        parser.error("--kiosks: comma-separated whole numbers, e.g. 1,4,16")
    plan = Plan(
        kiosks=kiosks,
        runs=args.runs or (1 if args.quick else 3),
        requests=args.requests or (10 if args.quick else 100),
        accounts=args.accounts,
        baseline_inserts=args.baseline_inserts or (200 if args.quick else 2000),
    )
    if min(*plan.kiosks, plan.runs, plan.requests, plan.accounts, plan.baseline_inserts) < 1:
        parser.error("--kiosks, --runs, --requests, --accounts and --baseline-inserts must be positive")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not set(backends) <= {"sqlite", "postgresql"}:
        parser.error("--backends: sqlite and/or postgresql")

    configure_logging("WARNING", "console")
    # SIGTERM unwinds like Ctrl-C, so the private PostgreSQL cluster is stopped and removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base_dir = args.dir or Path(tempfile.gettempdir())
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "sqlite_dir": str(base_dir),
        },
        "plan": {
            "kiosks": list(plan.kiosks),
            "runs": plan.runs,
            "requests": plan.requests,
            "accounts": plan.accounts,
            "baseline_inserts": plan.baseline_inserts,
        },
        "backends": {},
    }
    for backend in backends:
        if backend == "sqlite":
            result["backends"]["sqlite"] = measure_backend("sqlite", plan, base_dir, None)
            continue
        cluster, why = postgres_cluster()
        if cluster is None:
            result["backends"]["postgresql"] = {"skipped": why}
            continue
        try:
            result["machine"]["postgresql"] = str(cluster.bindir)
            result["backends"]["postgresql"] = measure_backend("postgresql", plan, None, cluster)
        finally:
            cluster.remove()
    result["ledger_ok"] = all(
        fig["ledger_ok"] for data in result["backends"].values() for fig in data.get("scenarios", {}).values()
    )
    sys.stdout.write(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["ledger_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
