"""The foreachBatch sink (SPEC §4): signals to Kafka and to the exactly-once audit table, rejects to
the dead-letter topic, and the batch's counts for the metrics.

Exactly-once for the audit table comes from Delta Lake's idempotent writes: ``txnAppId`` is the
streaming query's id (kept in the checkpoint, so stable across restarts and new if the checkpoint is
deleted) and ``txnVersion`` is the batch id; a replayed batch is skipped by Delta. Kafka delivery is
at-least-once (Spark 4.0 has no transactional Kafka sink); consumers deduplicate on signal_id.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import DataFrame
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
from marketsignals.stream.source import client_options

EVENT_DATE = "event_date"


def signal_records(out: DataFrame) -> DataFrame:
    """SPEC §4 signal records from the kernel's output rows (emitted_at = batch processing time)."""
    return (out.filter(F.col(KIND) == KIND_SIGNAL)
            .withColumn(EVENT_TIME, F.timestamp_millis(F.col(TS_MS)))
            .withColumn(EMITTED_AT, F.current_timestamp())
            .select(*SIGNAL_COLUMNS))


def dead_letter_records(out: DataFrame) -> DataFrame:
    """SPEC §1 dead-letter records from the kernel's reject rows."""
    return (out.filter(F.col(KIND) == KIND_REJECT)
            .withColumn("rejected_at", F.current_timestamp())
            .select(*[f.name for f in DEAD_LETTER_SCHEMA.fields]))


def to_kafka_records(df: DataFrame, key_col: str = SYMBOL, nulls: bool = False) -> DataFrame:
    """key = symbol, value = the record as JSON (``nulls``: null fields written as null, not left out)."""
    options = {"ignoreNullFields": "false"} if nulls else {}
    return df.select(F.col(key_col).cast("string").alias("key"),
                     F.to_json(F.struct(*df.columns), options).alias("value"))


def batch_counts(out: DataFrame) -> dict[str, int]:
    """processed / signals / rejects by reason of one batch, as one aggregate row."""
    aggs = [
        F.coalesce(F.sum(F.when(F.col(KIND) == KIND_COUNT, F.col(PROCESSED))), F.lit(0)).alias("processed"),
        F.count(F.when(F.col(KIND) == KIND_SIGNAL, 1)).alias("signals"),
        *[F.count(F.when((F.col(KIND) == KIND_REJECT) & (F.col(REASON) == r), 1)).alias(r) for r in Reason.ALL],
    ]
    row = out.agg(*aggs).first()
    counts = row.asDict() if row else {}
    rejects = {r: int(counts.pop(r)) for r in Reason.ALL if counts.get(r)}
    return {"processed": int(counts.get("processed", 0)), "signals": int(counts.get("signals", 0)),
            "rejected": sum(rejects.values()), "rejects": rejects}


@dataclass
class SignalSink:
    """The foreachBatch function. Writes Kafka first, the audit table last: the audit commit is the
    batch's durable record, a crash before it replays the batch (Kafka may see it twice)."""

    settings: Settings
    on_counts: Callable[[int, dict], None] = lambda batch_id, counts: None
    _app_id: str | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __call__(self, out: DataFrame, batch_id: int) -> None:
        kafka = self.settings.kafka
        out = out.persist()
        try:
            counts = batch_counts(out)  # one small aggregate; also materialises the cached batch
            signals = signal_records(out)
            if counts["signals"] or counts["rejected"]:
                # signals and dead letters in one Kafka write: the sink takes the topic per row
                records = to_kafka_records(signals).withColumn("topic", F.lit(kafka.signals_topic)).unionByName(
                    to_kafka_records(dead_letter_records(out), nulls=True).withColumn("topic", F.lit(kafka.dead_letter_topic)))
                records.write.format("kafka").options(**client_options(kafka)).save()
            if counts["signals"]:
                (signals.withColumn(EVENT_DATE, F.to_date(EVENT_TIME))
                 .write.format("delta").mode("append").partitionBy(EVENT_DATE)
                 .option("txnAppId", self.app_id(out)).option("txnVersion", batch_id)
                 .save(self.settings.stream.audit_table))
            self.on_counts(batch_id, counts)
        finally:
            out.unpersist()

    def app_id(self, out: DataFrame) -> str:
        """The streaming query's id (persisted in the checkpoint's metadata file)."""
        with self._lock:
            if self._app_id is None:
                self._app_id = _query_id(out, self.settings.stream.checkpoint)
            return self._app_id


def _query_id(out: DataFrame, checkpoint: str) -> str:
    spark = out.sparkSession
    local = spark.sparkContext.getLocalProperty("sql.streaming.queryId")
    if local:
        return f"marketsignals-{local}"
    # Fallback: the id Spark wrote to <checkpoint>/metadata when the query first started.
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(checkpoint.rstrip("/") + "/metadata")
    fs = path.getFileSystem(spark._jsc.hadoopConfiguration())
    stream = fs.open(path)
    try:
        reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream))
        return "marketsignals-" + json.loads(reader.readLine())["id"]
    finally:
        stream.close()
