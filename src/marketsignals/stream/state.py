"""The applyInPandasWithState handler: Spark's state store around the per-symbol kernel.

Why this API: ``applyInPandasWithState`` runs on Spark 3.4+ (emr-7.x, Spark 3.5) and 4.0
(emr-spark-8.0.0), while ``transformWithStateInPandas`` exists only from 4.0 and, in Spark 4.0, pays
a larger per-call overhead in Python. Row-based windows (``lag``, ``rowsBetween``) are rejected on
streams, so the windows' history is kept by hand: at most HISTORY ticks per symbol, plus the ticks
waiting for the watermark in ``event_time`` mode.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming.state import GroupState

from marketsignals import indicators, kernel, pyworker
from marketsignals.kernel import Columns, KernelConfig, SymbolState
from marketsignals.schema import EXCHANGE, RAW, REASON, SYMBOL, TOPIC, TS_MS

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

# A bucket's state, as one pickled blob: (buckets, StateTable), its symbols' states as columns. Spark
# only stores bytes, the kernel owns the layout. STATE_FORMAT is bumped when that changes shape; an
# older blob then stops the job with a message instead of being misread, and so does a blob written
# with another number of buckets (its symbols now hash elsewhere). Format 1 was keyed by symbol: Spark's
# own state schema check stops such a checkpoint before any blob is read. Formats 2 to 4 kept a
# {symbol: (timeout, pickled SymbolState)} dict: format 2 pickled the dataclass, 3 its own compact form
# (SymbolState.__reduce__), 4 that with the duplicate keys as columns rather than text. Format 5 is a
# table: no symbol's state is pickled on its own (at 10,000 symbols, ~300 a bucket and nearly all of
# them ticking every batch, that was a fifth of the handler's CPU); a bucket's states are a few numpy
# gathers and concatenations, and its quiet symbols are carried over by the same gathers, without
# being taken apart. This version reads formats 2 to 5 and writes 5.
STATE_FORMAT = 5
READABLE_FORMATS = (2, 3, 4, 5)
STATE_SCHEMA = T.StructType([T.StructField("format", T.IntegerType()), T.StructField("blob", T.BinaryType())])


class StateFormatError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True, eq=False)
class StateTable:
    """A bucket's symbols' states (SymbolState) and timers as columns, one row a symbol. A row's history
    and duplicate keys are its segment of columns laid end to end (their lengths per row; -1: no keys).
    The kernel's objects are made only for the symbols a batch calls (:meth:`state`); the rows a batch
    keeps are carried over as they are (:meth:`take`)."""

    symbols: np.ndarray  # object: str
    timeouts: np.ndarray  # int64
    last_ts: np.ndarray  # object: int | None
    high_water: np.ndarray  # object: int | None
    last_action: np.ndarray  # object: str
    pending: np.ndarray  # object: kernel.packed_pending's form, None without waiting ticks (arrival mode)
    history_len: np.ndarray  # int64
    history: tuple[np.ndarray, np.ndarray, np.ndarray]  # price, volume, price_change_pct: float64
    recent_len: np.ndarray  # int64, -1: none
    recent: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # kernel._KEY: int64, object, float64, int64

    @classmethod
    def of(cls, rows: list[tuple[str, int, SymbolState]]) -> StateTable:
        """The table of (symbol, timeout, state) rows."""
        states = [s for _, _, s in rows]
        history = [s.history for s in states]
        recent = [s.recent for s in states if s.recent is not None]
        return cls(
            symbols=_objects([symbol for symbol, _, _ in rows]),
            timeouts=np.array([timeout for _, timeout, _ in rows], dtype=np.int64),
            last_ts=_objects([s.last_ts for s in states]), high_water=_objects([s.high_water for s in states]),
            last_action=_objects([s.last_action for s in states]),
            pending=_objects([kernel.packed_pending(s.pending) for s in states]),
            history_len=np.array([len(h) for h in history], dtype=np.int64),
            history=tuple(_joined([getattr(h, c) for h in history], np.float64)
                          for c in ("price", "volume", "price_change_pct")),
            recent_len=np.array([-1 if s.recent is None else len(s.recent[TS_MS]) for s in states], dtype=np.int64),
            recent=tuple(_joined([r[c] for r in recent], kernel._KEY_DTYPES.get(c, object)) for c in kernel._KEY),
        )

    def __len__(self) -> int:
        return len(self.symbols)

    def state(self, row: int) -> SymbolState:
        """The kernel's state of one row's symbol (its arrays are views of the table's columns)."""
        history_at, recent_at = self._starts
        lo, hi = history_at[row], history_at[row + 1]
        history = indicators.History(*(c[lo:hi] for c in self.history))
        recent = None
        if self.recent_len[row] >= 0:
            lo, hi = recent_at[row], recent_at[row + 1]
            recent = {k: c[lo:hi] for k, c in zip(kernel._KEY, self.recent, strict=True)}
        return SymbolState(history, self.last_ts[row], self.high_water[row], recent, self.last_action[row],
                           kernel.unpacked_pending(self.pending[row]))

    @functools.cached_property
    def _starts(self) -> tuple[list[int], list[int]]:
        """Where each row's history and keys start in their columns (and where the last row's end)."""
        return tuple(np.concatenate([[0], np.cumsum(np.maximum(n, 0))]).tolist()
                     for n in (self.history_len, self.recent_len))

    def rows(self) -> Iterator[tuple[str, int, SymbolState]]:
        """Each row's (symbol, timeout, state), in order."""
        for row, (symbol, timeout) in enumerate(zip(self.symbols.tolist(), self.timeouts.tolist(), strict=True)):
            yield symbol, timeout, self.state(row)

    def take(self, rows: np.ndarray) -> StateTable:
        """The table of ``rows`` (indices, in that order)."""
        history, recent = _spans(self.history_len, rows), _spans(np.maximum(self.recent_len, 0), rows)
        return StateTable(
            symbols=self.symbols[rows], timeouts=self.timeouts[rows], last_ts=self.last_ts[rows],
            high_water=self.high_water[rows], last_action=self.last_action[rows], pending=self.pending[rows],
            history_len=self.history_len[rows], history=tuple(c[history] for c in self.history),
            recent_len=self.recent_len[rows], recent=tuple(c[recent] for c in self.recent))

    def __add__(self, other: StateTable) -> StateTable:
        """Both tables' rows, this one's first."""
        pairs = ((getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self))
        return StateTable(*(tuple(map(np.concatenate, zip(a, b, strict=True))) if isinstance(a, tuple)
                            else np.concatenate([a, b]) for a, b in pairs))

    def __reduce__(self):
        # The numbers as one bytes string, the text as lists; the keys' exchanges (a bucket's few, ~15,000
        # keys at 300 symbols) as each one's number in the list of them, a byte each (a null exchange,
        # which validation rejects, keeps them a list).
        # The keys' prices and volumes are the history's own when every row keeps the same last ticks in
        # both, as format 4 found symbol by symbol: then, checked bit for bit, they are pickled once (a
        # row's keys are then read from the history's column at the keys' own offsets).
        ts, exchange, price, volume = self.recent
        codes, exchanges = pd.factorize(exchange)
        if len(codes) and codes.min() < 0:
            code_dtype, codes, exchanges = None, b"", exchange
        else:
            codes = codes.astype(np.min_scalar_type(len(exchanges)))
            code_dtype, codes = codes.dtype.str, codes.tobytes()
        shared = kernel.shared_keys(price, volume, *self.history[:2])  # the columns end to end: no row apart
        numbers = [self.timeouts, self.history_len, self.recent_len, *self.history,
                   *kernel.packed_keys(ts, price, volume, shared)]
        return _state_table, (b"".join(a.tobytes() for a in numbers), len(self), len(ts), shared,
                              self.symbols.tolist(), self.last_ts.tolist(), self.high_water.tolist(),
                              self.last_action.tolist(), self.pending.tolist(), exchanges.tolist(), code_dtype, codes)


def _state_table(numbers: bytes, rows: int, keys: int, shared: int, symbols: list, last_ts: list, high_water: list,
                 last_action: list, pending: list, exchanges: list, code_dtype: str | None, codes: bytes) -> StateTable:
    """A StateTable from its pickled form (StateTable.__reduce__); its numeric columns are read-only."""
    ints, floats = np.frombuffer(numbers, dtype=np.int64), np.frombuffer(numbers, dtype=np.float64)
    timeouts, history_len, recent_len = ints[:rows], ints[rows:2 * rows], ints[2 * rows:3 * rows]
    n, at = int(history_len.sum()), 3 * rows
    history = tuple(floats[at + k * n:at + (k + 1) * n] for k in range(3))
    ts, price, volume = kernel.unpacked_keys(ints[at + 3 * n:], keys, shared, *history[:2])
    exchange = _objects(exchanges)
    if code_dtype is not None:
        exchange = exchange[np.frombuffer(codes, dtype=code_dtype)]
    return StateTable(_objects(symbols), timeouts, _objects(last_ts), _objects(high_water), _objects(last_action),
                      _objects(pending), history_len, history, recent_len,
                      (ts, exchange, price, volume))


def _objects(values: list) -> np.ndarray:
    """A 1-d object array of ``values`` (np.array would make a 2-d array of equal-length tuples)."""
    return np.fromiter(values, dtype=object, count=len(values))


def _joined(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype=dtype)


def _spans(lengths: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The positions, in a column laid out as consecutive segments of ``lengths``, of the segments of
    ``rows`` (in that order, end to end)."""
    starts = np.cumsum(lengths) - lengths
    n = lengths[rows]
    return np.repeat(starts[rows] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))


_EMPTY = StateTable.of([])


def load_bucket(state: GroupState, buckets: int) -> StateTable:
    return _bucket(*state.get, buckets) if state.exists else _EMPTY


def _bucket(fmt: int, blob: bytes, buckets: int) -> StateTable:
    if fmt not in READABLE_FORMATS:
        readable = f"{', '.join(map(str, READABLE_FORMATS[:-1]))} and {READABLE_FORMATS[-1]}"
        raise StateFormatError(f"the checkpoint holds symbol state format {fmt}, this version reads {readable}: "
                               "start from a new checkpoint (stream.checkpoint)")
    written, bucket = pickle.loads(blob)
    if written != buckets:
        raise StateFormatError(f"the checkpoint's state was written with stream.state_buckets={written}, not "
                               f"{buckets}: set it back, or start from a new checkpoint (stream.checkpoint)")
    if fmt < 5:  # {symbol: (timeout, pickled SymbolState)}
        return StateTable.of([(symbol, timeout, pickle.loads(pickled))
                              for symbol, (timeout, pickled) in bucket.items()])
    return bucket


def make_handler(cfg: KernelConfig, buckets: int):
    """The function given to ``applyInPandasWithState`` (Append mode, EventTimeTimeout), keyed by
    bucket. The kernel runs for each symbol with new ticks, and for each symbol whose own timer the
    watermark passed (Spark's rule: timeout < watermark) -- exactly the calls Spark would make with
    the symbol as the key. The bucket's timer is the earliest of its symbols' timers, so it fires
    whenever one of theirs would."""

    def handle(key: tuple, frames: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        watermark = max(state.getCurrentWatermarkMs(), 0)
        table = load_bucket(state, buckets)
        ticks = by_symbol(frames)
        row_of = dict(zip(table.symbols.tolist(), range(len(table)), strict=True))
        due = [s for s in table.symbols[table.timeouts < watermark].tolist() if s not in ticks]
        symbols = [*ticks, *due]
        rows = [row_of.get(symbol) for symbol in symbols]
        calls = [(symbol, ticks.get(symbol, _NO_TICKS), SymbolState() if row is None else table.state(row))
                 for symbol, row in zip(symbols, rows, strict=True)]
        output, after = kernel.process_bucket(calls, cfg, watermark)
        kept = [(symbol, timeout, symbol_state) for symbol, symbol_state in zip(symbols, after, strict=True)
                if (timeout := _timeout(symbol_state, watermark, cfg)) is not None]
        _save(_next_table(table, rows, kept), buckets, state)
        yield output

    return handle


def _next_table(table: StateTable, rows: list[int | None], kept: list[tuple[str, int, SymbolState]]) -> StateTable:
    """The bucket's table after a batch: its rows in their order, a called one (``rows``: each call's
    row, None for a symbol new to the bucket) replaced by its symbol's new state or gone (no state
    kept: not in ``kept``), then the new symbols' rows, in call order."""
    n = len(table)
    row_of_new = {symbol: n + k for k, (symbol, _, _) in enumerate(kept)}
    order = np.arange(n)
    for row in rows:
        if row is not None:
            order[row] = row_of_new.pop(table.symbols[row], -1)
    order = np.concatenate([order[order >= 0], np.fromiter(row_of_new.values(), dtype=np.int64)])
    return (table + StateTable.of(kept) if kept else table).take(order)


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


def _save(table: StateTable, buckets: int, state: GroupState) -> None:
    if not len(table):
        if state.exists:
            state.remove()
        return
    state.update((STATE_FORMAT, pickle.dumps((buckets, table), protocol=pickle.HIGHEST_PROTOCOL)))
    state.setTimeoutTimestamp(int(table.timeouts.min()))


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
        states.update({symbol: s for symbol, _, s in _bucket(fmt, blob, buckets).rows()})
    return states
