"""The Spark measurements, one per process (``python -m bench.spark_runs SCENARIO ARGS_JSON``), so each
gets a fresh JVM and its memory is measured alone. Prints one JSON line: the result.

    ceiling  Spark Kafka source -> from_json -> noop sink, availableNow            (a)
    product  the streaming job's own code path (start_stream), availableNow      (b), (e)
    latency  the job on its default trigger while bench/Feeder.java sends at a fixed rate  (d)
    restart  (d) stopped and started again from its checkpoint while the feed goes on: two processes,
             phase "first" (runs, then stops) and phase "resume" (the restart, until the feed is drained)
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


def _drain(query, metrics: Path, fed_epoch: float, bound_s: float, sent: int = 0) -> float:
    """Let the query read what the feed, ended at ``fed_epoch``, left (at most ``bound_s``): until its
    metrics count at least ``sent`` ticks and their last line says it has drained (:func:`_drained`).
    Returns the seconds it took."""
    began = time.monotonic()
    while query.isActive and time.monotonic() - began < bound_s:
        lines = _progress(metrics)
        if lines and sum(m["input_rows"] for m in lines) >= sent and _drained(lines[-1], fed_epoch):
            break
        time.sleep(1.0)
    return time.monotonic() - began


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
    from marketsignals.stream.state import has_state_reader, read_symbol_states

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
    # state rows are buckets of symbols; the symbols they hold, from Spark's state data source (4.0's)
    if has_state_reader(spark):
        out["state_symbols"] = len(read_symbol_states(spark, settings.stream.checkpoint,
                                                      settings.stream.state_buckets))
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
        _first_batch(query)  # it fixes the starting offsets at "latest"
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
    drained_s = _drain(query, Path(settings.stream.metrics_path), fed_epoch, catch_up_s, fed["sent"])
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


def _first_batch(query, timeout_s: float = 300.0) -> float:
    """Wait for the query's first progress (its first batch fixes the starting offsets); its epoch s."""
    deadline = time.monotonic() + timeout_s
    while query.isActive and query.lastProgress is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return time.time()


def restart_first(settings: Settings, work: Path, run_s: float) -> dict:
    """(restart) phase "first": the job starts while the feed runs (bench.run started it), reads for
    ``run_s`` seconds from its first batch, and stops as a redeploy or a ``yarn application -kill``'s
    SIGTERM stops it (``stop_query``: the batch in flight finishes first; then the process ends). Its
    checkpoint and audit table stay for phase "resume"."""
    from marketsignals.stream.checkpoint import last_batch
    from marketsignals.stream.job import start_stream, stop_query
    from marketsignals.stream.sinks import SignalSink

    spark = _session(settings)
    listener = MetricsListener(settings.stream.metrics_path)
    sink = SignalSink(settings)
    starting = time.monotonic()
    query = start_stream(spark, settings, listener=listener, sink=sink)
    start_s = time.monotonic() - starting
    first_epoch = _first_batch(query)
    time.sleep(max(0.0, first_epoch + run_s - time.time()))
    stop_epoch = time.time()
    stopped = stop_query(query, sink.gate, settings.stream.stop_grace_ms / 1000)  # as the job's SIGTERM does
    stop_s = time.time() - stop_epoch
    listener.terminated.wait(30)
    sink.close(60)
    if query.exception() is not None:
        raise RuntimeError(str(query.exception()))
    busy = [m for m in _progress(Path(settings.stream.metrics_path)) if m["input_rows"] > 0]
    # a batch planned and not committed: cut by the stop, or held before its work (the resume runs it)
    planned, committed = (last_batch(spark, settings.stream.checkpoint, log) for log in ("offsets", "commits"))
    return {"start_s": round(start_s, 1), "first_batch_epoch": first_epoch, "stop_epoch": stop_epoch,
            "stop_s": round(stop_s, 2), "batches": len(busy), "consumed": sum(m["input_rows"] for m in busy),
            "batch_ms_median": median([m["batch_duration_ms"] for m in busy]) if busy else None,
            "stopped": stopped, "planned": planned, "committed": committed}


