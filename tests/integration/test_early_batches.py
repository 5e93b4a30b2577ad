"""A live batch starts early once stream.early_batch_ticks ticks wait, on the trigger's interval otherwise,
and never without data: the trade that keeps the option off in the profiles (stream/trigger.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from marketsignals import feed
from marketsignals.feed import parse_iso_ms
from support import progress_lines

pytestmark = pytest.mark.integration

START_MS = 1_767_312_000_000  # 2026-01-02T00:00:00Z: in the past, so no tick is "in the future"
INTERVAL_S = 12
EARLY = 500


def _batches(path: Path) -> list[dict]:
    """The metrics file's batches with ticks so far."""
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [m for m in progress_lines(lines) if m["input_rows"] > 0]


def _wait(query, path: Path, batches: int, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while query.isActive and time.monotonic() < deadline:
        if len(done := _batches(path)) >= batches:
            return done
        time.sleep(0.1)
    raise AssertionError(f"fewer than {batches} batches with ticks within {timeout_s} s: {_batches(path)}")


def test_a_batch_starts_early_once_enough_ticks_wait_and_on_the_interval_otherwise(spark, kafka_broker, capsys):
    from marketsignals.stream.job import start_stream
    from marketsignals.stream.metrics import MetricsListener

    settings = kafka_broker.isolated("early", f"stream.trigger=processingTime={INTERVAL_S} seconds",
                                     f"stream.early_batch_ticks={EARLY}", "kafka.starting_offsets=latest")
    listener, metrics = MetricsListener(settings.stream.metrics_path), Path(settings.stream.metrics_path)
    query = start_stream(spark, settings, listener=listener)
    try:
        while query.isActive and query.lastProgress is None:  # batch 0 fixes the offsets at "latest"
            query.awaitTermination(0.1)
        first = parse_iso_ms(query.lastProgress["timestamp"])
        symbols = feed.symbol_names(4)
        kafka_broker.produce(settings, feed.FeedOptions(symbols=symbols, count=2 * EARLY, rate=200, start_ms=START_MS,
                                                        seed=3, topics=tuple(settings.kafka.topics)))
        produced = time.time() * 1000
        [early] = _wait(query, metrics, 1, 120)  # its start is what counts: a first batch with data is slow
        # too few to start early: this batch waits for the interval since the one before began
        kafka_broker.produce(settings, feed.FeedOptions(symbols=symbols, count=EARLY // 5, rate=200,
                                                        start_ms=START_MS + 60_000, seed=4,
                                                        topics=tuple(settings.kafka.topics)))
        _, late = _wait(query, metrics, 2, 120)
    finally:
        query.stop()
        spark.streams.removeListener(listener)
    assert query.exception() is None
    assert early["input_rows"] == 2 * EARLY and late["input_rows"] == EARLY // 5
    started, later = parse_iso_ms(early["timestamp"]), parse_iso_ms(late["timestamp"])
    assert started - first < INTERVAL_S * 1000 / 2 and started - produced < INTERVAL_S * 1000 / 4, \
        "the batch did not start as soon as enough ticks waited"
    assert later - started >= INTERVAL_S * 1000 - 300, "a batch of too few ticks started before the interval"
    # no batch without data: with Spark's no-data batches on, the first check after the early batch that found
    # too few ticks would have run one (that batch moved the watermark)
    batches = sorted(int(p.name) for p in (Path(settings.stream.checkpoint) / "commits").iterdir()
                     if p.name.isdigit())
    assert batches == [0, early["batch_id"], late["batch_id"]] == [0, 1, 2]
    assert "a batch starts every 12,000 ms, or as soon as 500 ticks wait" in capsys.readouterr().out
    # the session the next query starts from keeps Spark's no-data batches
    assert spark.conf.get("spark.sql.streaming.noDataMicroBatches.enabled") == "true"
