"""What the sink writes, built from its once-per-query columns, on hand-made kernel output rows."""

import json
from datetime import UTC, datetime

import pytest

from marketsignals.kernel import KIND, KIND_COUNT, KIND_REJECT, KIND_SIGNAL, OUTPUT_SCHEMA, PROCESSED
from marketsignals.schema import (
    ACTION,
    DEAD_LETTER_SCHEMA,
    EMITTED_AT,
    EVENT_TIME,
    PRICE,
    REASON,
    SIGNAL_COLUMNS,
    SIGNAL_SCHEMA,
    SYMBOL,
    TS_MS,
    Reason,
)
from marketsignals.stream.sinks import (
    EVENT_DATE,
    ROWS_PER_WRITE_TASK,
    RecordColumns,
    materialised,
    release,
    write_tasks,
)

AT = datetime(2026, 3, 2, 14, 30, 5, 123456, tzinfo=UTC)
AT_JSON = "2026-03-02T14:30:05.123Z"  # Spark's to_json keeps milliseconds
TS_MS_OF_SIGNAL = 1_772_400_000_000  # 2026-03-01T21:20:00Z


def _row(**values):
    return tuple(values.get(f.name) for f in OUTPUT_SCHEMA.fields)


@pytest.fixture(scope="module")
def out(spark):
    signal = {f.name: None for f in OUTPUT_SCHEMA.fields}
    signal.update({KIND: KIND_SIGNAL, "signal_id": "s-1", SYMBOL: "AAPL", ACTION: "BUY", PRICE: 101.5,
                   TS_MS: TS_MS_OF_SIGNAL, "volume": 300, "bid": 101.4, "ask": 101.6, "exchange": "NASDAQ",
                   "confidence": 0.75, "strategy_version": "v1"})
    rows = [
        _row(**signal),
        _row(kind=KIND_REJECT, reason=Reason.LATE, raw='{"symbol":"MSFT"}', topic="market", partition=2,
             offset=41, symbol="MSFT"),
        _row(kind=KIND_REJECT, reason=Reason.NOT_JSON, raw="garbage", symbol=""),  # no topic/partition/offset
        _row(kind=KIND_COUNT, processed=7),
        _row(kind=KIND_COUNT, processed=5),
    ]
    return spark.createDataFrame(rows, OUTPUT_SCHEMA)


@pytest.fixture(scope="module")
def columns(spark):
    return RecordColumns()


def test_counts_are_processed_signals_and_rejects_by_reason(out, columns):
    assert columns.batch_counts(out) == {"processed": 12, "signals": 1, "rejected": 2,
                                         "rejects": {Reason.LATE: 1, Reason.NOT_JSON: 1}}
    assert columns.batch_counts(out.filter(f"{KIND} = '{KIND_COUNT}' AND {PROCESSED} < 0")) == {
        "processed": 0, "signals": 0, "rejected": 0, "rejects": {}}


def test_counts_are_observed_by_the_job_that_materialises_the_batch(spark, out, columns):
    jobs = spark.sparkContext.statusTracker()
    group = "test-counted"
    spark.sparkContext.setJobGroup(group, "counted")
    try:
        observed = columns.observed(out)
        rows = materialised(observed)
        counts = columns.observed_counts(observed, rows)
    finally:
        spark.sparkContext.setJobGroup(None, None)  # type: ignore[arg-type]
    try:
        assert counts == columns.batch_counts(out)
        assert len(jobs.getJobIdsForGroup(group)) == 1  # the materialising job only: no counting job
        assert sorted(rows.collect()) == sorted(out.collect())
    finally:
        release(rows)  # as the sink does: later tests count the session's persisted RDDs


def test_signal_records_follow_the_spec_schema_and_carry_the_batch_time(out, columns):
    signals = columns.signals(out, columns.processing_time(AT))
    assert [(f.name, f.dataType) for f in signals.schema.fields] == [(f.name, f.dataType)
                                                                      for f in SIGNAL_SCHEMA.fields]
    (row,) = signals.collect()
    assert row["signal_id"] == "s-1" and row[PRICE] == 101.5
    assert row[EVENT_TIME] == datetime(2026, 3, 1, 21, 20)  # the session's time zone is UTC
    assert row[EMITTED_AT] == datetime(2026, 3, 2, 14, 30, 5, 123456)


def test_kafka_records_hold_signals_and_dead_letters_in_one_pass(out, columns):
    records = columns.kafka_records(out, columns.processing_time(AT), "sig-topic", "dlq-topic")
    assert records.columns == ["key", "value", "topic"]
    rows = sorted(records.collect(), key=lambda r: r["value"])
    by_topic = {}
    for row in rows:
        by_topic.setdefault(row["topic"], []).append((row["key"], json.loads(row["value"])))
    assert set(by_topic) == {"sig-topic", "dlq-topic"}  # the count rows are not records

    ((key, signal),) = by_topic["sig-topic"]
    assert key == "AAPL"
    # a signal's null fields are left out; the rest keep the SPEC order
    assert list(signal) == [c for c in SIGNAL_COLUMNS if c in signal]
    assert signal[EMITTED_AT] == AT_JSON and signal[EVENT_TIME] == "2026-03-01T21:20:00.000Z"
    assert signal[ACTION] == "BUY" and "risk_score" not in signal

    dead = sorted(by_topic["dlq-topic"], key=lambda kv: kv[1][REASON])
    names = [f.name for f in DEAD_LETTER_SCHEMA.fields]
    assert [list(record) for _, record in dead] == [names, names]  # null fields written as null
    (late_key, late), (bad_key, bad) = dead
    assert (late_key, late[REASON], late["topic"], late["partition"], late["offset"]) == ("MSFT", Reason.LATE,
                                                                                          "market", 2, 41)
    assert (bad_key, bad[REASON], bad["raw"], bad["topic"], bad["offset"]) == ("", Reason.NOT_JSON, "garbage",
                                                                               None, None)
    assert late["rejected_at"] == bad["rejected_at"] == AT_JSON


def test_the_processing_time_is_not_a_timestamp_literal(out, columns):
    # a timestamp literal would be inlined into the generated Java: a new class every batch
    plan = out.select(columns.processing_time(AT).alias("t"))._jdf.queryExecution().optimizedPlan().toString()
    assert "2026-03-02 14:30:05.123456" not in plan and "2026-03-02T14:30:05.123456Z" in plan


def test_the_audit_rows_add_the_event_date(out, columns):
    rows = columns.signals(out, columns.processing_time(AT), columns.event_date).collect()
    assert [r[EVENT_DATE].isoformat() for r in rows] == ["2026-03-01"]


def test_a_write_has_one_task_until_its_rows_are_many():
    assert [write_tasks(n) for n in (0, 1, 300, ROWS_PER_WRITE_TASK)] == [1, 1, 1, 1]
    assert write_tasks(ROWS_PER_WRITE_TASK + 1) == 2
    assert write_tasks(540_000) == 6  # a 2,000,000-tick catch-up batch of the EMR profile
