"""The strategy simulation: one position per symbol, driven by the signals, filled on the ticks.

Rules (numbers from :class:`marketsignals.settings.BacktestSettings`):

* BUY targets a long of ``floor(recommended_position_size / ask)`` shares -- the size is currency
  notional, priced at what a buy pays. SELL targets flat, or with ``allow_short`` a short of
  ``floor(recommended_position_size / bid)`` shares. A signal without a size keeps the target.
* When the target differs from the position, the difference trades on the fill tick: the tick after
  the signal's tick (``fill=next_tick``) or the signal's own tick (``same_tick``). Buys pay the ask,
  sells get the bid, and every fill pays ``fee_bps`` of its notional. A signal with no tick after it
  (next_tick) is never filled and is counted as unfilled.
* Positions are marked to the mid ``(bid + ask) / 2`` of the last tick of each mark interval
  (``mark_interval``); PnL is the change of ``cash + position × mark``. Amounts are in the symbol's
  own currency (no FX conversion).
* The benchmark buys and holds each symbol from its first tick: a fractional position worth one unit
  of money at that tick's ask (scaled to the allocation by the caller), plus the fee, marked to mid.

A symbol's ticks are taken in SPEC §2 order (event time, exchange; then price and volume where a file
has no Kafka coordinates), exact duplicates once -- as the kernel saw them.

All of it runs in one ``groupBy(symbol).applyInPandas`` pass over the valid ticks and the signals;
the pass emits flat records of four kinds (trade, round trip, mark-interval bar, symbol total) that
the table functions below split. Nothing is collected to the driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketsignals.risk import BUY, SELL
from marketsignals.schema import (
    ACTION,
    ASK,
    BID,
    CURRENCY,
    EVENT_TIME,
    EXCHANGE,
    POSITION_SIZE,
    PRICE,
    SIGNAL_ID,
    SYMBOL,
    TS_MS,
    VOLUME,
)
from marketsignals.settings import BacktestSettings

DAY_MS = 86_400_000
BPS = 10_000.0

# --- simulation input: valid ticks and signal records of a symbol, in one frame -----------------------
SIM_INPUT_SCHEMA = T.StructType([
    T.StructField(SYMBOL, T.StringType()),
    T.StructField(TS_MS, T.LongType()),
    T.StructField(EXCHANGE, T.StringType()),
    T.StructField(PRICE, T.DoubleType()),
    T.StructField(VOLUME, T.LongType()),
    T.StructField(BID, T.DoubleType()),
    T.StructField(ASK, T.DoubleType()),
    T.StructField(CURRENCY, T.StringType()),
    T.StructField(SIGNAL_ID, T.StringType()),  # null on a tick row
    T.StructField(ACTION, T.StringType()),  # null on a tick row
    T.StructField(POSITION_SIZE, T.LongType()),
])
TICK_INPUT = (SYMBOL, TS_MS, EXCHANGE, PRICE, VOLUME, BID, ASK, CURRENCY)
SIGNAL_INPUT = (SYMBOL, EXCHANGE, PRICE, VOLUME, BID, ASK, SIGNAL_ID, ACTION, POSITION_SIZE)
# What identifies the tick a signal was emitted on (the kernel's exact-duplicate key, SPEC §1).
TICK_KEY = (TS_MS, EXCHANGE, PRICE, VOLUME)

# --- output records -----------------------------------------------------------------------------------
RECORD = "record"
TRADE, ROUND_TRIP, BAR, SYMBOL_TOTAL = "trade", "round_trip", "bar", "symbol"

# trade
TIME_MS, SIDE, QTY, NOTIONAL, FEE = "time_ms", "side", "qty", "notional", "fee"
POSITION, SIGNAL_TIME_MS = "position", "signal_time_ms"
# round trip
DIRECTION, OPEN_MS, CLOSE_MS, MAX_QTY, FILLS = "direction", "open_time_ms", "close_time_ms", "max_qty", "fills"
ENTRY_NOTIONAL, EXIT_NOTIONAL = "entry_notional", "exit_notional"
FEES, PNL, TRADE_RETURN = "fees", "pnl", "trade_return"
# mark-interval bar
BAR_MS, TRADED, TRADES, MARK, GROSS = "bar_start_ms", "traded_notional", "trades", "mark", "gross_notional"
BENCH_PNL_UNIT, BENCH_ENTRIES = "benchmark_pnl_per_unit", "benchmark_entries"
# tables (timestamps and dates where the records carry epoch milliseconds)
BAR_START, DATE, OPEN_POSITIONS = "bar_start", "date", "open_positions"
# symbol total
FIRST_MS, LAST_MS, TICKS, SIGNALS = "first_time_ms", "last_time_ms", "ticks", "signals"
UNFILLED, ROUND_TRIPS, WINS, REALIZED = "unfilled_signals", "round_trips", "winning_round_trips", "realized_pnl"
IN_MARKET_MS, SPAN_MS = "in_market_ms", "span_ms"
FIRST_ASK, LAST_MID, BENCH_RETURN = "first_ask", "last_mid", "benchmark_return"
LONG, SHORT = "LONG", "SHORT"

_LONG_COLUMNS = (TIME_MS, QTY, POSITION, SIGNAL_TIME_MS, OPEN_MS, CLOSE_MS, MAX_QTY, FILLS, BAR_MS, TRADES,
                 BENCH_ENTRIES, FIRST_MS, LAST_MS, TICKS, SIGNALS, UNFILLED, ROUND_TRIPS, WINS,
                 IN_MARKET_MS, SPAN_MS)
_DOUBLE_COLUMNS = (PRICE, NOTIONAL, FEE, ENTRY_NOTIONAL, EXIT_NOTIONAL, FEES, PNL, TRADE_RETURN, TRADED,
                   MARK, GROSS, BENCH_PNL_UNIT, REALIZED, FIRST_ASK, LAST_MID, BENCH_RETURN)
_STRING_COLUMNS = (RECORD, SYMBOL, SIDE, SIGNAL_ID, DIRECTION, CURRENCY)
RECORD_SCHEMA = T.StructType(
    [T.StructField(c, T.StringType()) for c in _STRING_COLUMNS]
    + [T.StructField(c, T.LongType()) for c in _LONG_COLUMNS]
    + [T.StructField(c, T.DoubleType()) for c in _DOUBLE_COLUMNS]
)
RECORD_COLUMNS: tuple[str, ...] = tuple(f.name for f in RECORD_SCHEMA.fields)


@dataclass(frozen=True)
class SimulationConfig:
    """The settings the simulation depends on (small, so it pickles to the Python workers)."""

    fill: str = "next_tick"  # or "same_tick"
    fee_bps: float = 1.0
    allow_short: bool = False
    mark_interval_ms: int = 3_600_000

    @classmethod
    def from_settings(cls, backtest: BacktestSettings) -> SimulationConfig:
        return cls(fill=backtest.fill, fee_bps=backtest.fee_bps, allow_short=backtest.allow_short,
                   mark_interval_ms=backtest.mark_interval_ms)

    @property
    def fee_rate(self) -> float:
        """Fee as a fraction of traded notional."""
        return self.fee_bps / BPS

    @property
    def fill_offset(self) -> int:
        """Ticks between a signal's tick and its fill tick."""
        return 1 if self.fill == "next_tick" else 0


