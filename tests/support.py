"""Test helpers around the real broker and streaming job: isolated topics, produce, consume, run."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from marketsignals import feed, kafka_client
from marketsignals.local_broker import LocalBroker
from marketsignals.settings import KafkaSettings, Settings
from marketsignals.stream.sinks import audit_commit_batch

# The one setting the tests take from the environment (a developer's other MARKETSIGNALS__* never reach
# them): the Spark line's jars, to run the suites on Spark 3.5 (emr-7.x) with its Scala 2.12 jars (README).
JARS_DIR_ENV = "MARKETSIGNALS__SPARK__JARS_DIR"

_ids = itertools.count()


@dataclass
class Broker:
    local: LocalBroker
    settings: Settings
    root: Path

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka.bootstrap_servers

    def isolated(self, name: str, *overrides: str, partitions: int = 2) -> Settings:
        """Settings with fresh topics, checkpoint, audit table and metrics file for one test."""
        n = next(_ids)
        prefix = f"{name}-{n}"
        base = self.root / prefix
        topics = [f"{prefix}-market", f"{prefix}-level2", f"{prefix}-trade"]
        settings = self.settings.with_overrides([
            f"kafka.topics=[{', '.join(topics)}]",
            f"kafka.signals_topic={prefix}-signals",
            f"kafka.dead_letter_topic={prefix}-dead-letter",
            f"kafka.partitions={partitions}",
            "kafka.starting_offsets=earliest",
            f"stream.checkpoint={base}/checkpoint",
            f"stream.audit_table={base}/audit",
            f"stream.metrics_path={base}/metrics.jsonl",
            "stream.trigger=availableNow",
            *overrides,
        ])
        LocalBroker(settings.broker, settings.kafka, jars=self.local.jars).create_topics(
            log=lambda *_: None, topics=settings.kafka.all_topics)
        return settings

    def produce(self, settings: Settings, opts: feed.FeedOptions) -> feed.FeedStats:
        producer = kafka_client.producer(settings.kafka)
        try:
            return feed.run_to_kafka(feed.generate(opts), producer, rate=None, progress=False)
        finally:
            producer.close()

    def produce_messages(self, settings: Settings, messages) -> int:
        producer = kafka_client.producer(settings.kafka)
        n = 0
        try:
            for msg in messages:
                producer.send(msg.topic, key=msg.key, value=msg.value)
                n += 1
            producer.flush()
        finally:
            producer.close()
        return n

    def consume(self, settings: Settings, topic: str, timeout_s: float = 60.0) -> list[tuple[bytes, bytes]]:
        """Every message of ``topic`` up to its end offsets when called (waits for them)."""
        return consume_all(settings.kafka, topic, timeout_s)

    def consume_json(self, settings: Settings, topic: str) -> list[dict]:
        return [json.loads(v) for _, v in self.consume(settings, topic)]


def consume_all(kafka: KafkaSettings, topic: str, timeout_s: float = 60.0) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of ``topic`` up to its end offsets when called (waits for them)."""
    ends = kafka_client.end_offsets(kafka, [topic])[topic]
    wanted = sum(ends.values())
    out: list[tuple[bytes | None, bytes | None]] = []
    if not wanted:
        return out
    consumer = kafka_client.consumer(kafka, topic, consumer_timeout_ms=2000)
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < wanted and time.monotonic() < deadline:
            for msg in consumer:
                out.append((msg.key, msg.value))
                if len(out) >= wanted:
                    break
    finally:
        consumer.close()
    assert len(out) == wanted, f"read {len(out)} of {wanted} messages from {topic}"
    return out


def run_available_now(spark, settings: Settings) -> list[dict]:
    """Run the streaming job with availableNow to the end, and the audit table's compaction or
    checkpoint in flight with it (as ``marketsignals stream`` does); return its metrics lines."""
    from marketsignals.stream.job import start_stream
    from marketsignals.stream.metrics import MetricsListener
    from marketsignals.stream.sinks import SignalSink

    listener = MetricsListener(settings.stream.metrics_path)
    sink = SignalSink(settings)
    query = start_stream(spark, settings, listener=listener, sink=sink)
    try:
        query.awaitTermination()
        # the listener bus is asynchronous: wait until it delivered the last progress and the end
        listener.terminated.wait(timeout=60)
    finally:
        spark.streams.removeListener(listener)
        assert sink.close(timeout=120), "the audit table's compaction or checkpoint is still running"
    if query.exception() is not None:
        raise AssertionError(f"streaming query failed: {query.exception()}")
    path = Path(settings.stream.metrics_path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def start_live(spark, settings: Settings, listener):
    """A stream started as the job starts it (``stream.job.start_stream``), with its sink at hand for
    :func:`stop_live`: (query, sink)."""
    from marketsignals.stream.job import start_stream
    from marketsignals.stream.sinks import SignalSink

    sink = SignalSink(settings)
    return start_stream(spark, settings, listener=listener, sink=sink), sink


def stop_live(query, sink, grace_s: float = 120.0) -> str:
    """Stop a stream from :func:`start_live` as the job stops it (``stream.job.stop_query``): no batch
    starts its work, the one in flight commits, then ``query.stop()``. A bare ``query.stop()`` cuts the
    batch in flight, and on Spark 3.5 a cut stateful batch can crash the JVM (README, emr-7.x)."""
    from marketsignals.stream.job import stop_query

    try:
        return stop_query(query, sink.gate, grace_s)
    finally:
        sink.close(timeout=60)


def progress_lines(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if m.get("event") == "progress"]


def reopened_snapshot(spark, table: str):
    """The Delta table's newest snapshot as a new reader (a restart) builds it: Delta's cached logs
    dropped, so the state comes from the table's newest checkpoint and the commits after it."""
    delta_log = spark._jvm.org.apache.spark.sql.delta.DeltaLog
    delta_log.clearCache()
    empty = spark._jvm.scala.Option.empty()
    return delta_log.forTable(spark._jsparkSession, table).update(False, empty, empty)


def audit_log_batches(table: Path) -> tuple[set[int], set[int]]:
    """The batch ids an audit table's Delta log records, read from outside: the sink's commit tags
    (userMetadata) and Delta txn versions (the run's first audit write). A commit file still being
    written, or unreadable, is passed over."""
    tagged: set[int] = set()
    txn: set[int] = set()
    log = table / "_delta_log"
    if not log.is_dir():
        return tagged, txn
    for entry in log.glob("*.json"):
        try:
            lines = entry.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                action = json.loads(line)
            except ValueError:
                continue
            if "txn" in action:
                txn.add(int(action["txn"]["version"]))
            elif (batch := audit_commit_batch((action.get("commitInfo") or {}).get("userMetadata"))) is not None:
                tagged.add(batch)
    return tagged, txn


def output_rows(frame) -> list[tuple]:
    """The kernel's output frame as row tuples for comparison: nulls (None or NaN) as None, floats
    exactly (their repr)."""
    return [tuple(None if v is None or v != v else repr(v) if isinstance(v, float) else v for v in row)
            for row in frame.astype(object).itertuples(index=False)]


def state_fields(state) -> tuple:
    """A kernel SymbolState's fields for equality: its arrays' values exactly (their repr) and dtypes."""
    h = state.history
    pending, recent = (None if columns is None else {k: (repr(v.tolist()), str(v.dtype)) for k, v in columns.items()}
                       for columns in (state.pending, state.recent))
    return (tuple(repr(a.tolist()) + str(a.dtype) for a in (h.price, h.volume, h.price_change_pct)),
            state.last_ts, state.high_water, recent, state.last_action, pending)
