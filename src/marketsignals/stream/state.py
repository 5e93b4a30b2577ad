"""The applyInPandasWithState handler: Spark's state store around the per-symbol kernel.

Why this API: ``applyInPandasWithState`` runs on Spark 3.4+ (emr-7.x, Spark 3.5) and 4.0
(emr-spark-8.0.0), while ``transformWithStateInPandas`` exists only from 4.0 and, in Spark 4.0, pays
a larger per-call overhead in Python. Row-based windows (``lag``, ``rowsBetween``) are rejected on
streams, so the windows' history is kept by hand: at most HISTORY ticks per symbol, plus the ticks
waiting for the watermark in ``event_time`` mode.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import numpy as np
import orjson
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming.state import GroupState

from marketsignals import kernel
from marketsignals.kernel import Columns, KernelConfig, SymbolState
from marketsignals.pyworker import keep_archive_directories
from marketsignals.schema import EXCHANGE, RAW, REASON, SYMBOL, TOPIC

# A Spark Python worker imports this module to run the handler: from then on its tasks no longer
# re-read every zip archive on its path (pyworker; a no-op in the driver and on Python 3.12+).
keep_archive_directories()

# Spark's per-group cost: applyInPandasWithState hands every group its own pandas frames, state row
# and GroupState, and turns every group's output into Arrow on its own -- at 10,000 symbols that
# plumbing was half of the Python workers' time (py-spy), the kernel a third. So the stateful key is
# a bucket of symbols (xxhash64 of the symbol modulo stream.state_buckets), not the symbol: a bucket's
# state holds its symbols' states and timers, and the handler runs the kernel once per symbol, with
# the same inputs and in the same batch as a per-symbol key would (see make_handler).
BUCKET = "bucket"


def bucket_of(symbol: Column, buckets: int) -> Column:
    """The stateful key of a symbol (an int in [0, buckets)); the same in every batch and run."""
    return F.pmod(F.xxhash64(symbol), F.lit(buckets)).cast("int").alias(BUCKET)


# The handler's input besides the key: each tick's fields as one JSON text (nulls left out).
# applyInPandasWithState turns every input column of every group into a pandas Series of its own;
# with the eleven fields as columns that conversion was the largest cost of the Python workers at
# 10,000 symbols (py-spy: 36 % of their time), one column per group is far cheaper to hand over and
# the JSON is parsed in one pass. Doubles come back exactly: Java's Double.toString round-trips.
PACKED = "tick"
PACKED_FIELDS: dict[str, type] = {SYMBOL: object, **kernel.TICK_DTYPES, EXCHANGE: object, TOPIC: object,
                                  REASON: object, RAW: object}


def packed_tick() -> Column:
    """The input column the handler reads (see PACKED)."""
    return F.to_json(F.struct(*PACKED_FIELDS)).alias(PACKED)


def unpacked_output(out: DataFrame) -> DataFrame:
    """The handler's PACKED_OUTPUT_SCHEMA rows as OUTPUT_SCHEMA rows (JSON parsed in the JVM; the kernel
    writes a NaN as null, see kernel._Output.packed)."""
    fields = T.StructType([f for f in kernel.OUTPUT_SCHEMA.fields if f.name != kernel.KIND])
    parsed = F.from_json(F.col(kernel.RECORD), fields)
    return out.select(kernel.KIND, parsed.alias(kernel.RECORD)).select(kernel.KIND, f"{kernel.RECORD}.*")


def unpack(texts: list[str]) -> dict[str, Columns]:
    """Each symbol's ticks as the kernel's columns, from packed ticks (in their input order). A
    validation reject lacks fields (null): its column falls back to object dtype and the kernel types
    the valid ticks' columns once rejects are out."""
    by_symbol: dict[str, list[dict]] = {}
    for row in orjson.loads("[" + ",".join(texts) + "]"):  # one parse per group (~8x json's speed)
        by_symbol.setdefault(row.get(SYMBOL, ""), []).append(row)
    return {symbol: _columns(rows) for symbol, rows in by_symbol.items()}


def _columns(rows: list[dict]) -> Columns:
    cols: Columns = {}
    for name, dtype in PACKED_FIELDS.items():
        values = [r.get(name) for r in rows]
        try:
            cols[name] = np.array(values, dtype=dtype)
        except (TypeError, ValueError):  # a None among ints
            cols[name] = np.array(values, dtype=object)
    return cols


_NO_TICKS: Columns = _columns([])

