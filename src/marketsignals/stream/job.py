"""Build, start and run the streaming query (SPEC §1-4).

    raw Kafka -> parse + validate (stateless) -> watermark on valid ticks' event time
      -> groupBy(bucket of symbols).applyInPandasWithState(kernel per symbol)
      -> foreachBatch(Kafka, dead letters, audit)

Invalid ticks travel through the stateful operator to their symbol's bucket (symbol ``""`` if none) and come out
as reject rows, so one query and one checkpoint carry everything; their event time is null, so a
far-future or malformed stamp never moves the watermark.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence

from pyspark.errors import StreamingQueryException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery
from pyspark.sql.streaming.state import GroupStateTimeout

from marketsignals import kernel, stop_request
from marketsignals.kernel import KernelConfig
from marketsignals.schema import (
    ASK,
    BID,
    EVENT_TIME,
    EXCHANGE,
    OFFSET,
    PARTITION,
    PRICE,
    RAW,
    REASON,
    SYMBOL,
    TOPIC,
    TS_MS,
    VOLUME,
)
from marketsignals.secrets import resolve_secrets
from marketsignals.settings import Settings, load_settings
from marketsignals.shutdown import StopSignals
from marketsignals.stream import checkpoint, error_line, error_text, state
from marketsignals.stream.metrics import MetricsListener
from marketsignals.stream.sinks import FAST_LOG_LISTING, SignalSink, StopGate, fast_log_listing
from marketsignals.stream.source import read_ticks, records_after
from marketsignals.stream.trigger import live_trigger
from marketsignals.stream.warm_up import WarmUpStopped, warm_up
from marketsignals.validation import parse_ticks, raw_text, with_reject_reason

# Spark's EventTimeWatermark.delayKey: the column metadata that marks an event-time column.
WATERMARK_DELAY_KEY = "spark.watermarkDelayMs"


def kernel_config(settings: Settings) -> KernelConfig:
    s = settings.stream
    return KernelConfig(strategy=settings.strategy, ordering=s.ordering, emission=s.emission,
                        watermark_delay_ms=s.watermark_delay_ms, idle_timeout_ms=s.state_idle_timeout_ms)


def batch_now_ms() -> Column:
    """The micro-batch's processing time in epoch milliseconds, for the future-timestamp rule.

    ``current_timestamp()`` in a stream is the batch's time, kept in the offset log, so a replayed batch
    judges a tick as it did the first time. Spark writes that time into the generated Java as a
    literal, so the validation's projection (~45 KB of source) was a new class in every batch:
    compiled again, and run by the JIT from the interpreter up again. ``reflect`` has no generated
    code of its own (Spark evaluates it through the expression object), so the time reaches the
    code by reference and the class is compiled once per query (bench/ROUNDS.md, seventh round).
    """
    now = F.unix_millis(F.current_timestamp())
    return F.call_function("reflect", F.lit("java.lang.Long"), F.lit("valueOf"), now).cast("long")


def validated_ticks(raw: DataFrame, settings: Settings) -> DataFrame:
    """Kafka rows -> the columns the kernel needs; rejects keep their raw value and reason."""
    ticks = with_reject_reason(parse_ticks(raw), batch_now_ms(), settings.stream.max_future_skew_ms)
    valid = F.col(REASON).isNull()
    return ticks.select(
        F.coalesce(F.col(SYMBOL), F.lit("")).alias(SYMBOL),
        F.when(valid, F.col(EVENT_TIME)).alias(EVENT_TIME),
        TS_MS, PRICE, VOLUME, BID, ASK, EXCHANGE, TOPIC, PARTITION, OFFSET, REASON,
        F.when(~valid, raw_text(F.col("value"))).alias(RAW),
    )


def signal_stream(raw: DataFrame, settings: Settings, key_partitions: int | None = None) -> DataFrame:
    """The kernel's output rows (signals, rejects, counts) for a raw Kafka stream; the buckets keyed for
    ``key_partitions`` shuffle partitions (state.bucket_keys; None: by their own numbers)."""
    handler = state.make_handler(kernel_config(settings), settings.stream.state_buckets, key_partitions)
    return (
        bucketed_ticks(raw, settings, key_partitions)
        .groupBy(state.BUCKET)
        .applyInPandasWithState(handler, kernel.OUTPUT_SCHEMA, state.STATE_SCHEMA, "append",
                                GroupStateTimeout.EventTimeTimeout)
    )


def bucketed_ticks(raw: DataFrame, settings: Settings, key_partitions: int | None = None) -> DataFrame:
    """What the stateful operator groups (signal_stream): the validated ticks with their bucket and the
    watermark's marker. Everything up to the shuffle, one stage."""
    # Spark computes the watermark from the valid ticks' event time, and would also silently drop
    # input rows behind it before the stateful operator -- but SPEC §1 wants late ticks
    # dead-lettered. So the operator gets a null-valued event-time column that still carries the
    # watermark marker (Spark requires one for EventTimeTimeout and GroupState's watermark): no row
    # is ever "behind" it, and the kernel judges lateness itself from getCurrentWatermarkMs().
    # A long, not a timestamp: the handler gets every input column of every group as a pandas Series,
    # and a timestamp column's time-zone conversion per group was a quarter of the Python workers'
    # time at 10,000 symbols (py-spy); Spark only needs the marker's metadata.
    delay_ms = settings.stream.watermark_delay_ms
    if settings.stream.source_tasks and not settings.stream.bounded:  # a live stream's small batches
        raw = raw.coalesce(settings.stream.source_tasks)
    ticks = validated_ticks(raw, settings).withWatermark(EVENT_TIME, settings.stream.watermark_delay)
    marker = F.lit(None).cast("long").alias(EVENT_TIME, metadata={WATERMARK_DELAY_KEY: delay_ms})
    return ticks.select(state.bucket_of(F.col(SYMBOL), settings.stream.state_buckets, key_partitions), marker,
                        *state.TICK_COLUMNS)


