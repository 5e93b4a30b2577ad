"""The foreachBatch sink (SPEC §4): signals to Kafka and to the exactly-once audit table, rejects to
the dead-letter topic, and the batch's counts for the metrics.

Exactly-once for the audit table: every append's Delta commit names the streaming query (its id, kept
in the checkpoint, so stable across restarts and new if the checkpoint is deleted) and the batch id,
in the commit's ``userMetadata``. Spark replays a batch only after a restart, and within one run batch
ids only grow, so the sink checks once per run, at its first audit write: it skips a batch the table
already holds, by the newest commit of this query in the table's history, and by Delta's own
``txnAppId``/``txnVersion``, which that write also passes (tables written by earlier versions hold
only those). Delta checks ``txnVersion`` by rebuilding the table's state, three Spark jobs and ~0.4 s on
every batch (bench/ROUNDS.md): once per run is enough. Kafka delivery is at-least-once (Spark 4.0
has no transactional Kafka sink); consumers deduplicate on signal_id.

The audit table's Delta checkpoint (its log's state in one Parquet file, so readers do not replay
every JSON commit) is written by :class:`AuditMaintenance` on a thread of its own, not by Delta's
commit hook in the batch's path, and so is the compaction of its small files (see there).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyspark import InheritableThread
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from marketsignals.kernel import KIND, KIND_COUNT, KIND_REJECT, KIND_SIGNAL, PROCESSED
from marketsignals.schema import (
    DEAD_LETTER_SCHEMA,
    EMITTED_AT,
    EVENT_TIME,
    REASON,
    SIGNAL_COLUMNS,
    SYMBOL,
    TS_MS,
    Reason,
)
from marketsignals.settings import Settings
from marketsignals.stream import error_line
from marketsignals.stream.checkpoint import read_text
from marketsignals.stream.source import sink_options

_log = logging.getLogger(__name__)

EVENT_DATE = "event_date"
REJECTED_AT = "rejected_at"
COUNTS_METRIC = "marketsignals_batch_counts"  # the name of the observed metrics (Dataset.observe)
ROWS_PER_WRITE_TASK = 100_000  # see write_tasks


class RecordColumns:
    """The sink's column expressions, built once per query and reused by every batch.

    PySpark 4.0 records the Python call site of every ``functions``/``Column`` call it makes (five
    Py4J round trips around each: the active session, a class lookup, a conf read, set and clear),
    so building the counts, records and Kafka rows anew each batch was most of the driver's ~2,300
    Py4J calls and ~0.35 s of its Python CPU per batch (bench/ROUNDS.md, ninth round). Column
    expressions belong to no DataFrame or batch: only the processing-time literal is new per batch.
    """

    def __init__(self) -> None:
        kind = F.col(KIND)
        self.signal = kind == KIND_SIGNAL
        self.reject = kind == KIND_REJECT
        self.record = self.signal | self.reject  # rows the sinks write (not the count rows)
        self._empty_text = F.substring(kind, 1, 0)
        event_time = F.timestamp_millis(F.col(TS_MS))
        self._signal_fields = {name: event_time.alias(EVENT_TIME) if name == EVENT_TIME else F.col(name)
                               for name in SIGNAL_COLUMNS if name != EMITTED_AT}
        self._dead_letter_fields = {f.name: F.col(f.name) for f in DEAD_LETTER_SCHEMA.fields if f.name != REJECTED_AT}
        self.event_date = F.to_date(event_time).alias(EVENT_DATE)
        self.key = F.col(SYMBOL).cast("string").alias("key")
        self.counts = [
            F.coalesce(F.sum(F.when(kind == KIND_COUNT, F.col(PROCESSED))), F.lit(0)).alias("processed"),
            F.count(F.when(self.signal, 1)).alias("signals"),
            *[F.count(F.when(self.reject & (F.col(REASON) == r), 1)).alias(r) for r in Reason.ALL],
        ]

    def processing_time(self, at: datetime) -> Column:
        """``at`` as a timestamp Column whose generated code is the same for every value.

        Spark inlines timestamp literals -- ``current_timestamp()`` too, once the optimizer fixes it --
        into the Java code it generates, so a new value every micro-batch means a new Janino compile
        and new classes for the JIT to compile again, every batch (measured: most of the JVM's CPU on
        small batches). A string literal is passed by reference instead, and the concatenation with an
        empty piece of a column keeps the optimizer from folding the cast back into a timestamp literal.
        """
        text = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return F.concat(F.lit(text), self._empty_text).cast("timestamp")

    def signal_fields(self, emitted_at: Column) -> list[Column]:
        """The SPEC §4 signal record's columns, in order, from the kernel's output columns."""
        return [emitted_at.alias(EMITTED_AT) if name == EMITTED_AT else self._signal_fields[name]
                for name in SIGNAL_COLUMNS]

    def dead_letter_fields(self, rejected_at: Column) -> list[Column]:
        """The SPEC §1 dead-letter record's columns, in order, from the kernel's reject rows."""
        return [rejected_at.alias(REJECTED_AT) if f.name == REJECTED_AT else self._dead_letter_fields[f.name]
                for f in DEAD_LETTER_SCHEMA.fields]

    def signals(self, out: DataFrame, emitted_at: Column, *extra: Column) -> DataFrame:
        """The signal records of the kernel's output rows (then the ``extra`` columns)."""
        return out.filter(self.signal).select(*self.signal_fields(emitted_at), *extra)

    def batch_counts(self, out: DataFrame) -> dict:
        """processed / signals / rejects by reason of one batch, as one aggregate row (a Spark job)."""
        row = out.agg(*self.counts).first()
        return _counts(row.asDict() if row else {})

    def observed(self, out: DataFrame) -> DataFrame:
        """``out`` with its :meth:`batch_counts` observed (``Dataset.observe``) by whatever job runs
        it -- the one that materialises the batch -- rather than computed by a job of their own: that
        job, its planning and its result cost 35-130 ms a micro-batch (bench/ROUNDS.md, eleventh
        round). Read them with :meth:`observed_counts` once that job returned."""
        return out.observe(COUNTS_METRIC, *self.counts)

    def observed_counts(self, observed: DataFrame, rows: DataFrame) -> dict:
        """The counts of an :meth:`observed` batch, from its query's own execution, once a job ran it
        (``QueryExecution.observedMetrics``; ``Observation`` would wait for Spark's listener bus,
        behind the stream's own events); ``rows``, the batch materialised, are counted with a job
        if that internal API ever fails."""
        try:
            metrics = observed._jdf.queryExecution().observedMetrics().get(COUNTS_METRIC).get().json()
            return _counts(json.loads(metrics))
        except Exception as exc:  # an internal API: count with a job of their own rather than fail
            _log.warning("the batch's observed counts are not readable (%s); counting them with a job", exc)
            return self.batch_counts(rows)

    def kafka_records(self, out: DataFrame, now: Column, signals_topic: str, dead_letter_topic: str) -> DataFrame:
        """Signals and dead letters as Kafka rows in one pass over the kernel's output: key = symbol,
        value = the record as JSON (a dead letter's null fields written as null, not left out), and
        each row's topic (the Kafka sink takes it per row)."""
        value = (F.when(self.signal, F.to_json(F.struct(*self.signal_fields(now))))
                 .otherwise(F.to_json(F.struct(*self.dead_letter_fields(now)), {"ignoreNullFields": "false"})))
        topic = F.when(self.signal, F.lit(signals_topic)).otherwise(F.lit(dead_letter_topic))
        return out.filter(self.record).select(self.key, value.alias("value"), topic.alias("topic"))


