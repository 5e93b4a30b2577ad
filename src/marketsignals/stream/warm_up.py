"""Warm the job's JVM and Python workers before a live stream reads its first tick.

A JVM runs new code in its interpreter until the JIT compiles it, and Spark compiles each stage's
generated code, starts the Python workers, opens RocksDB and loads Delta the first time a batch needs
them. A live stream's first batch with data paid all of that: 12-29 s here for a few hundred ticks,
and the ticks that arrived meanwhile waited for the next batch, which was slow in turn
(bench/ROUNDS.md, thirtieth and thirty-first rounds).

:func:`warm_up` runs the query's own plan (:func:`marketsignals.stream.job.signal_stream`, the sink's
columns and its audit write) as a bounded query over synthetic ticks from the feed's generator, a few
of them bad, written as Kafka records to a folder beside the checkpoint (``<checkpoint>.warm-up``, on
the checkpoint's file system, which every executor reaches). Spark generates the same Java for it as
for the Kafka stream (:func:`rows_from_parquet`). It writes nothing to Kafka (its Kafka write goes to
Spark's ``noop`` sink) and nothing to the real checkpoint or audit table, and it removes its folder
when it ends. Then :func:`warm_kafka` reads the tick topics' newest records with the stream's own
Kafka source, and drops them: of the Kafka clients, only the sink's producer stays cold."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager

import pandas as pd
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery

from marketsignals.feed import BAD_KINDS, FeedOptions, generate, symbol_names
from marketsignals.session import conf_while
from marketsignals.settings import KafkaSettings, Settings
from marketsignals.stream import error_line
from marketsignals.stream.checkpoint import file_system
from marketsignals.stream.source import read_ticks, source_options

# Spark's Kafka source's columns (the Kafka integration guide)
KAFKA_SCHEMA = T.StructType([
    T.StructField("key", T.BinaryType()), T.StructField("value", T.BinaryType()),
    T.StructField("topic", T.StringType()), T.StructField("partition", T.IntegerType()),
    T.StructField("offset", T.LongType()), T.StructField("timestamp", T.TimestampType()),
    T.StructField("timestampType", T.IntegerType()),
])
BATCHES = 2  # the second batch runs with state from the first, as every later batch of the stream does
SYMBOLS = 100
BAD = dict.fromkeys(BAD_KINDS, 0.002)  # every bad kind, so each of validation's reject paths runs
KAFKA_LOOKBACK_S = 10  # warm_kafka reads the tick topics' records of the last this many seconds
KAFKA_WAIT_S = 30.0  # ... and gives up after this long without a batch (no Kafka reachable)


def folder(settings: Settings) -> str:
    """Where the warm-up writes: beside the checkpoint, on its file system."""
    return settings.stream.checkpoint.rstrip("/") + ".warm-up"


def kafka_rows(settings: Settings, ticks: int, now_ms: int) -> pd.DataFrame:
    """``ticks`` synthetic Kafka records of the tick topics, their event times in the last minute."""
    topics = tuple(settings.kafka.tick_topics) or ("ticks",)  # any names: the query reads these rows, not Kafka
    span_ms = 30_000
    opts = FeedOptions(symbols=symbol_names(SYMBOLS), rate=ticks * 1000 / span_ms, count=ticks, topics=topics,
                       start_ms=now_ms - 2 * span_ms, bad=BAD)
    partitions = settings.kafka.partitions
    offsets: dict[tuple[str, int], int] = {}
    rows = []
    for m in generate(opts):
        partition = zlib.crc32(m.key) % partitions
        offset = offsets[m.topic, partition] = offsets.get((m.topic, partition), -1) + 1
        rows.append((m.key, m.value, m.topic, partition, offset, m.ts_ms, 0))
    frame = pd.DataFrame(rows, columns=[f.name for f in KAFKA_SCHEMA.fields])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="ms")
    return frame


def warm_up(spark: SparkSession, settings: Settings, ticks: int, stop: threading.Event | None = None,
            key_partitions: int | None = None) -> dict:
    """Run the stream's plan (its buckets keyed as the stream's: ``key_partitions``) over ``ticks``
    synthetic ticks in :data:`BATCHES` batches (and the batch Spark adds when the watermark moves);
    returns what it did (ticks, batches, signals, rejected, audit writes, seconds) for the job's log.
    ``stop`` set meanwhile ends it early with :class:`WarmUpStopped`."""
    from marketsignals.stream.job import signal_stream
    from marketsignals.stream.sinks import SignalSink

    started = time.monotonic()
    root = folder(settings)
    fs, path = file_system(spark, root)
    fs.delete(path, True)  # a folder left by a run that died during its warm-up
    try:
        ticks, files = write_ticks(spark, settings, ticks, f"{root}/input")
        warm = settings.with_overrides([f"stream.checkpoint={root}/checkpoint", f"stream.audit_table={root}/audit",
                                        "stream.audit_checkpoint_interval=0", "stream.audit_compact_interval=0"])
        done = {"ticks": ticks, "batches": 0, "signals": 0, "rejected": 0, "audit_writes": 0}

        def counted(batch_id: int, counts: dict) -> None:
            done["batches"] += 1
            done["signals"] += counts["signals"]
            done["rejected"] += counts["rejected"]
            done["audit_writes"] += "audit" in counts["sink_ms"]

        sink = SignalSink(warm, on_counts=counted, to_kafka=False)
        writer = (signal_stream(tick_source(spark, f"{root}/input", files), warm, key_partitions).writeStream
                  .queryName(f"{settings.stream.query_name}-warm-up").option("checkpointLocation", f"{root}/checkpoint")
                  .foreachBatch(sink).trigger(availableNow=True))
        with rows_from_parquet(spark):
            try:
                _await(writer.start(), stop)
            except StreamingQueryException as exc:
                raise WarmUpFailed(f"the warm-up before the stream failed (stream.warm_up_ticks=0 skips it): "
                                   f"{error_line(exc)}") from exc
        if not (stop is not None and stop.is_set()):
            done.update(warm_kafka(spark, settings, f"{root}/kafka-checkpoint", ticks, stop))
        if stop is not None and stop.is_set():
            raise WarmUpStopped("stopped during the warm-up, before the stream read anything")
        return {**done, "s": round(time.monotonic() - started, 1)}
    finally:
        fs.delete(path, True)


def warm_kafka(spark: SparkSession, settings: Settings, checkpoint: str, most: int,
               stop: threading.Event | None = None) -> dict:
    """Read the tick topics' newest records (those of the last :data:`KAFKA_LOOKBACK_S` seconds, at most
    ``most``) with the stream's Kafka source and options into Spark's ``noop`` sink, and end after the
    first batch that read any: the driver's Kafka admin client and the executors' consumers run once, so
    the JIT has seen them before the stream's first batches (a new query's first batch took ~1.9 s
    longer than the next ones here, ~0.85 s with it: bench/ROUNDS.md, thirty-second round). It commits
    no offsets and writes nothing. It never fails the warm-up: without Kafka (none reachable, the
    topics not there yet, none of their records that new) it ends after :data:`KAFKA_WAIT_S` seconds
    or at its first empty batch, and the stream meets the broker as it would have. Returns kafka_ticks
    and kafka_note (why it read none, if it did not)."""

    kafka = settings.with_overrides([f"kafka.max_offsets_per_trigger={max(1, most)}"]).kafka
    options = kafka_options(kafka, int(time.time() * 1000))
    try:
        query = (read_ticks(spark, kafka, options).writeStream.format("noop")
                 .queryName(f"{settings.stream.query_name}-warm-up-kafka").option("checkpointLocation", checkpoint)
                 .trigger(availableNow=True).start())
    except Exception as exc:  # the stream's own start says what is wrong, if it is the stream's too
        return {"kafka_ticks": 0, "kafka_note": f"its query did not start: {error_line(exc, 300)}"}
    deadline = time.monotonic() + KAFKA_WAIT_S
    note = None
    try:
        # one batch's read is the point: the rest of the topics' newest can stay unread
        ended = _await(query, stop, lambda: any(p.get("numInputRows") for p in query.recentProgress)
                       or time.monotonic() > deadline)
    except StreamingQueryException as exc:
        ended, note = "failed", error_line(exc, 300)
    read = sum(p.get("numInputRows") or 0 for p in query.recentProgress)
    if not read and note is None:
        note = (f"no batch in {KAFKA_WAIT_S} s (is Kafka reachable?)" if ended == "done"
                else f"none of the tick topics' records is from the last {KAFKA_LOOKBACK_S} s")
    return {"kafka_ticks": read, "kafka_note": note}


def _await(query: StreamingQuery, stop: threading.Event | None,
           done: Callable[[], bool] = lambda: False) -> str:
    """Wait until ``query`` ends ("ended"), ``stop`` is set ("stopped") or ``done()`` ("done"), polling
    every 0.2 s, and stop the query if it still runs. A failed query raises StreamingQueryException."""
    try:
        while not query.awaitTermination(0.2):
            if stop is not None and stop.is_set():
                return "stopped"
            if done():
                return "done"
        return "ended"
    finally:
        if query.isActive:
            query.stop()


def kafka_options(kafka: KafkaSettings, now_ms: int) -> dict[str, str]:
    """:func:`warm_kafka`'s options for the Kafka source: where it starts, and its clients' timeouts."""
    since_ms = now_ms - KAFKA_LOOKBACK_S * 1000
    options = {"startingTimestamp": str(since_ms), "startingOffsetsByTimestampStrategy": "latest"}  # none: the end
    timeouts = ("kafka.request.timeout.ms", "kafka.default.api.timeout.ms")
    if not any(key in source_options(kafka) for key in timeouts):  # unless the job sets its own (Kafka
        # rejects a default.api.timeout.ms below request.timeout.ms): a Kafka it cannot reach holds the
        # query's stop for a call's whole timeout (60 s by default)
        options.update(dict.fromkeys(timeouts, str(round(KAFKA_WAIT_S * 1000))))
    return options


def write_ticks(spark: SparkSession, settings: Settings, ticks: int, where: str) -> tuple[int, int]:
    """:func:`kafka_rows` as Parquet files in ``where``, a write for each of :data:`BATCHES` batches, in
    offset order; returns the ticks and the files a batch."""
    frame = kafka_rows(settings, ticks, int(time.time() * 1000))
    files = max(1, spark.sparkContext.defaultParallelism)  # a file a core, a stage-0 task each: on a cluster,
    # the tasks spread over the executors, whose JVMs each need warming
    per = -(-len(frame) // BATCHES)
    for i in range(BATCHES):
        part = spark.createDataFrame(frame.iloc[i * per:(i + 1) * per], KAFKA_SCHEMA)
        part.repartition(files, "topic", "partition").write.mode("append").parquet(where)
    return len(frame), files


def tick_source(spark: SparkSession, where: str, files: int) -> DataFrame:
    """The stream of :func:`write_ticks`'s records, a write a batch (read them in :func:`rows_from_parquet`)."""
    return spark.readStream.schema(KAFKA_SCHEMA).option("maxFilesPerTrigger", files).parquet(where)


@contextmanager
def rows_from_parquet(spark: SparkSession):
    """Parquet read a row at a time while the warm-up runs. The warm-up's Kafka-shaped rows then reach the
    plan as the Kafka source's do, and Spark generates the same Java for every stage of both queries:
    it compiles identical code once per JVM, so the JIT's work on the warm-up's carries over to the
    stream. The vectorized reader's batches of columns would need other code (bench/ROUNDS.md,
    thirty-first round). Spark plans each batch with the session's settings: the stream's own query
    starts after this ends."""
    with conf_while(spark, "spark.sql.parquet.enableVectorizedReader", "false"):
        yield


class WarmUpFailed(RuntimeError):
    """The warm-up's query failed: the stream's own query would fail the same way."""


class WarmUpStopped(Exception):
    """The job was told to stop during the warm-up."""
