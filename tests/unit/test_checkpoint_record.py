"""The checkpoint's record of its state layout (stream.checkpoint), and what the job reads of Spark's own
offset log, on a local SparkSession."""

from __future__ import annotations

import json
import logging

import pytest

from marketsignals.stream.checkpoint import (
    RECORD,
    CheckpointRecordError,
    StateLayout,
    last_batch,
    source_offsets,
    state_layout,
)


def test_a_new_checkpoint_records_the_configured_count_and_the_partitions_its_keys_are_for(spark, tmp_path):
    location = tmp_path / "new" / "checkpoint"
    assert state_layout(spark, str(location), 32, 2) == StateLayout(32, 2)
    assert json.loads((location / RECORD).read_text()) == {"state_buckets": 32, "state_key_partitions": 2}
    assert sorted(p.name for p in location.iterdir() if not p.name.startswith(".")) == [RECORD]


def test_a_checkpoint_keeps_its_recorded_layout_and_says_so(spark, tmp_path, caplog):
    location = tmp_path / "checkpoint"
    assert state_layout(spark, str(location), 256, 48) == StateLayout(256, 48)
    with caplog.at_level(logging.WARNING, logger="marketsignals.stream.checkpoint"):
        assert state_layout(spark, str(location), 32, 2) == StateLayout(256, 48)
    assert "keeps its state in 256 buckets" in caplog.text and "stream.state_buckets=32" in caplog.text
    assert json.loads((location / RECORD).read_text()) == {"state_buckets": 256, "state_key_partitions": 48}


def test_a_record_from_before_the_keys_keeps_the_buckets_own_numbers(spark, tmp_path):
    location = tmp_path / "checkpoint"
    location.mkdir()
    (location / RECORD).write_text('{"state_buckets": 32}')
    assert state_layout(spark, str(location), 32, 2) == StateLayout(32, None)
    assert json.loads((location / RECORD).read_text()) == {"state_buckets": 32}  # not rewritten


def test_a_checkpoint_from_before_the_record_uses_the_setting_and_gets_no_record(spark, tmp_path):
    location = tmp_path / "old"
    (location / "offsets").mkdir(parents=True)
    (location / "offsets" / "0").write_text("v1\n")
    assert state_layout(spark, str(location), 16, 2) == StateLayout(16, None)
    assert not (location / RECORD).exists()  # the state's own count is unknown: the handler checks it


@pytest.mark.parametrize("text", ["not json", '{"buckets": 8}', '{"state_buckets": 0}', '{"state_buckets": "8"}',
                                  '[8]', '{"state_buckets": 8, "state_key_partitions": 0}',
                                  '{"state_buckets": 8, "state_key_partitions": true}'])
def test_an_unreadable_record_stops_with_what_to_do(spark, tmp_path, text):
    location = tmp_path / "bad"
    location.mkdir()
    (location / RECORD).write_text(text)
    with pytest.raises(CheckpointRecordError, match="restore it, or start from a new checkpoint"):
        state_layout(spark, str(location), 8, 2)


def test_the_newest_batch_and_where_it_ends_in_kafka_come_from_sparks_offset_log(spark, tmp_path):
    location = tmp_path / "checkpoint"
    assert last_batch(spark, str(location)) is None  # no checkpoint yet
    (location / "offsets").mkdir(parents=True)
    assert last_batch(spark, str(location)) is None  # a query that planned no batch
    for batch in (8, 9, 10):  # as Spark writes them: a version line, the batch's metadata, the source's offsets
        (location / "offsets" / str(batch)).write_text(
            f'v1\n{{"batchWatermarkMs":0,"batchTimestampMs":1,"conf":{{}}}}\n{{"ticks":{{"0":{batch},"1":5}}}}')
        (location / "offsets" / f".{batch}.crc").write_bytes(b"")
    assert last_batch(spark, str(location)) == 10  # by number: "9" sorts after "10" by name
    assert last_batch(spark, str(location), "commits") is None
    (location / "commits").mkdir()
    (location / "commits" / "9").write_text('v1\n{"nextBatchWatermarkMs":0}')
    assert last_batch(spark, str(location), "commits") == 9  # batch 10 planned, not committed
    assert source_offsets(spark, str(location), 10) == {"ticks": {"0": 10, "1": 5}}
    (location / "offsets" / "11").write_text("v1\n{}\n-")  # a source without offsets: not this job's Kafka
    with pytest.raises(CheckpointRecordError, match="offsets/11 holds no Kafka offsets"):
        source_offsets(spark, str(location), 11)
