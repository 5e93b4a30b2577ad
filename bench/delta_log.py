"""What an audit-table append costs as the table's Delta log grows.

``python -m bench.delta_log [--files 0,5000,20000,100000] [--appends 12] [--rows 500]`` creates a Delta
table in ``--data`` (``.local/bench/delta-log``), then for each count in ``--files`` puts that many entries
in its ``_delta_log`` and times ``--appends`` appends of ``--rows`` rows there (the median and the least,
after the first two). It prints the cost per log entry (a least-squares slope over the counts).

Delta lists the whole ``_delta_log`` at the start of every transaction (the snapshot update; on S3,
delta-io/delta#1191), so each file kept there costs every later commit; the sink's audit write commits
once a batch. The files added here are empty and named to sort before the table's commits (Delta
filters them out after the listing, as it does the commits before its newest checkpoint), so only the
listing pays for them; half of them are checksum sidecars (``.<name>.crc``), which Hadoop's local file
system writes beside every file and leaves out of its listings. A 1 s trigger adds two files a batch
(the commit and its checksum), four entries with their sidecars on a local path: ~172,800 files a
day, which Delta keeps for ``delta.logRetentionDuration`` (30 days by default; an hour for the audit
table the sink creates, whose expired files the sink removes: bench/ROUNDS.md, thirty-fifth round).

``--s3`` puts the table on ``s3a://`` in a moto server on loopback (Hadoop's S3A, ``make jars`` fetches it
into ``.jars/s3a``), pads its log with empty objects (no sidecars there; Delta's own checksum files are
objects of their own), checkpoints it, and times each count twice, alternating: with Delta listing the
whole log (``delta.enableFastS3AListFrom`` off) and from the checkpoint's version (on, what the stream
turns on for an audit table on S3A: ``stream.sinks.fast_log_listing``). It prints the LIST requests an
append made (S3A's own count: S3 returns 1,000 keys a request); moto's milliseconds are not S3's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shutil
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from marketsignals.stream.sinks import FAST_LOG_LISTING

ROOT = Path(__file__).resolve().parents[1]
WARM_UP_APPENDS = 2
S3A_JARS = ROOT / ".jars" / "s3a"
LIST_COUNTERS = ("object_list_request", "object_continue_list_request")  # S3A's IOStatistics


def pad(log: Path, start: int, stop: int) -> None:
    """Empty entries ``start`` .. ``stop - 1`` in ``log``, named below version 1's commit: files and, every
    other one, a file's checksum sidecar, as Hadoop's local file system leaves each file it writes."""
    for i in range(start, stop):
        name = f"00000000000000000000.bench-{i // 2:09d}"
        (log / (name if i % 2 == 0 else f".{name}.crc")).touch()


def s3a_bucket_options(endpoint: str) -> dict[str, str]:
    """S3A's per-bucket options (``fs.s3a.bucket.<bucket>.<key>``) for a moto server at ``endpoint``."""
    return {"endpoint": endpoint, "endpoint.region": "us-east-1", "path.style.access": "true",
            "connection.ssl.enabled": "false", "access.key": "bench", "secret.key": "bench",
            "aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"}


def s3a_jars() -> str:
    """``spark.jars`` for Hadoop's S3A (``make jars``); a clear error if they are not there."""
    jars = sorted(str(p) for p in S3A_JARS.glob("*.jar"))
    if not any(Path(j).name.startswith("hadoop-aws-") for j in jars):
        raise SystemExit(f"no hadoop-aws jar in {S3A_JARS}: run `make jars`")
    return ",".join(jars)


class _RequestLog(logging.Handler):
    """Each request moto's web server logs, as (method, path with its query) into a list."""

    LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP')  # a line may start with a colour code

    def __init__(self, into: list[tuple[str, str]]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        match = self.LINE.search(record.getMessage())
        if match:
            self.into.append((match.group(1), match.group(2)))


@contextlib.contextmanager
def moto_s3(spark, bucket: str, requests: list[tuple[str, str]] | None = None) -> Iterator[object]:
    """A moto S3 server on loopback with ``bucket`` in it, and the session's S3A pointed at it for that
    bucket only (S3A's per-bucket options); yields a boto3 client of it. The session needs the S3A jars.
    ``requests``: a list that gets each request the server answers, as (method, path)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server_log = logging.getLogger("werkzeug")
    handler = _RequestLog(requests) if requests is not None else None
    server_log.setLevel(logging.INFO if handler else logging.ERROR)  # a line per request
    if handler:
        server_log.addHandler(handler)
        server_log.propagate = False
    from bench.env import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket=bucket)
        conf = spark.sparkContext._jsc.hadoopConfiguration()
        # S3 returns at most 1,000 keys a request, moto all that are asked for
        for key, value in {**s3a_bucket_options(endpoint), "paging.maximum": "1000"}.items():
            conf.set(f"fs.s3a.bucket.{bucket}.{key}", value)
        yield client
    finally:
        server.stop()
        if handler:
            server_log.removeHandler(handler)
            server_log.propagate = True
            server_log.setLevel(logging.ERROR)


def list_requests(spark, path: str) -> int:
    """The LIST requests S3A has made so far for ``path``'s bucket (its file system's own count)."""
    jvm = spark._jvm
    fs = jvm.org.apache.hadoop.fs.Path(path).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    counters = fs.getIOStatistics().counters()
    return sum(int(counters.get(name) or 0) for name in LIST_COUNTERS)


def pad_s3(client, bucket: str, log_key: str, start: int, stop: int) -> None:
    """Empty objects ``start`` .. ``stop - 1`` in the log at ``log_key``, named below version 1's commit."""
    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"{log_key}/00000000000000000000.bench-{i:09d}", Body=b"")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(start, stop)))


