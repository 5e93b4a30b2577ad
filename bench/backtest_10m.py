"""Benchmark: generate a 10-million-tick history with the feed, run the backtest on it, record the cost.

    .venv/bin/python bench/backtest_10m.py                       # 10 M ticks, 500 symbols, 5 days
    .venv/bin/python bench/backtest_10m.py --ticks 1000000       # a 1 M version (~1/10 of the time)

Steps, each timed:

1. History: ``marketsignals feed --to-parquet`` (the product's own generator), run as ``--shards``
   parallel processes over disjoint symbol sets (the generator is single-threaded Python), their
   files then merged into one ``date=YYYY-MM-DD`` data set. Reused when a history with the same
   parameters is already there (``--regenerate`` to force).
2. Backtest: ``marketsignals backtest`` in a subprocess. Peak memory is sampled from /proc every 0.5 s
   as the RSS of the whole process tree (driver Python + JVM + Python workers): the peak of the
   total, and of the JVM and the Python processes each (the parts peak at different times).

The record goes to ``bench/results/backtest_<UTC timestamp>.json`` with the machine's core count,
memory and load average (other processes on a shared machine slow every number down).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
START = "2026-01-05T00:00:00Z"
DAY_S = 86_400


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ticks", type=int, default=10_000_000)
    p.add_argument("--symbols", type=int, default=500)
    p.add_argument("--days", type=float, default=5.0, help="event-time span of the history")
    p.add_argument("--shards", type=int, default=os.cpu_count() or 1, help="parallel feed processes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workdir", default=str(ROOT / ".local" / "bench" / "backtest"),
                   help="history and output go here")
    p.add_argument("--regenerate", action="store_true", help="generate the history even if one exists")
    p.add_argument("--driver-memory", default="4g", help="spark.driver.memory of the local[*] backtest")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="more settings for the backtest (repeatable)")
    return p.parse_args(argv)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "marketsignals.cli", *args]


# --- history -----------------------------------------------------------------------------------------
def generate_history(args: argparse.Namespace, history: Path) -> dict:
    """Run the feed as parallel shards and merge them into one date-partitioned data set."""
    params = {"ticks": args.ticks, "symbols": args.symbols, "days": args.days, "seed": args.seed,
              "shards": args.shards, "start": START}
    manifest = history / "_bench_manifest.json"
    if manifest.exists() and not args.regenerate and json.loads(manifest.read_text())["params"] == params:
        print(f"bench: reusing the history in {history}", flush=True)
        return json.loads(manifest.read_text())
    shutil.rmtree(history, ignore_errors=True)
    staging = history.with_name(history.name + "-shards")
    shutil.rmtree(staging, ignore_errors=True)
    from marketsignals.feed import symbol_names

    names = symbol_names(args.symbols)
    shards = [names[i::args.shards] for i in range(args.shards)]
    counts = [args.ticks // args.shards + (1 if i < args.ticks % args.shards else 0) for i in range(args.shards)]
    print(f"bench: generating {args.ticks:,} ticks, {args.symbols} symbols over {args.days} days "
          f"with {args.shards} feed processes ...", flush=True)
    t0 = time.monotonic()
    procs = [subprocess.Popen(cli("feed", "--symbols", ",".join(syms), "--count", str(n),
                                  "--rate", repr(n / (args.days * DAY_S)), "--unpaced", "--start", START,
                                  "--seed", str(args.seed + i), "--no-progress",
                                  "--to-parquet", str(staging / f"shard-{i}")),
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for i, (syms, n) in enumerate(zip(shards, counts, strict=True))]
    outputs = [p.communicate()[0].strip() for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"bench: the feed failed: {outputs}")
    seconds = time.monotonic() - t0
    for i in range(args.shards):  # merge: shard-i/date=D/part-*.parquet -> history/date=D/s<i>-part-*.parquet
        for part in (staging / f"shard-{i}").glob("date=*/*.parquet"):
            target = history / part.parent.name
            target.mkdir(parents=True, exist_ok=True)
            part.rename(target / f"s{i}-{part.name}")
    shutil.rmtree(staging)
    record = {"params": params, "seconds": round(seconds, 1), "ticks_per_second": round(args.ticks / seconds),
              "per_process_ticks_per_second": round(args.ticks / seconds / args.shards),
              "bytes": sum(f.stat().st_size for f in history.rglob("*.parquet")), "feed_output": outputs}
    manifest.write_text(json.dumps(record, indent=2))
    print(f"bench: history written in {seconds:.0f}s ({record['ticks_per_second']:,} ticks/s)", flush=True)
    return record


# --- memory sampling -------------------------------------------------------------------------------------
def _tree_rss_bytes(root_pid: int) -> dict[str, int]:
    """RSS of ``root_pid`` and all its descendants (Linux /proc), in total and by program name."""
    children: dict[int, list[int]] = {}
    rss: dict[int, tuple[str, int]] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name, rest = (entry / "stat").read_text().rsplit(")", 1)
            fields = rest.split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        pid = int(entry.name)
        children.setdefault(ppid, []).append(pid)
        rss[pid] = (name.split("(", 1)[1], pages * page)
    by_name: dict[str, int] = {}
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        if pid in rss:
            name, size = rss[pid]
            kind = "jvm" if name == "java" else "python" if name.startswith("python") else "other"
            by_name[kind] = by_name.get(kind, 0) + size
        stack.extend(children.get(pid, []))
    return {"total": sum(by_name.values()), **by_name}


class PeakMemory:
    """Samples the process tree's RSS in a thread until stopped; keeps the peak of each part."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for part, size in _tree_rss_bytes(self.pid).items():
                self.peak[part] = max(self.peak.get(part, 0), size)
            self._stop.wait(self.every_s)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


