"""What the job keeps in its checkpoint beside Spark's own files.

The stateful key is a bucket of symbols (``stream.state_buckets``), so the bucket count is fixed for
the life of a checkpoint: with another count every symbol would hash to another bucket and miss its
state. A new checkpoint records the count it was started with in ``<checkpoint>/marketsignals.json``;
a restart on that checkpoint keeps the recorded count, whatever the profile now says, and logs that
it did -- as Spark itself does with ``spark.sql.shuffle.partitions``, which its offset log fixes per
checkpoint. A checkpoint written before this file existed has no record: the job then uses the
setting, and the state handler stops the query with a one-line error if the state disagrees.

The checkpoint may be on any Hadoop file system (local, HDFS, S3), so the file is read and written
through the JVM's Hadoop ``FileSystem``, as Spark writes the rest of the checkpoint.
"""

from __future__ import annotations

import json
import logging

from pyspark.sql import SparkSession

_log = logging.getLogger(__name__)

RECORD = "marketsignals.json"


def state_buckets(spark: SparkSession, checkpoint: str, configured: int) -> int:
    """The bucket count the query must use with ``checkpoint``: the one recorded there, else
    ``configured`` (recorded now if the checkpoint is new)."""
    fs, root = file_system(spark, checkpoint)
    record = _path(spark, root, RECORD)
    if fs.exists(record):
        recorded = _recorded_buckets(_read(fs, record), checkpoint)
        if recorded != configured:
            _log.warning("the checkpoint %s keeps its state in %d buckets, written so when it was created: "
                         "stream.state_buckets=%d applies to new checkpoints only", checkpoint, recorded, configured)
        return recorded
    if fs.exists(_path(spark, root, "offsets")):
        return configured  # written by an earlier version: the state handler checks the count it loads
    fs.mkdirs(root)
    _write(fs, record, _path(spark, root, f".{RECORD}.tmp"), {"state_buckets": configured})
    return configured


def read_text(spark: SparkSession, checkpoint: str, name: str) -> str:
    """The text of the file ``name`` in the checkpoint (Spark's own, such as ``metadata``, or ours)."""
    fs, root = file_system(spark, checkpoint)
    return _read(fs, _path(spark, root, name))


def _read(fs, path) -> str:
    stream = fs.open(path)
    try:
        return bytes(stream.readAllBytes()).decode("utf-8")
    finally:
        stream.close()


def _recorded_buckets(text: str, checkpoint: str) -> int:
    try:
        buckets = json.loads(text)["state_buckets"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointRecordError(f"{checkpoint}/{RECORD} is not a marketsignals checkpoint record ({exc}): "
                                    f"restore it, or start from a new checkpoint (stream.checkpoint)") from exc
    if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 1:
        raise CheckpointRecordError(f"{checkpoint}/{RECORD} holds state_buckets={buckets!r}, not a positive "
                                    f"integer: restore it, or start from a new checkpoint (stream.checkpoint)")
    return buckets


def _write(fs, path, tmp, record: dict) -> None:
    """Written whole or not at all: to a temporary name, then renamed (on S3 the put itself is atomic)."""
    stream = fs.create(tmp, True)
    try:
        stream.write(bytearray(json.dumps(record).encode("utf-8")))
    finally:
        stream.close()
    if not fs.rename(tmp, path):
        fs.delete(tmp, False)
        if not fs.exists(path):
            raise OSError(f"could not write {path.toString()}")


def _path(spark: SparkSession, directory, name: str):
    return spark._jvm.org.apache.hadoop.fs.Path(directory, name)


def file_system(spark: SparkSession, path: str):
    """The JVM's Hadoop ``FileSystem`` of ``path`` (local, HDFS, S3) and the path as a Hadoop ``Path``."""
    root = spark._jvm.org.apache.hadoop.fs.Path(path)
    return root.getFileSystem(spark._jsc.hadoopConfiguration()), root


class CheckpointRecordError(ValueError):
    """The checkpoint's record of its bucket count is unreadable; the message says what to do."""
