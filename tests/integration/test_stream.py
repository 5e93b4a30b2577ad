"""The streaming job against a real broker: parity with batch window functions, exactly-once audit
on replay, dead letters with reasons, event-time ordering (issue 3)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from marketsignals import feed, kernel
from marketsignals.indicators import with_indicators
from marketsignals.risk import HOLD, with_risk
from marketsignals.schema import (
    ACTIONABLE,
    EXCHANGE,
    INDICATOR_COLUMNS,
    OFFSET,
    PARTITION,
    REASON,
    SYMBOL,
    TRADING_SIGNAL,
    TS_MS,
)
from marketsignals.stream import checkpoint, sinks, state
from marketsignals.validation import parse_ticks, with_reject_reason
from support import audit_log_batches, progress_lines, run_available_now, start_live, stop_live

pytestmark = pytest.mark.integration

START_MS = 1_767_312_000_000  # 2026-01-02T00:00:00Z: in the past, so no tick is "in the future"
NUMERIC = [*INDICATOR_COLUMNS, "risk_score", "confidence", "price"]


def audit(spark, settings):
    return spark.read.format("delta").load(settings.stream.audit_table)


def expected_signals(spark, settings) -> list[dict]:
    """The batch computation of SPEC §2-4 with Spark window functions over the whole topic data:
    an implementation independent of the streaming kernel's incremental windows."""
    raw = (spark.read.format("kafka").option("kafka.bootstrap.servers", settings.kafka.bootstrap_servers)
           .option("subscribe", ",".join(settings.kafka.topics)).load())
    ticks = with_reject_reason(parse_ticks(raw), F.lit(2**62), 5000).filter(F.col(REASON).isNull())
    scored = with_risk(with_indicators(ticks), settings.strategy)
    order = Window.partitionBy(SYMBOL).orderBy(TS_MS, EXCHANGE, PARTITION, OFFSET)
    action = F.when(F.col(ACTIONABLE), F.col(TRADING_SIGNAL)).otherwise(F.lit(HOLD))
    emitted = (scored.withColumn("_action", action)
               .withColumn("_previous", F.lag("_action", 1, HOLD).over(order))
               .filter(F.col(ACTIONABLE) & (F.col("_action") != F.col("_previous"))))
    rows = [r.asDict() for r in emitted.select(SYMBOL, TS_MS, EXCHANGE, "volume", TRADING_SIGNAL, *NUMERIC).collect()]
    for r in rows:
        r["signal_id"] = kernel.signal_id(r[SYMBOL], r[TS_MS], r[EXCHANGE], r["price"], r["volume"],
                                          settings.strategy.version)
    return rows


def assert_same_signals(actual: list[dict], expected: list[dict]) -> None:
    by_id = {r["signal_id"]: r for r in actual}
    assert len(by_id) == len(actual), "duplicate signal_id in the audit table"
    assert sorted(by_id) == sorted(r["signal_id"] for r in expected), "different set of signals"
    for exp in expected:
        got = by_id[exp["signal_id"]]
        assert got["action"] == exp[TRADING_SIGNAL], exp
        for col in NUMERIC:
            a, b = got[col], exp[col]
            if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
                assert (a is None or math.isnan(a)) and (b is None or math.isnan(b)), (col, a, b, exp)
            else:
                assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (col, a, b, exp)


def audit_rows(spark, settings) -> list[dict]:
    return [r.asDict() for r in audit(spark, settings).select("signal_id", "action", *NUMERIC).collect()]


@pytest.fixture(scope="module")
def parity_run(spark, kafka_broker):
    """One streaming run over a seeded feed, cut into at least 5 micro-batches."""
    settings = kafka_broker.isolated("parity", "kafka.max_offsets_per_trigger=400")
    kafka_broker.produce(settings, feed.FeedOptions(symbols=feed.symbol_names(6), count=2400, rate=200,
                                                    start_ms=START_MS, seed=11, topics=tuple(settings.kafka.topics)))
    return settings, run_available_now(spark, settings)


