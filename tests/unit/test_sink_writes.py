"""The sink's concurrent writes and its materialised batch, on a local SparkSession (no Kafka)."""

import threading

import pytest

from marketsignals.stream import sinks
from marketsignals.stream.sinks import audit_commit_tag, last_audited_batch, materialised, release, run_together


def test_the_writes_run_at_the_same_time(spark):
    # each write waits for the other to have started: run one after the other, they would time out
    started = {name: threading.Event() for name in ("kafka", "audit")}

    def write(me: str, other: str):
        def go() -> None:
            started[me].set()
            assert started[other].wait(timeout=20), f"{me} ran alone"
        return go

    took = run_together({"kafka": write("kafka", "audit"), "audit": write("audit", "kafka")})
    assert set(took) == {"kafka", "audit"}


@pytest.mark.parametrize("failing", ["kafka", "audit"])  # on the helper thread / on the caller's thread
def test_a_failed_write_fails_the_batch_after_the_other_write_finished(spark, failing):
    finished = []

    def write(name: str):
        def go() -> None:
            if name == failing:
                raise RuntimeError(f"{name} broke")
            finished.append(name)
        return go

    with pytest.raises(RuntimeError, match=f"{failing} broke"):
        run_together({"kafka": write("kafka"), "audit": write("audit")})
    assert finished == [n for n in ("kafka", "audit") if n != failing]


def test_a_materialised_batch_keeps_its_rows_and_is_freed(spark):
    persisted = spark.sparkContext._jsc.getPersistentRDDs().size()
    batch = materialised(spark.range(100).selectExpr("id", "id % 7 AS k").filter("k = 3"))
    assert spark.sparkContext._jsc.getPersistentRDDs().size() == persisted + 1
    assert batch.count() == 14 and batch.filter("id > 50").count() == 7
    release(batch)
    assert spark.sparkContext._jsc.getPersistentRDDs().size() == persisted


def test_the_last_audited_batch_is_the_newest_commit_tagged_with_the_query(spark, tmp_path):
    table = str(tmp_path / "audit")
    assert last_audited_batch(spark, table, "q-a") == -1  # no table yet

    def append(tag: str | None) -> None:
        writer = spark.range(1).write.format("delta").mode("append")
        (writer.option("userMetadata", tag) if tag else writer).save(table)

    for tag in (audit_commit_tag("q-a", 3), audit_commit_tag("q-a", 4), audit_commit_tag("q-b", 9),
                None, "not json", audit_commit_tag("q-b", 10)):
        append(tag)
    assert last_audited_batch(spark, table, "q-a") == 4
    assert last_audited_batch(spark, table, "q-b") == 10
    assert last_audited_batch(spark, table, "q-c") == -1
    # read a page of one commit at a time: q-a's newest is five commits back
    assert last_audited_batch(spark, table, "q-a", pages=(1, 2)) == 4
    assert last_audited_batch(spark, table, "q-c", pages=(1, 2)) == -1


# str() of the Py4JJavaError a Spark call of the sink fails with when the query's stop cuts the batch
INTERRUPTED = ("An error occurred while calling o1020.localCheckpoint.\n"
               ": java.lang.InterruptedException\n" + "\tat org.apache.spark.Some.method(Some.scala:1)\n" * 3000)
CANCELLED = ("An error occurred while calling o977.save.\n: org.apache.spark.SparkException: [SPARK_JOB_CANCELLED] "
             "Job 396 cancelled Query q [id = 8e31, runId = run-7] was stopped SQLSTATE: XXKDA\n"
             + "\tat org.apache.spark.Some.method(Some.scala:1)\n" * 3000)


@pytest.mark.parametrize("error", [INTERRUPTED, CANCELLED], ids=["interrupted", "cancelled"])
def test_a_batch_cut_by_the_stop_fails_with_a_short_error_spark_reads_as_the_stop(spark, error):
    """Spark's own test (StreamExecution.isInterruptionException, called with the Py4J error its
    foreachBatch call gets) overflows the stack on PySpark's long error and accepts the sink's short one."""
    sc = spark.sparkContext
    jvm = spark._jvm
    is_interruption = jvm.org.apache.spark.sql.execution.streaming.StreamExecution.isInterruptionException
    proxy = "An exception was raised by the Python Proxy. Return Message: Traceback (most recent call last):\n"
    previous = sc.getLocalProperty(sinks.JOB_GROUP)
    sc.setLocalProperty(sinks.JOB_GROUP, "run-7")
    try:
        with pytest.raises(Exception, match="StackOverflowError"):
            is_interruption(jvm.py4j.Py4JException(f"{proxy}py4j.protocol.Py4JJavaError: {error}"), sc._jsc.sc())
        cut = sinks.stop_cancellation(error, "run-7")
        assert isinstance(cut, sinks.BatchCancelled) and len(str(cut)) < 200
        assert is_interruption(jvm.py4j.Py4JException(f"{proxy}  File \"sinks.py\"\n{type(cut).__name__}: {cut}"),
                               sc._jsc.sc())
    finally:
        sc.setLocalProperty(sinks.JOB_GROUP, previous)


def test_other_errors_of_the_sink_are_raised_as_they_are():
    assert sinks.stop_cancellation("An error occurred while calling o9.save.\n: org.apache.kafka.common.errors."
                                   "TimeoutException: Topic signals not present in metadata", "run-7") is None
    assert sinks.stop_cancellation("Job 3 cancelled because of another query's group run-8", "run-7") is None
    assert sinks.stop_cancellation(INTERRUPTED, None) is None  # no streaming query's batch
