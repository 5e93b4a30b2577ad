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
import hashlib
import itertools
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import types as T

from marketsignals import indicators, risk
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

# Columns of a pending (event_time mode) tick kept in state.
_PENDING = (TS_MS, EXCHANGE, PARTITION, OFFSET, TOPIC, PRICE, VOLUME, BID, ASK)
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


def _last_keys(recents: list[Columns | None], ticks: Columns, spans: list[tuple[int, int]]) -> list[Columns]:
    """For each span [lo, hi) of ``ticks``, the key columns of the last HISTORY ticks of its ``recents``
    entry followed by the span's ticks. All spans' keys are laid out in one new array per column (one
    concatenation a column for a bucket, not four a symbol); each span's are views of them."""
    pieces: dict[str, list[np.ndarray]] = {c: [] for c in _KEY}
    bounds, at = [], 0
    for recent, (lo, hi) in zip(recents, spans, strict=True):
        lo = max(lo, hi - indicators.HISTORY)
        keep = indicators.HISTORY - (hi - lo)
        n = hi - lo
        if recent is not None and keep > 0:
            for c in _KEY:
                pieces[c].append(recent[c][-keep:])
            n += min(keep, len(recent[TS_MS]))
        for c in _KEY:
            pieces[c].append(ticks[c][lo:hi])
        bounds.append((at, at + n))
        at += n
    layout = {c: np.concatenate(p).astype(_KEY_DTYPES.get(c, object), copy=False) for c, p in pieces.items()}
    return [{c: v[a:b] for c, v in layout.items()} for a, b in bounds]


def columns_of(frame: pd.DataFrame) -> Columns:
    """The kernel's view of a pandas frame of ticks (missing Kafka coordinates are filled in:
    without them, as in a backtest file, the input order is the last tie-break)."""
    n = len(frame)
    ticks = {c: frame[c].to_numpy() for c in frame.columns}
    ticks.setdefault(PARTITION, np.zeros(n, dtype=np.int32))
    ticks.setdefault(OFFSET, np.arange(n, dtype=np.int64))
    ticks.setdefault(TOPIC, np.full(n, None, dtype=object))
    return ticks


# The valid ticks' dtypes. Arrow hands a group's frame to pandas with an int64 column as float64 when
# the frame also holds a validation reject (null timestamp or volume): whether it does depends on the
# batch cut, so without this the duplicate keys of one tick were spelled "476880" in one batch and
# "476880.0" in another, and a copy arriving a batch later was processed twice (the soak found it).
TICK_DTYPES = {TS_MS: np.int64, VOLUME: np.int64, PRICE: np.float64, BID: np.float64, ASK: np.float64,
               PARTITION: np.int32, OFFSET: np.int64}


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
    output, (state,) = process_bucket([(symbol, ticks, state)], cfg, watermark_ms)
    return KernelResult(output, state, int(output[PROCESSED].iloc[-1]))


def process_bucket(calls: list[tuple[str, Columns, SymbolState]], cfg: KernelConfig,
                   watermark_ms: int | None) -> tuple[pd.DataFrame, list[SymbolState]]:
    """:func:`process` for several symbols at once: each (symbol, ticks, state) call gives the same
    rows and new state as on its own, but indicators, risk and emission run in one numpy pass over
    all the calls' ticks (at ~20 ticks a symbol, numpy's cost per call was most of the kernel's).
    One OUTPUT_SCHEMA frame: every call's rejects, then the signals (each symbol's in its order),
    then one count row per call."""
    prepared = _prepare_bucket(calls, cfg, watermark_ms)
    symbols = [symbol for symbol, _, _ in calls]
    states, signals = _compute(symbols, [ready for _, ready, _ in prepared], [state for _, _, state in prepared], cfg)
    parts = [part for out, _, _ in prepared for part in out.parts]
    if signals is not None:
        parts.append(signals)
    parts.append({KIND: np.full(len(calls), KIND_COUNT, dtype=object), SYMBOL: np.array(symbols, dtype=object),
                  PROCESSED: np.array([_length(ready) for _, ready, _ in prepared], dtype=np.int64)})
    return _frame(parts), states


