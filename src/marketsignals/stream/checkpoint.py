"""What the job keeps in its checkpoint beside Spark's own files.

The stateful key is a bucket of symbols (``stream.state_buckets``), so the bucket count is fixed for
the life of a checkpoint: with another count every symbol would hash to another bucket and miss its
state. A new checkpoint records the count it was started with in ``<checkpoint>/marketsignals.json``;
a restart on that checkpoint keeps the recorded count, whatever the profile now says, and logs that
it did -- as Spark itself does with ``spark.sql.shuffle.partitions``, which its offset log fixes per
checkpoint. A checkpoint written before this file existed has no record: the job then uses the
setting, and the state handler stops the query with a one-line error if the state disagrees.

The record also keeps the shuffle partition count the buckets' keys were made for (``state_key_partitions``:
:func:`marketsignals.stream.state.bucket_keys` spreads the buckets evenly over Spark's partitions). The keys
name the state, so they are fixed with it. A record without that field (written before 2026-12-04) keys
each bucket with its own number, as then.

The checkpoint may be on any Hadoop file system (local, HDFS, S3), so the file is read and written
through the JVM's Hadoop ``FileSystem``, as Spark writes the rest of the checkpoint.
"""

from __future__ import annotations

import json
import logging
from typing import NamedTuple

from py4j.protocol import Py4JJavaError
from pyspark.sql import SparkSession

from marketsignals import stop_request as stop_requests
from marketsignals.stream import error_line

_log = logging.getLogger(__name__)

RECORD = "marketsignals.json"


class StateLayout(NamedTuple):
    """How a checkpoint's state is keyed: the bucket count, and the shuffle partition count its buckets'
    keys were made for (None: each bucket keyed with its own number, as before 2026-12-04)."""

    buckets: int
    key_partitions: int | None


def state_layout(spark: SparkSession, checkpoint: str, configured: int, partitions: int) -> StateLayout:
    """The state layout the query must use with ``checkpoint``: the one recorded there, else ``configured``
    buckets keyed for ``partitions`` shuffle partitions (recorded now if the checkpoint is new)."""
    fs, root = file_system(spark, checkpoint)
    record = _path(spark, root, RECORD)
    if fs.exists(record):
        recorded = _recorded_layout(_read(fs, record), checkpoint)
        if recorded.buckets != configured:
            _log.warning("the checkpoint %s keeps its state in %d buckets, written so when it was created: "
                         "stream.state_buckets=%d applies to new checkpoints only", checkpoint, recorded.buckets,
                         configured)
        return recorded
    if fs.exists(_path(spark, root, "offsets")):
        # written by an earlier version: the state handler checks the count it loads
        return StateLayout(configured, None)
    fs.mkdirs(root)
    _write(fs, record, _path(spark, root, f".{RECORD}.tmp"),
           {"state_buckets": configured, "state_key_partitions": partitions})
    return StateLayout(configured, partitions)


def last_batch(spark: SparkSession, checkpoint: str, log: str = "offsets") -> int | None:
    """The newest batch in the checkpoint's offset log (Spark's ``offsets/<batch id>``, written when a
    batch is planned): the query resumes after it, or reruns it if it has no commit. None where no
    query has planned a batch there (no checkpoint yet, or an empty one). ``log="commits"``: the newest
    in its commit log (``commits/<batch id>``, written when a batch is done)."""
    fs, root = file_system(spark, checkpoint)
    folder = _path(spark, root, log)
    if not fs.exists(folder):
        return None
    batches = [int(name) for status in fs.listStatus(folder) if (name := status.getPath().getName()).isdigit()]
    return max(batches, default=None)


def source_offsets(spark: SparkSession, checkpoint: str, batch: int) -> dict[str, dict[str, int]]:
    """Where ``batch`` ends in the Kafka topics, from its offset log entry (``offsets/<batch>``: a version
    line, the batch's metadata, then a line per source; the stream's one source is Kafka's, whose
    offsets are ``{"topic": {"partition": offset}}``)."""
    lines = read_text(spark, checkpoint, f"offsets/{batch}").splitlines()
    if len(lines) < 3 or not lines[2].startswith("{"):
        raise CheckpointRecordError(f"{checkpoint}/offsets/{batch} holds no Kafka offsets")
    return json.loads(lines[2])