def write_tasks(rows: int) -> int:
    """How many tasks write ``rows`` rows to a sink: one for the small batches of a live stream (a few
    hundred rows do not pay for a task per shuffle partition, and the audit table gets one file per
    event date per batch), and one more per ``ROWS_PER_WRITE_TASK`` rows, so that a catch-up batch
    (2,000,000 ticks in the EMR profile, ~540,000 signals) is not written by one task while the
    cluster waits: one task writes ~20,000 signals a second to Kafka here (bench/ROUNDS.md)."""
    return max(1, -(-rows // ROWS_PER_WRITE_TASK))


def _counts(values: dict) -> dict:
    """The sink's counts dict from the aggregate's values by column name (None: no rows)."""
    rejects = {r: int(values[r]) for r in Reason.ALL if values.get(r)}
    return {"processed": int(values.get("processed") or 0), "signals": int(values.get("signals") or 0),
            "rejected": sum(rejects.values()), "rejects": rejects}


def signal_records(out: DataFrame, emitted_at: Column | None = None) -> DataFrame:
    """SPEC §4 signal records from the kernel's output rows (emitted_at: now, unless given)."""
    return RecordColumns().signals(out, F.current_timestamp() if emitted_at is None else emitted_at)


@dataclass
class SignalSink:
    """The foreachBatch function. The Kafka write and the audit table's write run at once, as two
    Spark jobs (on two cores that is the batch's Kafka time saved). Neither order matters for the
    guarantees: the batch counts as done only when Spark's commit log records it, after this
    returns; a failure or crash before that replays the batch -- the audit table skips a batch it
    already holds (see the module's docstring) and Kafka may see its records twice."""

    settings: Settings
    on_counts: Callable[[int, dict], None] = lambda batch_id, counts: None
    to_kafka: bool = True  # False: the Kafka records are computed and dropped (stream/warm_up.py)
    _app_id: str | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _audited_through: int | None = field(default=None, init=False)  # this query's newest batch in the table
    _audit_checked: bool = field(default=False, init=False)  # Delta's txnVersion check done this run
    _record_columns: RecordColumns | None = field(default=None, init=False)
    maintenance: AuditMaintenance = field(init=False)
    gate: StopGate = field(default_factory=lambda: StopGate(), init=False)

    def __post_init__(self) -> None:
        stream = self.settings.stream
        self.maintenance = AuditMaintenance(stream.audit_table, stream.audit_checkpoint_interval,
                                            stream.audit_compact_interval, stream.audit_checkpoint_writer)

    def close(self, timeout: float | None = None) -> bool:
        """Wait for the audit table's compaction or checkpoint in flight, if any (call it once the query
        stopped); False if it was still running after ``timeout`` seconds."""
        return self.maintenance.wait(timeout)

    def __call__(self, out: DataFrame, batch_id: int) -> None:
        run_stoppable(self.gate, out, batch_id, self._write)

    def _write(self, out: DataFrame, batch_id: int) -> None:
        kafka = self.settings.kafka
        phase_ms: dict[str, int] = {}
        clock = time.monotonic()

        def lap(name: str) -> None:  # where the batch's time goes, in the metrics line (sink_ms)
            nonlocal clock
            now_s = time.monotonic()
            phase_ms[name] = round((now_s - clock) * 1000)
            clock = now_s

        started = clock
        columns = self._columns()
        observed = columns.observed(out)
        out = materialised(observed)
        try:
            counts = columns.observed_counts(observed, out)
            lap("compute")  # source, validation, the stateful kernel, and the counts
            # one processing time for the batch: Kafka and the audit table carry the same emitted_at
            now = columns.processing_time(datetime.now(UTC))
            writes: dict[str, Callable[[], None]] = {}
            if counts["signals"] or counts["rejected"]:
                # signals and dead letters in one Kafka write
                records = columns.kafka_records(out, now, kafka.signals_topic, kafka.dead_letter_topic)
                tasks = write_tasks(counts["signals"] + counts["rejected"])
                writer = records.coalesce(tasks).write
                writes["kafka"] = (writer.format("kafka").options(**sink_options(kafka)).save if self.to_kafka
                                   else writer.format("noop").mode("overwrite").save)
            if counts["signals"] and not self.audited(out, batch_id):
                # one file per event date per batch (not one per shuffle partition), unless it is large
                app_id = self.app_id(out)
                audit = (columns.signals(out, now, columns.event_date).coalesce(write_tasks(counts["signals"]))
                         .write.format("delta").mode("append").partitionBy(EVENT_DATE)
                         .options(**self.settings.stream.audit_table_properties)  # used when it creates the table
                         .option("userMetadata", audit_commit_tag(app_id, batch_id)))
                if not self._audit_checked:
                    audit = audit.option("txnAppId", app_id).option("txnVersion", batch_id)
                    self._audit_checked = True
                writes["audit"] = functools.partial(audit.save, self.settings.stream.audit_table)
            lap("plan")  # the batch's write DataFrames and writers, built on the driver
            phase_ms.update(run_together(writes))
            lap("write")
            if "audit" in writes:
                self.maintenance.committed(out.sparkSession)
            # the sink's whole call: Spark's addBatch less this is Spark's own part of it (bench/ROUNDS.md,
            # forty-fifth round: the micro-batch's RDDs and generated code, and its plan described again)
            phase_ms["total"] = round((time.monotonic() - started) * 1000)
            self.on_counts(batch_id, {**counts, "sink_ms": phase_ms, **self.maintenance.finished()})
        finally:
            release(out)

    def _columns(self) -> RecordColumns:
        if self._record_columns is None:  # at the first batch: Columns need the running SparkContext
            self._record_columns = RecordColumns()
        return self._record_columns

    def audited(self, out: DataFrame, batch_id: int) -> bool:
        """Whether the audit table already holds this batch: looked up at the run's first audit write
        (a replay comes first after a restart); later batches of the run are new by construction."""
        if self._audited_through is None:
            self._audited_through = last_audited_batch(out.sparkSession, self.settings.stream.audit_table,
                                                       self.app_id(out))
        return batch_id <= self._audited_through

    def app_id(self, out: DataFrame) -> str:
        """The streaming query's id (persisted in the checkpoint's metadata file)."""
        with self._lock:
            if self._app_id is None:
                self._app_id = _query_id(out, self.settings.stream.checkpoint)
            return self._app_id


AUDIT_MAINTENANCE_JOB_GROUP = "marketsignals-audit-maintenance"


def block_due(version: int, every: int, last_block: int) -> bool:
    """Whether upkeep done once per ``every`` commits (the audit table's compaction, and its checkpoint,
    see :func:`checkpoint_due`) is due after committing ``version``: ``version // every`` passed
    ``last_block``, the block of the last one started, so a version skipped while the last one ran is
    caught up at the next commit (0: never; a new table, version 0, has nothing to do)."""
    return every > 0 and version > 0 and version // every > last_block


def checkpoint_due(version: int, every: int, table_every: int, last_block: int) -> bool:
    """Whether the sink checkpoints the audit table after committing ``version``: once per ``every``
    commits (:func:`block_due`), never at a version Delta's commit hook checkpoints itself
    (``table_every``, the table's ``delta.checkpointInterval``), and not at all when that hook already
    checkpoints at least as often."""
    return block_due(version, every, last_block) and table_every > every and version % table_every != 0


class AuditMaintenance:
    """The audit table's upkeep, on a thread of its own: its Delta checkpoints, its log's expired files
    and the compaction of its small files.

    **Checkpoints.** Delta 4.0 writes a table's checkpoint in the commit that reaches its
    ``delta.checkpointInterval`` (a post-commit hook; it has no asynchronous one): state reconstruction
    and a Parquet write, 1.6-4.2 s of that batch's audit write in soaks here, while the ticks behind it
    wait. Off the batch's path a checkpoint takes 2-3.6 s of a thread and slows the few batches beside it
    by 0.1-0.6 s: in ten-minute soaks the slowest batch after the first two went from 2.1-2.7 s to
    1.3-1.4 s (bench/ROUNDS.md, twentieth round). The audit table is created with a
    ``delta.checkpointInterval`` Delta reaches only once in a million commits (settings:
    ``AUDIT_TABLE_PROPERTIES``), and this writes one every ``stream.audit_checkpoint_interval``
    commits from a daemon thread, while the next batches run: Delta writes a checkpoint of a committed
    version while later commits land, as its readers expect. A table whose own interval is at most that
    (one created before, or configured so) keeps Delta's hook and gets none from here; 0 turns this off.

    Who writes it (``stream.audit_checkpoint_writer``): ``kernel``, Delta Kernel's ``Table.checkpoint``
    (the same Delta release's, from ``make jars``), reads the log and writes the Parquet file in this
    thread, in the driver, with no Spark job; ``spark``, Delta Lake's ``DeltaLog.checkpoint``, rebuilds
    the state in five to seven Spark jobs whose tasks take the batches' cores. The same file either way
    (the same actions: files, tombstones within the table's retention, the ``txnAppId`` versions the
    sink's exactly-once check reads); a 100-commit table took Delta Kernel ~0.15 s, Delta Lake 0.6-2 s
    of an idle session and 4.5-6 s beside a busy stream (bench/ROUNDS.md, forty-third round). Where
    Delta Kernel is not on the classpath, or fails on the table (a table feature it does not write,
    say), the run goes on with ``spark`` and logs why, once.

    **The log's expired files.** After each of its checkpoints this removes the log's files older than
    the table's ``delta.logRetentionDuration`` (an hour for a table the sink created) to the minute, not
    to the day as Delta does: every commit lists them all (:meth:`_clean_log`).

    **Compaction.** Each batch with signals adds one file per event date (65-125 KB at 2,000 ticks/s):
    on a 1 s trigger 86,400 files a day, and every reader of the table opens them all (a query for one
    symbol over 40,000 such files took 3 s here, 0.2 s once compacted; bench/ROUNDS.md, twenty-first
    round). Every ``stream.audit_compact_interval`` commits this runs Delta's OPTIMIZE (bin-packing) on
    the table. Files of at least ``spark.databricks.delta.optimize.minFileSize`` (64 MB in this job's
    session, 1 GB by Delta's default) are left as they are, so a compacted file is rewritten only until
    it is that large. It writes one output file at a time (``spark.databricks.delta.optimize.maxThreads``
    1 in this job's session), a task each: Delta's default of up to 15 at once held both cores here for
    ~20 s while a batch waited (bench/ROUNDS.md, fortieth round). OPTIMIZE changes no data (its files
    are ``dataChange=false``) and, under Delta's snapshot isolation for it, never conflicts with the
    sink's blind appends. The files it replaces stay on storage until a ``VACUUM``, whose retention is
    the table owner's choice. 0 turns this off.

    Neither is part of the guarantees: one that fails (Delta logs why) or is cut by the job's end
    leaves the table as readable as before, and the next one comes ``every`` commits later. When both
    are due, the compaction goes first, so the checkpoint holds its result. They run in their own Spark
    job group, so stopping the query does not cancel them.
    """

    def __init__(self, table: str, every: int, compact_every: int = 0, writer: str = "kernel") -> None:
        self.table = table
        self.every = every
        self.compact_every = compact_every
        self.writer = writer  # "kernel" until Delta Kernel is missing or fails, then "spark" for the run
        self._thread: threading.Thread | None = None
        self._last_block: int | None = None  # version // every of the last checkpoint started this run
        self._last_compact_block: int | None = None  # version // compact_every of the last compaction
        self._finished: dict[str, dict] = {}  # the last outcomes, for the next metrics line
        self._lock = threading.Lock()

    def committed(self, spark: SparkSession) -> None:
        """After a sink's commit to the table: start what is due, unless the last is still running."""
        if (self.every <= 0 and self.compact_every <= 0) or (self._thread is not None and self._thread.is_alive()):
            return
        try:
            delta_log = spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, self.table)
            snapshot = delta_log.unsafeVolatileSnapshot()  # the writer's own (cached) log: no listing
            version = snapshot.version()
        except Exception as exc:  # an internal API: the table stays readable, Delta's hook stays
            _log.warning("the audit table's version is not readable (%s): this run neither checkpoints nor compacts "
                         "it (to let Delta's commits write its checkpoints, set its delta.checkpointInterval with "
                         "ALTER TABLE ... SET TBLPROPERTIES and stream.audit_checkpoint_interval=0)", exc)
            self.every = self.compact_every = 0
            return
        compact = self._compaction_due(version)
        checkpoint = self._checkpoint_due(delta_log, snapshot, version)
        if compact:
            self._last_compact_block = version // self.compact_every
        if checkpoint:
            self._last_block = version // self.every
        if compact or checkpoint:
            self._thread = threading.Thread(target=self._maintain, name="marketsignals-audit-maintenance", daemon=True,
                                            args=(spark, delta_log, version, compact, checkpoint))
            self._thread.start()

    def _compaction_due(self, version: int) -> bool:
        if self.compact_every <= 0:
            return False
        if self._last_compact_block is None:  # the run's first commit: the next one at the next block
            self._last_compact_block = version // self.compact_every
        return block_due(version, self.compact_every, self._last_compact_block)

    def _checkpoint_due(self, delta_log, snapshot, version: int) -> bool:
        if self.every <= 0:
            return False
        if self._last_block is None:  # the run's first commit: the next checkpoint at the next block
            self._last_block = version // self.every
        if not block_due(version, self.every, self._last_block):
            return False  # most commits: the table's own interval is not read (two Py4J calls a batch fewer)
        try:
            table_every = delta_log.checkpointInterval(snapshot.metadata())
        except Exception as exc:
            _log.warning("the audit table's checkpoint interval is not readable (%s): this run writes none of its "
                         "checkpoints", exc)
            self.every = 0
            return False
        return checkpoint_due(version, self.every, table_every, self._last_block)

    def _maintain(self, spark: SparkSession, delta_log, version: int, compact: bool, checkpoint: bool) -> None:
        spark.sparkContext.setJobGroup(AUDIT_MAINTENANCE_JOB_GROUP, "the audit table's compaction and checkpoint")
        if compact:
            self._report("audit_compaction", version, lambda outcome: self._compact(spark, outcome))
        if checkpoint:
            done = self._report("audit_checkpoint", version,
                                lambda outcome: self._checkpoint(spark, delta_log, version, outcome))
            if "error" not in done:
                self._report("audit_log_cleanup", version, lambda outcome: self._clean_log(spark, delta_log, outcome))

    def _report(self, key: str, version: int, work: Callable[[dict], None]) -> dict:
        started = time.monotonic()
        outcome: dict = {"version": version}
        try:
            work(outcome)
        except Exception as exc:  # py4j or the JVM going away: report it, never fail the stream
            outcome["error"] = error_line(exc, 300)
        if "error" in outcome:
            _log.warning("the audit table's %s after version %d failed: %s", key.removeprefix("audit_"), version,
                         outcome["error"])
        outcome["ms"] = round((time.monotonic() - started) * 1000)
        with self._lock:
            self._finished[key] = outcome
        return outcome

    def _compact(self, spark: SparkSession, outcome: dict) -> None:
        from delta.tables import DeltaTable

        metrics = DeltaTable.forPath(spark, self.table).optimize().executeCompaction().select("metrics").first()[0]
        outcome["files_removed"] = int(metrics["numFilesRemoved"])
        outcome["files_added"] = int(metrics["numFilesAdded"])

    def _checkpoint(self, spark: SparkSession, delta_log, version: int, outcome: dict) -> None:
        if self.writer == "kernel":
            newest = delta_log.unsafeVolatileSnapshot().version()  # as Delta Lake's: with a compaction just done
            try:
                kernel_checkpoint(spark, self.table, newest)
            except Exception as exc:  # not on the classpath, or a table it does not write: Delta Lake's
                if "CheckpointAlreadyExistsException" not in str(exc):
                    _log.warning("Delta Kernel did not write the audit table's checkpoint at version %d (%s): "
                                 "this run writes them with Delta Lake's Spark jobs", newest, error_line(exc, 300))
                    self.writer = "spark"
        if self.writer == "spark":
            delta_log.checkpoint()  # its newest snapshot; Delta logs its own failures and returns
        outcome["writer"] = self.writer
        written = json.loads(read_text(spark, self.table, "_delta_log/_last_checkpoint"))["version"]
        if written < version:
            outcome["error"] = f"Delta wrote none (its newest is at version {written}; the driver log says why)"

    @staticmethod
    def _clean_log(spark: SparkSession, delta_log, outcome: dict) -> None:
        """Delete the log's files older than the table's ``delta.logRetentionDuration``, to the minute.

        Delta lists the whole ``_delta_log`` at every commit (the snapshot update at the start of each
        transaction; delta-io/delta#1191 on S3), so each file there costs every later batch's audit write:
        ~10 us an entry through Hadoop's local file system, ~2 through the local profile's (a file and its
        .crc sidecar are two), and on a 1 s trigger the log gains ~172,800 files a day. Delta Lake's own
        cleanup, after each checkpoint it writes (:meth:`_checkpoint`'s with the ``spark`` writer too),
        truncates its cut-off to the day, so even a short retention leaves up to a day and more of files.
        This one cuts at the minute. Like Delta's,
        it removes only files older than the retention whose versions a later checkpoint holds, and none
        when the table sets ``delta.enableExpiredLogCleanup`` false (bench/ROUNDS.md, thirty-fifth round)."""
        snapshot = delta_log.unsafeVolatileSnapshot()
        if not delta_log.enableExpiredLogCleanup(snapshot.metadata()):
            outcome["skipped"] = "the table's delta.enableExpiredLogCleanup is false"
            return
        minute = spark._jvm.org.apache.spark.sql.delta.TruncationGranularity.MINUTE()
        delta_log.cleanUpExpiredLogs(snapshot, spark._jvm.scala.Option.empty(), minute)

    def finished(self) -> dict[str, dict]:
        """The outcomes finished since the last call, by metrics key (``audit_compaction``: version,
        ms, files_removed, files_added; ``audit_checkpoint``: version, ms, writer (``kernel`` or ``spark``);
        after one written, ``audit_log_cleanup``: version, ms; any with ``error``, a cleanup the table
        turned off with ``skipped``)."""
        with self._lock:
            outcomes, self._finished = self._finished, {}
        return outcomes

    def wait(self, timeout: float | None = None) -> bool:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True


def kernel_checkpoint(spark: SparkSession, table: str, version: int) -> None:
    """Write ``table``'s Delta checkpoint at ``version`` with Delta Kernel, in the calling thread: it lists
    and reads the log (the newest checkpoint before ``version`` and the JSON commits after it) and writes
    the checkpoint's Parquet file and ``_last_checkpoint`` through the session's Hadoop configuration and
    Delta's log store for the path's scheme (the file written whole or not at all: through a temporary
    file and a rename where a partial write would be visible). Raises if Delta Kernel is not on the
    classpath, or whatever it raises (``CheckpointAlreadyExistsException`` for a version that has one)."""
    from py4j.java_gateway import JavaClass

    jvm = spark._jvm
    table_class = jvm.io.delta.kernel.Table
    if not isinstance(table_class, JavaClass):
        raise RuntimeError("Delta Kernel (io.delta.kernel.Table) is not on the classpath: `make jars` fetches it "
                           "(delta-kernel-api and delta-kernel-defaults)")
    engine = jvm.io.delta.kernel.defaults.engine.DefaultEngine.create(
        spark._jsparkSession.sessionState().newHadoopConf())  # spark.hadoop.* too, as Delta Lake reads it
    table_class.forPath(engine, table).checkpoint(engine, version)


FAST_LOG_LISTING = "delta.enableFastS3AListFrom"  # delta-storage's S3SingleDriverLogStore reads it
S3A_FILE_SYSTEM = "org.apache.hadoop.fs.s3a.S3AFileSystem"


def fast_log_listing(spark: SparkSession, table: str) -> bool:
    """Let Delta list the audit table's log from the version it needs, when the table is on S3A.

    Delta lists a table's ``_delta_log`` at the start of every commit (to find its newest version; the log
    is kept to an hour: :meth:`AuditMaintenance._clean_log`), and on S3 a listing is one LIST request per
    1,000 keys: an hour's log on a 1 s trigger holds ~7,200 (each commit and its checksum file), eight
    requests in a row in every batch's audit write. delta-storage
    can ask S3 to start the listing at the version it needs (``delta.enableFastS3AListFrom``), one request
    for the few keys after the table's newest checkpoint. It does so only through Hadoop's S3A file system,
    which is what ``s3://`` is on EMR from release 7.10 (emr-spark-8.0.0 among them); through another one,
    such as EMRFS (``s3://`` before 7.10, or with ``fs.s3.impl`` set back to it), every listing would fail.
    So this turns it on, for the session, only when ``table``'s file system is an S3AFileSystem, and never
    over a value the session or its Hadoop configuration (``spark.hadoop.*``) already sets. Call it before
    the session first touches the table: Delta reads the setting once per table it opens. Returns whether
    it turned it on (bench/ROUNDS.md, thirty-seventh round)."""
    hadoop_conf = spark._jsparkSession.sessionState().newHadoopConf()  # what Delta's log store reads
    if hadoop_conf.get(FAST_LOG_LISTING) is not None or spark.conf.get(f"spark.hadoop.{FAST_LOG_LISTING}", None):
        return False  # the user's choice (the second one set after the session's start, too late for Delta)
    try:
        fs = spark._jvm.org.apache.hadoop.fs.Path(table).getFileSystem(hadoop_conf)
        cls = fs.getClass()
        while cls is not None and cls.getName() != S3A_FILE_SYSTEM:
            cls = cls.getSuperclass()
    except Exception as exc:  # the table's file system not reachable now: the audit write will say why
        _log.warning("could not tell the audit table's file system (%s); Delta lists its log whole", exc)
        return False
    if cls is None:
        return False
    failed = list_from_a_version_fails(spark, fs, table)
    if failed:
        _log.warning("Delta's listing of a log from a version fails on this S3A (%s); it lists the audit table's "
                     "log whole", failed)
        return False
    spark.conf.set(FAST_LOG_LISTING, "true")
    return True


def list_from_a_version_fails(spark: SparkSession, fs, table: str) -> str | None:
    """Why delta-storage's listing from a version fails on ``fs`` (an S3AFileSystem), or None if it works:
    one listing of ``table``'s log as Delta's log store would make it. That code calls S3A's internal
    listing classes, not a public API, so an S3A other than the Hadoop it was built against (a vendor's)
    could fail every one of Delta's listings at run time; this finds out once, at the start."""
    try:
        jpath = spark._jvm.org.apache.hadoop.fs.Path
        log = fs.makeQualified(jpath(f"{table.rstrip('/')}/_delta_log"))
        spark._jvm.io.delta.storage.internal.S3LogStoreUtil.s3ListFromArray(fs, jpath(log, "0" * 20), log)
    except Exception as exc:
        return error_line(exc, 300)
    return None


JOB_GROUP = "spark.jobGroup.id"  # the streaming query's run id while a batch runs: stop() cancels this group
# what a Java call interrupted by stop() fails with (Spark's StreamExecution.isInterruptionException)
INTERRUPTIONS = ("java.lang.InterruptedException", "java.io.InterruptedIOException",
                 "java.nio.channels.ClosedByInterruptException")


class BatchCancelled(RuntimeError):
    """The batch's Spark jobs were cancelled: the query is stopping (``query.stop()`` cancels them)."""


def run_stoppable(gate: StopGate, out: DataFrame, batch_id: int, write: Callable[[DataFrame, int], None]) -> None:
    """A foreachBatch function's body, ``write``, as a stop expects it: not begun once the stop closed
    ``gate`` (the batch waits for ``query.stop()`` and ends uncommitted, having written nothing), and a
    cut by the stop (its Spark jobs cancelled) raised as the short error Spark stops quietly on."""
    stopping = gate.enter(batch_id)
    if stopping is not None:
        gate.hold(stopping)
        print(f"marketsignals: batch {batch_id} not run: the query was stopping; the next start runs it", flush=True)
        raise cancellation(_job_group(out))
    try:
        write(out, batch_id)
    except Exception as exc:
        cancelled = stop_cancellation(str(exc), _job_group(out))
        if cancelled is None:
            raise
        print(f"marketsignals: batch {batch_id} cut by the stop; the next start replays it from the checkpoint",
              flush=True)
        raise cancelled from None  # not chained: the short text is the point (see stop_cancellation)
    finally:
        gate.leave()


class StopGate:
    """Where a stop that waits for the batch in flight (stream/job.py, stop_query) keeps later batches
    from starting their work. Spark runs one batch at a time and ``query.stop()`` interrupts whatever
    runs: a batch past its Kafka write but not yet committed is replayed at the next start and its
    signals sent twice. Once closed (:meth:`close`), a batch that reaches the sink writes nothing: it waits
    for the query's stop (:meth:`hold`) and ends as a batch the stop cut, uncommitted (it wrote
    nothing, so the next start runs it once); the batch already past the gate runs to its end."""

    HOLD_POLL_S = 0.02

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping: Any = None  # the StreamingQuery being stopped, once closed
        self._running: int | None = None  # the batch past the gate, until it returns
        self._last: int | None = None  # the last batch that returned (Spark may not have committed it yet)

    def enter(self, batch_id: int) -> Any:
        """A batch reached the sink: None lets it run; else the query being stopped (hold it)."""
        with self._lock:
            if self._stopping is None:
                self._running = batch_id
            return self._stopping

    def leave(self) -> None:
        with self._lock:
            self._running, self._last = None, self._running

    @property
    def running(self) -> int | None:
        """The batch past the gate, until it returns (None: none)."""
        with self._lock:
            return self._running

    def close(self, query: Any) -> int | None:
        """No batch starts its work from now on: the batch that runs past the gate, or else the last one
        that did (its commit may still be coming), if any."""
        with self._lock:
            self._stopping = query
            return self._running if self._running is not None else self._last

    def hold(self, query: Any) -> None:
        """Wait until ``query.stop()`` has begun (``isActive``, Spark's state, turns false at its first
        step, before it interrupts the stream thread, which waits in this Python call meanwhile): an
        error raised before would fail the query instead of stopping it."""
        while query.isActive:
            time.sleep(self.HOLD_POLL_S)


def cancellation(job_group: str | None) -> BatchCancelled:
    """The short error that tells Spark the stop cut the batch (see :func:`stop_cancellation`)."""
    return BatchCancelled("py4j.protocol.Py4JJavaError: An error occurred while calling the batch's sink.\n"
                          f": java.lang.InterruptedException: the batch's jobs were cancelled (job group {job_group}): "
                          "the query is stopping")


def stop_cancellation(error: str, job_group: str | None) -> BatchCancelled | None:
    """The short error the sink raises instead of the one whose text is ``error`` when that one is
    the query's stop cutting the batch (None for any other error, raised as it is): ``query.stop()``
    interrupts the stream thread (its Spark call in flight fails with an InterruptedException) and
    cancels the query's job group (a write on another thread fails with a cancelled job).

    Spark learns from the text of the foreachBatch function's error whether a stop interrupted the
    batch (then it stops quietly, the batch uncommitted and replayed at the next start). Spark 4.0
    runs a regular expression over that text whose recursion depth grows with its length, and
    PySpark's error carries the whole Java trace: the stream thread died of a StackOverflowError and
    printed a thousand-line trace on every stop that hit a batch (tests/faults/test_clean_stop.py).
    The short text is the one form both Spark 3.5 (emr-7.x) and 4.0 read as a stop: a Py4J call that
    failed with an InterruptedException (3.5 does not take a SparkException's "cancelled" with the job
    group from Python; bench/ROUNDS.md, fiftieth round).
    """
    if not job_group:
        return None
    interrupted = any(name in error for name in INTERRUPTIONS)
    if not interrupted and not ("cancelled" in error and job_group in error):
        return None
    return cancellation(job_group)


def _job_group(out: DataFrame) -> str | None:
    """The running batch's job group (None if the JVM cannot say: the batch's own error is raised)."""
    try:
        return out.sparkSession.sparkContext.getLocalProperty(JOB_GROUP)
    except Exception:
        return None


def audit_commit_tag(app_id: str, batch_id: int) -> str:
    """The audit commit's userMetadata: which query and batch wrote it (DESCRIBE HISTORY shows it)."""
    return json.dumps({"query": app_id, "batch": batch_id}, separators=(",", ":"))


def audit_commit_batch(user_metadata: str | None, app_id: str | None = None) -> int | None:
    """The batch id in an :func:`audit_commit_tag` (written by query ``app_id``, if given); None for
    any other commit metadata."""
    try:
        tag = json.loads(user_metadata or "")
    except ValueError:
        return None
    if not isinstance(tag, dict) or not isinstance(tag.get("batch"), int):
        return None
    if app_id is not None and tag.get("query") != app_id:
        return None
    return tag["batch"]


def last_audited_batch(spark: SparkSession, table: str, app_id: str, pages: tuple[int, ...] = (10, 1000)) -> int:
    """The newest batch id that query ``app_id`` committed to the audit table, -1 if none. Reads the
    history newest first, a page of commits at a time (with one writer, the first page has it): the
    first commit of this query found is its newest, since a query's batch ids grow with the table's
    versions."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, table):
        return -1
    history = DeltaTable.forPath(spark, table)
    for limit in (*pages, None):
        rows = (history.history(limit) if limit else history.history()).select("version", "userMetadata").collect()
        for row in sorted(rows, key=lambda r: -r["version"]):
            batch = audit_commit_batch(row["userMetadata"], app_id)
            if batch is not None:
                return batch
        if limit is not None and len(rows) < limit:
            return -1
    return -1


def materialised(out: DataFrame) -> DataFrame:
    """The batch's rows computed once and kept (memory, then disk) as a DataFrame whose plan is just
    those rows. With ``persist()`` every DataFrame the sink derives (counts, signals, dead letters,
    the Kafka and Delta writes) was analysed over the whole micro-batch plan again and matched to the
    cache: on small batches that driver work was much of the batch's fixed cost (bench/ROUNDS.md)."""
    return out.localCheckpoint(eager=True)


def release(out: DataFrame) -> None:
    """Free a :func:`materialised` batch's blocks now, not at the driver's next garbage collection
    (Spark's ContextCleaner would, eventually). Through the SparkContext, not ``RDD.unpersist``:
    that logs a warning for every locally checkpointed RDD ("its lineage has been truncated"), one
    line in the driver's log per micro-batch, forever."""
    try:
        rdd_id = out._jdf.queryExecution().logical().rdd().id()
        out.sparkSession.sparkContext._jsc.sc().unpersistRDD(rdd_id, False)
    except Exception as exc:  # an internal API: never fail a written batch over its cleanup
        _log.warning("could not release the batch's checkpointed rows (%s); Spark frees them later", exc)


def run_together(writes: dict[str, Callable[[], None]]) -> dict[str, int]:
    """Run the writes concurrently (all but the last on threads that inherit this thread's Spark
    properties), wait for all of them and raise the first failure; returns each one's milliseconds."""
    took: dict[str, int] = {}
    errors: list[BaseException] = []

    def timed(name: str, write: Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            write()
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)
        took[name] = round((time.monotonic() - started) * 1000)

    items = list(writes.items())
    threads = [InheritableThread(target=timed, args=item, daemon=True) for item in items[:-1]]
    for thread in threads:
        thread.start()
    if items:
        timed(*items[-1])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return took


def _query_id(out: DataFrame, checkpoint: str) -> str:
    spark = out.sparkSession
    local = spark.sparkContext.getLocalProperty("sql.streaming.queryId")
    if local:
        return f"marketsignals-{local}"
    # Fallback: the id Spark wrote to <checkpoint>/metadata when the query first started.
    return "marketsignals-" + json.loads(read_text(spark, checkpoint, "metadata").splitlines()[0])["id"]