def start_stream(spark: SparkSession, settings: Settings, listener: MetricsListener | None = None,
                 sink: SignalSink | None = None, stop: threading.Event | None = None) -> StreamingQuery:
    """Start the query; returns once it runs (a live stream warms up first: stream/warm_up.py; ``stop``
    set meanwhile ends that with WarmUpStopped). The caller awaits or stops the query (and then closes
    ``sink``, if it gave one: see :meth:`SignalSink.close`)."""
    layout = checkpoint.state_layout(spark, settings.stream.checkpoint, settings.stream.state_buckets,
                                     int(spark.conf.get("spark.sql.shuffle.partitions")))
    if layout.buckets != settings.stream.state_buckets:  # fixed per checkpoint (marketsignals.stream.checkpoint)
        settings = settings.with_overrides([f"stream.state_buckets={layout.buckets}"])
    s = settings.stream
    if checkpoint.writes_in_place(spark, s.checkpoint):
        print(f"marketsignals stream: the checkpoint is on S3A: Spark writes its files in place, not through a "
              f"copy and a delete each ({checkpoint.ABORTABLE_MANAGER.rsplit('.', 1)[1]})", flush=True)
    if fast_log_listing(spark, s.audit_table):
        print(f"marketsignals stream: the audit table is on S3A: Delta lists its log from the version it needs "
              f"({FAST_LOG_LISTING})", flush=True)
    if s.warm_up_ticks and not s.bounded:
        waiting = None if s.warm_up_on_restart else restart_backlog(spark, settings)
        if waiting is not None and waiting[1] > 0:
            print(f"marketsignals stream: no warm-up: the query resumes its checkpoint after batch {waiting[0]} "
                  f"with {waiting[1]:,} ticks waiting, which a warm-up would keep waiting longer "
                  f"(stream.warm_up_on_restart=true warms up first)", flush=True)
        else:
            done = warm_up(spark, settings, s.warm_up_ticks, stop, key_partitions=layout.key_partitions)
            kafka = (f" and {done['kafka_ticks']:,} of the tick topics' newest records" if done["kafka_ticks"]
                     else f"; Kafka's consumers not warmed: {done['kafka_note']}")
            print(f"marketsignals stream: warmed up in {done['s']} s on {done['ticks']:,} synthetic ticks "
                  f"({done['batches']} batches, {done['signals']:,} signals and {done['rejected']:,} rejects "
                  f"dropped){kafka}", flush=True)
    listener = listener or MetricsListener(s.metrics_path)
    spark.streams.addListener(listener)
    if sink is None:
        sink = SignalSink(settings)
    sink.on_counts = listener.record_counts
    live = None if s.bounded else live_trigger(s, settings.kafka.max_offsets_per_trigger)
    if live is not None and live.note:
        print(f"marketsignals stream: {live.note}", flush=True)
    ticks = read_ticks(spark, settings.kafka, limits=live.read_limits if live else None)
    writer = (signal_stream(ticks, settings, layout.key_partitions).writeStream
              .queryName(s.query_name).option("checkpointLocation", s.checkpoint).foreachBatch(sink))
    if s.trigger == "availableNow":
        writer = writer.trigger(availableNow=True)
    elif s.trigger == "once":
        writer = writer.trigger(once=True)
    else:
        writer = writer.trigger(processingTime=live.interval)
    return writer.start()


BACKLOG_TIMEOUT_S = 10.0  # how long restart_backlog waits for Kafka's end offsets


