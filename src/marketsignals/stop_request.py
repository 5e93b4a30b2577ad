"""A stop request: a file in the streaming job's checkpoint that asks its driver to stop cleanly.

SIGTERM or Ctrl-C to the driver's Python process stops the query after its batch in flight
(stream/job.py, ``stop_query``). The platforms do not signal that process alone: YARN signals the
container's whole process group (EMR on EC2), Kubernetes the pod's first process, the JVM (EMR on EKS),
and EMR Serverless's cancel the driver too; the JVM's shutdown then stops Spark and the query at once
(within half a second here), cutting the batch in flight. So the driver also looks, every
``stream.stop_check``, for ``<stream.checkpoint>/marketsignals.stop``, and when it finds it stops as a
SIGTERM would, removes it and exits 0 (the EMR step then ends COMPLETED, the Serverless job run
SUCCESS, and YARN does not restart the driver). A driver that starts with a request waiting does not
start its query: the request was for the job before it (one restarted by its platform after a
failure, say); ``marketsignals emr`` and ``marketsignals live`` remove a request no job acted on before
they start the job. ``marketsignals stop`` and ``marketsignals emr stop`` write the file; so can anyone
who can write to the checkpoint (``aws s3 cp``, ``touch``): any content does.

Here the file is written from Python without Spark (local paths; S3 through boto3), and read by the
driver through the JVM's Hadoop file system (stream/checkpoint.py), like the rest of the checkpoint.
"""

from __future__ import annotations

import getpass
import json
import socket
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from marketsignals.local_paths import local_path

FILE = "marketsignals.stop"
S3_SCHEMES = ("s3", "s3a", "s3n")


class StopRequestError(ValueError):
    """The request cannot be written where the settings say; the message says why and what to do."""


def location(checkpoint: str) -> str:
    """Where the stop request for the query checkpointed at ``checkpoint`` goes."""
    return f"{checkpoint.rstrip('/')}/{FILE}"


def content(now: datetime | None = None) -> str:
    """What a request says: when, and who asked (the driver prints it)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    when = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    return json.dumps({"requested_at": when, "by": f"{user}@{socket.gethostname()}"})


def s3_key(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` / ``s3a://`` URI."""
    parsed = urlparse(uri)
    if parsed.scheme not in S3_SCHEMES or not parsed.netloc:
        raise StopRequestError(f"{uri} is not an S3 location (s3://bucket/key)")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_exists(s3: Any, bucket: str, key: str) -> bool:
    """Whether the object is there (a HEAD; any error but "not found" is raised)."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def write(checkpoint: str, s3: Any = None) -> str:
    """Write the stop request for the query checkpointed at ``checkpoint``; returns its location. The
    checkpoint must hold a query's ``metadata`` (Spark writes it when the query first starts): a request
    in a folder no query uses would only stop the first one started there. ``s3`` is a boto3 S3 client,
    needed for S3 checkpoints."""
    target = location(checkpoint)
    if urlparse(checkpoint).scheme in S3_SCHEMES:
        if s3 is None:
            raise StopRequestError(f"an S3 client is needed to write {target}")
        bucket, key = s3_key(target)
        metadata = s3_key(f"{checkpoint.rstrip('/')}/metadata")
        if not s3_exists(s3, *metadata):
            raise StopRequestError(_no_query(checkpoint, "s3://{}/{}".format(*metadata)))
        s3.put_object(Bucket=bucket, Key=key, Body=content().encode(), ContentType="application/json")
        return target
    root = local_path(checkpoint)  # None: not a local checkpoint
    if root is None:
        raise StopRequestError(f"the stop request is written to local paths and S3 only: put any file at {target} "
                               f"(e.g. `hdfs dfs -touchz {target}`)")
    if not (root / "metadata").is_file():
        raise StopRequestError(_no_query(checkpoint, str(root / "metadata")))
    tmp = root / f".{FILE}.tmp"
    tmp.write_text(content())
    tmp.replace(root / FILE)  # whole or not at all
    return str(root / FILE)


def remove_local(checkpoint: str) -> str | None:
    """Remove a stop request no job acted on from a local checkpoint, before a job is started there by hand
    (``marketsignals live``); returns its path if there was one. None for other file systems."""
    root = local_path(checkpoint)  # None: not a local checkpoint
    if root is None:
        return None
    try:
        (root / FILE).unlink()
    except FileNotFoundError:
        return None
    return str(root / FILE)


def _no_query(checkpoint: str, metadata: str) -> str:
    return (f"no streaming query has started with the checkpoint {checkpoint} ({metadata} is missing): check "
            f"stream.checkpoint (--profile / --set) and that the job runs")