def restart_resume(settings: Settings, work: Path, rate: float, fed_file: str, since_ms: float, stop_ms: float,
                   began_epoch: float, catch_up_s: float, window_s: float = 10.0) -> dict:
    """(restart) phase "resume": a new process starts the job again from phase "first"'s checkpoint while
    the feed goes on, reads until the feed has ended (bench.run writes the feeder's summary to
    ``fed_file`` then) and the stream has drained it, and reports the restart, ``stop_ms`` being when
    phase "first" began to stop:

    - when the process started, when the query started (the warm-up before it), when its first batch
      began, and that batch's ticks and duration (the backlog it found, up to maxOffsetsPerTrigger);
    - ``caught_up_at_s``: the start of the first batch that found at most a second of the feed behind it
      in any partition it reads (Kafka's ``maxOffsetsBehindLatest``);
    - ``recovered_at_s``: when signals went back to the stream's steady latency -- the emission time of
      the first signal after the restart within twice the p99 of the ticks fed in the last third of the
      feed after the stop (well after the restart, with a feed long enough) -- and ``backlog_ticks``, the
      ticks of the batches begun before it;
    - the signals' latency in ``window_s`` windows of their emission time from ``stop_ms``, and the
      signals sent again (the sink is at-least-once; repeats are left out of the latencies)."""
    from marketsignals.stream.job import start_stream

    spark = _session(settings)
    listener = MetricsListener(settings.stream.metrics_path)
    starting = time.time()
    query = start_stream(spark, settings, listener=listener)
    query_epoch = time.time()
    _first_batch(query)
    fed_path, deadline = Path(fed_file), time.monotonic() + 3600
    while query.isActive and not fed_path.exists() and time.monotonic() < deadline:
        time.sleep(1.0)
    fed = json.loads(fed_path.read_text()) if fed_path.exists() else {}
    drained_s = _drain(query, Path(settings.stream.metrics_path), time.time(), catch_up_s)
    query.stop()
    listener.terminated.wait(30)
    if query.exception() is not None:
        raise RuntimeError(str(query.exception()))
    busy = [m for m in _progress(Path(settings.stream.metrics_path)) if m["input_rows"] > 0]
    repeats: list[int] = []
    records = signal_records(settings, since_ms=since_ms, repeats=repeats)
    partitions = len(settings.kafka.tick_topics) * settings.kafka.partitions
    return {"rate": rate, "feeder": fed, "drain_s": round(drained_s, 1), "stop_ms": stop_ms,
            "repeated_signals": repeats[0], "batches": len(busy),
            "process_started_at_s": round(began_epoch - stop_ms / 1000, 1),
            "query_started_at_s": round(query_epoch - stop_ms / 1000, 1),
            "warm_up_and_start_s": round(query_epoch - starting, 1),
            **restart_summary(busy, *records, stop_ms=stop_ms, rate=rate, partitions=partitions, window_s=window_s)}


