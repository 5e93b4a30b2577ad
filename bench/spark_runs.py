"""The Spark measurements, one per process (``python -m bench.spark_runs SCENARIO ARGS_JSON``), so each
gets a fresh JVM and its memory is measured alone. Prints one JSON line: the result.

    ceiling  Spark Kafka source -> from_json -> noop sink, availableNow            (a)
    product  the streaming job's own code path (start_stream), availableNow      (b), (e)
    latency  the job on its default trigger while bench/Feeder.java sends at a fixed rate  (d)
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from statistics import median

from marketsignals.feed import parse_iso_ms
from marketsignals.schema import RAW_TICK_SCHEMA
from marketsignals.settings import Settings
from marketsignals.stream.metrics import MetricsListener


def _session(settings: Settings):
    from marketsignals.session import build_session

    return build_session(settings.spark, bounded=settings.stream.bounded)


def _progress(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [m for m in (json.loads(line) for line in path.read_text().splitlines()) if m.get("event") == "progress"]


def _trigger(settings: Settings) -> str:
    """The live trigger as the run had it: the interval, and the ticks that start a batch sooner."""
    from marketsignals.stream.trigger import live_trigger

    live = live_trigger(settings.stream, settings.kafka.max_offsets_per_trigger)
    early = f", early at {int(live.read_limits['minOffsetsPerTrigger']):,} ticks" if live.early else ""
    return settings.stream.trigger + early


def _drained(line: dict, fed_epoch: float) -> bool:
    """Whether a metrics line says the stream has read all the feed sent: a line without ticks (a batch
    without data, or an idle trigger's, which Spark reports only every noDataProgressEventInterval, 10 s),
    or a batch begun after the feed ended that read up to the newest offsets."""
    if line["input_rows"] == 0:
        return True
    lag = max(line.get("kafka_lag", {}).values(), default=1.0)
    return parse_iso_ms(line["timestamp"]) >= fed_epoch * 1000 and lag == 0


def _summary(progress: list[dict], wall_s: float) -> dict:
    rows = sum(m["input_rows"] for m in progress)
    busy = [m for m in progress if m["input_rows"] > 0]
    batch_ms = sum(m["batch_duration_ms"] or 0 for m in progress)
    # the first batch pays for JVM warm-up, first Delta commit and Python worker start: the rate
    # is reported over the later batches when there are several
    later = busy[1:] if len(busy) > 2 else busy
    later_rows = sum(m["input_rows"] for m in later)
    later_ms = sum(m["batch_duration_ms"] or 0 for m in later)
    last = progress[-1] if progress else {}
    return {
        "ticks": rows, "batches": len(busy), "wall_s": round(wall_s, 2),
        "ticks_per_s": round(rows / (batch_ms / 1000), 1) if batch_ms else None,
        "ticks_per_s_after_first_batch": round(later_rows / (later_ms / 1000), 1) if later_ms else None,
        "ticks_per_s_wall": round(rows / wall_s, 1) if wall_s else None,
        "batch_ms_median": median([m["batch_duration_ms"] for m in busy]) if busy else None,
        "add_batch_ms_median": median([m["duration_ms"].get("addBatch", 0) for m in busy]) if busy else None,
        "phase_ms_median": _phases(busy),
        "state_rows": last.get("state_rows"),
        "state_memory_mb": round((last.get("state_memory_bytes") or 0) / 2**20, 1),
        "signals": sum(m.get("signals", 0) for m in progress), "rejected": sum(m.get("rejected", 0) for m in progress),
    }


def _phases(busy: list[dict]) -> dict[str, float]:
    """Where a batch's time goes: the median milliseconds of each phase over the data batches --
    Spark's own (``durationMs``: queryPlanning, addBatch, walCommit, commitOffsets, ...) and, inside
    addBatch, the sink's (``sink_ms``: compute, plan, kafka, audit, write, total) -- and
    ``addBatch_outside_sink``, Spark's own part of addBatch (addBatch less the sink's total)."""
    phases: dict[str, list[int]] = {}
    for m in busy:
        durations, sink = m.get("duration_ms") or {}, m.get("sink_ms") or {}
        for source in (durations, sink):
            for name, ms in source.items():
                phases.setdefault(name, []).append(ms)
        if "addBatch" in durations and "total" in sink:
            phases.setdefault("addBatch_outside_sink", []).append(durations["addBatch"] - sink["total"])
    return {name: median(values) for name, values in sorted(phases.items())}


def _dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 2) if path.exists() else 0.0


def ceiling(settings: Settings, work: Path) -> dict:
    """(a) what Spark itself reads: Kafka -> from_json -> noop, availableNow."""
    from pyspark.sql import functions as F

    from marketsignals.stream.source import read_ticks

    spark = _session(settings)
    listener = MetricsListener(str(work / "ceiling.jsonl"))
    spark.streams.addListener(listener)
    parsed = read_ticks(spark, settings.kafka).select(
        F.from_json(F.col("value").cast("string"), RAW_TICK_SCHEMA).alias("t"))
    started = time.monotonic()
    query = (parsed.writeStream.format("noop").option("checkpointLocation", str(work / "ceiling-cp"))
             .trigger(availableNow=True).start())
    query.awaitTermination()
    listener.terminated.wait(30)
    wall = time.monotonic() - started
    return _summary(_progress(work / "ceiling.jsonl"), wall)


def product(settings: Settings, work: Path) -> dict:
    """(b) the product: start_stream with availableNow over the pre-loaded topic."""
    from marketsignals.stream.job import start_stream
    from marketsignals.stream.state import read_symbol_states

    spark = _session(settings)
    listener = MetricsListener(settings.stream.metrics_path)
    started = time.monotonic()
    query = start_stream(spark, settings, listener=listener)
    query.awaitTermination()
    listener.terminated.wait(30)
    wall = time.monotonic() - started
    if query.exception() is not None:
        raise RuntimeError(str(query.exception()))
    out = _summary(_progress(Path(settings.stream.metrics_path)), wall)
    out["state_dir_mb"] = _dir_mb(Path(settings.stream.checkpoint) / "state")
    # state rows are buckets of symbols; the symbols they hold, from Spark's state data source
    out["state_symbols"] = len(read_symbol_states(spark, settings.stream.checkpoint, settings.stream.state_buckets))
    out["audit_rows"] = spark.read.format("delta").load(settings.stream.audit_table).count() if out["signals"] else 0
    return out


def latency(settings: Settings, work: Path, rate: float, seconds: float, records: str, catch_up_s: float,
            cold_feed: bool = False) -> dict:
    """(d) the job on its default trigger while the feeder sends ``rate`` ticks/s. The feeder starts
    before the job and sends at that rate while the job starts (its warm-up reads those ticks), as when a
    job (re)starts while ticks flow; its measured ``seconds`` start at the stream's first batch, the pace
    unchanged. The broker and the feeder are JVMs on the job's two cores: started with the measured feed,
    they took 1-1.5 cores of the feed's first 10-20 s (bench/ROUNDS.md, forty-sixth round). ``cold_feed``:
    the feeder starts after the stream's first batch instead, on empty topics (until that round, always)."""
    from bench.workload import start_feeder, start_measured_feed, wait_feeder
    from marketsignals.stream.job import start_stream

    spark = _session(settings)
    listener = MetricsListener(settings.stream.metrics_path)
    bootstrap, topics = settings.kafka.bootstrap_servers, settings.kafka.tick_topics
    feeder = None if cold_feed else start_feeder(bootstrap, Path(records), topics, rate, seconds, lead=True)
    try:
        starting = time.monotonic()
        query = start_stream(spark, settings, listener=listener)  # the warm-up, then the query's start
        start_s = time.monotonic() - starting
        deadline = time.monotonic() + 300
        while query.isActive and query.lastProgress is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the first batch fixes the starting offsets at "latest"
        feed_from, feed_from_epoch = time.monotonic(), time.time()
        if feeder is None:
            feeder = start_feeder(bootstrap, Path(records), topics, rate, seconds)
        else:
            start_measured_feed(feeder)
    except BaseException:
        if feeder is not None:
            feeder.kill()
            feeder.wait()
        raise
    fed = wait_feeder(feeder)
    fed_at, fed_epoch = time.monotonic(), time.time()
    # let the job drain what is left (bounded): the lag after the feed stops says if it kept up
    while query.isActive and time.monotonic() - fed_at < catch_up_s:
        lines = _progress(Path(settings.stream.metrics_path))
        if lines and sum(m["input_rows"] for m in lines) >= fed["sent"] and _drained(lines[-1], fed_epoch):
            break
        time.sleep(1.0)
    drained_s = time.monotonic() - fed_at
    query.stop()
    listener.terminated.wait(30)
    progress = _progress(Path(settings.stream.metrics_path))
    consumed = sum(m["input_rows"] for m in progress)
    lat = signal_latencies(settings, since_ms=feed_from_epoch * 1000)
    busy = [m for m in progress if m["input_rows"] > 0]
    lags = [max(m["kafka_lag"].values(), default=0.0) for m in busy if m.get("kafka_lag")]
    half = lags[len(lags) // 2:] if lags else []
    sustained = bool(consumed >= fed["sent"] * 0.99 and drained_s < min(catch_up_s, 10.0)
                     and (not half or half[-1] <= max(half[0] * 1.5, rate * 3)))
    return {
        "rate": rate, "seconds": seconds, "trigger": _trigger(settings), "feeder": fed, "consumed": consumed,
        "drain_s": round(drained_s, 1),
        "sustained": sustained, "max_lag_ticks": max(lags, default=0.0),
        "batch_ms_median": median([m["batch_duration_ms"] for m in busy]) if busy else None,
        "batch_ms_max": max((m["batch_duration_ms"] for m in busy), default=None),
        "add_batch_ms_median": median([m["duration_ms"].get("addBatch", 0) for m in busy]) if busy else None,
        "phase_ms_median": _phases(busy),
        "batches": len(busy), **lat,
        "start_s": round(start_s, 1),
        # the sink's background upkeep of the audit table (its first checkpoint runs on cold code)
        "audit_upkeep": [{"batch_id": m.get("batch_id"), "kind": key.removeprefix("audit_"), **m[key]}
                         for m in progress for key in ("audit_compaction", "audit_checkpoint") if key in m],
        # CLOCK_MONOTONIC is system-wide: bench.run turns it into seconds of its RSS series
        "feed_monotonic": [feed_from, fed_at],
        "state_memory_monotonic": _state_memory(progress, feed_from, feed_from_epoch),
    }


def _state_memory(progress: list[dict], mono: float, epoch: float) -> list[tuple[float, int]]:
    """(CLOCK_MONOTONIC, bytes) of the state store's memory at each batch's end, as Spark reports it
    (``memoryUsedBytes``: for RocksDB its memtables, block cache and table readers), with ``mono`` and
    ``epoch`` one instant on both clocks."""
    out = []
    for m in progress:
        end_s = (parse_iso_ms(m["timestamp"]) + (m.get("batch_duration_ms") or 0)) / 1000
        out.append((round(mono + end_s - epoch, 1), m["state_memory_bytes"]))
    return out


def signal_latencies(settings: Settings, idle_s: float = 30.0, since_ms: float = 0.0) -> dict:
    """Kafka timestamp of each signal minus its tick's event time (the Feeder stamps the tick's
    event time and its Kafka timestamp with the same millisecond), for the ticks sent from ``since_ms``
    on (a leading feeder's ticks before its measured feed are not counted). Reads the signals topic from
    its start to the end offsets it has now, in polls of up to 50,000 records without CRC checks (the
    broker is local): 600,000 signals in 6.1-6.5 s here, against 28.4-29.3 s through kafka-python's
    record-at-a-time iterator, which a 21-minute soak at 20,000 ticks/s outran (bench/ROUNDS.md,
    fortieth round). Gives up after ``idle_s`` without a record."""
    from kafka import TopicPartition

    from marketsignals import kafka_client

    topic = settings.kafka.signals_topic
    consumer = kafka_client.consumer(settings.kafka, check_crcs=False, max_partition_fetch_bytes=8 * 2**20)
    lat, events = [], []
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        last_record = time.monotonic()
        while any(consumer.position(tp) < end[tp] for tp in parts) and time.monotonic() - last_record < idle_s:
            for records in consumer.poll(timeout_ms=1000, max_records=50_000).values():
                last_record = time.monotonic()
                for msg in records:
                    event_ms = parse_iso_ms(json.loads(msg.value)["event_time"])
                    if event_ms < since_ms:
                        continue
                    lat.append(msg.timestamp - event_ms)
                    events.append(event_ms)
    finally:
        consumer.close()
    return latency_summary(lat, events)


def latency_summary(latency_ms: list[float], event_ms: list[float]) -> dict:
    """Percentiles of the signals' latencies, over all of them, over those of the ticks fed in the
    second half of the feed (by event time: by then the job has warmed up and worked off any start-up
    backlog, so the second half is what a steady stream at this rate sees), and minute by minute of the
    feed (``by_minute``: what a run's whole and half hide, such as a stall every few minutes)."""
    import numpy as np

    if not latency_ms:
        return {"signals": 0}
    arr, events = np.array(latency_ms, dtype=float), np.array(event_ms, dtype=float)
    late_half = arr[events >= events.min() + (events.max() - events.min()) / 2]

    def percentiles(values) -> dict:
        return {f"p{q}_ms": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)}

    minute = ((events - events.min()) // 60_000).astype(int)
    by_minute = [{"minute": int(m), "signals": int((minute == m).sum()), **percentiles(arr[minute == m])}
                 for m in np.unique(minute)]
    return {"signals": len(arr), **percentiles(arr), "max_ms": round(float(arr.max()), 1),
            "second_half": {"signals": len(late_half), **percentiles(late_half)}, "by_minute": by_minute}


def main(argv: list[str]) -> int:
    from bench import jfr
    from bench.env import bench_settings

    scenario, args = argv[0], json.loads(argv[1])
    work = Path(args["work"])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # the run's own paths first: a --set of bench.run may name others (a table that is already there)
    settings = bench_settings(args["bootstrap"], f"stream.checkpoint={work}/checkpoint",
                              f"stream.audit_table={work}/audit", f"stream.metrics_path={work}/metrics.jsonl",
                              *args["overrides"])
    if args.get("jfr"):  # bench.run --jfr: a CPU profile of this run's JVM, written when the JVM exits
        settings = jfr.recorded(settings, args["jfr"])
    if scenario == "ceiling":
        result = ceiling(settings, work)
    elif scenario == "product":
        result = product(settings, work)
    elif scenario == "latency":
        result = latency(settings, work, args["rate"], args["seconds"], args["records"], args.get("catch_up_s", 60),
                         args.get("cold_feed", False))
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
