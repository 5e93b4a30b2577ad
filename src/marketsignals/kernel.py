"""The per-symbol signal kernel shared by the streaming job and the backtest (SPEC §1-5).

One call takes a symbol's new ticks (any arrival order) and the symbol's state, and returns the
signals to emit, the ticks it had to reject (late, duplicate, out of order) and the new state. The
streaming state handler keeps the state in Spark's state store between micro-batches and makes the
calls of a bucket of symbols together (process_bucket: the same calls, their indicators in one numpy
pass); the backtest calls it once per symbol with an empty state (process). Parity between the two is
a property of this design: there is no other code path that computes a signal.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import types as T

from marketsignals import indicators, layout, risk
from marketsignals.schema import (
    ACTION,
    ACTIONABLE,
    ASK,
    BID,
    CONFIDENCE,
    EMITTED_AT,
    EVENT_TIME,
    EXCHANGE,
    INDICATOR_COLUMNS,
    LIQUIDITY,
    MOMENTUM,
    OFFSET,
    PARTITION,
    POSITION_SIZE,
    PRICE,
    RAW,
    REASON,
    RISK_SCORE,
    SIGNAL_ID,
    SIGNAL_SCHEMA,
    STRATEGY_VERSION,
    SYMBOL,
    TOPIC,
    TRADING_SIGNAL,
    TS_MS,
    VOLATILITY_20,
    VOLATILITY_REGIME,
    VOLUME,
    Reason,
)
from marketsignals.settings import StrategySettings

KIND = "kind"
KIND_SIGNAL, KIND_REJECT, KIND_COUNT = "signal", "reject", "count"
PROCESSED = "processed"

# What the kernel emits: signal records (minus emitted_at, stamped by the sink), reject records
# and one count row per call, in one flat schema so Spark needs a single stateful operator.
OUTPUT_SCHEMA = T.StructType(
    [T.StructField(KIND, T.StringType(), False)]
    + [T.StructField(TS_MS, T.LongType(), True) if f.name == EVENT_TIME else T.StructField(f.name, f.dataType, True)
       for f in SIGNAL_SCHEMA.fields if f.name != EMITTED_AT]
    + [
        T.StructField(REASON, T.StringType(), True),
        T.StructField(RAW, T.StringType(), True),
        T.StructField(TOPIC, T.StringType(), True),
        T.StructField(PARTITION, T.IntegerType(), True),
        T.StructField(OFFSET, T.LongType(), True),
        T.StructField(PROCESSED, T.LongType(), True),
    ]
)
OUTPUT_COLUMNS: tuple[str, ...] = tuple(f.name for f in OUTPUT_SCHEMA.fields)

# The valid ticks' dtypes. Arrow hands a group's frame to pandas with an int64 column as float64 when
# the frame also holds a validation reject (null timestamp or volume): whether it does depends on the
# batch cut, so without this the duplicate keys of one tick were spelled "476880" in one batch and
# "476880.0" in another, and a copy arriving a batch later was processed twice (the soak found it).
TICK_DTYPES = {TS_MS: np.int64, VOLUME: np.int64, PRICE: np.float64, BID: np.float64, ASK: np.float64,
               PARTITION: np.int32, OFFSET: np.int64}
# Columns of a pending (event_time mode) tick kept in state, and their dtypes.
_PENDING = (TS_MS, EXCHANGE, PARTITION, OFFSET, TOPIC, PRICE, VOLUME, BID, ASK)
_PENDING_DTYPES = {c: TICK_DTYPES.get(c, object) for c in _PENDING}
# The columns of an exact-duplicate key (SPEC §1; the symbol is the call's), and the dtypes the state
# keeps its numeric ones in.
_KEY = (TS_MS, EXCHANGE, PRICE, VOLUME)
_KEY_DTYPES = {TS_MS: np.int64, VOLUME: np.int64, PRICE: np.float64}


@dataclass(frozen=True)
class KernelConfig:
    """The settings the kernel depends on (a slice of Settings, so it pickles small)."""

    strategy: StrategySettings
    ordering: str = "arrival"  # or "event_time"
    emission: str = "on_change"  # or "every"
    watermark_delay_ms: int = 30_000
    idle_timeout_ms: int = 3_600_000


@dataclass(frozen=True)
class SymbolState:
    """What a symbol carries between calls: bounded by HISTORY ticks plus the event-time buffer."""

    history: indicators.History = field(default_factory=indicators.History.empty)
    last_ts: int | None = None  # event time of the last processed tick
    high_water: int | None = None  # highest event time seen (lateness is measured from it)
    recent: Columns | None = None  # the _KEY columns of the last HISTORY processed ticks (duplicates)
    last_action: str = risk.HOLD  # actionable action of the last processed tick (on_change)
    pending: dict[str, np.ndarray] | None = None  # event_time mode: ticks the watermark has not passed

    @property
    def has_pending(self) -> bool:
        return self.pending is not None and len(self.pending[TS_MS]) > 0

    def __setstate__(self, fields: dict) -> None:
        # A format 2 pickle (stream/state.py): the dataclass's fields, its duplicate keys as text.
        object.__getattribute__(self, "__dict__").update(fields, recent=_recent_of_text(fields["recent"]))

    def __reduce__(self):
        # The state store keeps every symbol's state pickled (stream/state.py). Pickled as a dataclass,
        # a state with a full history took 11 us to pickle and 7.5 us to load here, most of it numpy
        # pickling the history's three small arrays one by one; with their float64 values as one bytes
        # string, 3 and 4 us.
        # The event-time buffer's nine columns likewise: each as its bytes, the text ones as lists; and
        # the duplicate keys' columns (_pickled_keys).
        h = self.history
        values = b"".join(np.asarray(a, dtype=np.float64).tobytes() for a in (h.price, h.volume, h.price_change_pct))
        recent = None if self.recent is None else _pickled_keys(self.recent, h)
        return _symbol_state_4, (values, self.last_ts, self.high_water, recent, self.last_action,
                                 packed_pending(self.pending))


def packed_pending(pending: Columns | None) -> tuple | None:
    """The event-time buffer's pickled form: each column as its bytes (its dtype beside), the text ones
    as lists (numpy pickles an array on its own at several times the cost)."""
    if pending is None:
        return None
    return tuple((k, None, v.tolist()) if v.dtype == object else (k, v.dtype.str, v.tobytes())
                 for k, v in pending.items())


def unpacked_pending(packed: tuple | None) -> Columns | None:
    """The event-time buffer from :func:`packed_pending`'s form; its numeric columns are read-only."""
    if packed is None:
        return None
    return {k: np.array(v, dtype=object) if dtype is None else np.frombuffer(v, dtype=dtype) for k, dtype, v in packed}


