"""Restarting with changed settings (issue 7): either it works, or it stops with a message saying what to do
-- never a silently corrupt state.

One checkpoint, three runs over three slices of one feed:
1. strategy A (the defaults);
2. strategy B (other risk thresholds and weights, a new strategy.version);
3. strategy B with spark.shuffle_partitions changed from 2 to 5.

Emission is ``every`` so that each tick's signal depends only on its indicators (carried in state) and
the strategy in force when it was processed: the expected audit table is then exactly the batch
computation with A over slice 1 plus the batch computation with B over slices 2 and 3. A state carried
wrongly across a restart (lost, reset, or read with the wrong partitioning) changes the indicators of
the ticks after it, and the comparison fails.
"""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from faults.harness import (
    START_MS,
    assert_audit_exactly,
    audit_signals,
    catch_up,
    expected_signals,
    produce_recorded,
    progress_lines,
)
from marketsignals import feed

pytestmark = pytest.mark.faults

STRATEGY_B = ("strategy.version=v2-test", "strategy.signal_max_risk=1.6", "strategy.actionable_max_risk=2.2",
              "strategy.weight_volatility=0.5", "strategy.weight_spread=0.2", "strategy.volatility_high=1.5")


def test_restart_with_changed_strategy_and_shuffle_partitions(spark, kafka_broker, figures):
    settings_a = kafka_broker.isolated("change", "stream.emission=every", "kafka.max_offsets_per_trigger=100000")
    settings_b = settings_a.with_overrides(STRATEGY_B)
    opts = feed.FeedOptions(symbols=feed.symbol_names(6), count=2400, rate=200, start_ms=START_MS, seed=31,
                            topics=tuple(settings_a.kafka.topics))
    messages = list(feed.generate(opts))
    slices = [messages[:800], messages[800:1600], messages[1600:]]
    boundary_ms = slices[1][0].ts_ms  # event time increases with every message

    produce_recorded(settings_a.kafka, slices[0])
    first = progress_lines(catch_up(spark, settings_a))
    produce_recorded(settings_a.kafka, slices[1])
    second = progress_lines(catch_up(spark, settings_b))
    produce_recorded(settings_a.kafka, slices[2])
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "5")
    try:
        third = progress_lines(catch_up(spark, settings_b))
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    for run, n in ((first, 800), (second, 800), (third, 800)):
        assert sum(m["input_rows"] for m in run) == n

    before = F.col("event_time") < F.timestamp_millis(F.lit(boundary_ms))
    with_a = expected_signals(spark, settings_a, where=before)
    with_b = expected_signals(spark, settings_b, where=~before)
    assert with_a and with_b
    expected = {**with_a, **with_b}
    figures.add(messages=len(messages), runs=3, signals_strategy_a=len(with_a), signals_strategy_b=len(with_b),
                **assert_audit_exactly(audit_signals(spark, settings_a), expected))