# --- Spark side ---------------------------------------------------------------------------------------
def simulation_input(ticks: DataFrame, signals: DataFrame) -> DataFrame:
    """Valid ticks (with ``ts_ms`` and ``currency``, e.g. the validated history) and SPEC §4 signal
    records as one frame of :data:`SIM_INPUT_SCHEMA`; tick rows have a null ``action``."""
    tick_rows = _as_input(ticks, {c: F.col(c) for c in TICK_INPUT})
    signal_rows = _as_input(signals, {c: F.col(c) for c in SIGNAL_INPUT} | {TS_MS: F.unix_millis(EVENT_TIME)})
    return tick_rows.unionByName(signal_rows)


def _as_input(frame: DataFrame, columns: dict[str, Column]) -> DataFrame:
    return frame.select(*[columns.get(f.name, F.lit(None)).cast(f.dataType).alias(f.name)
                          for f in SIM_INPUT_SCHEMA.fields])


def simulate(ticks: DataFrame, signals: DataFrame, cfg: SimulationConfig) -> DataFrame:
    """The simulation records (:data:`RECORD_SCHEMA`) of every symbol: one distributed pass."""

    def run(key: tuple, rows: pd.DataFrame) -> pd.DataFrame:
        return simulate_symbol(key[0], rows, cfg)

    return simulation_input(ticks, signals).groupBy(SYMBOL).applyInPandas(run, RECORD_SCHEMA)


def _ts(name: str) -> Column:
    return F.timestamp_millis(F.col(name))


def _records(records: DataFrame, kind: str, *columns: Column | str) -> DataFrame:
    return records.filter(F.col(RECORD) == kind).select(*columns)