# The duplicate keys are the last HISTORY processed ticks, as is the indicators' history: their prices
# and volumes are mostly the history's own, and are pickled once. Which are is checked, not assumed.
PRICE_SHARED, VOLUME_SHARED = 1, 2
_EXACT_FLOAT = 2**53  # an int64 volume within +-this is exact as the history's float64


def _pickled_keys(recent: Columns, history: indicators.History) -> tuple[bytes, list, int]:
    """The duplicate keys' pickled form: their times, and their volumes and prices unless the history
    holds the same values (bit for bit), as one bytes string; their exchanges as a list (pickle writes
    a string object once and refers to it after: a symbol's few exchanges); which columns are shared."""
    ts, price, volume = (np.asarray(recent[c], dtype=_KEY_DTYPES[c]) for c in (TS_MS, PRICE, VOLUME))
    shared = shared_keys(price, volume, history.price, history.volume)  # equal bytes: equal lengths too
    return b"".join(a.tobytes() for a in packed_keys(ts, price, volume, shared)), recent[EXCHANGE].tolist(), shared


def shared_keys(price: np.ndarray, volume: np.ndarray, history_price: np.ndarray, history_volume: np.ndarray) -> int:
    """Which of the duplicate keys' prices and volumes (float64, int64) a history of the same ticks holds
    (the same values bit for bit; a volume only within +-2^53, where its float64 is exact)."""
    shared = PRICE_SHARED if history_price.tobytes() == price.tobytes() else 0
    exact = volume.min(initial=0) >= -_EXACT_FLOAT and volume.max(initial=0) <= _EXACT_FLOAT
    if exact and history_volume.tobytes() == volume.astype(np.float64).tobytes():
        shared |= VOLUME_SHARED
    return shared


def packed_keys(ts: np.ndarray, price: np.ndarray, volume: np.ndarray, shared: int) -> list[np.ndarray]:
    """The duplicate keys' numbers as they are pickled: times, then the volumes and prices the history
    does not hold (``shared``: shared_keys)."""
    return [ts, *(() if shared & VOLUME_SHARED else (volume,)), *(() if shared & PRICE_SHARED else (price,))]


def unpacked_keys(ints: np.ndarray, n: int, shared: int, history_price: np.ndarray,
                  history_volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The times, prices and volumes of ``n`` duplicate keys from packed_keys's numbers (``ints``, read as
    int64) and the history they share values with."""
    at = n
    if shared & VOLUME_SHARED:
        volume = history_volume.astype(np.int64)
    else:
        volume, at = ints[at:at + n], at + n
    price = history_price if shared & PRICE_SHARED else ints[at:at + n].view(np.float64)
    return ints[:n], price, volume


def _unpickled_keys(numbers: bytes, exchanges: list, shared: int, history: indicators.History) -> Columns:
    """The duplicate keys' columns from _pickled_keys's form and the history they share values with."""
    ts, price, volume = unpacked_keys(np.frombuffer(numbers, dtype=np.int64), len(exchanges), shared,
                                      history.price, history.volume)
    return {TS_MS: ts, EXCHANGE: np.array(exchanges, dtype=object), PRICE: price, VOLUME: volume}


def _symbol_state_4(values: bytes, last_ts: int | None, high_water: int | None,
                    recent: tuple[bytes, list, int] | None, last_action: str, pending: tuple | None) -> SymbolState:
    """A SymbolState from its pickled form (SymbolState.__reduce__); its numeric arrays are read-only."""
    flat = np.frombuffer(values, dtype=np.float64)
    n = len(flat) // 3
    history = indicators.History(flat[:n], flat[n:2 * n], flat[2 * n:])
    if recent is not None:
        recent = _unpickled_keys(*recent, history)
    return SymbolState(history, last_ts, high_water, recent, last_action, unpacked_pending(pending))


def _symbol_state(values: bytes, last_ts: int | None, high_water: int | None, recent: tuple[str, ...],
                  last_action: str, pending: tuple | None) -> SymbolState:
    """A SymbolState from a format 3 pickle: format 4's layout, but the duplicate keys as text."""
    state = _symbol_state_4(values, last_ts, high_water, None, last_action, pending)
    return dataclasses.replace(state, recent=_recent_of_text(recent))


def _recent_of_text(keys: tuple[str, ...]) -> Columns | None:
    """The duplicate keys' columns from their text form in formats 2 and 3, "{ts}|{exchange}|{price!r}|{volume}"
    (an exchange may hold "|": the time is before the first, price and volume after the last two)."""
    if not keys:
        return None
    split = [(k[:k.index("|")], *k[k.index("|") + 1:].rsplit("|", 2)) for k in keys]
    ts, exchange, price, volume = zip(*split, strict=True)
    return {TS_MS: np.array([int(t) for t in ts], dtype=np.int64), EXCHANGE: np.array(exchange, dtype=object),
            PRICE: np.array([float(p) for p in price], dtype=np.float64),
            VOLUME: np.array([int(v) if v.lstrip("-").isdigit() else int(float(v)) for v in volume], dtype=np.int64)}


@dataclass
class KernelResult:
    output: pd.DataFrame
    state: SymbolState
    processed: int


Columns = dict[str, np.ndarray]  # a set of ticks as equal-length numpy arrays (cheaper than pandas)
_NO_HIGH_WATER = -(2**62)


