"""The checkpoint's record of its state bucket count (stream.checkpoint), on a local SparkSession."""

from __future__ import annotations

import json
import logging

import pytest

from marketsignals.stream.checkpoint import RECORD, CheckpointRecordError, state_buckets


def test_a_new_checkpoint_records_the_configured_count(spark, tmp_path):
    location = tmp_path / "new" / "checkpoint"
    assert state_buckets(spark, str(location), 32) == 32
    assert json.loads((location / RECORD).read_text()) == {"state_buckets": 32}
    assert sorted(p.name for p in location.iterdir() if not p.name.startswith(".")) == [RECORD]


def test_a_checkpoint_keeps_its_recorded_count_and_says_so(spark, tmp_path, caplog):
    location = tmp_path / "checkpoint"
    assert state_buckets(spark, str(location), 256) == 256
    with caplog.at_level(logging.WARNING, logger="marketsignals.stream.checkpoint"):
        assert state_buckets(spark, str(location), 32) == 256
    assert "keeps its state in 256 buckets" in caplog.text and "stream.state_buckets=32" in caplog.text
    assert json.loads((location / RECORD).read_text()) == {"state_buckets": 256}  # not rewritten


def test_a_checkpoint_from_before_the_record_uses_the_setting_and_gets_no_record(spark, tmp_path):
    location = tmp_path / "old"
    (location / "offsets").mkdir(parents=True)
    (location / "offsets" / "0").write_text("v1\n")
    assert state_buckets(spark, str(location), 16) == 16
    assert not (location / RECORD).exists()  # the state's own count is unknown: the handler checks it


@pytest.mark.parametrize("text", ["not json", '{"buckets": 8}', '{"state_buckets": 0}', '{"state_buckets": "8"}'])
def test_an_unreadable_record_stops_with_what_to_do(spark, tmp_path, text):
    location = tmp_path / "bad"
    location.mkdir()
    (location / RECORD).write_text(text)
    with pytest.raises(CheckpointRecordError, match="restore it, or start from a new checkpoint"):
        state_buckets(spark, str(location), 8)