def trades(records: DataFrame) -> DataFrame:
    """One row per fill: symbol, time (fill tick's event time), side BUY/SELL, qty (shares, > 0),
    price (ask for a buy, bid for a sell), notional = qty × price, fee, position after the fill,
    and the signal that caused it (signal_id, signal_time)."""
    return _records(records, TRADE, SYMBOL, _ts(TIME_MS).alias("time"), SIDE, QTY, PRICE, NOTIONAL, FEE,
                    POSITION, SIGNAL_ID, _ts(SIGNAL_TIME_MS).alias("signal_time"))


def round_trips(records: DataFrame) -> DataFrame:
    """One row per closed round trip (flat -> position -> flat; a flip closes one and opens another):
    direction LONG/SHORT, open/close time, largest absolute position, fills, entry and exit
    notional, fees, pnl (all cash flows, fees included) and trade_return = pnl / entry_notional.
    A position still open at the end of the history is not a round trip (its PnL is marked)."""
    return _records(records, ROUND_TRIP, SYMBOL, DIRECTION, _ts(OPEN_MS).alias("open_time"),
                    _ts(CLOSE_MS).alias("close_time"), MAX_QTY, FILLS, ENTRY_NOTIONAL, EXIT_NOTIONAL, FEES,
                    PNL, TRADE_RETURN)


def symbol_bars(records: DataFrame) -> DataFrame:
    """Per symbol and mark interval (from the symbol's first to its last tick, intervals without
    ticks included): pnl (mark-to-market change), fees, traded notional, trades, position, mark
    (mid of the interval's last tick), gross notional = |position| × mark, the benchmark's pnl per
    unit of money allocated, and benchmark_entries (1 in the benchmark's buying interval)."""
    return _records(records, BAR, SYMBOL, _ts(BAR_MS).alias(BAR_START), PNL, FEES, TRADED, TRADES,
                    POSITION, MARK, GROSS, BENCH_PNL_UNIT, BENCH_ENTRIES)


def symbol_pnl(records: DataFrame) -> DataFrame:
    """One row per symbol: activity counts, pnl (marked at the last tick), realized_pnl (closed round
    trips), fees, final position, time in market / observed span (ms; exposure = their ratio) and
    the buy-and-hold benchmark's return (last mid / first ask - 1 - fee)."""
    return _records(records, SYMBOL_TOTAL, SYMBOL, CURRENCY, _ts(FIRST_MS).alias("first_time"),
                    _ts(LAST_MS).alias("last_time"), TICKS, SIGNALS, UNFILLED, TRADES, ROUND_TRIPS, WINS,
                    TRADED, FEES, REALIZED, PNL, POSITION, IN_MARKET_MS, SPAN_MS, FIRST_ASK, LAST_MID,
                    BENCH_RETURN)


def symbol_daily_pnl(bars: DataFrame) -> DataFrame:
    """Per symbol and UTC date, from :func:`symbol_bars`: pnl (marked at the day's last mid), fees,
    traded notional, trades, and the position and mark at the day's end."""
    last = F.struct(F.col(BAR_START), F.col(POSITION).alias("p"), F.col(MARK).alias("m"))
    return (bars.groupBy(SYMBOL, F.to_date(BAR_START).alias(DATE))
            .agg(F.sum(PNL).alias(PNL), F.sum(FEES).alias(FEES), F.sum(TRADED).alias(TRADED),
                 F.sum(TRADES).alias(TRADES), F.max(last).alias("_last"))
            .select(SYMBOL, DATE, PNL, FEES, TRADED, TRADES, F.col("_last.p").alias(POSITION),
                    F.col("_last.m").alias(MARK)))


def portfolio_bars(bars: DataFrame) -> DataFrame:
    """The whole book per mark interval, from :func:`symbol_bars` (one row per interval: small
    enough to collect): sums of pnl, fees, traded notional, trades, gross notional, benchmark pnl per
    unit and benchmark entries, and the number of open positions."""
    return (bars.groupBy(BAR_START)
            .agg(*[F.sum(c).alias(c) for c in (PNL, FEES, TRADED, TRADES, GROSS, BENCH_PNL_UNIT, BENCH_ENTRIES)],
                 F.count(F.when(F.col(POSITION) != 0, 1)).alias(OPEN_POSITIONS))
            .orderBy(BAR_START))


