"""A live batch starts early once stream.early_batch_ticks ticks wait, on the trigger's interval otherwise,
and Spark's batches without data still come after one that moved the watermark (stream/trigger.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from faults.harness import batch_ids, read_metrics, wait_until
from marketsignals import feed
from marketsignals.feed import parse_iso_ms
from support import progress_lines, start_live, stop_live

pytestmark = pytest.mark.integration

START_MS = 1_767_312_000_000  # 2026-01-02T00:00:00Z: in the past, so no tick is "in the future"
INTERVAL_S = 12
EARLY = 500


def _batches(path: Path) -> list[dict]:
    """The metrics file's batches with ticks so far."""
    return [m for m in progress_lines(read_metrics(path)) if m["input_rows"] > 0]


def _read(query, path: Path, ticks: int) -> list[dict]:
    """The batches with ticks once they have read ``ticks`` in all (a first batch with data is slow: its
    start, not its end, is what the test judges)."""
    def done() -> list[dict] | None:
        assert query.isActive, f"the query ended: {query.exception()}"
        batches = _batches(path)
        return batches if sum(m["input_rows"] for m in batches) >= ticks else None

    return wait_until(done, 120, lambda: f"fewer than {ticks} ticks read within 120 s: {_batches(path)}",
                      interval_s=0.1)


def test_a_batch_starts_early_once_enough_ticks_wait_and_on_the_interval_otherwise(spark, kafka_broker, capsys):
    from marketsignals.stream.metrics import MetricsListener

    settings = kafka_broker.isolated("early", f"stream.trigger=processingTime={INTERVAL_S} seconds",
                                     f"stream.early_batch_ticks={EARLY}", "kafka.starting_offsets=latest")
    listener, metrics = MetricsListener(settings.stream.metrics_path), Path(settings.stream.metrics_path)
    query, sink = start_live(spark, settings, listener)
    try:
        while query.isActive and query.lastProgress is None:  # batch 0 fixes the offsets at "latest"
            query.awaitTermination(0.1)
        first = parse_iso_ms(query.lastProgress["timestamp"])
        symbols = feed.symbol_names(4)
        kafka_broker.produce(settings, feed.FeedOptions(symbols=symbols, count=2 * EARLY, rate=200, start_ms=START_MS,
                                                        seed=3, topics=tuple(settings.kafka.topics)))
        produced = time.time() * 1000
        # a batch may start while the producer still sends: the rest, fewer than EARLY, waits for the interval
        _read(query, metrics, 2 * EARLY)
        kafka_broker.produce(settings, feed.FeedOptions(symbols=symbols, count=EARLY // 5, rate=200,
                                                        start_ms=START_MS + 60_000, seed=4,
                                                        topics=tuple(settings.kafka.topics)))
        batches = _read(query, metrics, 2 * EARLY + EARLY // 5)
    finally:
        stop_live(query, sink)
        spark.streams.removeListener(listener)
    assert query.exception() is None
    early, *rest = batches
    started = parse_iso_ms(early["timestamp"])
    assert early["input_rows"] >= EARLY, early
    # batch 0 may be the session's first (slow), and the producer may hold its records back until it returns:
    # a batch on the interval could not start before 11.875 s after batch 0 began
    assert started - first < INTERVAL_S * 1000 * 3 / 4 and started - produced < INTERVAL_S * 1000 / 4, \
        f"the batch did not start as soon as enough ticks waited: {started - first} ms after batch 0, " \
        f"{started - produced} ms after the producer returned; the batches: {batches}"
    assert rest and rest[-1]["input_rows"] == EARLY // 5
    for before, batch in zip(batches, rest, strict=False):
        if batch["input_rows"] >= EARLY:  # the first's rest, when it began with exactly EARLY waiting
            continue
        # too few to start early: it waited the interval since the batch before began
        gap = parse_iso_ms(batch["timestamp"]) - parse_iso_ms(before["timestamp"])
        assert gap >= INTERVAL_S * 1000 - 300, f"a batch of {batch['input_rows']} ticks started after {gap} ms"
    # Spark's batches without data stay on: after the early batch moved the watermark, a check that found too few
    # ticks ran one before the interval's batch (so the stream settles after its input stops, as without the option)
    data = {m["batch_id"] for m in batches}
    committed = batch_ids(Path(settings.stream.checkpoint) / "commits")
    assert any(early["batch_id"] < b < batches[-1]["batch_id"] and b not in data for b in committed), \
        (committed, sorted(data))
    assert "a batch starts every 12,000 ms, or as soon as 500 ticks wait" in capsys.readouterr().out