def run_s3(spark, counts: list[int], appends: int, rows_per_append: int) -> int:
    delta_log = spark._jvm.org.apache.spark.sql.delta.DeltaLog
    bucket = f"bench-delta-log-{uuid.uuid4().hex[:8]}"  # S3A keeps a bucket's client (and endpoint) per JVM
    table = f"s3a://{bucket}/table"
    rows = spark.range(0, rows_per_append, 1, 1).selectExpr("id", "cast(id AS string) AS text")
    with moto_s3(spark, bucket) as client:
        for _ in range(6):
            rows.write.format("delta").mode("append").save(table)
        made = 0
        print(f"{'entries in _delta_log':>21} {'fast listing':>12} {'LISTs an append':>15} {'median ms':>9}")
        for count in counts:
            pad_s3(client, bucket, "table/_delta_log", made, count)
            made = max(made, count)
            delta_log.clearCache()
            delta_log.forTable(spark._jsparkSession, table).checkpoint()  # Delta lists from here on
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="table/_delta_log/")
            entries = sum(page["KeyCount"] for page in pages)
            for fast in ("false", "true"):
                spark.conf.set(FAST_LOG_LISTING, fast)
                delta_log.clearCache()  # Delta reads the setting when it opens the table
                took, lists = [], []
                for _ in range(appends):
                    before, started = list_requests(spark, table), time.monotonic()
                    rows.write.format("delta").mode("append").save(table)
                    took.append((time.monotonic() - started) * 1000)
                    lists.append(list_requests(spark, table) - before)
                print(f"{entries:>21,} {fast:>12} "
                      f"{statistics.median(lists[WARM_UP_APPENDS:]):>15,.0f} "
                      f"{statistics.median(took[WARM_UP_APPENDS:]):>9,.0f}", flush=True)
    spark.conf.unset(FAST_LOG_LISTING)
    delta_log.clearCache()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.delta_log", description=__doc__.splitlines()[0])
    p.add_argument("--files", default="0,5000,20000,100000",
                   help="entries added to _delta_log (files and sidecars), ascending, comma list")
    p.add_argument("--appends", type=int, default=12, help="appends timed at each count")
    p.add_argument("--rows", type=int, default=500, help="rows an append")
    p.add_argument("--data", default=str(ROOT / ".local" / "bench" / "delta-log"))
    p.add_argument("--s3", action="store_true", help="the table on s3a:// in a moto server, fast listing off and on")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.files.split(",") if x.strip()]
    if counts != sorted(counts) or any(c < 0 for c in counts) or args.appends <= WARM_UP_APPENDS:
        p.error(f"--files must ascend from 0 or more, and --appends be over {WARM_UP_APPENDS}")

    from marketsignals.session import build_session
    from marketsignals.settings import load_settings

    if args.s3:
        return run_s3(build_session(load_settings("local", [f"spark.conf.spark.jars={s3a_jars()}"]).spark),
                      counts, args.appends, args.rows)
    spark = build_session(load_settings("local", []).spark)
    table = Path(args.data) / "table"
    shutil.rmtree(table, ignore_errors=True)
    rows = spark.range(0, args.rows, 1, 1).selectExpr("id", "cast(id AS string) AS text")
    rows.write.format("delta").save(str(table))
    for _ in range(5):  # the JIT's first commits, before any timing
        rows.write.format("delta").mode("append").save(str(table))
    log, made, medians = table / "_delta_log", 0, []
    own = sum(1 for _ in log.iterdir())
    print(f"{'entries in _delta_log':>21} {'append median ms':>17} {'least ms':>9}")
    for count in counts:
        pad(log, made, count)
        made = max(made, count)
        took = []
        for _ in range(args.appends):
            started = time.monotonic()
            rows.write.format("delta").mode("append").save(str(table))
            took.append((time.monotonic() - started) * 1000)
        timed = took[WARM_UP_APPENDS:]
        medians.append(statistics.median(timed))
        print(f"{count + own:>21,} {medians[-1]:>17,.0f} {min(timed):>9,.0f}", flush=True)
    if len(set(counts)) > 1:
        slope = statistics.linear_regression(counts, medians).slope
        print(f"per log entry: {slope * 1000:.1f} us an append")
    shutil.rmtree(table, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