# --- backtest ------------------------------------------------------------------------------------------
def run_backtest(args: argparse.Namespace, history: Path, output: Path) -> dict:
    command = cli("backtest", "--input", str(history), "--format", "parquet", "--output", str(output),
                  "--set", f"spark.conf.spark.driver.memory={args.driver_memory}",
                  *[x for o in args.overrides for x in ("--set", o)])
    print(f"bench: {' '.join(command[2:])}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT)
    sampler = PeakMemory(proc.pid)
    code = proc.wait()
    peak = sampler.stop()
    seconds = time.monotonic() - t0
    if code:
        raise SystemExit(f"bench: the backtest failed with exit code {code}")
    summary = json.loads((output / "summary.json").read_text())
    return {"seconds": round(seconds, 1), "ticks_per_second": round(args.ticks / seconds),
            "peak_rss_mb": {part: round(size / 2**20) for part, size in peak.items()},
            "job_seconds": summary["run"]["seconds"], "phase_seconds": summary["run"]["phase_seconds"],
            "counts": {k: summary["run"][k] for k in ("ticks_read", "ticks_valid", "ticks_rejected", "symbols",
                                                      "days", "signals", "trades", "round_trips")},
            "strategy": summary["strategy"], "benchmark": summary["benchmark"]}


def machine() -> dict:
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpus": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1), "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir)
    label = f"{args.ticks // 1_000_000}m" if args.ticks >= 1_000_000 else f"{args.ticks // 1000}k"
    history, output = work / f"history-{label}", work / f"backtest-{label}"
    started = datetime.now(UTC)
    record = {"benchmark": "backtest", "started": started.isoformat(timespec="seconds"),
              "machine_at_start": machine()}
    record["history"] = generate_history(args, history)
    record["backtest"] = run_backtest(args, history, output)
    record["machine_at_end"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"backtest_{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    b = record["backtest"]
    print(f"bench: {args.ticks:,} ticks backtested in {b['seconds']:.0f}s ({b['ticks_per_second']:,} ticks/s), "
          f"peak memory {b['peak_rss_mb']['total']:,} MB (process tree); record: {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