# --- per symbol (pandas / numpy, inside the Python worker) ---------------------------------------------
def simulate_symbol(symbol: str, rows: pd.DataFrame, cfg: SimulationConfig) -> pd.DataFrame:
    """All records of one symbol from its rows of :data:`SIM_INPUT_SCHEMA`."""
    is_signal = rows[ACTION].notna().to_numpy()
    ticks = (rows.loc[~is_signal].drop_duplicates(list(TICK_KEY))
             .sort_values(list(TICK_KEY), kind="stable").reset_index(drop=True))
    if ticks.empty:
        return pd.DataFrame(columns=list(RECORD_COLUMNS))
    signals = _locate_signals(rows.loc[is_signal], ticks)
    ts = ticks[TS_MS].to_numpy(np.int64)
    bid, ask = ticks[BID].to_numpy(np.float64), ticks[ASK].to_numpy(np.float64)
    mid = (bid + ask) / 2.0

    fills = _fills(signals, bid, ask, len(ticks), cfg)
    pos_change = np.zeros(len(ticks), dtype=np.int64)
    cash_change = np.zeros(len(ticks))
    np.add.at(pos_change, fills.tick, fills.delta)
    np.add.at(cash_change, fills.tick, -fills.delta * fills.price - fills.fee)
    position = np.cumsum(pos_change)
    equity = np.cumsum(cash_change) + position * mid  # the symbol's PnL so far, marked to mid

    trips = _round_trips(ts[fills.tick], fills.delta, fills.price, fills.fee)
    bars = _bars(ts, mid, ask[0], position, equity, fills, cfg)
    in_market = int(np.diff(ts)[position[:-1] != 0].sum())
    total = {
        CURRENCY: ticks[CURRENCY].iloc[-1], FIRST_MS: int(ts[0]), LAST_MS: int(ts[-1]), TICKS: len(ticks),
        SIGNALS: len(signals), UNFILLED: len(signals) - int(fills.filled.sum()), TRADES: len(fills.tick),
        ROUND_TRIPS: len(trips), WINS: int((trips[PNL] > 0).sum()) if len(trips) else 0,
        TRADED: float(fills.notional.sum()), FEES: float(fills.fee.sum()),
        REALIZED: float(trips[PNL].sum()) if len(trips) else 0.0, PNL: float(equity[-1]),
        POSITION: int(position[-1]), IN_MARKET_MS: in_market, SPAN_MS: int(ts[-1] - ts[0]),
        FIRST_ASK: float(ask[0]), LAST_MID: float(mid[-1]),
        BENCH_RETURN: float(mid[-1] / ask[0] - 1.0 - cfg.fee_rate),
    }
    trade_rows = pd.DataFrame({
        TIME_MS: ts[fills.tick], SIDE: np.where(fills.delta > 0, BUY, SELL), QTY: np.abs(fills.delta),
        PRICE: fills.price, NOTIONAL: fills.notional, FEE: fills.fee, POSITION: position[fills.tick],
        SIGNAL_ID: fills.signal_id, SIGNAL_TIME_MS: fills.signal_ms,
    })
    return _flat(symbol, {TRADE: trade_rows, ROUND_TRIP: trips, BAR: bars,
                          SYMBOL_TOTAL: pd.DataFrame([total])})


