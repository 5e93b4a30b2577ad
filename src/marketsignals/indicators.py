"""Per-symbol indicators of SPEC §2.

Two implementations of one definition:

* :func:`rolling_indicators` — the kernel (numpy) used by the streaming state handler *and* the
  backtest. It takes the ticks to compute plus the symbol's history tail (at most
  ``HISTORY`` ticks), so the result for a tick never depends on where micro-batches were cut: each
  window is reduced on its own, from the same values in the same order (bitwise identical).
* :func:`with_indicators` — Spark batch window functions over a whole data set. Streaming rejects
  these (``NON_TIME_WINDOW_NOT_SUPPORTED_IN_STREAMING``); they are the reference the kernel is tested
  against, and a convenient transform for research on small DataFrames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from marketsignals.layout import segments
from marketsignals.schema import (
    ASK,
    BID,
    BID_ASK_SPREAD,
    ORDER_KEYS,
    PRICE,
    PRICE_CHANGE,
    PRICE_CHANGE_PCT,
    SMA_20,
    SMA_50,
    SPREAD_PCT,
    SYMBOL,
    VOLATILITY_20,
    VOLUME,
    VWAP,
)

VWAP_TICKS = 11
SMA_SHORT_TICKS = 20
SMA_LONG_TICKS = 50
VOLATILITY_TICKS = 20
# Ticks of history the next tick's windows need (the longest window minus the tick itself).
HISTORY = max(VWAP_TICKS, SMA_SHORT_TICKS, SMA_LONG_TICKS, VOLATILITY_TICKS) - 1


@dataclass(frozen=True)
class History:
    """The tail of a symbol's processed ticks that the next windows need (oldest first)."""

    price: np.ndarray
    volume: np.ndarray
    price_change_pct: np.ndarray

    @classmethod
    def empty(cls) -> History:
        return cls(np.empty(0), np.empty(0), np.empty(0))

    def __len__(self) -> int:
        return len(self.price)


# A window reaches WIDEST - 1 ticks back: a series' history is laid out after enough NaNs to make that
# many (see rolling_indicators_many).
WIDEST = max(VWAP_TICKS, SMA_SHORT_TICKS, SMA_LONG_TICKS, VOLATILITY_TICKS)


