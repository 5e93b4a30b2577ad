"""What a live batch asks of S3 when the stream's checkpoint is on S3A, with Spark's files written through
a rename and in place.

``python -m bench.s3_checkpoint [--rate 2000] [--seconds 40] [--pairs 2]`` starts a moto S3 server on
loopback (``python -m moto.server``, its request log kept), and runs ``bench.run``'s latency scenario (d)
at ``--rate`` with ``stream.checkpoint`` on ``s3a://`` there, alternating: Spark's default manager
(``FileContextBasedCheckpointFileManager``: a temporary file, then a rename, on S3 a copy and a delete)
and the product's choice on S3A (``stream.checkpoint.writes_in_place``). Each run prints ``bench.run``'s
table (median batch, latency); at the end, for each run, the requests a batch by method, counted over
the middle half of the run's batches (a batch = one commit-log entry written). Moto runs on the same
cores, so its milliseconds are not S3's; the request counts are what carries over (bench/ROUNDS.md,
thirty-seventh round).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from bench import run as bench_run
from bench.delta_log import S3A_JARS, s3a_bucket_options, s3a_jars
from bench.env import free_port

ROOT = Path(__file__).resolve().parents[1]
RENAME_MANAGER = "org.apache.spark.sql.execution.streaming.FileContextBasedCheckpointFileManager"
# a request line of moto's web server: [time] "METHOD path HTTP/1.1" (a colour code may come first)
REQUEST = re.compile(r'\[([^\]]+)\] "(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP')


def s3a_overrides(bucket: str, endpoint: str) -> list[str]:
    """``--set`` values that put the stream's checkpoint in ``bucket`` at ``endpoint`` through S3A."""
    option = f"spark.conf.spark.hadoop.fs.s3a.bucket.{bucket}"
    return [f"stream.checkpoint=s3a://{bucket}/stream", f"spark.conf.spark.jars={s3a_jars()}",
            *(f"{option}.{key}={value}" for key, value in s3a_bucket_options(endpoint).items())]


def requests_a_batch(log_lines: list[str], bucket: str) -> tuple[int, dict[str, float]]:
    """From moto's request log: the batches in the middle half of the run (by the second each commit-log
    entry was written) and the requests a batch in those seconds, by method (``GET list`` apart)."""
    requests = [m.groups() for line in log_lines if (m := REQUEST.search(line))]
    commit = re.compile(rf"^/{re.escape(bucket)}/stream/commits/\d+$")
    seconds = [at for at, method, path in requests if method == "PUT" and commit.match(path)]
    middle = set(seconds[len(seconds) // 4: 3 * len(seconds) // 4])
    batches = sum(1 for at in seconds if at in middle)
    if not batches:
        return 0, {}
    counts = collections.Counter(method + (" list" if "list-type=" in path else "")
                                 for at, method, path in requests if at in middle and f"/{bucket}" in path)
    return batches, {kind: round(n / batches, 1) for kind, n in sorted(counts.items())}


def one_run(mode: str, args, work: Path) -> dict:
    port, bucket = free_port(), f"bench-ckpt-{uuid.uuid4().hex[:8]}"
    log = work / f"moto-{mode}-{bucket}.log"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=log.open("w"))
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket=bucket)
        sets = s3a_overrides(bucket, endpoint)
        if mode == "rename":
            sets.append(f"spark.conf.spark.sql.streaming.checkpointFileManagerClass={RENAME_MANAGER}")
        argv = ["--skip", "a,b,c,e", "--rates", str(args.rate), "--rate-seconds", str(args.seconds),
                "--ticks", "1000", "--out", str(work / "results"), *[x for s in sets for x in ("--set", s)]]
        if args.bootstrap:
            argv += ["--bootstrap", args.bootstrap]
        started = time.monotonic()
        bench_run.main(argv)
        took = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    batches, per_batch = requests_a_batch(log.read_text(errors="replace").splitlines(), bucket)
    return {"mode": mode, "batches": batches, "per_batch": per_batch, "s": round(took)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.s3_checkpoint", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=2000, help="ticks/s the feed sends during (d)")
    p.add_argument("--seconds", type=float, default=40.0, help="how long (d) feeds, each run")
    p.add_argument("--pairs", type=int, default=2, help="rename / in place runs, alternating")
    p.add_argument("--bootstrap", help="use this broker instead of starting one per run")
    p.add_argument("--work", default=str(ROOT / ".local" / "bench" / "s3-checkpoint"))
    args = p.parse_args(argv)
    if args.pairs < 1 or args.seconds <= 0 or args.rate <= 0:
        p.error("--pairs, --seconds and --rate must be positive")
    if not any(S3A_JARS.glob("hadoop-aws-*.jar")):
        p.error(f"no hadoop-aws jar in {S3A_JARS}: run `make jars`")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    outcomes = [one_run(mode, args, work) for _ in range(args.pairs) for mode in ("rename", "in place")]
    print(f"\n{'checkpoint files':>16} {'batches':>8}  requests a batch (over the middle half of the run)")
    for o in outcomes:
        total = sum(o["per_batch"].values())
        kinds = ", ".join(f"{kind} {n}" for kind, n in o["per_batch"].items())
        print(f"{o['mode']:>16} {o['batches']:>8}  {total:.1f}: {kinds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
