"""The sink's concurrent writes and its materialised batch, on a local SparkSession (no Kafka)."""

import json
import logging
import os
import threading
import time

import pytest

from marketsignals.stream import sinks
from marketsignals.stream.sinks import audit_commit_tag, last_audited_batch, materialised, release, run_together
from support import reopened_snapshot


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


def test_the_audit_tables_continuous_columns_are_written_plain(spark, tmp_path):
    """The session's Parquet setting reaches Delta's writer: the continuous columns are plain even where
    their values repeat (a dictionary would then be kept), while another repeating column keeps one."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from marketsignals.schema import PLAIN_ENCODED_COLUMNS, SIGNAL_ID

    values = [f"CAST(id % 3 AS {'string' if c == SIGNAL_ID else 'double'}) AS {c}" for c in PLAIN_ENCODED_COLUMNS]
    rows = spark.range(300).selectExpr(*values, "CAST(id % 3 AS string) AS symbol")
    rows.coalesce(1).write.format("delta").save(str(tmp_path / "audit"))
    (file,) = Path(tmp_path / "audit").glob("*.parquet")
    group = pq.ParquetFile(file).metadata.row_group(0)
    chunks = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    assert chunks["symbol"].dictionary_page_offset is not None  # repeating values: a dictionary by default
    for column in PLAIN_ENCODED_COLUMNS:
        chunk = chunks[column]
        assert chunk.dictionary_page_offset is None and not any("DICTIONARY" in e for e in chunk.encodings), column


def test_the_audit_tables_stats_let_a_time_range_skip_the_other_batches_files(spark, tmp_path):
    """With the profile's audit properties a batch's file carries min/max of event_time and symbol only,
    and a query for one batch's seconds reads that batch's file, not the others' (signal_id, a hash, and
    the symbols, all in every batch, would skip nothing)."""
    from marketsignals.settings import load_settings
    from marketsignals.stream.sinks import EVENT_DATE

    table = str(tmp_path / "audit")
    properties = load_settings("local", [], env={}).stream.audit_table_properties
    for second in (0, 10, 20):  # three batches, ten seconds of event time apart, the same 5 symbols each
        rows = spark.range(50).selectExpr("sha2(CAST(id AS string), 256) AS signal_id",
                                          "concat('S', CAST(id % 5 AS string)) AS symbol",
                                          f"timestamp_seconds(1764979200 + {second} + id / 50) AS event_time")
        (rows.withColumn(EVENT_DATE, rows.event_time.cast("date")).coalesce(1).write.format("delta")
         .mode("append").partitionBy(EVENT_DATE).options(**properties).save(table))
    log = spark.read.json(f"{table}/_delta_log/*.json").where("add IS NOT NULL")
    stats = [json.loads(r.stats) for r in log.select("add.stats").collect()]
    assert len(stats) == 3 and all(set(s["minValues"]) == {"event_time", "symbol"} for s in stats), stats
    audit = spark.read.format("delta").load(table)
    one_batch = audit.where("event_time BETWEEN timestamp_seconds(1764979210) AND timestamp_seconds(1764979211)")
    assert len(one_batch.inputFiles()) == 1 and one_batch.count() == 50
    assert len(audit.where("symbol = 'S1'").inputFiles()) == 3


def test_the_session_sets_spark_properties_only():
    # spark-submit, which starts a local session's JVM, warns "Ignoring non-Spark config property" for any
    # other key (the Parquet settings above did, as parquet.enable.dictionary#...): spark.hadoop.* instead
    from marketsignals.session import session_conf
    from marketsignals.settings import load_settings

    for profile in ("local", "emr"):
        conf = session_conf(load_settings(profile, env={}).spark)
        assert [key for key in conf if not key.startswith("spark.")] == [], profile


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
        if int(spark.version.split(".")[0]) >= 4:  # Spark 3.5's test of the text does not recurse
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


@pytest.mark.parametrize(("version", "every", "table_every", "last_block", "due"), [
    (99, 100, 1_000_000, 0, False),      # within the block of the last one
    (100, 100, 1_000_000, 0, True),      # the next block
    (101, 100, 1_000_000, 0, True),      # 100 was skipped (one still ran): caught up at the next commit
    (199, 100, 1_000_000, 1, False),
    (200, 100, 1_000_000, 1, True),
    (2_000_000, 100, 1_000_000, 19_999, False),  # Delta's commit hook checkpoints this one itself
    (200, 100, 100, 1, False),           # the table checkpoints itself as often: Delta's hook only
    (200, 100, 50, 1, False),            # ... or more often
    (301, 100, 50, 2, False),            # ... at any version, not only at its own
    (200, 100, 150, 1, True),            # less often: both, at different versions
    (200, 0, 1_000_000, 1, False),       # off
    (0, 1, 1_000_000, -1, False),        # a new table has nothing to checkpoint
])
def test_when_the_sink_checkpoints_the_audit_table(version, every, table_every, last_block, due):
    assert sinks.checkpoint_due(version, every, table_every, last_block) is due


def _checkpoints_in(table) -> list[int]:
    return sorted(int(p.name.split(".")[0]) for p in (table / "_delta_log").glob("*.checkpoint.parquet"))


def _maintenance_jobs(spark) -> int:
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(sinks.AUDIT_MAINTENANCE_JOB_GROUP))


@pytest.mark.parametrize("writer", ["kernel", "spark"])
def test_the_audit_table_is_checkpointed_off_the_commit_every_n_commits(spark, tmp_path, writer):
    table = tmp_path / "audit"
    checkpoints = sinks.AuditMaintenance(str(table), every=3, writer=writer)
    rows = spark.range(5).selectExpr("id", "id % 2 AS day")
    jobs_before = _maintenance_jobs(spark)
    for _ in range(8):  # versions 0..7: Delta's own hook would write none (interval 1,000,000)
        (rows.write.format("delta").mode("append").partitionBy("day")
         .option("delta.checkpointInterval", "1000000").save(str(table)))
        checkpoints.committed(spark)
        assert checkpoints.wait(timeout=60)  # one at a time here, so each lands at its commit's version
    assert _checkpoints_in(table) == [3, 6]
    outcome = checkpoints.finished()["audit_checkpoint"]
    assert outcome == {"version": 6, "ms": outcome["ms"], "writer": writer}, outcome  # no "error"
    assert checkpoints.finished() == {}  # reported once
    # Delta Kernel runs no Spark job (its cores stay the batches'); Delta Lake's rebuilds the state in jobs
    assert (_maintenance_jobs(spark) > jobs_before) is (writer == "spark")
    # a reader starts from the newest checkpoint: the table reads whole
    assert json.loads((table / "_delta_log" / "_last_checkpoint").read_text())["version"] == 6
    spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()  # a new reader's snapshot, from the file
    assert spark.read.format("delta").load(str(table)).count() == 40
    assert spark.read.format("delta").load(str(table)).where("day = 1").count() == 16  # its partition values
    # one Delta did not write (it logs why and returns) is reported, not taken for written
    delta_log = spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, str(table))
    checkpoints._maintain(spark, delta_log, version=99, compact=False, checkpoint=True)
    assert "Delta wrote none (its newest is at version 7" in checkpoints.finished()["audit_checkpoint"]["error"]


def test_the_kernels_checkpoint_keeps_the_txn_versions_the_exactly_once_check_reads(spark, tmp_path):
    table = str(tmp_path / "audit")
    checkpoints = sinks.AuditMaintenance(table, every=3, writer="kernel")

    def append(version: int) -> None:
        (spark.range(10).write.format("delta").mode("append").option("delta.checkpointInterval", "1000000")
         .option("txnAppId", "query-1").option("txnVersion", version).save(table))

    for batch in range(4):  # versions 0..3, the checkpoint at 3
        append(batch)
        checkpoints.committed(spark)
        assert checkpoints.wait(timeout=60)
    outcome = checkpoints.finished()["audit_checkpoint"]
    assert outcome == {"version": 3, "ms": outcome["ms"], "writer": "kernel"}, outcome
    snapshot = reopened_snapshot(spark, table)  # as after a restart: the state from the checkpoint
    assert snapshot.logSegment().checkpointProvider().version() == 3
    assert snapshot.transactions().get("query-1").get() == 3
    append(3)  # a replayed batch: Delta skips it
    assert spark.read.format("delta").load(table).count() == 40


def test_a_kernel_that_fails_hands_the_runs_checkpoints_to_delta_lake(spark, tmp_path, monkeypatch, caplog):
    def missing(*_args):
        raise RuntimeError("Delta Kernel (io.delta.kernel.Table) is not on the classpath")

    monkeypatch.setattr(sinks, "kernel_checkpoint", missing)
    table = tmp_path / "audit"
    checkpoints = sinks.AuditMaintenance(str(table), every=2, writer="kernel")
    with caplog.at_level(logging.WARNING, logger="marketsignals.stream.sinks"):
        for _ in range(5):  # versions 0..4
            (spark.range(3).write.format("delta").mode("append").option("delta.checkpointInterval", "1000000")
             .save(str(table)))
            checkpoints.committed(spark)
            assert checkpoints.wait(timeout=60)
    assert _checkpoints_in(table) == [2, 4]  # Delta Lake's, from the first that Delta Kernel did not write
    assert checkpoints.finished()["audit_checkpoint"]["writer"] == "spark"
    warnings = [r.getMessage() for r in caplog.records if "Delta Kernel did not write" in r.getMessage()]
    assert len(warnings) == 1 and "not on the classpath" in warnings[0], warnings  # once a run


def _log_versions(table, suffix=".json") -> list[int]:
    return sorted(int(p.name.split(".")[0]) for p in (table / "_delta_log").glob(f"*{suffix}")
                  if not p.name.startswith("."))  # not Hadoop's own checksums


def _expired_by_the_minute_not_the_day(retention_s: int = 3600) -> float:
    """A file time past ``retention_s`` with the cut-off truncated to the minute (the sink's cleanup) and
    not past it truncated to the day (Delta's own, which each checkpoint runs too), at any hour: the
    first two minutes of a UTC day, when there is none, are waited out."""
    while True:
        edge = time.time() - retention_s
        minute, day = edge // 60 * 60, edge // 86_400 * 86_400
        if minute - day >= 120:
            return max(day + 1, minute - 3600)
        time.sleep(30)


@pytest.mark.parametrize("cleanup", [True, False])
def test_the_sink_removes_the_audit_logs_expired_files_to_the_minute(spark, tmp_path, cleanup):
    # Delta lists the whole _delta_log at every commit: its files must not pile up for a day or more
    table = tmp_path / "audit"
    upkeep = sinks.AuditMaintenance(str(table), every=3)

    def commit() -> None:
        (spark.range(5).write.format("delta").mode("append").option("delta.checkpointInterval", "1000000")
         .option("delta.logRetentionDuration", "interval 1 hour")
         .option("delta.enableExpiredLogCleanup", str(cleanup).lower()).save(str(table)))
        upkeep.committed(spark)
        assert upkeep.wait(timeout=60)

    for _ in range(6):  # versions 0..5, the sink's checkpoint at 3
        commit()
    first = upkeep.finished()["audit_log_cleanup"]
    assert first.keys() == ({"version", "ms"} if cleanup else {"version", "ms", "skipped"}), first
    assert _log_versions(table) == list(range(6))  # all of them younger than the table's retention
    aged = _expired_by_the_minute_not_the_day()  # Delta goes by the files' times
    for path in (table / "_delta_log").iterdir():
        os.utime(path, (aged, aged))
    for _ in range(3):  # versions 6..8, the sink's checkpoint at 6
        commit()
    outcomes = upkeep.finished()
    assert outcomes["audit_checkpoint"]["version"] == 6
    if cleanup:
        assert outcomes["audit_log_cleanup"] == {"version": 6, "ms": outcomes["audit_log_cleanup"]["ms"]}
        # every expired file before the newest checkpoint (6) is gone: the table's log starts there
        assert _log_versions(table) == _log_versions(table, ".crc") == [6, 7, 8]
        assert _checkpoints_in(table) == [6]
        with pytest.raises(Exception, match=r"Cannot time travel .* version 5\. Available versions: \[6, 8\]"):
            spark.read.format("delta").option("versionAsOf", 5).load(str(table)).count()  # the retention's reach
    else:  # delta.enableExpiredLogCleanup false: the table keeps every file
        assert outcomes["audit_log_cleanup"]["skipped"] == "the table's delta.enableExpiredLogCleanup is false"
        assert _log_versions(table) == list(range(9))
        assert _checkpoints_in(table) == [3, 6]
    assert spark.read.format("delta").load(str(table)).count() == 45  # it reads whole
    assert spark.read.format("delta").option("versionAsOf", 6).load(str(table)).count() == 35


@pytest.mark.parametrize("retention", ["interval 1 day", None])
def test_the_audit_checkpoint_keeps_the_files_compacted_away_for_the_tables_retention(spark, tmp_path, retention):
    # A compaction replaces ~1,000 files; each checkpoint writes every replaced file (a tombstone) still
    # within the table's delta.deletedFileRetentionDuration: ~600,000 after Delta's 7 days on a 1 s trigger
    table = tmp_path / "audit"
    upkeep = sinks.AuditMaintenance(str(table), every=3)
    options = {"delta.checkpointInterval": "1000000"}
    if retention:
        options["delta.deletedFileRetentionDuration"] = retention
    for _ in range(3):  # versions 0..2
        spark.range(5).write.format("delta").mode("append").options(**options).save(str(table))
        upkeep.committed(spark)
    now_ms = int(time.time() * 1000)
    # version 3: what a compaction's commit holds of the files it replaced, two days old and new ones
    removed = {f"part-old-{i}.parquet": now_ms - 2 * 86_400_000 for i in range(4)}
    removed |= {f"part-new-{i}.parquet": now_ms for i in range(3)}
    with open(table / "_delta_log" / f"{3:020d}.json", "w") as commit:
        commit.write(json.dumps({"commitInfo": {"timestamp": now_ms, "operation": "OPTIMIZE"}}) + "\n")
        for path, deleted in removed.items():
            remove = {"path": path, "deletionTimestamp": deleted, "dataChange": False, "extendedFileMetadata": True,
                      "partitionValues": {}, "size": 1}
            commit.write(json.dumps({"remove": remove}) + "\n")
    assert spark.read.format("delta").load(str(table)).count() == 15  # the writer's log now at version 3
    upkeep.committed(spark)
    assert upkeep.wait(timeout=60)
    assert upkeep.finished()["audit_checkpoint"]["version"] == 3
    kept = sorted(r.path for r in spark.read.parquet(str(table / "_delta_log" / f"{3:020d}.checkpoint.parquet"))
                  .where("remove IS NOT NULL").select("remove.path").collect())
    # a day's retention drops the two-day-old ones from the checkpoint; Delta's 7 days keep them all
    assert kept == sorted(p for p in removed if retention is None or p.startswith("part-new"))


def test_a_table_that_checkpoints_itself_as_often_gets_no_checkpoint_from_the_sink(spark, tmp_path):
    table = tmp_path / "audit"
    checkpoints = sinks.AuditMaintenance(str(table), every=3)
    for _ in range(7):  # versions 0..6; the table's own interval: 2
        spark.range(3).write.format("delta").mode("append").option("delta.checkpointInterval", "2").save(str(table))
        checkpoints.committed(spark)
        assert checkpoints.wait(timeout=60)
    assert _checkpoints_in(table) == [2, 4, 6]  # Delta's, in the commits
    assert checkpoints.finished() == {}


@pytest.mark.parametrize(("version", "every", "last_block", "due"), [
    (999, 1000, 0, False),
    (1000, 1000, 0, True),
    (1003, 1000, 0, True),     # 1000 passed while the last one ran: caught up at the next commit
    (1999, 1000, 1, False),
    (2000, 1000, 0, True),
    (2000, 0, 0, False),       # off
    (0, 1, -1, False),         # a new table has nothing to compact
])
def test_when_the_sink_compacts_the_audit_table(version, every, last_block, due):
    assert sinks.block_due(version, every, last_block) is due


def _live_files(spark, table) -> int:
    return spark.sql(f"DESCRIBE DETAIL delta.`{table}`").first()["numFiles"]


def _operations(spark, table) -> list[str]:
    from delta.tables import DeltaTable

    return [r["operation"] for r in DeltaTable.forPath(spark, str(table)).history().orderBy("version").collect()]


def test_the_audit_table_is_compacted_off_the_commit_every_n_commits(spark, tmp_path):
    table = tmp_path / "audit"
    upkeep = sinks.AuditMaintenance(str(table), every=0, compact_every=3)
    for batch in range(7):  # two files a commit, one per day
        (spark.range(10).selectExpr("id", "id % 2 AS day").repartition(1).write.format("delta").mode("append")
         .partitionBy("day").option("userMetadata", audit_commit_tag("q", batch)).save(str(table)))
        upkeep.committed(spark)
        assert upkeep.wait(timeout=60)
    # appends at versions 0-3, OPTIMIZE at 4 (due at 3), appends 5-6, OPTIMIZE at 7 (due at 6), append 8
    assert _operations(spark, table) == [*["WRITE"] * 4, "OPTIMIZE", *["WRITE"] * 2, "OPTIMIZE", "WRITE"]
    outcome = upkeep.finished()["audit_compaction"]
    # the second compaction: each day's compacted file and its two new ones -> one file a day
    assert outcome == {"version": 6, "files_removed": 6, "files_added": 2, "ms": outcome["ms"]}, outcome
    assert _live_files(spark, table) == 4  # two compacted, two from the last append
    assert spark.read.format("delta").load(str(table)).count() == 70
    assert sorted(r.id for r in spark.read.format("delta").load(str(table)).select("id").collect()) == sorted(
        list(range(10)) * 7)
    # the exactly-once lookup reads past the compactions' commits, which carry no batch
    assert last_audited_batch(spark, str(table), "q") == 6
    assert last_audited_batch(spark, str(table), "q", pages=(1, 2)) == 6


def test_appends_land_while_the_table_is_compacted(spark, tmp_path):
    table = tmp_path / "audit"
    rows = spark.range(50).selectExpr("id", "id % 5 AS day").repartition(5)

    def append() -> None:
        rows.write.format("delta").mode("append").partitionBy("day").save(str(table))

    for _ in range(4):
        append()
    upkeep = sinks.AuditMaintenance(str(table), every=0, compact_every=1)
    upkeep._last_compact_block = 0  # as if the run had started at version 0: due now
    upkeep.committed(spark)
    for _ in range(4):  # Delta's snapshot isolation for OPTIMIZE: blind appends never conflict with it
        append()
    assert upkeep.wait(timeout=120)
    outcome = upkeep.finished()["audit_compaction"]
    assert "error" not in outcome and outcome["files_removed"] > 0, outcome
    from delta.tables import DeltaTable

    optimize = DeltaTable.forPath(spark, str(table)).history().where("operation = 'OPTIMIZE'").first()
    assert optimize["readVersion"] == 3 and optimize["version"] > 4, optimize  # appends landed while it ran
    assert spark.read.format("delta").load(str(table)).count() == 8 * 50


def test_a_failed_compaction_is_reported_and_the_next_one_still_comes(spark, tmp_path):
    table = tmp_path / "audit"
    spark.range(3).write.format("delta").save(str(table))
    upkeep = sinks.AuditMaintenance(str(tmp_path / "not-a-table"), every=0, compact_every=1)
    delta_log = spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, str(table))
    upkeep._maintain(spark, delta_log, version=1, compact=True, checkpoint=False)
    outcome = upkeep.finished()["audit_compaction"]
    assert outcome["version"] == 1 and "not-a-table" in outcome["error"] and "is not a Delta table" in outcome["error"]
    assert upkeep.compact_every == 1


def test_the_sink_keeps_the_audit_table_up_by_its_settings():
    from marketsignals.settings import load_settings

    settings = load_settings("local", ["stream.audit_table=/tmp/t", "stream.audit_checkpoint_interval=7",
                                       "stream.audit_compact_interval=9"], env={})
    upkeep = sinks.SignalSink(settings).maintenance
    assert (upkeep.table, upkeep.every, upkeep.compact_every) == ("/tmp/t", 7, 9)


def test_when_both_are_due_the_checkpoint_holds_the_compaction(spark, tmp_path):
    table = tmp_path / "audit"
    upkeep = sinks.AuditMaintenance(str(table), every=3, compact_every=3)
    for _ in range(4):  # versions 0-3; at 3 both are due
        (spark.range(4).repartition(2).write.format("delta").mode("append")
         .option("delta.checkpointInterval", "1000000").save(str(table)))
        upkeep.committed(spark)
        assert upkeep.wait(timeout=60)
    assert _operations(spark, table) == [*["WRITE"] * 4, "OPTIMIZE"]  # the compaction first, at version 4
    assert _checkpoints_in(table) == [4]  # then the checkpoint, of the table as compacted
    outcomes = upkeep.finished()
    assert outcomes["audit_compaction"]["files_removed"] == 8 and outcomes["audit_checkpoint"]["version"] == 3, outcomes