def _prepare_bucket(calls: list[tuple[str, Columns, SymbolState]], cfg: KernelConfig,
                    watermark_ms: int | None) -> list[tuple[_Output, Columns, SymbolState]]:
    """:func:`_prepare` of each call. Most calls need none of its work but the new high-water mark:
    their ticks hold no validation reject, come in rising event time, all after the symbol's last
    processed tick, none late, and no tick is waiting (arrival mode). Which do is found for all the
    calls at once, from their ticks laid end to end (a handful of numpy passes for a bucket, not a
    dozen numpy calls a symbol); the others go through :func:`_prepare`."""
    clean = _clean_calls(calls, cfg, watermark_ms)
    prepared = []
    for (symbol, ticks, state), top in zip(calls, clean, strict=True):
        if top is None:
            prepared.append(_prepare(symbol, ticks, state, cfg, watermark_ms))
        else:
            high_water = top if state.high_water is None else max(state.high_water, top)
            prepared.append((_NO_REJECTS, _typed(ticks), SymbolState(
                history=state.history, last_ts=state.last_ts, high_water=high_water, recent=state.recent,
                last_action=state.last_action, pending=None)))
    return prepared


def _clean_calls(calls: list[tuple[str, Columns, SymbolState]], cfg: KernelConfig,
                 watermark_ms: int | None) -> list[int | None]:
    """For each call, its newest event time if :func:`_prepare` would only raise its high-water mark
    with it (see :func:`_prepare_bucket`), else None."""
    if not calls or (cfg.ordering == "event_time" and watermark_ms is not None):
        return [None] * len(calls)  # event_time mode: ticks wait for the watermark (_prepare)
    lengths = np.array([_length(ticks) for _, ticks, _ in calls], dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    filled = lengths > 0
    if not filled.any():
        return [None] * len(calls)
    ts = np.concatenate([ticks[TS_MS] for _, ticks, _ in calls])
    if ts.dtype == object:  # a validation reject's null time (its call is not clean: the reason says so)
        ts = ts.astype(np.float64)
    # steps that do not rise (or involve a NaN time), counted up to each position: a call's own are
    # those after its first tick
    falls = np.zeros(len(ts), dtype=np.int64)
    np.cumsum(~(ts[1:] > ts[:-1]), out=falls[1:])
    last = np.where(filled, ends - 1, 0)
    first = np.where(filled, starts, 0)
    clean = filled & (falls[last] == falls[first])
    if any(REASON in ticks for _, ticks, _ in calls):
        reasons = np.concatenate([ticks[REASON] if REASON in ticks else np.full(_length(ticks), None, dtype=object)
                                  for _, ticks, _ in calls])
        bad = np.zeros(len(ts) + 1, dtype=np.int64)
        np.cumsum(pd.notna(reasons), out=bad[1:])
        clean &= bad[ends] == bad[starts]
    oldest, newest = ts[first], ts[last]
    clean &= oldest > _times([s.last_ts for _, _, s in calls])
    clean &= np.array([not s.has_pending for _, _, s in calls])
    if watermark_ms is not None:
        clean &= _none_late(oldest, newest, _times([s.high_water for _, _, s in calls]), watermark_ms, cfg)
    return [int(t) if ok else None for ok, t in zip(clean.tolist(), newest.tolist(), strict=True)]


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
        same_time = np.isin(state.pending[TS_MS], ts)
        if same_time.any():
            waiting_keys = _keys(state.pending, same_time)
            waiting = np.isin(ts, state.pending[TS_MS][same_time])
            candidate = waiting if candidate is None else candidate | waiting
    if candidate is None:
        return None
    index = np.flatnonzero(candidate)
    seen = set(waiting_keys)
    if state.recent is not None:  # only a recent tick at a candidate's time can be its original
        near = np.isin(state.recent[TS_MS], ts[index])
        if near.any():
            seen.update(_keys(state.recent, near))
    dup = np.zeros(n, dtype=bool)
    for i, key in zip(index.tolist(), _keys(ticks, index), strict=True):
        if key in seen:
            dup[i] = True
        else:
            seen.add(key)
    return dup if dup.any() else None


def _none_late(oldest, newest, high_water, watermark_ms: int, cfg: KernelConfig):
    """True when no tick of a call whose ticks span [oldest, newest] can be late (the common case): none
    is behind the watermark, and none is more than the delay behind the highest event time seen, which
    bounds the highest one seen before any tick arrived (``high_water``: _NO_HIGH_WATER for none).
    Elementwise over arrays, one element a call (_clean_calls), as over one call's numbers (_prepare)."""
    return (oldest >= watermark_ms) & (oldest >= np.maximum(high_water, newest) - cfg.watermark_delay_ms)


def _times(values: list[int | None]) -> np.ndarray:
    """Event times that may be unknown (a state's last time, its high-water mark) as int64, None as
    _NO_HIGH_WATER (before any time)."""
    return np.array([_NO_HIGH_WATER if v is None else v for v in values], dtype=np.int64)


def _compute(symbols: list[str], ready: list[Columns], states: list[SymbolState],
             cfg: KernelConfig) -> tuple[list[SymbolState], dict[str, np.ndarray] | None]:
    """Indicators, risk and emission for each symbol's ready ticks (in order), all symbols in one pass.
    A gap longer than the idle timeout starts a new series -- exactly what evicting an idle symbol's
    state does in the stream. Returns the new states and the signal rows of all symbols (or None)."""
    filled = [call for call, ticks in enumerate(ready) if _length(ticks)]
    if not filled:
        return list(states), None
    # all calls' ticks end to end (their series are consecutive pieces of them)
    ticks = {c: np.concatenate([ready[call][c] for call in filled]) for c in _PENDING}
    ts = ticks[TS_MS].astype(np.int64, copy=False)
    counts = [_length(ready[call]) for call in filled]
    call_end = np.cumsum(counts)
    call_start = call_end - counts
    last_seen = _times([states[call].last_ts for call in filled])
    previous = np.where(last_seen == _NO_HIGH_WATER, ts[call_start], last_seen)
    # in order, so no gap is longer than a call's span: only a call spanning more than the timeout is cut
    spanning = set(np.flatnonzero(ts[call_end - 1] - previous > cfg.idle_timeout_ms).tolist())
    series: list[tuple[int, int, int, SymbolState]] = []  # (call, first tick, end, state it continues)
    for k, (call, n) in enumerate(zip(filled, counts, strict=True)):
        state = states[call]
        if k not in spanning:
            series.append((call, 0, n, state))
            continue
        gaps = np.diff(ts[call_start[k]:call_end[k]], prepend=previous[k])
        cuts = np.nonzero(gaps > cfg.idle_timeout_ms)[0].tolist()
        for lo, hi in itertools.pairwise(sorted({0, *cuts, n})):
            begin = SymbolState(high_water=state.high_water, pending=state.pending) if lo in cuts else state
            series.append((call, lo, hi, begin))

    lengths = [hi - lo for _, lo, hi, _ in series]
    price = ticks[PRICE].astype(np.float64)
    volume = ticks[VOLUME].astype(np.int64)
    ind, tails = indicators.rolling_indicators_many(price, volume, ticks[BID], ticks[ASK], lengths,
                                                    [begin.history for *_, begin in series])
    cols = risk.risk_columns(price, volume, ind, cfg.strategy)
    actionable = cols[ACTIONABLE]
    action = np.where(actionable, cols[TRADING_SIGNAL], risk.HOLD)
    first = np.cumsum([0, *lengths[:-1]])  # each series' first tick
    if cfg.emission == "every":
        emit = actionable
    else:  # on_change: emit when the actionable action changes into BUY or SELL
        before = np.empty(len(action), dtype=object)
        before[1:] = action[:-1]
        before[first] = [begin.last_action for *_, begin in series]
        emit = actionable & (action != before)
    signals = None
    if emit.any():
        symbol = np.array(symbols, dtype=object)[np.repeat([call for call, *_ in series], lengths)]
        signals = _signal_rows(symbol[emit], _take(ticks, emit), {k: v[emit] for k, v in ind.items()},
                               {k: v[emit] for k, v in cols.items()}, cfg.strategy.version)

    states = list(states)
    # a symbol's new state continues its last series (an earlier one of the same call was cut by a gap)
    ends = [k for k in range(len(series)) if k + 1 == len(series) or series[k + 1][0] != series[k][0]]
    keys = _last_keys([series[k][3].recent for k in ends], {TS_MS: ticks[TS_MS], EXCHANGE: ticks[EXCHANGE],
                                                             PRICE: price, VOLUME: volume},
                      [(first[k], first[k] + lengths[k]) for k in ends])
    last = np.array([first[k] + lengths[k] - 1 for k in ends], dtype=np.int64)  # each state's last tick
    for k, recent, last_ts, last_action in zip(ends, keys, ts[last].tolist(), action[last].tolist(), strict=True):
        call, _, _, begin = series[k]
        states[call] = SymbolState(history=tails[k], last_ts=last_ts, high_water=begin.high_water,
                                   recent=recent, last_action=last_action, pending=begin.pending)
    return states, signals


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
