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

import pandas as pd
from pyspark.sql import types as T
from pyspark.sql.streaming.state import GroupState

from marketsignals import kernel
from marketsignals.kernel import KernelConfig, SymbolState

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
        parts = list(frames)
        ticks = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True) if parts else None
        if ticks is None:  # timed out: release pending ticks, or evict an idle symbol
            ticks = pd.DataFrame({c: pd.Series(dtype=t) for c, t in _EMPTY.items()})
        result = kernel.process(symbol, kernel.columns_of(ticks), before, cfg, watermark)
        _save(result.state, state, watermark, cfg)
        yield result.output

    return handle


_EMPTY = {"ts_ms": "int64", "exchange": object, "price": "float64", "volume": "int64", "bid": "float64",
          "ask": "float64", "topic": object, "partition": "int32", "offset": "int64"}


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