def restart_backlog(spark: SparkSession, settings: Settings) -> tuple[int, int] | None:
    """For a query that resumes its checkpoint: its newest batch and the ticks in Kafka after it. None for
    a new query, or (with a line saying why) where those are unreadable.

    A restart while ticks flow finds them waiting, and every second of a warm-up adds a second to their
    wait; their own first batches warm the JVM (slower than warm batches, but the whole backlog was
    worked off sooner: bench's restart run, bench/ROUNDS.md, forty-seventh round). A restart with none
    waiting (the feed stopped too, or a market closed) warms up, as a new query does, for the ticks to
    come."""
    newest = checkpoint.last_batch(spark, settings.stream.checkpoint)
    if newest is None:
        return None
    try:
        offsets = checkpoint.source_offsets(spark, settings.stream.checkpoint, newest)
        return newest, records_after(spark, settings.kafka, offsets, BACKLOG_TIMEOUT_S)
    except Exception as exc:  # the warm-up goes on as for a new query; the stream meets any real fault itself
        print(f"marketsignals stream: the ticks waiting after batch {newest} are not known ({error_line(exc, 300)}): "
              f"warming up", flush=True)
        return None


STOP_POLL_S = 0.2  # how soon after SIGTERM / Ctrl-C the query's stop starts, at the latest
COMMIT_POLL_S = 0.05  # how often a stop looks whether the batch in flight is committed
# how long a stop waits for the audit table's compaction or checkpoint in flight (one cut by the end leaves
# the table as it was: an OPTIMIZE that did not commit wrote files no version names, which VACUUM removes)
MAINTENANCE_WAIT_S = 60


def stop_query(query: StreamingQuery, gate: StopGate, grace_s: float, cut: threading.Event | None = None) -> str:
    """Stop the query between two batches: no batch starts its work once this is called (``gate``, the
    sink's: :func:`~marketsignals.stream.sinks.run_stoppable`), the one in flight, or the one whose work
    just ended, runs until Spark's commit log records it, for at most ``grace_s`` seconds or until
    ``cut`` is set, and then ``query.stop()`` interrupts at most a batch that has written nothing. A
    batch cut by the end of the grace (or with ``grace_s`` 0) is replayed at the next start, as after
    a crash: the audit table skips what it holds, and Kafka may get its signals twice. Returns how the
    stop went: ``"committed"`` (it waited for the batch's commit), ``"between batches"`` (nothing to
    wait for), ``"cut"`` or ``"not active"`` (the query had ended)."""
    pending = gate.close(query)
    try:
        if not query.isActive:
            return "not active"
        if pending is None or _committed(query, pending):
            return "between batches"
        if grace_s > 0:
            print(f"marketsignals: the streaming query stops once batch {pending} is committed (at most "
                  f"{grace_s:g} s: stream.stop_grace; a second SIGTERM or Ctrl-C stops it at once)", flush=True)
            deadline = time.monotonic() + grace_s
            while query.isActive and time.monotonic() < deadline and not (cut is not None and cut.is_set()):
                time.sleep(COMMIT_POLL_S)
                if _committed(query, pending):
                    return "committed"
        if not query.isActive:
            return "not active"
        print(f"marketsignals: batch {pending} is not committed yet: the stop cuts it", flush=True)
        return "cut"
    finally:
        if query.isActive:
            print("marketsignals: stopping the streaming query", flush=True)
            query.stop()


def _committed(query: StreamingQuery, batch_id: int) -> bool:
    """Whether Spark's commit log records batch ``batch_id``, from the query's last progress, which Spark
    reports after the commit: a later batch's, or this one's with a sink time (``addBatch``; a trigger
    that found no data may report the id of the batch to come, without one)."""
    progress = query.lastProgress
    if progress is None:
        return False
    return progress["batchId"] > batch_id or (progress["batchId"] == batch_id
                                              and "addBatch" in (progress["durationMs"] or {}))


class StopRequests:
    """The checkpoint's stop request (marketsignals/stop_request.py), looked for every ``interval_s`` (0:
    never). A failure to look is reported once, until a look succeeds again, and stops nothing."""

    def __init__(self, spark: SparkSession, checkpoint_path: str, interval_s: float) -> None:
        self.spark, self.checkpoint, self.interval_s = spark, checkpoint_path, interval_s
        self.location = stop_request.location(checkpoint_path)
        self._next = time.monotonic() + interval_s
        self._failing = False

    def due(self) -> bool:
        """Whether it is time to look again (then the next look is ``interval_s`` away)."""
        if self.interval_s <= 0 or time.monotonic() < self._next:
            return False
        self._next = time.monotonic() + self.interval_s
        return True

    def look(self) -> str | None:
        """The request's text if one waits (never with ``interval_s`` 0), else None."""
        if self.interval_s <= 0:
            return None
        try:
            found = checkpoint.stop_request(self.spark, self.checkpoint)
        except Exception as exc:  # the stream goes on; a signal still stops it
            if not self._failing:
                print(f"marketsignals: could not look for a stop request at {self.location} "
                      f"({error_line(exc, 300)}); trying again every {self.interval_s:g} s", flush=True)
            self._failing = True
            return None
        self._failing = False
        return found

    def remove(self) -> None:
        try:
            checkpoint.remove_stop_request(self.spark, self.checkpoint)
        except Exception as exc:  # said: the next start would not start its query
            print(f"marketsignals: could not remove the stop request {self.location} ({error_line(exc, 300)}): "
                  f"remove it before the next start, which otherwise stops at once", flush=True)
            return
        print(f"marketsignals: removed the stop request {self.location}", flush=True)


