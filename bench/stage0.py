"""The stream's stage 0 alone (parse and validate each tick, bucket it): its JVM CPU per run.

``python -m bench.stage0`` writes the bench workload's ticks (bench/workload.py) as Kafka rows once, to
Parquet in ``--data`` (``.local/bench/``; ISO stamps on two topics, epoch millis on the third, as the
feed sends them), and runs ``stream.job.bucketed_ticks`` over them into Spark's ``noop`` sink ``--runs``
times in one session. It prints each run's wall and JVM CPU seconds, their median after the first two runs
(the JIT's warm-up), and the largest generated method of each whole-stage codegen subtree: HotSpot
never compiles one over 8,000 bytes, it runs interpreted (bench/ROUNDS.md, twenty-sixth round).

No Kafka read, no shuffle, no Python workers: the product's own per-row work in the JVM, which a whole
(b) run mixes with all of those. ``--parse-only`` runs the typed ``from_json`` alone, the part of it the
ceiling (a) pays too. ``--code`` runs another checkout's src/ (a baseline): run the two alternately,
each in its own process, as this VM's speed drifts. ``--jfr FILE`` records the runs with Java Flight
Recorder (``python -m bench.jfr FILE`` summarises it).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import statistics
import sys
import time
from pathlib import Path

from bench import use_checkout

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ("stage0-market", "stage0-level2", "stage0-trade")  # the last one carries epoch millis
WARM_UP_RUNS = 2


def write_rows(spark, ticks: int, symbols: int, path: Path) -> None:
    """The workload's ticks as the Kafka source's rows (key, value, topic, partition, offset, timestamp)."""
    import pandas as pd

    from bench.workload import Workload, tick_columns
    from marketsignals import feed

    cols = tick_columns(Workload(ticks, symbols))
    rows, offsets = [], dict.fromkeys(TOPICS, 0)
    for s, ts, p, v, b, a, e, c in zip(*(cols[k].tolist() for k in ("symbol", "ts_ms", "price", "volume", "bid",
                                                                   "ask", "exchange", "currency")), strict=True):
        topic = feed.topic_of(s, TOPICS)
        stamp = ts if topic == TOPICS[-1] else f'"{feed.iso_ms(ts)}"'
        value = (f'{{"symbol":"{s}","timestamp":{stamp},"price":{p!r},"volume":{v},"bid":{b!r},"ask":{a!r},'
                 f'"exchange":"{e}","currency":"{c}"}}')
        rows.append((s.encode(), value.encode(), topic, 0, offsets[topic], pd.Timestamp(ts, unit="ms")))
        offsets[topic] += 1
    frame = pd.DataFrame(rows, columns=["key", "value", "topic", "partition", "offset", "timestamp"])
    spark.createDataFrame(frame).repartition(2).write.mode("overwrite").parquet(str(path))


def generated_method_sizes(df) -> list[int]:
    """The largest generated method of each whole-stage codegen subtree of ``df``'s plan, in bytes (the
    plan without adaptive execution, as a stream's is)."""
    spark = df.sparkSession
    before = spark.conf.get("spark.sql.adaptive.enabled")
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        text = spark.sparkContext._jvm.PythonSQLUtils.explainString(df._jdf.queryExecution(), "codegen")
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", before)
    return [int(size) for size in re.findall(r"maxMethodCodeSize:(\d+)", text)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stage0", description=__doc__.split("\n\n")[0])
    p.add_argument("--ticks", type=int, default=1_000_000)
    p.add_argument("--symbols", type=int, default=100)
    p.add_argument("--runs", type=int, default=8, help=f"runs in one session; the first {WARM_UP_RUNS} warm up")
    p.add_argument("--parse-only", action="store_true", help="from_json alone (the ceiling's per-row work)")
    p.add_argument("--code", default=None, help="run another checkout's src/ (a baseline)")
    p.add_argument("--jfr", default=None, metavar="FILE", help="record the runs with Java Flight Recorder")
    p.add_argument("--data", default=str(ROOT / ".local" / "bench"), help="where the Kafka rows' Parquet is kept")
    args = p.parse_args(argv)
    if args.runs <= WARM_UP_RUNS:
        p.error(f"--runs must be more than the {WARM_UP_RUNS} warm-up runs, not {args.runs}")
    if args.code:
        use_checkout(args.code)
    from pyspark.sql import functions as F

    from bench import jfr, procs
    from marketsignals import schema
    from marketsignals.session import build_session
    from marketsignals.settings import load_settings
    from marketsignals.stream import job

    # stage 0 of a catch-up: a bounded run's JVM, and its Kafka read's task a partition (stream.source_tasks)
    settings = load_settings("local", ["stream.trigger=availableNow"])
    if args.jfr:
        settings = jfr.recorded(settings, Path(args.jfr).resolve())
    spark = build_session(settings.spark, bounded=settings.stream.bounded)
    path = Path(args.data) / f"stage0-{args.ticks}-{args.symbols}.parquet"
    if not path.exists():
        write_rows(spark, args.ticks, args.symbols, path)
    raw = spark.read.parquet(str(path))
    if args.parse_only:
        df = raw.select(F.from_json(F.col("value").cast("string"), schema.FAST_TICK_SCHEMA).alias("tick"))
    elif hasattr(job, "bucketed_ticks"):
        # the buckets keyed as a new checkpoint's (state.bucket_keys; a checkout from before has no keys)
        keyed = "key_partitions" in inspect.signature(job.bucketed_ticks).parameters
        df = job.bucketed_ticks(raw, settings, *([settings.spark.shuffle_partitions] if keyed else []))
    else:  # a checkout from before it was a function of its own (--code): what signal_stream built then
        from marketsignals.stream import state

        ticks = job.validated_ticks(raw, settings)
        df = ticks.select(state.bucket_of(F.col(schema.SYMBOL), settings.stream.state_buckets), *state.TICK_COLUMNS)
    jvm = spark.sparkContext._jvm
    pid = jvm.java.lang.ProcessHandle.current().pid()
    runs = []
    for _ in range(args.runs):
        cpu, wall = procs.cpu_seconds(pid), time.perf_counter()
        df.write.format("noop").mode("overwrite").save()
        runs.append((round(time.perf_counter() - wall, 2), round(procs.cpu_seconds(pid) - cpu, 2)))
    sizes = generated_method_sizes(df)
    if args.jfr:  # written now, not when the JVM exits after this process (a reader started next found it empty)
        for recording in jvm.jdk.jfr.FlightRecorder.getFlightRecorder().getRecordings():
            recording.stop()
    warm = runs[WARM_UP_RUNS:]
    print(f"{args.ticks:,} ticks, {'from_json alone' if args.parse_only else 'stage 0'}: "
          f"JVM CPU median {statistics.median(c for _, c in warm):.2f} s (least {min(c for _, c in warm):.2f}), "
          f"wall median {statistics.median(w for w, _ in warm):.2f} s over {len(warm)} runs after "
          f"{WARM_UP_RUNS} warm-up; largest generated methods {sizes} bytes ({job.__file__})")
    print("BENCH-STAGE0 " + json.dumps({"runs": runs, "generated_method_bytes": sizes,
                                        "parse_only": args.parse_only, "code": job.__file__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
