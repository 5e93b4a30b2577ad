"""The Java code Spark generates for the job's per-row work stays within what HotSpot compiles.

HotSpot never JIT-compiles a method of more than 8,000 bytes of bytecode (-XX:HugeMethodLimit, with
DontCompileHugeMethods on by default): such a method runs interpreted for the life of the JVM. Spark
only logs it, at INFO. Whole-stage codegen writes a stage's projections into one method
(``processNext``) when it cannot split them, so fusing one more projection into a stage can cross the
line: one such change to the validation made its stage's method 8,245 bytes and stage 0 ~80 % more
CPU (bench/ROUNDS.md, twenty-sixth round).
"""

from datetime import UTC, datetime

import pytest

from conftest import ROOT
from marketsignals import kernel
from marketsignals.stream.job import bucketed_ticks
from marketsignals.stream.sinks import RecordColumns

HOTSPOT_HUGE_METHOD_LIMIT = 8000


@pytest.fixture
def largest_methods(monkeypatch):
    """bench.stage0's reading of a plan's generated methods (the largest of each codegen subtree, in bytes)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.stage0 import generated_method_sizes

    return generated_method_sizes


def _empty(spark, path, schema):
    # read from files: a projection over local rows would be evaluated by the optimizer, not generated
    spark.createDataFrame([], schema).write.parquet(str(path))
    return spark.read.parquet(str(path))


def test_the_streams_stage_before_the_shuffle_is_compiled(spark, base_settings, tmp_path, largest_methods):
    raw = _empty(spark, tmp_path / "raw", "key binary, value binary, topic string, partition int, offset long, "
                                          "timestamp timestamp")
    sizes = largest_methods(bucketed_ticks(raw, base_settings))
    assert sizes and max(sizes) <= HOTSPOT_HUGE_METHOD_LIMIT, sizes


def test_the_sinks_projections_are_compiled(spark, tmp_path, largest_methods):
    out = _empty(spark, tmp_path / "out", kernel.OUTPUT_SCHEMA)
    columns = RecordColumns()
    now = columns.processing_time(datetime.now(UTC))
    sizes = [*largest_methods(columns.kafka_records(out, now, "signals", "dead-letters")),
             *largest_methods(columns.signals(out, now, columns.event_date))]
    assert sizes and max(sizes) <= HOTSPOT_HUGE_METHOD_LIMIT, sizes