def restart_summary(busy: list[dict], latency_ms: list[float], event_ms: list[float], emitted_ms: list[float],
                    stop_ms: float, rate: float, partitions: int, window_s: float = 10.0) -> dict:
    """:func:`restart_resume`'s account of the restart from its data batches' metrics lines (``busy``) and
    the signals' (latency, event time, emission time) since before the stop; see there."""
    import numpy as np

    lat, events, emitted = (np.array(v, dtype=float) for v in (latency_ms, event_ms, emitted_ms))
    if not busy or not len(lat):
        return {"error": "no batch with data or no signal after the restart"}

    def at_s(ms: float) -> float:
        return round((ms - stop_ms) / 1000, 1)

    first = busy[0]
    out: dict = {"first_batch_at_s": at_s(parse_iso_ms(first["timestamp"])), "first_batch_ticks": first["input_rows"],
                 "first_batch_ms": first["batch_duration_ms"],
                 "batch_ms_max": max(m["batch_duration_ms"] for m in busy)}
    # a batch replayed after the stop (its offsets were logged before it) reports no lag: not one that found it
    caught = next((m for m in busy if m.get("kafka_lag") and max(m["kafka_lag"].values()) <= rate / partitions),
                  None)
    out["caught_up_at_s"] = at_s(parse_iso_ms(caught["timestamp"])) if caught else None
    steady = lat[events >= stop_ms + (events.max() - stop_ms) * 2 / 3]
    bound = 2 * float(np.percentile(steady, 99)) if len(steady) else float("inf")
    back = emitted[(emitted >= parse_iso_ms(first["timestamp"])) & (lat <= bound)]
    recovered_ms = float(back.min()) if len(back) else None
    out.update({"steady_p99_ms": round(bound / 2, 1),
                "recovered_at_s": at_s(recovered_ms) if recovered_ms is not None else None,
                "backlog_ticks": sum(m["input_rows"] for m in busy
                                     if recovered_ms is not None and parse_iso_ms(m["timestamp"]) < recovered_ms),
                "max_ms": round(float(lat.max()), 1)})
    window = ((emitted - stop_ms) // (window_s * 1000)).astype(int)
    out["windows"] = [{"from_s": int(w * window_s), "signals": int((window == w).sum()),
                       **{f"p{q}_ms": round(float(np.percentile(lat[window == w], q)), 1) for q in (50, 99)},
                       "max_ms": round(float(lat[window == w].max()), 1)} for w in np.unique(window)]
    return out


def signal_latencies(settings: Settings, idle_s: float = 30.0, since_ms: float = 0.0) -> dict:
    """Percentiles of :func:`signal_records`' latencies (:func:`latency_summary`)."""
    latency_ms, event_ms, _ = signal_records(settings, idle_s, since_ms)
    return latency_summary(latency_ms, event_ms)


def signal_records(settings: Settings, idle_s: float = 30.0, since_ms: float = 0.0,
                   repeats: list[int] | None = None) -> tuple[list[float], list[float], list[float]]:
    """Kafka timestamp of each signal minus its tick's event time (the Feeder stamps the tick's
    event time and its Kafka timestamp with the same millisecond), for the ticks sent from ``since_ms``
    on (a leading feeder's ticks before its measured feed are not counted): (latencies, event times,
    the signals' Kafka timestamps), in ms. Reads the signals topic from
    its start to the end offsets it has now, in polls of up to 50,000 records without CRC checks (the
    broker is local): 600,000 signals in 6.1-6.5 s here, against 28.4-29.3 s through kafka-python's
    record-at-a-time iterator, which a 21-minute soak at 20,000 ticks/s outran (bench/ROUNDS.md,
    fortieth round). Gives up after ``idle_s`` without a record. With ``repeats`` (a list), a signal
    whose ``signal_id`` came before (the Kafka sink is at-least-once: a batch replayed after a stop
    sends its signals again) is left out, as consumers drop it, and counted in ``repeats[0]``."""
    from kafka import TopicPartition

    from marketsignals import kafka_client

    topic = settings.kafka.signals_topic
    consumer = kafka_client.consumer(settings.kafka, check_crcs=False, max_partition_fetch_bytes=8 * 2**20)
    lat, events, emitted = [], [], []
    seen: set[str] = set()
    if repeats is not None:
        repeats[:] = [0]
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
                    signal = json.loads(msg.value)
                    event_ms = parse_iso_ms(signal["event_time"])
                    if event_ms < since_ms:
                        continue
                    if repeats is not None:
                        if signal["signal_id"] in seen:
                            repeats[0] += 1
                            continue
                        seen.add(signal["signal_id"])
                    lat.append(msg.timestamp - event_ms)
                    events.append(event_ms)
                    emitted.append(msg.timestamp)
    finally:
        consumer.close()
    return lat, events, emitted


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

    began = time.time()
    scenario, args = argv[0], json.loads(argv[1])
    work = Path(args["work"])
    if args.get("phase") != "resume":  # a restart's second process goes on with the first one's folder
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
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
    elif scenario == "restart" and args.get("phase") == "first":
        result = restart_first(settings, work, args["run_s"])
    elif scenario == "restart" and args.get("phase") == "resume":
        result = restart_resume(settings, work, args["rate"], args["fed_file"], args["since_ms"], args["stop_ms"],
                                began, args.get("catch_up_s", 120))
    else:
        raise SystemExit(f"unknown scenario {scenario} {args.get('phase', '')}".strip())
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
