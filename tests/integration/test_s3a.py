"""The audit table on S3 through Hadoop's S3A (what ``s3://`` is on EMR from release 7.10), against a moto
server on loopback: the stream lets Delta list the table's log from the version it needs, and only there."""

from __future__ import annotations

import uuid

import pytest

from conftest import ROOT
from marketsignals import feed
from marketsignals.stream.sinks import FAST_LOG_LISTING, fast_log_listing
from support import progress_lines, run_available_now


@pytest.fixture
def s3(spark, monkeypatch):
    """A fresh bucket in a moto server, the session's S3A pointed at it; the setting undone afterwards."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.delta_log import moto_s3

    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    try:
        with moto_s3(spark, bucket) as client:
            yield bucket, client
    finally:
        spark.conf.unset(FAST_LOG_LISTING)
        spark.conf.unset(f"spark.hadoop.{FAST_LOG_LISTING}")
        spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()  # its tables' log stores read the setting


def test_fast_listing_is_turned_on_for_a_table_on_s3a_only(spark, s3, tmp_path):
    bucket, _ = s3
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

    bucket, _ = s3
    assert sinks.list_from_a_version_fails(spark, spark._jvm.org.apache.hadoop.fs.Path(f"s3a://{bucket}/audit")
                                           .getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()),
                                           f"s3a://{bucket}/audit") is None  # this S3A has them
    monkeypatch.setattr(sinks, "list_from_a_version_fails", lambda *_: "java.lang.NoSuchMethodError: getListing")
    assert not fast_log_listing(spark, f"s3a://{bucket}/audit")
    assert spark.conf.get(FAST_LOG_LISTING, None) is None
    assert "fails on this S3A (java.lang.NoSuchMethodError: getListing)" in caplog.text


def test_delta_lists_the_log_of_a_table_on_s3a_from_its_checkpoint(spark, s3):
    from bench.delta_log import list_requests, pad_s3

    bucket, client = s3
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


def test_a_stream_with_its_audit_table_on_s3a(spark, kafka_broker, s3, capsys):
    bucket, _ = s3
    settings = kafka_broker.isolated("s3a-audit", f"stream.audit_table=s3a://{bucket}/audit",
                                     "kafka.max_offsets_per_trigger=300")
    kafka_broker.produce(settings, feed.FeedOptions(symbols=feed.symbol_names(4), count=900, rate=200,
                                                    start_ms=1_767_312_000_000, seed=5,
                                                    topics=tuple(settings.kafka.topics)))
    metrics = run_available_now(spark, settings)
    assert "the audit table is on S3A: Delta lists its log from the version it needs" in capsys.readouterr().out
    assert spark.conf.get(FAST_LOG_LISTING) == "true"
    batches = [m for m in progress_lines(metrics) if m["input_rows"] > 0]
    assert len(batches) >= 3 and sum(m["input_rows"] for m in batches) == 900
    audit = spark.read.format("delta").load(settings.stream.audit_table)
    signals = sum(m.get("signals", 0) for m in batches)
    assert signals > 0 and audit.count() == signals == audit.select("signal_id").distinct().count()
