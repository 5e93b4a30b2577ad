"""The live path's validation (stream.job.validated_ticks) on a batch DataFrame of Kafka rows."""

import json
import time

from pyspark.sql import functions as F

from marketsignals.stream.job import bucketed_ticks, validated_ticks

COLUMNS = "value binary, topic string, partition int, offset long"


def _kafka_rows(spark, timestamps):
    ticks = [json.dumps({"symbol": "AAPL", "timestamp": ts, "price": 10.5, "volume": 100, "bid": 10.4,
                         "ask": 10.6, "exchange": "XNAS", "currency": "USD"}).encode() for ts in timestamps]
    return spark.createDataFrame([(t, "market", 0, i) for i, t in enumerate(ticks)], COLUMNS)


def test_future_ticks_are_judged_against_processing_time(spark, base_settings):
    now = int(time.time() * 1000)
    skew = base_settings.stream.max_future_skew_ms
    rows = validated_ticks(_kafka_rows(spark, [now - 1000, now + skew + 3_600_000]), base_settings)
    assert [r.reason for r in rows.orderBy("offset").collect()] == [None, "future_timestamp"]


def test_the_batch_time_is_not_compiled_into_the_code(spark, base_settings):
    # current_timestamp() differs per query (per micro-batch in a stream). Were it a literal in the
    # generated Java, the validation's ~45 KB projection would be compiled again every batch.
    assert not spark.streams.active, "a query left running by another test would compile code meanwhile"
    jvm = spark.sparkContext._jvm
    compilations = jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    raw = _kafka_rows(spark, [int(time.time() * 1000)])
    validated_ticks(raw, base_settings).write.format("noop").mode("overwrite").save()
    before = compilations.getCount()
    time.sleep(0.01)
    validated_ticks(raw, base_settings).write.format("noop").mode("overwrite").save()
    assert compilations.getCount() == before
    # and a literal that does change per query is compiled: the counter can move
    validated_ticks(raw, base_settings).withColumn("now", F.lit(time.time_ns())).write.format("noop").mode(
        "overwrite").save()
    assert compilations.getCount() > before


def test_a_live_streams_source_partitions_are_read_in_at_most_source_tasks_tasks(spark, base_settings):
    """Stage 0 (everything up to the shuffle) runs a task per source partition unless a live stream's
    stream.source_tasks is lower; the fewer tasks read every row."""
    now = int(time.time() * 1000)
    raw = _kafka_rows(spark, [now - 1000 + i for i in range(40)]).repartition(5, "offset")

    def stage0(*overrides: str) -> tuple[int, list[tuple]]:
        df = bucketed_ticks(raw, base_settings.with_overrides(list(overrides)))
        return df.rdd.getNumPartitions(), sorted(tuple(r) for r in df.collect())

    assert base_settings.stream.source_tasks == 2 and not base_settings.stream.bounded  # the local profile
    tasks, rows = stage0()
    assert tasks == 2 and len(rows) == 40
    assert stage0("stream.source_tasks=0") == (5, rows)
    assert stage0("stream.source_tasks=8") == (5, rows)  # never more tasks than partitions
    assert stage0("stream.trigger=availableNow") == (5, rows)  # a bounded run's large batches: a task a partition
