"""The metrics listener (stream.metrics) on a real streaming query: one line per micro-batch, with
Spark's progress read from its JSON text, never converted field by field over Py4J."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from pyspark.sql import functions as F
from pyspark.sql.streaming import listener as pyspark_listener

from marketsignals.stream.metrics import MetricsListener


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_progress_lines_come_from_the_progress_json(spark, tmp_path, monkeypatch):
    def converted(*_args, **_kwargs):
        raise AssertionError("the progress was converted field by field over Py4J")

    # PySpark's own conversion, which cost ~340 ms per micro-batch; a failure in the listener thread
    # would only be logged, so the test also checks the lines it should have written
    monkeypatch.setattr(pyspark_listener.StreamingQueryProgress, "fromJObject", classmethod(converted))
    path = tmp_path / "metrics.jsonl"
    listener = MetricsListener(str(path))
    spark.streams.addListener(listener)
    query = None
    try:
        query = (spark.readStream.format("rate").option("rowsPerSecond", 50).load()
                 .withWatermark("timestamp", "1 second").groupBy(F.window("timestamp", "1 second")).count()
                 .writeStream.format("noop").outputMode("append").queryName("metrics_listener_test")
                 .option("checkpointLocation", str(tmp_path / "checkpoint")).trigger(processingTime="500 milliseconds")
                 .start())
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len([x for x in _lines(path) if x.get("input_rows")]) < 2:
            time.sleep(0.5)
    finally:
        if query is not None:
            query.stop()
        listener.terminated.wait(timeout=30)
        spark.streams.removeListener(listener)

    lines = _lines(path)
    assert lines[0]["event"] == "started" and lines[0]["name"] == "metrics_listener_test"
    assert lines[0]["id"] == str(query.id)
    progress = [x for x in lines if x["event"] == "progress"]
    busy = [x for x in progress if x["input_rows"]]
    assert len(busy) >= 2, lines
    for line in busy:
        assert {"addBatch", "triggerExecution", "walCommit"} <= set(line["duration_ms"])
        assert line["batch_duration_ms"] == line["duration_ms"]["triggerExecution"]
        assert line["state_rows"] >= 1 and line["state_memory_bytes"] > 0
    assert [x["batch_id"] for x in progress] == sorted({x["batch_id"] for x in progress})
    assert lines[-1] == {"event": "terminated", "id": str(query.id), "exception": None}
    assert listener.last == progress[-1]


def test_the_default_conversion_still_works_when_pyspark_calls_it(tmp_path):
    # PySpark's Spark Connect listener path calls onQueryProgress with a converted event
    listener = MetricsListener(str(tmp_path / "m.jsonl"))
    progress = {"batchId": 3, "numInputRows": 7, "durationMs": {"triggerExecution": 12}, "sources": [
        {"metrics": {"avgOffsetsBehindLatest": "1.0", "other": "2"}}], "stateOperators": [{"numRowsTotal": 4}]}

    event = SimpleNamespace(progress=SimpleNamespace(json=json.dumps(progress)))  # a QueryProgressEvent's shape
    listener.record_counts(3, {"signals": 2})
    listener.onQueryProgress(event)
    line = _lines(tmp_path / "m.jsonl")[0]
    assert line["batch_id"] == 3 and line["input_rows"] == 7 and line["batch_duration_ms"] == 12
    assert line["kafka_lag"] == {"avgOffsetsBehindLatest": 1.0} and line["state_rows"] == 4
    assert line["signals"] == 2


@pytest.fixture(autouse=True)
def _no_query_left(spark):
    yield
    assert not spark.streams.active, "a test left a streaming query running"