def stop_request(spark: SparkSession, checkpoint: str) -> str | None:
    """The text of the stop request waiting in the checkpoint (marketsignals/stop_request.py), or None.
    Read without asking first whether it is there: on S3A a missing one costs a HEAD (``exists`` adds a
    LIST, for a folder of that name)."""
    fs, root = file_system(spark, checkpoint)
    try:
        return _read(fs, _path(spark, root, stop_requests.FILE)).strip()
    except Py4JJavaError as exc:
        if spark._jvm.java.lang.Class.forName("java.io.FileNotFoundException").isInstance(exc.java_exception):
            return None
        raise


def remove_stop_request(spark: SparkSession, checkpoint: str) -> None:
    """Remove the checkpoint's stop request, once it has been acted on."""
    fs, root = file_system(spark, checkpoint)
    fs.delete(_path(spark, root, stop_requests.FILE), False)


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


def _recorded_layout(text: str, checkpoint: str) -> StateLayout:
    try:
        record = json.loads(text)
        buckets, partitions = record["state_buckets"], record.get("state_key_partitions")
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointRecordError(f"{checkpoint}/{RECORD} is not a marketsignals checkpoint record ({exc}): "
                                    f"restore it, or start from a new checkpoint (stream.checkpoint)") from exc
    for name, value in (("state_buckets", buckets), ("state_key_partitions", partitions)):
        if not (value is None and name == "state_key_partitions") and not _positive_int(value):
            raise CheckpointRecordError(f"{checkpoint}/{RECORD} holds {name}={value!r}, not a positive integer: "
                                        f"restore it, or start from a new checkpoint (stream.checkpoint)")
    return StateLayout(buckets, partitions)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


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
    """The checkpoint's record of its state layout is unreadable; the message says what to do."""


MANAGER_CLASS = "spark.sql.streaming.checkpointFileManagerClass"
ABORTABLE_MANAGER = "org.apache.spark.internal.io.cloud.AbortableStreamBasedCheckpointFileManager"
ABORTABLE_STREAM = "fs.capability.outputstream.abortable"  # Hadoop's CommonPathCapabilities.ABORTABLE_STREAM


def writes_in_place(spark: SparkSession, checkpoint: str) -> bool:
    """Have Spark write the stream's checkpoint files in place where the checkpoint's file system can
    abort a file being written (S3A: ``s3://`` on EMR from release 7.10, and ``s3a://``).

    Spark writes each checkpoint file (the offset and commit logs' entry, every state partition's
    changelog, each batch) atomically: by default to a temporary name, then renamed. On S3 a rename
    is a copy and a delete, with existence probes around them, in the batch's path: 81-92 requests a
    batch here against a moto S3, ~33 with Spark's ``AbortableStreamBasedCheckpointFileManager``
    (its hadoop-cloud module, shipped with the job), which writes the file where it belongs and aborts
    the upload if the write fails, so a reader never sees part of one (bench/ROUNDS.md, thirty-seventh
    round). That manager refuses a file system without Hadoop's abortable-stream capability, so it is
    set, for the session, only where the checkpoint's has it, and never over a manager the session
    or its Hadoop configuration names. The warm-up's checkpoints sit beside the stream's, on the same
    file system. Call it before the query starts. Returns whether it set it."""
    hadoop_conf = spark._jsparkSession.sessionState().newHadoopConf()
    if spark.conf.get(MANAGER_CLASS, None) or hadoop_conf.get(MANAGER_CLASS) is not None:
        return False  # the user's choice
    jvm = spark._jvm
    try:
        path = jvm.org.apache.hadoop.fs.Path(checkpoint)
        if not path.getFileSystem(hadoop_conf).hasPathCapability(path, ABORTABLE_STREAM):
            return False  # a local path, HDFS, EMRFS: renames as before
        manager = jvm.org.apache.spark.internal.io.cloud.AbortableStreamBasedCheckpointFileManager
        manager(path, hadoop_conf)  # the class there (hadoop-cloud, `make jars`), and it takes the path
    except Exception as exc:
        _log.warning("Spark's checkpoint files go through a rename on %s (%s)", checkpoint, error_line(exc, 300))
        return False
    spark.conf.set(MANAGER_CLASS, ABORTABLE_MANAGER)
    return True
