"""The stream's checkpoint and audit table on S3 through Hadoop's S3A (what ``s3://`` is on EMR from release
7.10), against a moto server on loopback: Spark writes the checkpoint's files in place and Delta lists the
table's log from the version it needs, there and only there."""

from __future__ import annotations

import uuid

import pytest

from conftest import ROOT
from marketsignals import feed
from marketsignals.stream.checkpoint import ABORTABLE_MANAGER, MANAGER_CLASS, writes_in_place
from marketsignals.stream.sinks import FAST_LOG_LISTING, fast_log_listing
from support import progress_lines, reopened_snapshot, run_available_now


@pytest.fixture
def s3(spark, monkeypatch):
    """A fresh bucket in a moto server, the session's S3A pointed at it; the S3A settings undone afterwards."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.delta_log import moto_s3

    bucket = f"s3a-{uuid.uuid4().hex[:12]}"
    requests: list[tuple[str, str]] = []
    try:
        with moto_s3(spark, bucket, requests) as client:
            yield bucket, client, requests
    finally:
        for key in (FAST_LOG_LISTING, f"spark.hadoop.{FAST_LOG_LISTING}", MANAGER_CLASS):
            spark.conf.unset(key)
        spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()  # its tables' log stores read the setting


def test_fast_listing_is_turned_on_for_a_table_on_s3a_only(spark, s3, tmp_path):
    bucket, *_ = s3
    assert not fast_log_listing(spark, str(tmp_path / "audit"))  # a local path
    assert spark.conf.get(FAST_LOG_LISTING, None) is None
    assert fast_log_listing(spark, f"s3a://{bucket}/audit")
    assert spark.conf.get(FAST_LOG_LISTING) == "true"
    spark.conf.set(FAST_LOG_LISTING, "false")  # the user's own choice stays
    assert not fast_log_listing(spark, f"s3a://{bucket}/audit")
    assert spark.conf.get(FAST_LOG_LISTING) == "false"
    spark.conf.unset(FAST_LOG_LISTING)
    spark.conf.set(f"spark.hadoop.{FAST_LOG_LISTING}", "false")  # as `--set spark.conf.spark.hadoop...` gives it
    assert not fast_log_listing(spark, f"s3a://{bucket}/audit")
    assert spark.conf.get(FAST_LOG_LISTING, None) is None


def test_fast_listing_stays_off_where_deltas_listing_from_a_version_fails(spark, s3, monkeypatch, caplog):
    # delta-storage calls S3A's internal listing classes: a vendor's S3A may not have them
    from marketsignals.stream import sinks

    bucket, *_ = s3
    assert sinks.list_from_a_version_fails(spark, spark._jvm.org.apache.hadoop.fs.Path(f"s3a://{bucket}/audit")
                                           .getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()),
                                           f"s3a://{bucket}/audit") is None  # this S3A has them
    monkeypatch.setattr(sinks, "list_from_a_version_fails", lambda *_: "java.lang.NoSuchMethodError: getListing")
    assert not fast_log_listing(spark, f"s3a://{bucket}/audit")
    assert spark.conf.get(FAST_LOG_LISTING, None) is None
    assert "fails on this S3A (java.lang.NoSuchMethodError: getListing)" in caplog.text


def test_delta_lists_the_log_of_a_table_on_s3a_from_its_checkpoint(spark, s3):
    from bench.delta_log import list_requests, pad_s3

    bucket, client, _ = s3
    table = f"s3a://{bucket}/audit"
    delta_log = spark._jvm.org.apache.spark.sql.delta.DeltaLog
    rows = spark.range(10)

    def append() -> int:  # the LIST requests of one append
        before = list_requests(spark, table)
        rows.write.format("delta").mode("append").save(table)
        return list_requests(spark, table) - before

    for _ in range(3):
        append()
    pad_s3(client, bucket, "audit/_delta_log", 0, 2100)  # three of S3's 1,000-key pages before version 1
    delta_log.forTable(spark._jsparkSession, table).checkpoint()  # at version 2: Delta lists from there
    append()  # the first after the checkpoint reads it
    whole = append()
    assert fast_log_listing(spark, table)
    delta_log.clearCache()
    append()  # the table opened again, with the setting
    fast = append()
    assert whole - fast >= 2, (whole, fast)  # the log's pages before the checkpoint are not listed
    # and Delta still finds every version of it
    assert spark.read.format("delta").load(table).count() == 70
    history = spark.sql(f"DESCRIBE HISTORY delta.`{table}`").select("version").collect()
    assert sorted(r.version for r in history) == list(range(7))


def test_delta_kernel_checkpoints_a_table_on_s3a(spark, s3):
    from marketsignals.stream.sinks import AuditMaintenance

    bucket, _, requests = s3
    table = f"s3a://{bucket}/audit"
    upkeep = AuditMaintenance(table, every=2, writer="kernel")
    for _ in range(3):  # versions 0..2, the checkpoint at 2
        spark.range(10).write.format("delta").mode("append").option("delta.checkpointInterval", "1000000").save(table)
        upkeep.committed(spark)
        assert upkeep.wait(timeout=60)
    outcome = upkeep.finished()["audit_checkpoint"]
    assert outcome == {"version": 2, "ms": outcome["ms"], "writer": "kernel"}, outcome
    # S3 shows an object whole or not at all: the file goes straight to its name, no temporary one renamed
    written = [path for method, path in requests if method == "PUT" and f"/{bucket}/audit/_delta_log/" in path]
    assert [p for p in written if p.endswith("/00000000000000000002.checkpoint.parquet")], written
    assert [p for p in written if p.endswith("/_last_checkpoint")]
    assert not [p for p in written if ".tmp" in p and "checkpoint" in p], written  # (Delta's .crc files have one)
    assert reopened_snapshot(spark, table).logSegment().checkpointProvider().version() == 2  # a new reader's start
    assert spark.read.format("delta").load(table).count() == 30


def test_the_checkpoint_is_written_in_place_on_s3a_only(spark, s3, tmp_path):
    bucket, *_ = s3
    assert not writes_in_place(spark, str(tmp_path / "checkpoint"))  # a local file system cannot abort a write
    assert spark.conf.get(MANAGER_CLASS, None) is None
    assert writes_in_place(spark, f"s3a://{bucket}/checkpoint")
    assert spark.conf.get(MANAGER_CLASS) == ABORTABLE_MANAGER
    spark.conf.set(MANAGER_CLASS, "org.example.TheirManager")  # the user's own choice stays
    assert not writes_in_place(spark, f"s3a://{bucket}/checkpoint")
    assert spark.conf.get(MANAGER_CLASS) == "org.example.TheirManager"


def _ticks(kafka_broker, settings, count: int, start_ms: int) -> None:
    kafka_broker.produce(settings, feed.FeedOptions(symbols=feed.symbol_names(4), count=count, rate=200,
                                                    start_ms=start_ms, seed=5, topics=tuple(settings.kafka.topics)))


def test_a_stream_with_its_checkpoint_and_audit_table_on_s3a(spark, kafka_broker, s3, capsys):
    bucket, _, requests = s3
    settings = kafka_broker.isolated("s3a", f"stream.checkpoint=s3a://{bucket}/checkpoint",
                                     f"stream.audit_table=s3a://{bucket}/audit", "kafka.max_offsets_per_trigger=300")
    _ticks(kafka_broker, settings, 900, 1_767_312_000_000)
    metrics = run_available_now(spark, settings)
    printed = capsys.readouterr().out
    assert "the checkpoint is on S3A: Spark writes its files in place" in printed
    assert "the audit table is on S3A: Delta lists its log from the version it needs" in printed
    assert spark.conf.get(MANAGER_CLASS) == ABORTABLE_MANAGER and spark.conf.get(FAST_LOG_LISTING) == "true"
    batches = [m for m in progress_lines(metrics) if m["input_rows"] > 0]
    assert len(batches) >= 3 and sum(m["input_rows"] for m in batches) == 900
    audit = spark.read.format("delta").load(settings.stream.audit_table)
    signals = sum(m.get("signals", 0) for m in batches)
    assert signals > 0 and audit.count() == signals == audit.select("signal_id").distinct().count()
    # Spark's files went straight to their names: the offsets, the commits and the state's changelogs
    written = [path for method, path in requests if method == "PUT" and f"/{bucket}/checkpoint/" in path]
    assert [p for p in written if "/offsets/" in p] and [p for p in written if "/commits/" in p]
    assert [p for p in written if p.endswith(".changelog")]
    # (the job's own record of the state's layout, written once per checkpoint, keeps its rename)
    renamed = [p for p in written if p.endswith(".tmp") and not p.endswith("/.marketsignals.json.tmp")]
    assert not renamed, f"checkpoint files went through a rename: {renamed}"
    # and a restart reads them: it takes up after the last batch, with the state where it was
    _ticks(kafka_broker, settings, 300, 1_767_312_000_000 + 900 * 5)
    restarted = settings.with_overrides([f"stream.metrics_path={settings.stream.metrics_path}.restart"])
    again = [m for m in progress_lines(run_available_now(spark, restarted)) if m["input_rows"] > 0]
    assert sum(m["input_rows"] for m in again) == 300
    assert audit.count() == signals + sum(m.get("signals", 0) for m in again)
    assert audit.select("signal_id").distinct().count() == audit.count()


def test_the_driver_reads_a_stop_request_written_with_boto3_and_removes_it(spark, s3):
    """`marketsignals emr stop` writes the request with boto3; the driver looks for it through the JVM's
    file system (S3A here, EMRFS or S3A on EMR), every stream.stop_check: one HEAD while none waits."""
    from marketsignals import stop_request
    from marketsignals.stream import checkpoint

    bucket, client, requests = s3
    cp = f"s3a://{bucket}/checkpoints/stream"
    client.put_object(Bucket=bucket, Key="checkpoints/stream/metadata", Body=b'{"id":"q"}')
    assert checkpoint.stop_request(spark, cp) is None  # S3A's file system made and warmed up
    before = len(requests)
    assert checkpoint.stop_request(spark, cp) is None
    assert [method for method, _ in requests[before:]] == ["HEAD"]
    assert stop_request.write(cp, client) == f"{cp}/marketsignals.stop"
    said = checkpoint.stop_request(spark, cp)
    assert said is not None and "requested_at" in said
    checkpoint.remove_stop_request(spark, cp)
    assert checkpoint.stop_request(spark, cp) is None
    assert client.list_objects_v2(Bucket=bucket, Prefix="checkpoints/stream/")["KeyCount"] == 1  # metadata only