def _locate_signals(signals: pd.DataFrame, ticks: pd.DataFrame) -> pd.DataFrame:
    """The signals with ``tick``: the index of the tick each was emitted on, in tick order."""
    index = ticks[list(TICK_KEY)].assign(tick=np.arange(len(ticks)))
    located = signals.merge(index, on=list(TICK_KEY), how="inner")
    return located.sort_values("tick", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class _Fills:
    """The fills of one symbol, as parallel arrays in time order (``filled``: per signal)."""

    tick: np.ndarray  # fill tick index
    delta: np.ndarray  # signed shares (+ buy, - sell)
    price: np.ndarray
    notional: np.ndarray
    fee: np.ndarray
    signal_id: np.ndarray
    signal_ms: np.ndarray
    filled: np.ndarray


def _fills(signals: pd.DataFrame, bid: np.ndarray, ask: np.ndarray, n_ticks: int,
           cfg: SimulationConfig) -> _Fills:
    """Targets from the signals, then the trades that move the position from target to target."""
    at = signals["tick"].to_numpy(np.int64) + cfg.fill_offset
    filled = at < n_ticks
    at = at[filled]
    action = signals[ACTION].to_numpy()[filled]
    size = signals[POSITION_SIZE].to_numpy(np.float64, na_value=np.nan)[filled]
    short_target = -np.floor(size / bid[at]) if cfg.allow_short else np.zeros(len(at))
    target = np.where(action == BUY, np.floor(size / ask[at]), short_target)
    # No size: the target stays where it was (forward fill; 0 before the first sized signal).
    target = pd.Series(target).ffill().fillna(0.0).to_numpy(np.int64)
    delta = np.diff(target, prepend=0)
    trade = delta != 0
    at, delta = at[trade], delta[trade]
    price = np.where(delta > 0, ask[at], bid[at])
    notional = np.abs(delta) * price
    return _Fills(tick=at, delta=delta, price=price, notional=notional, fee=notional * cfg.fee_rate,
                  signal_id=signals[SIGNAL_ID].to_numpy()[filled][trade],
                  signal_ms=signals[TS_MS].to_numpy(np.int64)[filled][trade], filled=filled)


def _round_trips(time_ms: np.ndarray, delta: np.ndarray, price: np.ndarray, fee: np.ndarray) -> pd.DataFrame:
    """Round trips from the fills in order. A fill that flips the position is split: the part that
    closes belongs to the old trip, the rest opens a new one; its fee is shared in proportion."""
    trips: list[dict] = []
    position = 0
    trip: dict | None = None
    for t, d, px, f in zip(time_ms.tolist(), delta.tolist(), price.tolist(), fee.tolist(), strict=True):
        closing = 0
        if position and (d > 0) != (position > 0):
            closing = d if abs(d) <= abs(position) else -position
        for qty, is_closing in ((closing, True), (d - closing, False)):
            if not qty:
                continue
            if trip is None:
                trip = {DIRECTION: LONG if qty > 0 else SHORT, OPEN_MS: t, MAX_QTY: 0, FILLS: 0,
                        ENTRY_NOTIONAL: 0.0, EXIT_NOTIONAL: 0.0, FEES: 0.0, PNL: 0.0}
            part_fee = f * abs(qty) / abs(d)
            trip[EXIT_NOTIONAL if is_closing else ENTRY_NOTIONAL] += abs(qty) * px
            trip[FEES] += part_fee
            trip[PNL] -= qty * px + part_fee
            trip[FILLS] += 1
            position += qty
            trip[MAX_QTY] = max(trip[MAX_QTY], abs(position))
            if position == 0:
                trip[CLOSE_MS] = t
                trip[TRADE_RETURN] = trip[PNL] / trip[ENTRY_NOTIONAL] if trip[ENTRY_NOTIONAL] else math.nan
                trips.append(trip)
                trip = None
    return pd.DataFrame(trips)


def _bars(ts: np.ndarray, mid: np.ndarray, first_ask: float, position: np.ndarray, equity: np.ndarray,
          fills: _Fills, cfg: SimulationConfig) -> pd.DataFrame:
    """Mark-interval rows from the symbol's first to its last interval (empty intervals carry the
    previous mark, so sums over symbols per interval see every open position)."""
    interval = cfg.mark_interval_ms
    bar_of_tick = ts // interval
    first = int(bar_of_tick[0])
    bars = np.arange(first, int(bar_of_tick[-1]) + 1)
    last_tick = np.searchsorted(bar_of_tick, bars, side="right") - 1  # last tick at or before each bar's end
    fill_bar = bar_of_tick[fills.tick] - first
    per_bar = {name: np.bincount(fill_bar, weights=values, minlength=len(bars))
               for name, values in ((FEES, fills.fee), (TRADED, fills.notional))}
    benchmark = mid[last_tick] / first_ask - 1.0 - cfg.fee_rate  # per unit of money, marked to mid
    entries = np.zeros(len(bars), dtype=np.int64)
    entries[0] = 1
    return pd.DataFrame({
        BAR_MS: bars * interval, PNL: np.diff(equity[last_tick], prepend=0.0), FEES: per_bar[FEES],
        TRADED: per_bar[TRADED], TRADES: np.bincount(fill_bar, minlength=len(bars)),
        POSITION: position[last_tick], MARK: mid[last_tick],
        GROSS: np.abs(position[last_tick]) * mid[last_tick],
        BENCH_PNL_UNIT: np.diff(benchmark, prepend=0.0), BENCH_ENTRIES: entries,
    })


def _flat(symbol: str, parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The parts as one frame of :data:`RECORD_COLUMNS` (absent columns null, integer columns nullable)."""
    frames = [part.assign(**{RECORD: kind}) for kind, part in parts.items() if len(part)]
    out = pd.concat(frames, ignore_index=True).reindex(columns=list(RECORD_COLUMNS))
    out[SYMBOL] = symbol
    return out.astype({c: "Int64" for c in _LONG_COLUMNS} | {c: "float64" for c in _DOUBLE_COLUMNS})
