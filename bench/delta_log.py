"""What an audit-table append costs as the table's Delta log grows.

``python -m bench.delta_log [--files 0,5000,20000,100000] [--appends 12] [--rows 500]`` creates a Delta
table in ``--data`` (``.local/bench/delta-log``), then for each count in ``--files`` puts that many entries
in its ``_delta_log`` and times ``--appends`` appends of ``--rows`` rows there (the median and the least,
after the first two). It prints the cost per log entry (a least-squares slope over the counts).

Delta lists the whole ``_delta_log`` at the start of every transaction (the snapshot update; on S3,
delta-io/delta#1191), so each file kept there costs every later commit; the sink's audit write commits
once a batch. The files added here are empty and named to sort before the table's commits (Delta
filters them out after the listing, as it does the commits before its newest checkpoint), so only the
listing pays for them; half of them are checksum sidecars (``.<name>.crc``), which Hadoop's local file
system writes beside every file and leaves out of its listings. A 1 s trigger adds two files a batch
(the commit and its checksum), four entries with their sidecars on a local path: ~172,800 files a
day, which Delta keeps for ``delta.logRetentionDuration`` (30 days by default; an hour for the audit
table the sink creates, whose expired files the sink removes: bench/ROUNDS.md, thirty-fifth round).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM_UP_APPENDS = 2


def pad(log: Path, start: int, stop: int) -> None:
    """Empty entries ``start`` .. ``stop - 1`` in ``log``, named below version 1's commit: files and, every
    other one, a file's checksum sidecar, as Hadoop's local file system leaves each file it writes."""
    for i in range(start, stop):
        name = f"00000000000000000000.bench-{i // 2:09d}"
        (log / (name if i % 2 == 0 else f".{name}.crc")).touch()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.delta_log", description=__doc__.splitlines()[0])
    p.add_argument("--files", default="0,5000,20000,100000",
                   help="entries added to _delta_log (files and sidecars), ascending, comma list")
    p.add_argument("--appends", type=int, default=12, help="appends timed at each count")
    p.add_argument("--rows", type=int, default=500, help="rows an append")
    p.add_argument("--data", default=str(ROOT / ".local" / "bench" / "delta-log"))
    args = p.parse_args(argv)
    counts = [int(x) for x in args.files.split(",") if x.strip()]
    if counts != sorted(counts) or any(c < 0 for c in counts) or args.appends <= WARM_UP_APPENDS:
        p.error(f"--files must ascend from 0 or more, and --appends be over {WARM_UP_APPENDS}")

    from marketsignals.session import build_session
    from marketsignals.settings import load_settings

    spark = build_session(load_settings("local", []).spark)
    table = Path(args.data) / "table"
    shutil.rmtree(table, ignore_errors=True)
    rows = spark.range(0, args.rows, 1, 1).selectExpr("id", "cast(id AS string) AS text")
    rows.write.format("delta").save(str(table))
    for _ in range(5):  # the JIT's first commits, before any timing
        rows.write.format("delta").mode("append").save(str(table))
    log, made, medians = table / "_delta_log", 0, []
    own = sum(1 for _ in log.iterdir())
    print(f"{'entries in _delta_log':>21} {'append median ms':>17} {'least ms':>9}")
    for count in counts:
        pad(log, made, count)
        made = max(made, count)
        took = []
        for _ in range(args.appends):
            started = time.monotonic()
            rows.write.format("delta").mode("append").save(str(table))
            took.append((time.monotonic() - started) * 1000)
        timed = took[WARM_UP_APPENDS:]
        medians.append(statistics.median(timed))
        print(f"{count + own:>21,} {medians[-1]:>17,.0f} {min(timed):>9,.0f}", flush=True)
    if len(set(counts)) > 1:
        slope = statistics.linear_regression(counts, medians).slope
        print(f"per log entry: {slope * 1000:.1f} us an append")
    shutil.rmtree(table, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