# A bucket's state as one pickled blob, (buckets, {symbol: (timeout, pickled SymbolState)}): Spark only
# stores bytes, the kernel owns the layout. A symbol's own state stays pickled until it ticks or its
# timer fires, so a bucket costs its quiet symbols a copy of their bytes, not a round trip through
# pickle (~0.2 ms a symbol). STATE_FORMAT is bumped when that changes shape; an older blob then stops
# the job with a message instead of being misread, and so does a blob written with another number of
# buckets (its symbols now hash elsewhere). (Format 1 was keyed by symbol: Spark's own state schema
# check stops such a checkpoint before any blob is read.)
STATE_FORMAT = 2
STATE_SCHEMA = T.StructType([T.StructField("format", T.IntegerType()), T.StructField("blob", T.BinaryType())])
Bucket = dict[str, tuple[int, bytes]]


class StateFormatError(RuntimeError):
    pass


def load_bucket(state: GroupState, buckets: int) -> Bucket:
    return _bucket(*state.get, buckets) if state.exists else {}


def _bucket(fmt: int, blob: bytes, buckets: int) -> Bucket:
    if fmt != STATE_FORMAT:
        raise StateFormatError(f"the checkpoint holds symbol state format {fmt}, this version reads "
                               f"{STATE_FORMAT}: start from a new checkpoint (stream.checkpoint)")
    written, bucket = pickle.loads(blob)
    if written != buckets:
        raise StateFormatError(f"the checkpoint's state was written with stream.state_buckets={written}, not "
                               f"{buckets}: set it back, or start from a new checkpoint (stream.checkpoint)")
    return bucket


def make_handler(cfg: KernelConfig, buckets: int):
    """The function given to ``applyInPandasWithState`` (Append mode, EventTimeTimeout), keyed by
    bucket. The kernel runs for each symbol with new ticks, and for each symbol whose own timer the
    watermark passed (Spark's rule: timeout < watermark) -- exactly the calls Spark would make with
    the symbol as the key. The bucket's timer is the earliest of its symbols' timers, so it fires
    whenever one of theirs would."""

    def handle(key: tuple, frames: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        watermark = max(state.getCurrentWatermarkMs(), 0)
        bucket = load_bucket(state, buckets)
        ticks = unpack([t for frame in frames for t in frame[PACKED].tolist()])
        due = [s for s, (timeout, _) in bucket.items() if timeout < watermark and s not in ticks]
        symbols = [*ticks, *due]
        calls = [(symbol, ticks.get(symbol, _NO_TICKS),
                  pickle.loads(bucket[symbol][1]) if symbol in bucket else SymbolState()) for symbol in symbols]
        rows, after = kernel.process_bucket(calls, cfg, watermark)
        for symbol, symbol_state in zip(symbols, after, strict=True):
            timeout = _timeout(symbol_state, watermark, cfg)
            if timeout is None:
                bucket.pop(symbol, None)
            else:
                bucket[symbol] = (timeout, pickle.dumps(symbol_state, protocol=pickle.HIGHEST_PROTOCOL))
        _save(bucket, buckets, state)
        yield pd.DataFrame({kernel.KIND: rows.kinds, kernel.RECORD: rows.records})

    return handle


def _timeout(after: SymbolState, watermark: int, cfg: KernelConfig) -> int | None:
    """When the symbol's timer fires; None: keep no state for it."""
    if after.high_water is None and not after.has_pending:
        return None  # no valid tick ever seen for this symbol (e.g. only rejected input)
    if after.has_pending:
        # wake up when the watermark passes the oldest waiting tick (Spark fires once
        # timeout < watermark, the kernel's release rule; the kernel released every tick before the
        # watermark, so the oldest waiting one is at or after it -- a valid timeout)
        return int(after.pending["ts_ms"].min())
    # idle eviction: once the watermark is past the symbol's newest tick + the idle timeout,
    # the next tick starts a new series anyway (the kernel resets on such a gap)
    timeout = int(after.high_water) + cfg.idle_timeout_ms
    return None if timeout <= watermark else timeout


def _save(bucket: Bucket, buckets: int, state: GroupState) -> None:
    if not bucket:
        if state.exists:
            state.remove()
        return
    state.update((STATE_FORMAT, pickle.dumps((buckets, bucket), protocol=pickle.HIGHEST_PROTOCOL)))
    state.setTimeoutTimestamp(min(timeout for timeout, _ in bucket.values()))


def read_symbol_states(spark: SparkSession, checkpoint: str, buckets: int,
                       batch_id: int | None = None) -> dict[str, SymbolState]:
    """Every symbol's state in a query's checkpoint, after its last committed batch or ``batch_id``
    (Spark's state data source; for inspection, e.g. which symbols are held and since when)."""
    reader = spark.read.format("statestore")
    if batch_id is not None:
        reader = reader.option("batchId", batch_id)
    rows = reader.load(checkpoint).select("value.groupState.format", "value.groupState.blob").collect()
    states: dict[str, SymbolState] = {}
    for fmt, blob in rows:
        states.update({symbol: pickle.loads(pickled) for symbol, (_, pickled) in _bucket(fmt, blob, buckets).items()})
    return states
