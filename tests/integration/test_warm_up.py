"""A live stream's warm-up (stream/warm_up.py): the query's plan over synthetic ticks, with nothing left
behind and nothing sent to Kafka."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from marketsignals import feed
from marketsignals.stream import warm_up
from support import start_live, stop_live

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(base_settings, tmp_path):
    return base_settings.with_overrides([
        f"stream.checkpoint={tmp_path}/checkpoint", f"stream.audit_table={tmp_path}/audit",
        "kafka.bootstrap_servers=127.0.0.1:9",  # nothing listens there: the warm-up must not need Kafka
    ])


def test_warm_up_runs_the_plan_and_the_sink_on_synthetic_ticks_and_leaves_nothing(spark, settings, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(warm_up, "KAFKA_WAIT_S", 3.0)  # no Kafka: its part gives up (30 s in the job)
    left = tmp_path / "checkpoint.warm-up" / "input"  # what a run that died during its warm-up left behind
    left.mkdir(parents=True)
    (left / "part-00000.parquet").write_bytes(b"not parquet")
    done = warm_up.warm_up(spark, settings, 3000)
    assert done["ticks"] == 3000
    assert done["batches"] >= warm_up.BATCHES
    assert done["signals"] > 100  # the kernel ran
    assert done["audit_writes"] == warm_up.BATCHES  # and the sink wrote each batch's signals to its Delta table
    assert 0 < done["rejected"] < 150  # the bad ticks took validation's reject paths
    assert done["kafka_ticks"] == 0 and "no batch in 3.0 s" in done["kafka_note"]  # and it did not fail for that
    assert list(tmp_path.iterdir()) == []  # no warm-up folder, and the real checkpoint and table untouched
    assert not spark.streams.active


def test_a_stop_during_the_warm_up_ends_it_and_leaves_nothing(spark, settings, tmp_path):
    stop = threading.Event()
    stop.set()
    with pytest.raises(warm_up.WarmUpStopped):
        warm_up.warm_up(spark, settings, 3000, stop)
    assert not spark.streams.active
    assert list(tmp_path.iterdir()) == []


def test_the_kafka_part_starts_at_the_last_seconds_and_bounds_its_clients_calls(settings):
    options = warm_up.kafka_options(settings.kafka, 1_000_000)
    assert options["startingTimestamp"] == str(1_000_000 - warm_up.KAFKA_LOOKBACK_S * 1000)
    assert options["startingOffsetsByTimestampStrategy"] == "latest"  # a partition with none that new: its end
    wait_ms = str(round(warm_up.KAFKA_WAIT_S * 1000))  # else a Kafka it cannot reach holds the stop 60 s
    assert options["kafka.request.timeout.ms"] == options["kafka.default.api.timeout.ms"] == wait_ms
    own = settings.with_overrides(["kafka.consumer_options={request.timeout.ms: '90000'}"]).kafka
    assert warm_up.kafka_options(own, 1_000_000).keys() == {"startingTimestamp", "startingOffsetsByTimestampStrategy"}


def test_a_kafka_part_that_cannot_start_is_noted_and_the_warm_up_goes_on(spark, settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = warm_up.warm_kafka(spark, settings, str(blocker / "checkpoint"), 100)
    assert done["kafka_ticks"] == 0 and done["kafka_note"].startswith("its query did not start: "), done
    assert not spark.streams.active


def test_the_warm_up_reads_the_tick_topics_newest_records_with_the_streams_source(spark, kafka_broker, tmp_path):
    """The Kafka part warms the clients the stream's first batches would meet cold: the driver's admin
    client and the executors' consumers. It reads only the last seconds' records, never a topic's history."""
    from marketsignals import kafka_client

    settings = kafka_broker.isolated("warm-kafka")
    topics = tuple(settings.kafka.tick_topics)
    producer = kafka_client.producer(settings.kafka)
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    for m in feed.generate(feed.FeedOptions(symbols=feed.symbol_names(5), count=400, topics=topics)):
        producer.send(m.topic, key=m.key, value=m.value, timestamp_ms=an_hour_ago)
    producer.flush()
    producer.close()
    old = warm_up.warm_kafka(spark, settings, str(tmp_path / "old"), 1000)
    assert old == {"kafka_ticks": 0, "kafka_note": f"none of the tick topics' records is from the last "
                                                   f"{warm_up.KAFKA_LOOKBACK_S} s"}

    kafka_broker.produce(settings, feed.FeedOptions(symbols=feed.symbol_names(5), count=300, topics=topics))
    done = warm_up.warm_up(spark, settings, 2000)
    assert done["kafka_ticks"] == 300 and done["kafka_note"] is None  # the new ones only, not the hour-old 400
    assert not Path(settings.stream.checkpoint + ".warm-up").exists()
    assert not spark.streams.active