def run(spark: SparkSession, settings: Settings) -> int:
    """Start the query and wait; SIGTERM or Ctrl-C, or a stop request in the checkpoint (``stream.stop_check``),
    stops it cleanly: the batch in flight finishes (:func:`stop_query`; a second signal, or the end of
    ``stream.stop_grace``, cuts it, and it is replayed from the checkpoint next time)."""
    requests = StopRequests(spark, settings.stream.checkpoint, settings.stream.stop_check_ms / 1000)
    waiting = requests.look()
    if waiting is not None:  # for the job before this one, e.g. one its platform restarted after a failure
        print(f"marketsignals: a stop request waits in {requests.location} ({waiting}): the streaming query does "
              f"not start", flush=True)
        requests.remove()
        return 0
    listener = MetricsListener(settings.stream.metrics_path)
    sink = SignalSink(settings)
    signals = StopSignals()  # a second signal cuts the batch the stop waits for
    stop, cut = signals.stop, signals.again
    try:
        query = start_stream(spark, settings, listener=listener, sink=sink, stop=stop)
    except BaseException as exc:
        signals.restore()
        if not isinstance(exc, WarmUpStopped):
            raise
        print(f"marketsignals: {exc}", flush=True)
        return 0
    requested = False
    try:
        while query.isActive and not stop.is_set():
            try:
                # short waits: a signal's handler runs here, but the stop starts only once this returns
                query.awaitTermination(STOP_POLL_S)
            except StreamingQueryException:
                break  # reported below, from query.exception(), as one restartable line
            if requests.due() and (request := requests.look()) is not None:
                print(f"marketsignals: stop requested in {requests.location} ({request})", flush=True)
                requested = True
                stop.set()
    finally:
        try:
            stop_query(query, sink.gate, settings.stream.stop_grace_ms / 1000, cut)
        finally:
            signals.restore()
        listener.terminated.wait(timeout=10)
        spark.streams.removeListener(listener)
        if not sink.close(timeout=MAINTENANCE_WAIT_S):
            print("marketsignals: the audit table's compaction or checkpoint did not finish in time; the next one "
                  "comes later", flush=True)
    exc = query.exception()
    if requested and exc is None:
        requests.remove()
    if exc is not None:
        text = error_text(exc)
        incompatible = _incompatible_state(text)
        if incompatible:
            raise IncompatibleCheckpoint(f"{IncompatibleCheckpoint.PREFIX}: {incompatible} "
                                         f"(checkpoint {settings.stream.checkpoint})")
        raise StreamFailed(f"the streaming query failed: {text.splitlines()[0][:500]} (full trace in the driver "
                           f"log; the job restarts from {settings.stream.checkpoint})")
    return 0


def _incompatible_state(text: str) -> str | None:
    """What to do when the checkpoint holds state this version cannot read (a restart would fail again):
    the handler's StateFormatError, or Spark's own state schema check."""
    for line in text.splitlines():
        if "StateFormatError: " in line:
            return line.split("StateFormatError: ", 1)[1].strip()[:500]
    if "STATE_STORE_KEY_SCHEMA_NOT_COMPATIBLE" in text or "STATE_STORE_VALUE_SCHEMA_NOT_COMPATIBLE" in text:
        return ("it was written by an earlier version of marketsignals (state keyed by symbol, not by bucket of "
                "symbols): start from a new checkpoint (stream.checkpoint)")
    return None


class StreamFailed(RuntimeError):
    """The query stopped with an error; restarting resumes from the checkpoint."""


class IncompatibleCheckpoint(StreamFailed):
    """The checkpoint holds state this version cannot read: a restart fails the same way; the message
    says what to change (the setting back, or a new checkpoint)."""

    PREFIX = "the checkpoint's state cannot be read by this job"  # `live` spots it in the job's log


def main(argv: Sequence[str] | None = None) -> int:
    """spark-submit entry point (jobs/stream_signals.py)."""
    parser = argparse.ArgumentParser(prog="stream_signals", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="emr")
    parser.add_argument("--conf", dest="conf_file")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    settings = resolve_secrets(load_settings(args.profile, args.overrides, conf_file=args.conf_file))
    from marketsignals.session import build_session

    return run(build_session(settings.spark, bounded=settings.stream.bounded), settings)
