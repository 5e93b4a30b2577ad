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
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming.state import GroupState

from marketsignals import kernel
from marketsignals.kernel import Columns, KernelConfig, SymbolState
from marketsignals.pyworker import keep_archive_directories
from marketsignals.schema import EXCHANGE, RAW, REASON, TOPIC

# A Spark Python worker imports this module to run the handler: from then on its tasks no longer
# re-read every zip archive on its path (pyworker; a no-op in the driver and on Python 3.12+).
keep_archive_directories()

# The handler's input besides the key: each tick's fields as one JSON text (nulls left out).
# applyInPandasWithState turns every input column of every group into a pandas Series of its own;
# with the eleven fields as columns that conversion was the largest cost of the Python workers at
# 10,000 symbols (py-spy: 36 % of their time), one column per group is far cheaper to hand over and
# the JSON is parsed in one pass. Doubles come back exactly: Java's Double.toString round-trips.
PACKED = "tick"
PACKED_FIELDS: dict[str, type] = {**kernel.TICK_DTYPES, EXCHANGE: object, TOPIC: object, REASON: object,
                                  RAW: object}


def packed_tick() -> Column:
    """The input column the handler reads (see PACKED)."""
    return F.to_json(F.struct(*PACKED_FIELDS)).alias(PACKED)


def unpacked_output(out: DataFrame) -> DataFrame:
    """The handler's PACKED_OUTPUT_SCHEMA rows as OUTPUT_SCHEMA rows (JSON parsed in the JVM; the kernel
    writes a NaN as null, see kernel._Output.packed)."""
    fields = T.StructType([f for f in kernel.OUTPUT_SCHEMA.fields if f.name != kernel.KIND])
    parsed = F.from_json(F.col(kernel.RECORD), fields)
    return out.select(kernel.KIND, parsed.alias(kernel.RECORD)).select(kernel.KIND, f"{kernel.RECORD}.*")


def unpack(texts: list[str]) -> Columns:
    """The kernel's columns from packed ticks. A validation reject lacks fields (null): its column
    falls back to object dtype and the kernel types the valid ticks' columns once rejects are out."""
    rows = orjson.loads("[" + ",".join(texts) + "]")  # one parse per group (~8x json's speed)
    cols: Columns = {}
    for name, dtype in PACKED_FIELDS.items():
        values = [r.get(name) for r in rows]
        try:
            cols[name] = np.array(values, dtype=dtype)
        except (TypeError, ValueError):  # a None among ints
            cols[name] = np.array(values, dtype=object)
    return cols

# The symbol's state as one pickled blob: Spark only stores bytes, the kernel owns the layout.
# STATE_FORMAT is bumped when SymbolState changes shape; an older blob then stops the job with a
# message instead of being misread.
STATE_FORMAT = 1
STATE_SCHEMA = T.StructType([T.StructField("format", T.IntegerType()), T.StructField("blob", T.BinaryType())])


class StateFormatError(RuntimeError):
    pass


def load_state(state: GroupState) -> SymbolState:
    if not state.exists:
        return SymbolState()
    fmt, blob = state.get
    if fmt != STATE_FORMAT:
        raise StateFormatError(f"the checkpoint holds symbol state format {fmt}, this version reads "
                               f"{STATE_FORMAT}: start from a new checkpoint (stream.checkpoint)")
    return pickle.loads(blob)


def make_handler(cfg: KernelConfig):
    """The function given to ``applyInPandasWithState`` (Append mode, EventTimeTimeout)."""

    def handle(key: tuple, frames: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        symbol = key[0]
        watermark = max(state.getCurrentWatermarkMs(), 0)
        before = load_state(state)
        # no frames when timed out: release pending ticks, or evict an idle symbol
        ticks = unpack([t for frame in frames for t in frame[PACKED].tolist()])
        result = kernel.process(symbol, ticks, before, cfg, watermark, packed=True)
        _save(result.state, state, watermark, cfg)
        yield result.output

    return handle


def _save(after: SymbolState, state: GroupState, watermark: int, cfg: KernelConfig) -> None:
    if after.high_water is None and not after.has_pending:
        # no valid tick ever seen for this key (e.g. only rejected input): keep no state
        if state.exists:
            state.remove()
        return
    if after.has_pending:
        # wake up when the watermark passes the oldest waiting tick (Spark fires once
        # timeout < watermark, the kernel's release rule; the kernel released every tick before the
        # watermark, so the oldest waiting one is at or after it -- a valid timeout)
        timeout = int(after.pending["ts_ms"].min())
    else:
        # idle eviction: once the watermark is past the symbol's newest tick + the idle timeout,
        # the next tick starts a new series anyway (the kernel resets on such a gap)
        timeout = int(after.high_water) + cfg.idle_timeout_ms
        if timeout <= watermark:
            state.remove()
            return
    state.update((STATE_FORMAT, pickle.dumps(after, protocol=pickle.HIGHEST_PROTOCOL)))
    state.setTimeoutTimestamp(timeout)