def _generated_code(spark, query) -> list[str]:
    """The Java Spark generated for each whole-stage-codegen subtree of the query's last batch."""
    plan = query._jsq.streamingQuery().lastExecution().executedPlan()
    text = spark._jvm.org.apache.spark.sql.execution.debug.package.codegenString(plan)
    return [part.split("Generated code:\n", 1)[1] for part in re.split(r"== Subtree \d+ / \d+.*==\n", text)[1:]]


def test_the_warm_up_has_spark_generate_the_code_the_kafka_stream_runs(spark, kafka_broker, tmp_path):
    """Spark compiles identical generated code once per JVM: what the JIT makes of the warm-up's is the
    stream's only if the code is the same, stage for stage."""
    from marketsignals.stream.job import signal_stream
    from marketsignals.stream.source import read_ticks

    settings = kafka_broker.isolated("warm-code")
    kafka_broker.produce(settings, feed.FeedOptions(symbols=feed.symbol_names(5), count=300,
                                                    topics=tuple(settings.kafka.topics)))

    def one_batch(raw, name: str) -> list[str]:
        query = (signal_stream(raw, settings).writeStream.format("noop")
                 .option("checkpointLocation", str(tmp_path / name)).trigger(once=True).start())
        query.awaitTermination()
        return _generated_code(spark, query)

    kafka = one_batch(read_ticks(spark, settings.kafka), "kafka")
    _, files = warm_up.write_ticks(spark, settings, 300, str(tmp_path / "input"))
    with warm_up.rows_from_parquet(spark):
        warm = one_batch(warm_up.tick_source(spark, str(tmp_path / "input"), files), "warm")
    vectorized = one_batch(warm_up.tick_source(spark, str(tmp_path / "input"), files), "vectorized")
    assert len(kafka) >= 3  # parse, validation, the bucket: up to the shuffle
    assert warm == kafka
    assert vectorized != kafka  # Parquet's batches of columns take other code


def test_a_restart_with_ticks_waiting_skips_the_warm_up(spark, kafka_broker, capsys):
    """A restart meets the ticks that came while the job was down, and they would wait for its warm-up
    too: their own batches warm the JVM. With none waiting it warms up, as a new query does."""
    from marketsignals.stream.metrics import MetricsListener

    settings = kafka_broker.isolated("restart-warm", "stream.warm_up_ticks=600",
                                     "stream.trigger=processingTime=100 milliseconds")

    def produce(count: int) -> None:
        kafka_broker.produce(settings, feed.FeedOptions(symbols=feed.symbol_names(5), count=count,
                                                        topics=tuple(settings.kafka.topics)))

    def run(read: int, overrides: tuple[str, ...] = ()) -> str:
        """Start the stream, let it read ``read`` ticks, stop it; what it printed."""
        listener = MetricsListener(None)
        query, sink = start_live(spark, settings.with_overrides(list(overrides)), listener)
        deadline = time.monotonic() + 120
        try:
            while (query.isActive and time.monotonic() < deadline
                   and sum(p["numInputRows"] for p in query.recentProgress) < read):
                query.awaitTermination(0.2)
        finally:
            stop_live(query, sink)
            spark.streams.removeListener(listener)
        assert query.exception() is None
        assert sum(p["numInputRows"] for p in query.recentProgress) == read
        return capsys.readouterr().out

    produce(300)
    assert "marketsignals stream: warmed up in" in run(300)  # a new query
    produce(800)
    said = run(800)
    assert "warmed up in" not in said
    assert re.search(r"no warm-up: the query resumes its checkpoint after batch \d+ with 800 ticks waiting", said)
    assert "marketsignals stream: warmed up in" in run(0)  # none waiting: the feed stopped too
    produce(700)
    assert "marketsignals stream: warmed up in" in run(700, ("stream.warm_up_on_restart=true",))


def test_a_restart_that_cannot_count_the_ticks_waiting_says_so_and_warms_up(spark, settings, tmp_path, capsys,
                                                                            monkeypatch):
    from marketsignals.stream import job

    monkeypatch.setattr(job, "BACKLOG_TIMEOUT_S", 2.0)
    assert job.restart_backlog(spark, settings) is None  # a new query: nothing to count, nothing said
    offsets = tmp_path / "checkpoint" / "offsets"
    offsets.mkdir(parents=True)
    (offsets / "4").write_text('v1\n{"batchWatermarkMs":0,"batchTimestampMs":1,"conf":{}}\n{"ticks":{"0":10}}')
    assert capsys.readouterr().out == ""
    assert job.restart_backlog(spark, settings) is None  # no Kafka listens at 127.0.0.1:9
    said = capsys.readouterr().out
    assert said.startswith("marketsignals stream: the ticks waiting after batch 4 are not known (")
    assert said.rstrip().endswith("warming up")
