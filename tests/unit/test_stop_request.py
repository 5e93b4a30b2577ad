"""The stop request's file: where it goes, what it says, and the checks before it is written (the driver's
side, which reads it through Hadoop, runs in tests/faults/test_clean_stop.py; S3 in test_emr_deploy.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from marketsignals import stop_request
from marketsignals.cli import main


def test_the_request_sits_in_the_checkpoint_and_says_when_and_who():
    assert stop_request.location("s3://b/cp/stream/") == "s3://b/cp/stream/marketsignals.stop"
    assert stop_request.location(".local/checkpoints/stream") == ".local/checkpoints/stream/marketsignals.stop"
    said = json.loads(stop_request.content(datetime(2026, 12, 7, 19, 30, tzinfo=UTC)))
    assert said["requested_at"] == "2026-12-07T19:30:00+00:00" and "@" in said["by"]
    assert stop_request.s3_key("s3a://bucket/a/b/marketsignals.stop") == ("bucket", "a/b/marketsignals.stop")
    with pytest.raises(stop_request.StopRequestError, match="not an S3 location"):
        stop_request.s3_key("hdfs:///cp/marketsignals.stop")


def test_a_request_is_written_only_where_a_query_has_started(tmp_path):
    checkpoint = tmp_path / "stream"
    with pytest.raises(stop_request.StopRequestError, match=r"no streaming query has started .*metadata is missing"):
        stop_request.write(str(checkpoint))
    assert not checkpoint.exists()  # nothing left behind to stop a later query
    checkpoint.mkdir()
    (checkpoint / "metadata").write_text('{"id":"q"}')
    written = stop_request.write(f"file://{checkpoint}")
    assert written == str(checkpoint / "marketsignals.stop")
    assert "requested_at" in json.loads((checkpoint / "marketsignals.stop").read_text())
    assert sorted(p.name for p in checkpoint.iterdir()) == ["marketsignals.stop", "metadata"]  # no temporary left
    with pytest.raises(stop_request.StopRequestError, match=r"hdfs dfs -touchz hdfs://nn/cp/marketsignals\.stop"):
        stop_request.write("hdfs://nn/cp")
    with pytest.raises(stop_request.StopRequestError, match="an S3 client is needed"):
        stop_request.write("s3://bucket/cp")


def test_a_request_no_job_acted_on_is_removed_before_live_starts_one(tmp_path):
    (tmp_path / "metadata").write_text("{}")
    assert stop_request.remove_local(str(tmp_path)) is None
    stop_request.write(str(tmp_path))
    assert stop_request.remove_local(f"file://{tmp_path}") == str(tmp_path / "marketsignals.stop")
    stop_request.write(f"file:{tmp_path}")  # one slash, as Hadoop and Spark's logs print a local path
    assert stop_request.remove_local(f"file:{tmp_path}") == str(tmp_path / "marketsignals.stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata"]
    assert stop_request.remove_local("s3://bkt/cp") is None  # not live's: the job's own start handles it


def test_the_stop_command_writes_the_profiles_request_or_says_what_is_wrong(tmp_path, capsys):
    checkpoint = tmp_path / "cp"
    args = ["stop", "--set", f"stream.checkpoint={checkpoint}"]
    assert main(args) == 2
    assert "no streaming query has started with the checkpoint" in capsys.readouterr().err
    checkpoint.mkdir()
    (checkpoint / "metadata").write_text("{}")
    assert main([*args, "--set", "stream.stop_check=2 seconds"]) == 0
    out = capsys.readouterr().out
    assert f"requested at {checkpoint}/marketsignals.stop" in out and "within 2 seconds" in out
    assert (checkpoint / "marketsignals.stop").is_file()


def test_on_s3_the_request_goes_beside_the_checkpoints_metadata_even_at_a_buckets_root(monkeypatch):
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_CONFIG_FILE", "/dev/null"), ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")):
        monkeypatch.setenv(name, value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        s3.create_bucket(Bucket="bkt")
        for checkpoint, prefix in (("s3a://bkt/cp/", "cp/"), ("s3://bkt", "")):
            with pytest.raises(stop_request.StopRequestError, match=f"s3://bkt/{prefix}metadata is missing"):
                stop_request.write(checkpoint, s3)
            s3.put_object(Bucket="bkt", Key=f"{prefix}metadata", Body=b"{}")
            assert stop_request.write(checkpoint, s3) == f"{checkpoint.rstrip('/')}/marketsignals.stop"
            assert stop_request.s3_exists(s3, "bkt", f"{prefix}marketsignals.stop")
    finally:
        server.stop()
