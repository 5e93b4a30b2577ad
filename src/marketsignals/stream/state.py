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
import pandas as pd
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming.state import GroupState

from marketsignals import kernel, pyworker
from marketsignals.kernel import Columns, KernelConfig, SymbolState
from marketsignals.schema import EXCHANGE, RAW, REASON, SYMBOL, TOPIC

# A Spark Python worker imports this module to run the handler: from then on its tasks no longer
# re-read every zip archive on its path, and its garbage collections skip what the imports made
# (pyworker; a no-op in the driver).
pyworker.prepare()

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


# The handler's input besides the key and the watermark marker: each tick's fields as columns, and its
# output is OUTPUT_SCHEMA's columns. (For a while both were JSON text, one per tick and one per output
# row: with the symbol as the key, Spark's Arrow-to-pandas work per column and group was most of the
# Python workers' time at 10,000 symbols. A batch now has at most stream.state_buckets groups, and the
# JVM's to_json and from_json on both sides of Python cost more than the columns; bench/ROUNDS.md, sixth round.)
TICK_COLUMNS: tuple[str, ...] = (SYMBOL, *kernel.TICK_DTYPES, EXCHANGE, TOPIC, REASON, RAW)


def by_symbol(frames: Iterator[pd.DataFrame]) -> dict[str, Columns]:
    """A bucket's ticks split by symbol as the kernel's columns: symbols in the order they first come,
    each symbol's ticks in input order. A column holding a validation reject may come as float64 or
    object (Arrow gives a null int as NaN): the kernel types the valid ticks' columns once rejects are out.
    Without a validation reject in the bucket, the reason and raw columns are left out."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return {}
    cols = {c: np.concatenate([f[c].to_numpy() for f in frames]) if len(frames) > 1 else frames[0][c].to_numpy()
            for c in TICK_COLUMNS}
    if pd.isna(cols[REASON]).all():  # no validation rejects: the kernel need not look for them per symbol
        del cols[REASON], cols[RAW]
    codes, symbols = pd.factorize(cols[SYMBOL])
    if len(symbols) == 1:
        return {symbols[0]: cols}
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(symbols) + 1)).tolist()
    cols = {c: v[order] for c, v in cols.items()}
    return {symbol: {c: v[bounds[i]:bounds[i + 1]] for c, v in cols.items()} for i, symbol in enumerate(symbols)}


_NO_TICKS: Columns = {c: np.empty(0, dtype=kernel.TICK_DTYPES.get(c, object)) for c in TICK_COLUMNS}

# A bucket's state as one pickled blob, (buckets, {symbol: (timeout, pickled SymbolState)}): Spark only
# stores bytes, the kernel owns the layout. A symbol's own state stays pickled until it ticks or its
# timer fires, so a bucket costs its quiet symbols a copy of their bytes, not a round trip through
# pickle (~0.2 ms a symbol). STATE_FORMAT is bumped when that changes shape; an older blob then stops
# the job with a message instead of being misread, and so does a blob written with another number of
# buckets (its symbols now hash elsewhere). (Format 1 was keyed by symbol: Spark's own state schema
# check stops such a checkpoint before any blob is read. Format 3 pickles a symbol's state in its own
# compact form, SymbolState.__reduce__, which a version before it cannot read; format 2's pickles are
# dataclasses. Format 4 keeps a symbol's duplicate keys as columns, not text, their prices and volumes
# pickled once with the history's: after the bench's 1,000,000 ticks over 10,000 symbols, 1,790 bytes
# a symbol (median) rather than 3,037. This version reads formats 2 and 3 and writes 4.)
STATE_FORMAT = 4
READABLE_FORMATS = (2, 3, 4)
STATE_SCHEMA = T.StructType([T.StructField("format", T.IntegerType()), T.StructField("blob", T.BinaryType())])
Bucket = dict[str, tuple[int, bytes]]


class StateFormatError(RuntimeError):
    pass


def load_bucket(state: GroupState, buckets: int) -> Bucket:
    return _bucket(*state.get, buckets) if state.exists else {}


def _bucket(fmt: int, blob: bytes, buckets: int) -> Bucket:
    if fmt not in READABLE_FORMATS:
        readable = f"{', '.join(map(str, READABLE_FORMATS[:-1]))} and {READABLE_FORMATS[-1]}"
        raise StateFormatError(f"the checkpoint holds symbol state format {fmt}, this version reads {readable}: "
                               "start from a new checkpoint (stream.checkpoint)")
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
        ticks = by_symbol(frames)
        due = [s for s, (timeout, _) in bucket.items() if timeout < watermark and s not in ticks]
        symbols = [*ticks, *due]
        calls = [(symbol, ticks.get(symbol, _NO_TICKS),
                  pickle.loads(bucket[symbol][1]) if symbol in bucket else SymbolState()) for symbol in symbols]
        output, after = kernel.process_bucket(calls, cfg, watermark)
        for symbol, symbol_state in zip(symbols, after, strict=True):
            timeout = _timeout(symbol_state, watermark, cfg)
            if timeout is None:
                bucket.pop(symbol, None)
            else:
                bucket[symbol] = (timeout, pickle.dumps(symbol_state, protocol=pickle.HIGHEST_PROTOCOL))
        _save(bucket, buckets, state)
        yield output

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
