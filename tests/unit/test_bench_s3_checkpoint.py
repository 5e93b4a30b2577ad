"""bench/s3_checkpoint.py: the S3A settings it gives bench.run, and its count of moto's requests a batch
(the runs themselves take minutes: bench/ROUNDS.md, thirty-seventh round)."""

from __future__ import annotations

from conftest import ROOT


def test_the_checkpoint_goes_to_the_bucket_through_s3a(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import s3_checkpoint

    sets = dict(s.split("=", 1) for s in s3_checkpoint.s3a_overrides("b1", "http://127.0.0.1:9"))
    assert sets["stream.checkpoint"] == "s3a://b1/stream"
    assert sets["spark.conf.spark.hadoop.fs.s3a.bucket.b1.endpoint"] == "http://127.0.0.1:9"
    assert "hadoop-aws-" in sets["spark.conf.spark.jars"]


def test_requests_a_batch_over_the_middle_half_of_the_runs_batches(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import s3_checkpoint

    def line(second: int, method: str, path: str, colour: bool = False) -> str:
        code = "\x1b[33m" if colour else ""
        return f'127.0.0.1 - - [06/Dec/2026 10:00:{second:02d}] "{code}{method} {path} HTTP/1.1" 200 -'

    log = ["Starting a new Thread..."]
    for batch in range(8):  # one batch a second: a commit, a rename's copy and delete, a listing
        log += [line(batch, "PUT", f"/b1/stream/commits/{batch}"), line(batch, "PUT", f"/b1/stream/offsets/{batch}"),
                line(batch, "DELETE", f"/b1/stream/offsets/.{batch}.tmp", colour=True),
                line(batch, "GET", "/b1?list-type=2&prefix=stream/offsets/"),
                line(batch, "HEAD", "/other-bucket/x")]  # not the run's bucket
    log.append(line(59, "HEAD", "/b1/stream/late"))  # after the last commit: outside the middle half
    batches, per_batch = s3_checkpoint.requests_a_batch(log, "b1")
    assert batches == 4  # seconds 2..5 of 0..7
    assert per_batch == {"DELETE": 1.0, "GET list": 1.0, "PUT": 2.0}
    assert s3_checkpoint.requests_a_batch(log[:1], "b1") == (0, {})