def test_parity_with_batch_window_functions_over_many_micro_batches(spark, parity_run):
    settings, metrics = parity_run
    batches = [m for m in progress_lines(metrics) if m["input_rows"] > 0]
    assert len(batches) >= 5
    assert sum(m["input_rows"] for m in batches) == 2400
    expected = expected_signals(spark, settings)
    assert len(expected) > 50
    assert_same_signals(audit_rows(spark, settings), expected)


def test_backtest_signals_equal_the_streaming_signals_row_for_row(spark, parity_run):
    """Issue 5's parity: the backtest over the same ticks (read back from Kafka) gives exactly the
    signals the streaming job wrote to its audit table -- every column, bit for bit."""
    from marketsignals.backtest.signals import batch_signals
    from marketsignals.stream.job import kernel_config

    settings, _ = parity_run
    raw = (spark.read.format("kafka").option("kafka.bootstrap.servers", settings.kafka.bootstrap_servers)
           .option("subscribe", ",".join(settings.kafka.topics)).load())
    history = parse_ticks(raw).select("symbol", F.col("event_time").alias("timestamp"), "price", "volume", "bid",
                                      "ask", "exchange", "currency")
    signals, rejects, _ = batch_signals(history, kernel_config(settings), now_ms=F.lit(2**62))
    assert rejects.count() == 0
    columns = [c for c in signals.columns if c != "emitted_at"]
    backtest = sorted(tuple(r) for r in signals.select(*columns).collect())
    streamed = sorted(tuple(r) for r in audit(spark, settings).select(*columns).collect())
    assert len(backtest) > 50
    assert backtest == streamed


def test_parity_survives_a_stop_and_restart_from_the_checkpoint(spark, kafka_broker, capsys):
    from marketsignals.stream.metrics import MetricsListener

    # the live run warms up first (stream/warm_up.py), the bounded restart does not: neither changes a signal
    settings = kafka_broker.isolated("restart", "kafka.max_offsets_per_trigger=300", "stream.warm_up_ticks=2000")
    kafka_broker.produce(settings, feed.FeedOptions(symbols=feed.symbol_names(5), count=1800, rate=200,
                                                    start_ms=START_MS, seed=12, topics=tuple(settings.kafka.topics)))
    listener = MetricsListener(None)
    query, sink = start_live(spark, settings.with_overrides(["stream.trigger=processingTime=100 milliseconds"]),
                             listener)
    try:
        while query.isActive and (query.lastProgress is None or query.lastProgress["batchId"] < 2):
            query.awaitTermination(0.2)
    finally:
        stop_live(query, sink)
        spark.streams.removeListener(listener)
    assert query.exception() is None
    first_run = audit(spark, settings).count()
    record = json.loads((Path(settings.stream.checkpoint) / checkpoint.RECORD).read_text())
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    assert record == {"state_buckets": settings.stream.state_buckets, "state_key_partitions": partitions}
    # each bucket's state is under its key (state.bucket_keys), in the shuffle partition that key was made for
    keys = state.bucket_keys(record["state_buckets"], partitions)
    if state.has_state_reader(spark):
        held = spark.read.format("statestore").load(settings.stream.checkpoint).select("key.bucket", "partition_id")
        held = held.collect()
        assert held and all(keys.index(r.bucket) % partitions == r.partition_id for r in held)
        symbols = state.read_symbol_states(spark, settings.stream.checkpoint, record["state_buckets"])
        assert sorted(symbols) == sorted(feed.symbol_names(5))
    # restart from the checkpoint to the end, with another bucket count in the settings: the
    # checkpoint keeps its own (another count would send every symbol to another bucket's state)
    metrics = run_available_now(spark, settings.with_overrides([f"stream.state_buckets={record['state_buckets'] + 3}"]))
    assert [m for m in progress_lines(metrics) if m["input_rows"] > 0], "the restart had nothing left to do"
    expected = expected_signals(spark, settings)
    assert 0 < first_run < len(expected)
    assert_same_signals(audit_rows(spark, settings), expected)
    assert capsys.readouterr().out.count("marketsignals stream: warmed up in") == 1
    assert not Path(settings.stream.checkpoint + ".warm-up").exists()