@dataclass(frozen=True, eq=False)
class States:
    """Several symbols' SymbolStates as columns, one row a symbol: what process_bucket takes and gives
    (the stream keeps a bucket's this way, stream/state.py). A row's history, duplicate keys and waiting
    ticks are its segment of columns laid end to end (their lengths per row; a length -1: none).
    SymbolState objects are made only for the calls that need _prepare's general path (:meth:`state`)."""

    last_ts: np.ndarray  # object: int | None
    high_water: np.ndarray  # object: int | None
    last_action: np.ndarray  # object: str
    history_len: np.ndarray  # int64
    history: tuple[np.ndarray, np.ndarray, np.ndarray]  # price, volume, price_change_pct: float64
    recent_len: np.ndarray  # int64, -1: none
    recent: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # _KEY: int64, object, float64, int64
    pending_len: np.ndarray  # int64, -1: no event-time buffer (arrival mode)
    pending: tuple[np.ndarray, ...]  # the waiting ticks' _PENDING columns, _PENDING_DTYPES

    @classmethod
    def of(cls, states: list[SymbolState]) -> States:
        """The columns of ``states``, a row each."""
        history = [s.history for s in states]
        recent = [s.recent for s in states if s.recent is not None]
        pending = [s.pending for s in states if s.pending is not None]
        return cls(
            last_ts=layout.objects([s.last_ts for s in states]),
            high_water=layout.objects([s.high_water for s in states]),
            last_action=layout.objects([s.last_action for s in states]),
            history_len=np.array([len(h) for h in history], dtype=np.int64),
            history=tuple(_joined([getattr(h, c) for h in history], np.float64)
                          for c in ("price", "volume", "price_change_pct")),
            recent_len=_lengths([s.recent for s in states]),
            recent=tuple(_joined([r[c] for r in recent], _KEY_DTYPES.get(c, object)) for c in _KEY),
            pending_len=_lengths([s.pending for s in states]),
            pending=tuple(_joined([p[c] for p in pending], _PENDING_DTYPES[c]) for c in _PENDING),
        )

    def __len__(self) -> int:
        return len(self.history_len)

    def state(self, row: int) -> SymbolState:
        """One row's SymbolState (its arrays are views of the columns)."""
        history_at, recent_at, pending_at = self._starts
        lo, hi = history_at[row], history_at[row + 1]
        history = indicators.History(*(c[lo:hi] for c in self.history))
        recent = pending = None
        if self.recent_len[row] >= 0:
            lo, hi = recent_at[row], recent_at[row + 1]
            recent = {k: c[lo:hi] for k, c in zip(_KEY, self.recent, strict=True)}
        if self.pending_len[row] >= 0:
            lo, hi = pending_at[row], pending_at[row + 1]
            pending = {k: c[lo:hi] for k, c in zip(_PENDING, self.pending, strict=True)}
        return SymbolState(history, self.last_ts[row], self.high_water[row], recent, self.last_action[row], pending)

    @functools.cached_property
    def _starts(self) -> tuple[list[int], list[int], list[int]]:
        """Where each row's history, keys and waiting ticks start in their columns (and where the last
        row's end)."""
        return tuple(np.concatenate([[0], np.cumsum(np.maximum(n, 0))]).tolist()
                     for n in (self.history_len, self.recent_len, self.pending_len))

    def take(self, rows: np.ndarray) -> States:
        """The rows ``rows`` (indices, in that order; one may come more than once)."""
        history = _spans(self.history_len, rows)
        recent, pending = (_spans(np.maximum(n, 0), rows) for n in (self.recent_len, self.pending_len))
        return States(
            last_ts=self.last_ts[rows], high_water=self.high_water[rows], last_action=self.last_action[rows],
            history_len=self.history_len[rows], history=tuple(c[history] for c in self.history),
            recent_len=self.recent_len[rows], recent=tuple(c[recent] for c in self.recent),
            pending_len=self.pending_len[rows], pending=tuple(c[pending] for c in self.pending))

    def waiting(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows holding waiting ticks, and the oldest event time waiting in each."""
        rows = np.flatnonzero(self.pending_len > 0)
        if not len(rows):
            return rows, np.empty(0, dtype=np.int64)
        times = self.pending[_PENDING.index(TS_MS)]
        return rows, np.minimum.reduceat(times, layout.starts(np.maximum(self.pending_len, 0))[rows])

    def __add__(self, other: States) -> States:
        """Both's rows, this one's first."""
        pairs = ((getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self))
        return States(*(tuple(map(np.concatenate, zip(a, b, strict=True))) if isinstance(a, tuple)
                        else np.concatenate([a, b]) for a, b in pairs))

    def called(self, rows: np.ndarray) -> States:
        """The rows ``rows`` in that order, a new symbol's (-1) a SymbolState()'s."""
        if not len(rows) or rows.min() >= 0:
            return self.take(rows)
        return (self + _BLANK).take(np.where(rows < 0, len(self), rows))


def _joined(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype=dtype)


def _lengths(columns: list[Columns | None]) -> np.ndarray:
    """Each set of ticks' length, -1 for None."""
    return np.array([-1 if c is None else len(c[TS_MS]) for c in columns], dtype=np.int64)


def _spans(lengths: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The positions, in a column laid out as consecutive segments of ``lengths``, of the segments of
    ``rows`` (in that order, end to end)."""
    return layout.segments(layout.starts(lengths)[rows], lengths[rows])


_BLANK = States.of([SymbolState()])


def signal_id(symbol: str, ts_ms: int, exchange: str, price: float, volume: int, version: str) -> str:
    """Deterministic id of the signal of one tick: the same tick and strategy give the same id."""
    text = f"{symbol}|{ts_ms}|{exchange}|{price!r}|{volume}|{version}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _take(ticks: Columns, index: np.ndarray) -> Columns:
    return {k: v[index] for k, v in ticks.items()}


def _length(ticks: Columns) -> int:
    return len(ticks[TS_MS])


def _ordered(ticks: Columns) -> Columns:
    """The ticks in SPEC §2 order: event time, exchange, then Kafka (partition, offset). A feed's
    ticks mostly come with rising event times, the order already: then the sort is skipped."""
    ts = ticks[TS_MS]
    if len(ts) < 2 or (ts[1:] > ts[:-1]).all():
        return ticks
    return _take(ticks, np.lexsort((ticks[OFFSET], ticks[PARTITION], ticks[EXCHANGE].astype(str), ts)))


def _keys(ticks: Columns, which: slice | np.ndarray = slice(None)) -> list[tuple]:
    """Exact-duplicate keys (SPEC §1: timestamp, exchange, price, volume; symbol is the group) of the
    ticks ``which`` selects (all by default), as tuples of Python values: an int64 volume and the
    same volume in a float64 column (a batch with a validation reject) make equal keys."""
    return list(zip(*(ticks[c][which].tolist() for c in _KEY), strict=True))


def columns_of(frame: pd.DataFrame) -> Columns:
    """The kernel's view of a pandas frame of ticks (missing Kafka coordinates are filled in:
    without them, as in a backtest file, the input order is the last tie-break)."""
    n = len(frame)
    ticks = {c: frame[c].to_numpy() for c in frame.columns}
    ticks.setdefault(PARTITION, np.zeros(n, dtype=np.int32))
    ticks.setdefault(OFFSET, np.arange(n, dtype=np.int64))
    ticks.setdefault(TOPIC, np.full(n, None, dtype=object))
    return ticks


def _typed(ticks: Columns) -> Columns:
    if all(v.dtype == TICK_DTYPES[k] for k, v in ticks.items() if k in TICK_DTYPES):
        return ticks
    return {k: v.astype(TICK_DTYPES[k], copy=False) if k in TICK_DTYPES and v.dtype != TICK_DTYPES[k] else v
            for k, v in ticks.items()}


def process(symbol: str, ticks: Columns, state: SymbolState, cfg: KernelConfig,
            watermark_ms: int | None) -> KernelResult:
    """Run one symbol's new ``ticks`` (see :func:`columns_of`) through ordering, lateness,
    duplicates, indicators, risk and emission. ``ticks`` may carry ``reason``/``raw`` (rejected by
    validation: passed straight to the output). ``watermark_ms`` is the stream's watermark; None in
    the backtest, where history is processed in event-time order and nothing is late."""
    output, after = process_bucket([symbol], ticks, np.array([_length(ticks)]), States.of([state]), cfg, watermark_ms)
    return KernelResult(output, after.state(0), int(output[PROCESSED].iloc[-1]))


def process_bucket(symbols: list[str], ticks: Columns, counts: np.ndarray, states: States, cfg: KernelConfig,
                   watermark_ms: int | None) -> tuple[pd.DataFrame, States]:
    """:func:`process` for several symbols at once: each call (a symbol, its next ``counts`` ticks of
    ``ticks``, the calls' ticks laid end to end, and its row of ``states``) gives the same rows and new
    state as on its own, but indicators, risk and emission run in one numpy pass over all the calls'
    ticks (at ~20 ticks a symbol, numpy's cost per call was most of the kernel's), and the states are
    taken and given as columns (a row a call). One OUTPUT_SCHEMA frame: every call's rejects, then the
    signals (each symbol's in its order), then one count row per call."""
    outputs, ready, ready_counts, prepared = _prepare_bucket(symbols, ticks, counts, states, cfg, watermark_ms)
    after, signals = _compute(symbols, ready, ready_counts, prepared, cfg)
    parts = [part for out in outputs for part in out.parts]
    if signals is not None:
        parts.append(signals)
    parts.append({KIND: np.full(len(symbols), KIND_COUNT, dtype=object), SYMBOL: layout.objects(symbols),
                  PROCESSED: ready_counts})
    return _frame(parts), after


def joined(calls: list[Columns]) -> tuple[Columns, np.ndarray]:
    """Calls' ticks (see :func:`columns_of`) laid end to end as :func:`process_bucket` takes them, and
    how many each call has (a call without validation rejects may lack the reason and raw columns)."""
    names = {c: None for call in calls for c in call}
    columns = {c: np.concatenate([call[c] if c in call else np.full(_length(call), None, dtype=object)
                                  for call in calls]) for c in names}
    return columns, np.array([_length(call) for call in calls], dtype=np.int64)


def _prepare_bucket(symbols: list[str], ticks: Columns, counts: np.ndarray, states: States, cfg: KernelConfig,
                    watermark_ms: int | None) -> tuple[list[_Output], Columns, np.ndarray, States]:
    """:func:`_prepare` of each call. Most calls need none of its checks' work, and which do is found for
    all the calls at once (a handful of numpy passes for a bucket, not a dozen numpy calls a symbol):
    only those go through :func:`_prepare`. In arrival mode the others' ticks hold no validation reject,
    come in rising event time, all after the symbol's last processed tick, none late, and no tick is
    waiting: they stay where they are and only raise the high-water mark. In event_time mode see
    :func:`_released`. Returns each call's output, the ticks ready to compute (end to end, as many a call
    as the counts say), and the states with their new high-water marks and event-time buffers."""
    if cfg.ordering == "event_time" and watermark_ms is not None:
        return _prepare_event_time(symbols, ticks, counts, states, cfg, watermark_ms)
    clean, newest = _clean_calls(ticks, counts, states, cfg, watermark_ms)
    high_water = states.high_water.copy()
    at = np.flatnonzero(clean)
    high_water[at] = layout.objects(np.maximum(_times(high_water[at]), newest[at]).tolist())
    outputs = [_NO_REJECTS] * len(symbols)
    ready_counts = counts.copy()
    pieces: dict[str, list[np.ndarray]] = {c: [] for c in _PENDING}
    end = np.cumsum(counts).tolist()
    done = 0  # the ticks up to here are in pieces
    general = np.flatnonzero(~clean).tolist()
    for call in general:
        lo, hi = end[call] - counts[call], end[call]
        out, ready, state = _prepare(symbols[call], {c: v[lo:hi] for c, v in ticks.items()}, states.state(call), cfg,
                                     watermark_ms)
        outputs[call], ready_counts[call], high_water[call] = out, _length(ready), state.high_water
        for c, p in pieces.items():
            p += [ticks[c][done:lo], ready[c]]
        done = hi
    if general:
        ready = {c: np.concatenate([*p, ticks[c][done:]]) for c, p in pieces.items()}
    else:
        ready = {c: ticks[c] for c in _PENDING}
    # Typed once all rejects are out. A clean call's column may be float64 (its bucket held a validation
    # reject, whose null Arrow gives as NaN) beside another call's typed int64: its values came from
    # float64 too, so they are exact through the float64 of the concatenation. No tick waits in this mode.
    return outputs, _typed(ready), ready_counts, dataclasses.replace(
        states, high_water=high_water, pending_len=np.full(len(counts), -1, dtype=np.int64),
        pending=_BLANK.pending)


def _prepare_event_time(symbols: list[str], ticks: Columns, counts: np.ndarray, states: States, cfg: KernelConfig,
                        watermark_ms: int) -> tuple[list[_Output], Columns, np.ndarray, States]:
    """_prepare_bucket in event_time mode: the released calls' (:func:`_released`) ready ticks and
    buffers for all of them at once, each other call's from :func:`_prepare`; then both laid out in call
    order."""
    released, ready, ready_counts, high_water, pending_len, pending = _released(ticks, counts, states, cfg,
                                                                               watermark_ms)
    general = np.flatnonzero(~released)
    if not len(general):
        return ([_NO_REJECTS] * len(symbols), ready, ready_counts,
                dataclasses.replace(states, high_water=high_water, pending_len=pending_len, pending=pending))
    outputs = [_NO_REJECTS] * len(symbols)
    end = np.cumsum(counts).tolist()
    prepared = []
    for call in general.tolist():
        lo, hi = end[call] - counts[call], end[call]
        out, ready_ticks, state = _prepare(symbols[call], {c: v[lo:hi] for c, v in ticks.items()},
                                           states.state(call), cfg, watermark_ms)
        outputs[call], high_water[call] = out, state.high_water
        prepared.append((ready_ticks, state.pending))
    ready_counts[general] = [_length(r) for r, _ in prepared]
    pending_len[general] = _lengths([p for _, p in prepared])
    ready = _in_call_order(ready, ready_counts, general, [r for r, _ in prepared])
    pending = _in_call_order(dict(zip(_PENDING, pending, strict=True)), np.maximum(pending_len, 0), general,
                             [p for _, p in prepared if p is not None])
    return outputs, ready, ready_counts, dataclasses.replace(
        states, high_water=high_water, pending_len=pending_len, pending=tuple(pending[c] for c in _PENDING))


def _in_call_order(columns: Columns, counts: np.ndarray, calls: np.ndarray, theirs: list[Columns]) -> Columns:
    """``columns`` (``counts`` rows a call, end to end, none yet for ``calls``) with each of ``calls``'s
    rows (``theirs``, in that order; a call with none may be left out) in their places."""
    own = counts.copy()
    own[calls] = 0
    call = np.concatenate([np.repeat(np.arange(len(counts)), own), np.repeat(calls, counts[calls])])
    order = np.argsort(call, kind="stable")
    return {c: np.concatenate([v, *(t[c] for t in theirs)]).astype(_PENDING_DTYPES[c], copy=False)[order]
            for c, v in columns.items()}


def _released(ticks: Columns, counts: np.ndarray, states: States, cfg: KernelConfig, watermark_ms: int) -> tuple:
    """Event_time mode's calls whose ticks need none of _prepare's checks but the pooling: no validation
    reject, none late, none at or before the last processed tick's time, none an exact copy of another
    new or waiting tick (a copy has its original's time, so only where times are shared is a key
    compared) -- most calls. Each one's ticks and waiting ticks are pooled in SPEC §2 order and those the
    watermark has passed are released, as _prepare does, for all those calls at once (a call whose pool
    already has rising times, as a feed's ticks mostly come after those waiting, is not sorted). Returns
    which calls those are; their ready ticks (end to end, as many a call as the counts say: 0 for the
    other calls); the states' high-water marks and event-time buffers (lengths and columns) with theirs
    new (the other calls' lengths 0, none in the columns)."""
    n = len(counts)
    ends = np.cumsum(counts)
    starts = ends - counts
    ts = _event_times(ticks)
    ok = _without_rejects(ticks, starts, ends)
    filled = np.flatnonzero(counts)
    newest = np.full(n, _NO_HIGH_WATER, dtype=np.int64)
    if len(filled):
        oldest, top = np.minimum.reduceat(ts, starts[filled]), np.maximum.reduceat(ts, starts[filled])
        ok[filled] &= (oldest > _times(states.last_ts[filled])) & _none_late(
            oldest, top, _times(states.high_water[filled]), watermark_ms, cfg)
        newest[filled] = np.where(ok[filled], top, _NO_HIGH_WATER)

    # those calls' pools, end to end: a call's waiting ticks, then its new ones (typed: no reject among them)
    waiting_len = np.maximum(states.pending_len, 0)
    held, mine = np.where(ok, waiting_len, 0), np.where(ok, counts, 0)
    waiting_ts = states.pending[_PENDING.index(TS_MS)]
    at = layout.segments(np.column_stack([layout.starts(waiting_len), len(waiting_ts) + starts]).ravel(),
                         np.column_stack([held, mine]).ravel())
    pool = {c: np.concatenate([waiting, ticks[c]])[at].astype(_PENDING_DTYPES[c], copy=False)
            for c, waiting in zip(_PENDING, states.pending, strict=True)}
    call = np.repeat(np.arange(n), held + mine)
    new = at >= len(waiting_ts)
    t = pool[TS_MS]
    unsorted = np.zeros(n, dtype=bool)
    unsorted[call[1:][(t[1:] <= t[:-1]) & (call[1:] == call[:-1])]] = True
    if unsorted.any():  # those calls' ticks by time (each call's block stays where it is)
        some = np.flatnonzero(unsorted[call])
        by_time = some[np.lexsort((t[some], call[some]))]
        for v in (*pool.values(), new):
            v[some] = v[by_time]
        # where a time is shared: the copies, and SPEC §2 order (exchange, then Kafka's coordinates)
        tie = (t[1:] == t[:-1]) & (call[1:] == call[:-1])
        if tie.any():
            tied = np.zeros(len(t), dtype=bool)
            tied[1:] |= tie
            tied[:-1] |= tie
            shared = np.flatnonzero(tied)
            part, c, fresh = _take(pool, shared), call[shared], new[shared]
            exchange = part[EXCHANGE].astype(str)
            key = np.lexsort((part[VOLUME], part[PRICE], exchange, part[TS_MS], c))
            same = np.logical_and.reduce([k[key][1:] == k[key][:-1] for k in (c, part[TS_MS], exchange,
                                                                             part[PRICE], part[VOLUME])])
            # (a waiting tick is no copy of another waiting one: each was checked when it came)
            ok[c[key][1:][same & (fresh[key][1:] | fresh[key][:-1])]] = False
            order = np.lexsort((part[OFFSET], part[PARTITION], exchange, part[TS_MS], c))
            for name, v in pool.items():
                v[shared] = part[name][order]
        kept = ok[call]
        pool, call = _take(pool, kept), call[kept]
    ready = pool[TS_MS] < watermark_ms
    high_water = states.high_water.copy()
    raised = np.flatnonzero(ok & (newest > _NO_HIGH_WATER))
    high_water[raised] = layout.objects(np.maximum(_times(high_water[raised]), newest[raised]).tolist())
    pending_len = np.where(ok, np.bincount(call[~ready], minlength=n), 0)
    return (ok, _take(pool, ready), np.bincount(call[ready], minlength=n), high_water, pending_len,
            tuple(pool[c][~ready] for c in _PENDING))


def _event_times(ticks: Columns) -> np.ndarray:
    """The ticks' event times; a validation reject's null time as NaN (its call is never one that skips
    _prepare: the reason says so, :func:`_without_rejects`)."""
    ts = ticks[TS_MS]
    return ts.astype(np.float64) if ts.dtype == object else ts


def _without_rejects(ticks: Columns, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each call's ticks (``starts`` to ``ends`` of ``ticks``) hold no validation reject."""
    if REASON not in ticks:
        return np.ones(len(ends), dtype=bool)
    bad = np.zeros(len(ticks[REASON]) + 1, dtype=np.int64)
    np.cumsum(pd.notna(ticks[REASON]), out=bad[1:])
    return bad[ends] == bad[starts]


def _clean_calls(ticks: Columns, counts: np.ndarray, states: States, cfg: KernelConfig,
                 watermark_ms: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Which calls :func:`_prepare` would only raise the high-water mark of (see :func:`_prepare_bucket`;
    arrival mode, or no watermark: in event_time mode see :func:`_released`), and each call's newest event
    time (meaningful for those)."""
    none = np.zeros(len(counts), dtype=bool)
    ends = np.cumsum(counts)
    starts = ends - counts
    filled = counts > 0
    if not filled.any():
        return none, none.astype(np.int64)
    ts = _event_times(ticks)
    # steps that do not rise (or involve a NaN time), counted up to each position: a call's own are
    # those after its first tick
    falls = np.zeros(len(ts), dtype=np.int64)
    np.cumsum(~(ts[1:] > ts[:-1]), out=falls[1:])
    last = np.where(filled, ends - 1, 0)
    first = np.where(filled, starts, 0)
    clean = filled & (falls[last] == falls[first]) & _without_rejects(ticks, starts, ends)
    oldest, newest = ts[first], ts[last]
    clean &= oldest > _times(states.last_ts)
    clean &= states.pending_len <= 0
    if watermark_ms is not None:
        clean &= _none_late(oldest, newest, _times(states.high_water), watermark_ms, cfg)
    return clean, np.where(clean, newest, 0).astype(np.int64)


def _prepare(symbol: str, ticks: Columns, state: SymbolState, cfg: KernelConfig,
             watermark_ms: int | None) -> tuple[_Output, Columns, SymbolState]:
    """Everything before the indicators: the output's rejects, the ticks ready to compute (in SPEC §2
    order) and the state with its new high-water mark and event-time buffer."""
    out = _Output(symbol)
    if REASON in ticks:
        bad = pd.notna(ticks[REASON])
        if bad.any():
            out.add_rejects(_take(ticks, bad), ticks[REASON][bad])
            ticks = _take(ticks, ~bad)
    ticks = _typed(ticks)
    n = _length(ticks)
    high_water = state.high_water
    seen = _NO_HIGH_WATER if high_water is None else high_water  # the highest event time before this call
    if n and watermark_ms is not None and not _none_late(int(ticks[TS_MS].min()), int(ticks[TS_MS].max()), seen,
                                                         watermark_ms, cfg):
        # Late: behind the stream's watermark, or more than the watermark delay behind the highest
        # event time its symbol had when it arrived -- so a late tick is late whatever the batch cut.
        arrival = np.lexsort((ticks[OFFSET], ticks[PARTITION]))
        ts_arrival = ticks[TS_MS][arrival].astype(np.int64)
        before = np.maximum.accumulate(np.concatenate([[seen], ts_arrival]))[:-1]
        late = np.empty(n, dtype=bool)
        late[arrival] = ts_arrival < np.maximum(before - cfg.watermark_delay_ms, watermark_ms)
        if late.any():
            out.add_rejects(_take(ticks, late), Reason.LATE)
            ticks = _take(ticks, ~late)
    if _length(ticks):
        top = int(ticks[TS_MS].max())
        high_water = top if high_water is None else max(high_water, top)

    ticks = _ordered(ticks)
    dup = _duplicates(ticks, state)
    if dup is not None:
        out.add_rejects(_take(ticks, dup), Reason.DUPLICATE)
        ticks = _take(ticks, ~dup)

    pending = None
    if cfg.ordering == "event_time" and watermark_ms is not None:
        # Ticks wait until the watermark passes them (ts < watermark, Spark's own rule: a tick at
        # the watermark is not late, so its equals may still arrive), then go in SPEC §2 order.
        # The state timer (state.py) fires on the same rule, so whether a tick is released by its
        # symbol's new data or by the timer, the cut is the same whatever the batch boundaries.
        # (One the watermark had already passed when it arrived was rejected as late above.)
        pool = {c: ticks[c] for c in _PENDING}
        if state.has_pending:
            pool = {c: np.concatenate([state.pending[c], pool[c]]) for c in _PENDING}
        pool = _ordered(pool)
        ready = pool[TS_MS] < watermark_ms
        ticks, pending = _take(pool, ready), _take(pool, ~ready)
    elif state.last_ts is not None and _length(ticks) and ticks[TS_MS][0] < state.last_ts:  # [0]: the oldest
        older = ticks[TS_MS] < state.last_ts
        if older.any():
            out.add_rejects(_take(ticks, older), Reason.OUT_OF_ORDER)
            ticks = _take(ticks, ~older)
    return out, ticks, SymbolState(history=state.history, last_ts=state.last_ts, high_water=high_water,
                                   recent=state.recent, last_action=state.last_action, pending=pending)


def _duplicates(ticks: Columns, state: SymbolState) -> np.ndarray | None:
    """Which of a symbol's new ticks (in SPEC §2 order) are exact copies of a tick seen before: a
    recent processed one, a waiting one (event_time mode) or an earlier one of the same call; None
    when none is. A copy has its original's event time, so only a tick at a time another new tick
    shares, at or before the last processed tick's, or at a waiting tick's can be one, and only
    their keys are built. (No recent key is newer than the last processed tick: each call processes
    its ticks in event-time order, none older than the last one -- arrival mode rejects those, and
    event_time mode releases only ticks the watermark has passed, newer than any released before.)
    Most ticks are none of those: at 100 symbols a batch holds ~2,000 ticks a symbol. The state keeps
    the key columns of the last 49 processed ones (_compute); keys are made of those at a candidate's
    time only."""
    ts = ticks[TS_MS]
    n = len(ts)
    candidate = None
    if n > 1:
        shared = ts[1:] == ts[:-1]
        if shared.any():
            candidate = np.zeros(n, dtype=bool)
            candidate[1:] |= shared
            candidate[:-1] |= shared
    if n and state.last_ts is not None and ts[0] <= state.last_ts:
        candidate = (ts <= state.last_ts) if candidate is None else candidate | (ts <= state.last_ts)
    waiting_keys = []
    if state.has_pending:
        same_time = _isin(state.pending[TS_MS], ts)
        if same_time.any():
            waiting_keys = _keys(state.pending, same_time)
            waiting = _isin(ts, state.pending[TS_MS][same_time])
            candidate = waiting if candidate is None else candidate | waiting
    if candidate is None:
        return None
    index = np.flatnonzero(candidate)
    seen = set(waiting_keys)
    if state.recent is not None:  # only a recent tick at a candidate's time can be its original
        near = _isin(state.recent[TS_MS], ts[index])
        if near.any():
            seen.update(_keys(state.recent, near))
    dup = np.zeros(n, dtype=bool)
    for i, key in zip(index.tolist(), _keys(ticks, index), strict=True):
        if key in seen:
            dup[i] = True
        else:
            seen.add(key)
    return dup if dup.any() else None


def _isin(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """np.isin for the few event times one call compares (its ticks', its waiting ticks', its keys'): up
    to a few thousand pairs, one broadcast comparison (np.isin's fixed cost was a quarter of event_time
    mode's handler at 10,000 symbols)."""
    if len(values) * len(among) <= 4096:
        return (values[:, None] == among).any(axis=1)
    return np.isin(values, among)


def _none_late(oldest, newest, high_water, watermark_ms: int, cfg: KernelConfig):
    """True when no tick of a call whose ticks span [oldest, newest] can be late (the common case): none
    is behind the watermark, and none is more than the delay behind the highest event time seen, which
    bounds the highest one seen before any tick arrived (``high_water``: _NO_HIGH_WATER for none).
    Elementwise over arrays, one element a call (_clean_calls), as over one call's numbers (_prepare)."""
    return (oldest >= watermark_ms) & (oldest >= np.maximum(high_water, newest) - cfg.watermark_delay_ms)


def _times(values: np.ndarray) -> np.ndarray:
    """Event times that may be unknown (a States column of last times or high-water marks) as int64,
    None as _NO_HIGH_WATER (before any time)."""
    return np.where(np.equal(values, None), _NO_HIGH_WATER, values).astype(np.int64)


def _compute(symbols: list[str], ticks: Columns, counts: np.ndarray, states: States,
             cfg: KernelConfig) -> tuple[States, dict[str, np.ndarray] | None]:
    """Indicators, risk and emission for each call's ready ticks (``counts`` a call of ``ticks``, end to
    end, each call's in order), all calls in one pass. A gap longer than the idle timeout starts a new
    series -- exactly what evicting an idle symbol's state does in the stream. Returns the calls' new
    states and the signal rows of all (or None)."""
    filled = np.flatnonzero(counts)
    if not len(filled):
        return states, None
    ts = ticks[TS_MS]
    series_call, lengths, fresh = _series(ts, counts[filled], _times(states.last_ts[filled]), cfg)
    row = filled[series_call]  # the row of states each series continues (unless fresh: a blank state)
    history_len = np.where(fresh, 0, states.history_len[row])
    history_at = layout.segments(layout.starts(states.history_len)[row], history_len)
    price = ticks[PRICE].astype(np.float64, copy=False)
    volume = ticks[VOLUME].astype(np.int64, copy=False)
    ind, tails, tail_len = indicators.rolling_indicators_many(
        price, volume, ticks[BID], ticks[ASK], lengths, history_len, tuple(c[history_at] for c in states.history))
    cols = risk.risk_columns(price, volume, ind, cfg.strategy)
    actionable = cols[ACTIONABLE]
    action = np.where(actionable, cols[TRADING_SIGNAL], risk.HOLD)
    first = layout.starts(lengths)  # each series' first tick
    if cfg.emission == "every":
        emit = actionable
    else:  # on_change: emit when the actionable action changes into BUY or SELL
        before = np.empty(len(action), dtype=object)
        before[1:] = action[:-1]
        before[first] = np.where(fresh, risk.HOLD, states.last_action[row])
        emit = actionable & (action != before)
    signals = None
    if emit.any():
        symbol = layout.objects(symbols)[np.repeat(row, lengths)]
        signals = _signal_rows(symbol[emit], _take(ticks, emit), {k: v[emit] for k, v in ind.items()},
                               {k: v[emit] for k, v in cols.items()}, cfg.strategy.version)

    # a call's new state continues its last series (an earlier one of the same call was cut by a gap)
    ends = np.flatnonzero(np.append(series_call[1:] != series_call[:-1], True))
    last = first[ends] + lengths[ends] - 1  # each state's last tick
    tail_at = layout.segments(layout.starts(tail_len)[ends], tail_len[ends])
    recent_len, recent = _last_keys(states, row[ends], fresh[ends], {TS_MS: ts, EXCHANGE: ticks[EXCHANGE],
                                                                    PRICE: price, VOLUME: volume},
                                    first[ends], lengths[ends])
    waiting = _spans(np.maximum(states.pending_len, 0), filled)
    computed = States(last_ts=layout.objects(ts[last].tolist()), high_water=states.high_water[filled],
                      last_action=layout.objects(action[last].tolist()), history_len=tail_len[ends],
                      history=tuple(c[tail_at] for c in tails), recent_len=recent_len, recent=recent,
                      pending_len=states.pending_len[filled], pending=tuple(c[waiting] for c in states.pending))
    if len(filled) == len(states):
        return computed, signals
    order = np.arange(len(states))  # the calls without ready ticks keep their states
    order[filled] = len(states) + np.arange(len(filled))
    return (states + computed).take(order), signals


def _series(ts: np.ndarray, counts: np.ndarray, last_seen: np.ndarray,
            cfg: KernelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The series in calls' ready ticks laid end to end (``counts`` a call; each call's event times
    ``ts`` in order): a call's ticks are one series, but for a gap longer than the idle timeout, from one
    tick to the next or from the call's last processed tick (``last_seen``, _NO_HIGH_WATER for none).
    Returns each series' call (its index in ``counts``), its length, and whether it begins after such
    a gap (from a blank state)."""
    call_start = layout.starts(counts)
    previous = np.empty_like(ts)
    previous[1:] = ts[:-1]
    previous[call_start] = np.where(last_seen == _NO_HIGH_WATER, ts[call_start], last_seen)
    gap = ts - previous > cfg.idle_timeout_ms
    begins = gap.copy()
    begins[call_start] = True
    first = np.flatnonzero(begins)
    call = np.repeat(np.arange(len(counts)), counts)[first]
    return call, np.diff(np.append(first, len(ts))), gap[first]


def _last_keys(states: States, rows: np.ndarray, fresh: np.ndarray, ticks: Columns, first: np.ndarray,
               lengths: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The duplicate keys of new states: each continues row ``rows`` of ``states`` (a blank state where
    ``fresh``) with the ``lengths`` ticks from ``first`` of ``ticks``, and keeps the key columns of the
    last HISTORY of its row's keys and those ticks. Returns their lengths and their columns, laid out
    end to end (one gather a column for all the states)."""
    taken = np.minimum(lengths, indicators.HISTORY)
    had = states.recent_len[rows]
    kept = np.where(fresh | (had < 0), 0, np.minimum(indicators.HISTORY - taken, had))
    held = np.maximum(states.recent_len, 0)
    old = layout.starts(held)[rows] + np.maximum(had, 0) - kept  # the last `kept` of the row's keys
    new = len(states.recent[0]) + first + lengths - taken  # the last `taken` ticks, after the keys
    at = layout.segments(np.column_stack([old, new]).ravel(), np.column_stack([kept, taken]).ravel())
    return kept + taken, tuple(np.concatenate([keys, ticks[c]]).astype(_KEY_DTYPES.get(c, object), copy=False)[at]
                               for c, keys in zip(_KEY, states.recent, strict=True))


def _signal_rows(symbol: np.ndarray, ticks: Columns, ind: dict, cols: dict, version: str) -> dict[str, np.ndarray]:
    """The signal records of the emitting ticks (one symbol per row), as one output part."""
    ts = ticks[TS_MS].astype(np.int64)
    price = ticks[PRICE].astype(np.float64)
    volume = ticks[VOLUME].astype(np.int64)
    exchange = ticks[EXCHANGE]
    n = len(ts)
    ids = [signal_id(s, t, e, p, v, version) for s, t, e, p, v in
           zip(symbol.tolist(), ts.tolist(), exchange.tolist(), price.tolist(), volume.tolist(), strict=True)]
    return {
        KIND: np.full(n, KIND_SIGNAL, dtype=object), SIGNAL_ID: np.array(ids, dtype=object),
        SYMBOL: symbol, ACTION: cols[TRADING_SIGNAL], PRICE: price,
        CONFIDENCE: cols[CONFIDENCE], RISK_SCORE: cols[RISK_SCORE], "volatility": ind[VOLATILITY_20],
        "momentum": cols[MOMENTUM].astype(np.int32), TS_MS: ts, POSITION_SIZE: cols[POSITION_SIZE],
        VOLUME: volume, BID: ticks[BID].astype(np.float64), ASK: ticks[ASK].astype(np.float64),
        EXCHANGE: exchange, **{c: ind[c] for c in INDICATOR_COLUMNS},
        VOLATILITY_REGIME: cols[VOLATILITY_REGIME], LIQUIDITY: cols[LIQUIDITY],
        STRATEGY_VERSION: np.full(n, version, dtype=object),
        TOPIC: ticks[TOPIC], PARTITION: ticks[PARTITION], OFFSET: ticks[OFFSET],
    }


class _Output:
    """Collects one call's reject rows column-wise (its signals and count row are added by process_bucket)."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.parts: list[dict[str, np.ndarray]] = []

    def add_rejects(self, ticks: Columns, reason) -> None:
        n = _length(ticks)
        raw = ticks[RAW].astype(object) if RAW in ticks else np.full(n, None, dtype=object)
        # rejected here after parsing (late, duplicate, out of order: one reason for all): the fields as
        # JSON. A validation reject keeps its raw value as it came, null for a Kafka null value.
        missing = pd.isna(raw) if isinstance(reason, str) else np.zeros(n, dtype=bool)
        if missing.any():
            sub = _take(ticks, missing)
            raw[missing] = [
                json.dumps({"symbol": self.symbol, "timestamp": int(t), "price": float(p), "volume": int(v),
                            "bid": float(b), "ask": float(a), "exchange": e}, separators=(",", ":"))
                for t, p, v, b, a, e in zip(sub[TS_MS], sub[PRICE], sub[VOLUME], sub[BID], sub[ASK],
                                            sub[EXCHANGE], strict=True)
            ]
        self.parts.append({
            KIND: np.full(n, KIND_REJECT, dtype=object),
            REASON: np.full(n, reason, dtype=object) if isinstance(reason, str) else reason.astype(object),
            RAW: raw,
            SYMBOL: ticks[SYMBOL] if SYMBOL in ticks else np.full(n, self.symbol, dtype=object),
            TOPIC: ticks[TOPIC], PARTITION: ticks[PARTITION], OFFSET: ticks[OFFSET],
        })


_NO_REJECTS = _Output("")  # a clean call's (_prepare_bucket): shared, so its parts cannot grow
_NO_REJECTS.parts = ()


def _frame(parts: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    """OUTPUT_SCHEMA rows from output parts (a column a part lacks is null in its rows). Event time is
    ``ts_ms`` here; the stream and backtest edges turn it into a timestamp. A NaN in a float column
    stands for null: Arrow's transfer to Spark makes it null."""
    data = {}
    for col in OUTPUT_COLUMNS:
        pieces = [p[col] if col in p else np.full(len(p[KIND]), None, dtype=object) for p in parts]
        data[col] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return pd.DataFrame(data, copy=False)