def _rows(layout: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """The ``width``-value window of ``layout`` ending at each position in ``at`` (a copy)."""
    return sliding_window_view(layout, width)[at - (width - 1)]


def rolling_indicators(price: np.ndarray, volume: np.ndarray, bid: np.ndarray, ask: np.ndarray,
                       history: History) -> tuple[dict[str, np.ndarray], History]:
    """SPEC §2 indicators for ticks already in order, continuing ``history``.

    Returns the indicator columns (float arrays, NaN = null) and the new history tail.
    price_change is null on a symbol's first tick; vwap is null when the window's volume is 0;
    volatility_20 ignores nulls and is null with fewer than 2 values.
    """
    columns, tail, _ = rolling_indicators_many(price, volume, bid, ask, [len(price)], [len(history)],
                                               (history.price, history.volume, history.price_change_pct))
    return columns, History(*tail)


def rolling_indicators_many(price: np.ndarray, volume: np.ndarray, bid: np.ndarray, ask: np.ndarray, lengths,
                            history_lengths, history: tuple[np.ndarray, np.ndarray, np.ndarray],
                            ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """:func:`rolling_indicators` of several independent series in one pass: series k is the next
    ``lengths[k]`` ticks of the arrays and continues a history of ``history_lengths[k]`` values, the
    next ones of ``history``'s columns (price, volume, price_change_pct; the series' histories end to
    end). The state handler runs a bucket's symbols this way: one numpy call per indicator for all of
    them, not one per symbol. Returns the indicator columns, and the series' new histories as columns
    laid out alike with their lengths.

    Each series is laid out as its history, after as many NaNs as make the two WIDEST - 1 long (none
    after a full history), then its ticks; a window ending at one of its ticks holds exactly the values
    and NaN padding the series alone would give, and each window is
    reduced on its own (a row of a contiguous copy), so the result for a tick is bitwise the same
    whichever series run beside it and wherever the micro-batches were cut."""
    n = len(price)
    history_lengths = np.asarray(history_lengths, dtype=np.int64)
    if n == 0:
        return dict.fromkeys(_COLUMNS, np.empty(0)), history, history_lengths  # nothing new: the histories stand
    lengths = np.asarray(lengths, dtype=np.int64)
    price = np.asarray(price, dtype=np.float64)
    # NaNs only where a window could reach past the history: none after a full one
    size = np.maximum(WIDEST - 1 - history_lengths, 0) + history_lengths + lengths
    end = np.cumsum(size)
    at = segments(end - lengths, lengths)  # each tick's position in the layout
    held = segments(end - lengths - history_lengths, history_lengths)  # each history value's
    layout_price, layout_volume, layout_pct = (np.full(int(end[-1]), np.nan) for _ in range(3))
    for layout, past in zip((layout_price, layout_volume, layout_pct), history, strict=True):
        layout[held] = past
    layout_price[at] = price
    layout_volume[at] = volume

    previous = layout_price[at - 1]  # NaN on a series' first tick without history (the padding)
    change = price - previous
    with np.errstate(divide="ignore", invalid="ignore"):
        change_pct = change / previous * 100.0
    layout_pct[at] = change_pct

    price_w = _rows(layout_price, at, SMA_LONG_TICKS)
    sma_50 = np.nanmean(price_w, axis=1)
    sma_20 = np.nanmean(price_w[:, -SMA_SHORT_TICKS:], axis=1)

    pv_w = _rows(layout_price * layout_volume, at, VWAP_TICKS)
    v_w = _rows(layout_volume, at, VWAP_TICKS)
    with np.errstate(divide="ignore", invalid="ignore"):
        v_sum = np.nansum(v_w, axis=1)
        vwap = np.where(v_sum == 0, np.nan, np.nansum(pv_w, axis=1) / v_sum)

    pct_w = _rows(layout_pct, at, VOLATILITY_TICKS)
    counts = np.sum(~np.isnan(pct_w), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        volatility = np.where(counts >= 2, _nanstd_sample(pct_w, counts), np.nan)

    spread = np.asarray(ask, dtype=np.float64) - np.asarray(bid, dtype=np.float64)
    columns = {
        PRICE_CHANGE: change,
        PRICE_CHANGE_PCT: change_pct,
        BID_ASK_SPREAD: spread,
        SPREAD_PCT: spread / price * 100.0,
        VWAP: vwap,
        SMA_20: sma_20,
        SMA_50: sma_50,
        VOLATILITY_20: volatility,
    }
    tail_lengths = np.minimum(history_lengths + lengths, HISTORY)
    tail = segments(end - tail_lengths, tail_lengths)
    return columns, tuple(layout[tail] for layout in (layout_price, layout_volume, layout_pct)), tail_lengths


_COLUMNS = (PRICE_CHANGE, PRICE_CHANGE_PCT, BID_ASK_SPREAD, SPREAD_PCT, VWAP, SMA_20, SMA_50, VOLATILITY_20)


def _nanstd_sample(windows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sample standard deviation (n-1) per row, NaN ignored (rows with < 2 values give NaN)."""
    safe = np.maximum(counts, 1)
    mean = np.nansum(windows, axis=1) / safe
    dev = windows - mean[:, None]
    ssq = np.nansum(dev * dev, axis=1)
    return np.sqrt(ssq / np.maximum(counts - 1, 1))


def with_indicators(df: DataFrame) -> DataFrame:
    """Batch (non-streaming) Spark version of SPEC §2 over each symbol's ticks, ordered by
    ``ts_ms, exchange, partition, offset``. Needs those columns plus price, volume, bid, ask."""
    order = [F.col(k) for k in ORDER_KEYS if k in df.columns]
    by_symbol = Window.partitionBy(SYMBOL).orderBy(*order)

    def last(n: int) -> Window:
        return by_symbol.rowsBetween(-(n - 1), Window.currentRow)

    prev = F.lag(PRICE).over(by_symbol)
    pv = F.col(PRICE) * F.col(VOLUME)
    v_sum = F.sum(VOLUME).over(last(VWAP_TICKS))
    return (
        df.withColumn(PRICE_CHANGE, F.col(PRICE) - prev)
        .withColumn(PRICE_CHANGE_PCT, F.col(PRICE_CHANGE) / prev * 100.0)
        .withColumn(BID_ASK_SPREAD, F.col(ASK) - F.col(BID))
        .withColumn(SPREAD_PCT, F.col(BID_ASK_SPREAD) / F.col(PRICE) * 100.0)
        .withColumn(VWAP, F.when(v_sum != 0, F.sum(pv).over(last(VWAP_TICKS)) / v_sum))
        .withColumn(SMA_20, F.avg(PRICE).over(last(SMA_SHORT_TICKS)))
        .withColumn(SMA_50, F.avg(PRICE).over(last(SMA_LONG_TICKS)))
        .withColumn(VOLATILITY_20, F.stddev_samp(PRICE_CHANGE_PCT).over(last(VOLATILITY_TICKS)))
    )