def test_audit_table_is_exactly_once_after_a_forced_replay(spark, kafka_broker):
    # compacted after its third commit: the replay's lookup of the audited batches reads past OPTIMIZE's
    settings = kafka_broker.isolated("replay", "kafka.max_offsets_per_trigger=500", "stream.audit_compact_interval=2")
    kafka_broker.produce(settings, feed.FeedOptions(symbols=feed.symbol_names(5), count=1500, rate=200,
                                                    start_ms=START_MS, seed=13, topics=tuple(settings.kafka.topics)))
    # without the closing no-data batch (timeouts only, no signals) the replayed batch is one with signals
    spark.conf.set("spark.sql.streaming.noDataMicroBatches.enabled", "false")
    try:
        run_available_now(spark, settings)
    finally:
        spark.conf.unset("spark.sql.streaming.noDataMicroBatches.enabled")
    before = sorted(r.signal_id for r in audit(spark, settings).select("signal_id").collect())
    # the table the sink's first write created carries the configured Delta properties
    created = spark.sql(f"DESCRIBE DETAIL delta.`{settings.stream.audit_table}`").first()["properties"]
    assert settings.stream.audit_table_properties.items() <= created.items(), created
    assert created["delta.dataSkippingStatsColumns"] == "event_time,symbol"
    assert created["delta.logRetentionDuration"] == "interval 1 hour"
    assert created["delta.deletedFileRetentionDuration"] == "interval 1 day"
    commits = Path(settings.stream.checkpoint) / "commits"
    last = max(int(p.name) for p in commits.iterdir() if p.name.isdigit())
    # the last batch is audited, tagged in its commit, and is not the run's first audited batch: only
    # the sink's own check (not Delta's txnVersion, passed once per run) can skip its replay
    tagged, txn = audit_log_batches(Path(settings.stream.audit_table))
    assert last in tagged and len(txn) == 1 and last not in txn, (last, tagged, txn)
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.stream.audit_table}`").orderBy("version")
    assert [r.operation for r in history.collect()][-1] == "OPTIMIZE"  # the newest commit carries no batch
    (commits / str(last)).unlink()  # as Spark's own tests do: the last batch runs again
    (commits / f".{last}.crc").unlink(missing_ok=True)  # the local file system's checksum of it
    metrics = run_available_now(spark, settings)
    assert any(m["batch_id"] == last for m in progress_lines(metrics)), "the last batch was not replayed"
    after = sorted(r.signal_id for r in audit(spark, settings).select("signal_id").collect())
    assert after == before  # no duplicate, no gap
    assert len(set(after)) == len(after)
    assert_same_signals(audit_rows(spark, settings), expected_signals(spark, settings))
    # Kafka is at-least-once: the replayed batch may repeat, but only as whole signals
    kafka_ids = [json.loads(v)["signal_id"] for _, v in kafka_broker.consume(settings, settings.kafka.signals_topic)]
    assert set(kafka_ids) == set(before)


def test_every_bad_tick_kind_is_dead_lettered_with_its_reason(spark, kafka_broker, monkeypatch):
    settings = kafka_broker.isolated("bad", "kafka.max_offsets_per_trigger=1500")
    # a few rows per write task, as a catch-up batch of many signals would have: nothing lost or doubled
    monkeypatch.setattr(sinks, "ROWS_PER_WRITE_TASK", 5)
    fraction = 0.02
    stats = kafka_broker.produce(settings, feed.FeedOptions(
        symbols=feed.symbol_names(8), count=4000, rate=200, start_ms=START_MS, seed=14,
        topics=tuple(settings.kafka.topics), bad={k: fraction for k in feed.BAD_KINDS}))
    persisted_before = spark.sparkContext._jsc.getPersistentRDDs().size()
    metrics = run_available_now(spark, settings)
    # each batch's materialised rows are freed once the batch is written, not left to a driver GC
    assert spark.sparkContext._jsc.getPersistentRDDs().size() == persisted_before
    letters = kafka_broker.consume_json(settings, settings.kafka.dead_letter_topic)
    by_reason: dict[str, int] = {}
    for letter in letters:
        by_reason[letter["reason"]] = by_reason.get(letter["reason"], 0) + 1
        assert letter["topic"] in settings.kafka.topics and letter["offset"] is not None
        assert letter["raw"] and letter["rejected_at"]
    expected = {feed.EXPECTED_REASON[k]: stats.by_kind[k] for k in feed.BAD_KINDS}
    assert by_reason == expected
    processed = sum(m.get("processed", 0) for m in progress_lines(metrics))
    assert processed == stats.by_kind["good"]
    files_per_commit = [sum(line.startswith('{"add"') for line in p.read_text().splitlines())
                        for p in (Path(settings.stream.audit_table) / "_delta_log").glob("*.json")]
    assert max(files_per_commit) > 1, files_per_commit  # the audit writes ran in several tasks
    audited = audit(spark, settings).select("signal_id")
    assert audited.count() == audited.distinct().count() > 0
    # every data batch says where its time went
    data_batches = [m for m in progress_lines(metrics) if m.get("input_rows")]
    assert data_batches and all({"compute", "plan", "write", "total"} <= m["sink_ms"].keys() for m in data_batches), \
        data_batches
    for m in data_batches:  # each write timed where it ran: Kafka with any record, the audit table with any signal
        assert ("kafka" in m["sink_ms"]) == bool(m["signals"] or m["rejected"]), m
        assert ("audit" in m["sink_ms"]) == bool(m["signals"]), m
        # the sink's whole call holds its phases (each rounded to the ms) and lies within Spark's addBatch
        phases = sum(m["sink_ms"][k] for k in ("compute", "plan", "write"))
        assert phases - 2 <= m["sink_ms"]["total"] <= m["duration_ms"]["addBatch"] + 1, m
    assert processed + len(letters) == stats.produced
    rejects_metric: dict[str, int] = {}
    for m in progress_lines(metrics):
        for reason, n in m.get("rejects", {}).items():
            rejects_metric[reason] = rejects_metric.get(reason, 0) + n
    assert rejects_metric == expected


def test_event_time_mode_gives_the_same_signals_for_shuffled_arrival(spark, kafka_broker):
    opts = feed.FeedOptions(symbols=feed.symbol_names(4), count=2000, rate=25, start_ms=START_MS, seed=15)
    messages = list(feed.generate(opts))
    rng = np.random.default_rng(3)
    shuffled = []
    for lo in range(0, len(messages), 40):  # 40 ticks = 1.6 s of event time, well within 30 s
        block = messages[lo:lo + 40]
        shuffled += [block[i] for i in rng.permutation(len(block))]
    assert shuffled != messages
    results = []
    for name, msgs in (("ordered", messages), ("shuffled", shuffled)):
        settings = kafka_broker.isolated(name, "stream.ordering=event_time", "kafka.max_offsets_per_trigger=500")
        topics = dict(zip(opts.topics, settings.kafka.topics, strict=True))
        kafka_broker.produce_messages(settings, (feed.Message(topics[m.topic], m.key, m.value, m.kind, m.symbol,
                                                              m.ts_ms) for m in msgs))
        run_available_now(spark, settings)
        results.append(audit_rows(spark, settings))
    ordered, shuffled_rows = ({r["signal_id"]: r for r in rows} for rows in results)
    assert len(ordered) > 20
    assert ordered.keys() == shuffled_rows.keys()
    for sid, row in ordered.items():
        assert row == shuffled_rows[sid]
