"""Performance of the strategy and of the buy-and-hold benchmark, from small aggregates.

Everything here takes pandas objects of a few hundred rows (one per mark interval or per day, already
aggregated over symbols by Spark) and returns numbers; nothing reads ticks.

Conventions (the report states them too):

* A *day* is a UTC date with at least one tick in the history (the synthetic feed trades every day;
  real data has weekdays only). Daily PnL is marked at each symbol's last mid of the day.
* Daily return ``r_d = pnl_d / equity at the start of day d`` (the initial capital on the first day).
* Sharpe ``= mean(r) / std(r, ddof=1) × sqrt(P)``; Sortino ``= mean(r) / sqrt(mean(min(r, 0)²)) × sqrt(P)``
  with ``P = trading_days_per_year`` (252) and a zero risk-free rate. Both are NaN (undefined) with
  fewer than two days, or without dispersion / downside.
* Max drawdown: the largest fall of equity from its running peak (initial capital included), as a
  positive fraction, on the mark-interval curve (finer than daily, so it sees intraday troughs).
* Hit rate: winning round trips / closed round trips (benchmark: symbols that gained / symbols).
* Turnover: mean over days of traded notional / start-of-day equity.
* Exposure: time with an open position / time observed, summed over symbols.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from marketsignals.backtest.simulation import (
    BAR_START,
    BENCH_ENTRIES,
    BENCH_PNL_UNIT,
    DATE,
    FEES,
    GROSS,
    OPEN_POSITIONS,
    PNL,
    TRADED,
    TRADES,
)

EQUITY, START_EQUITY, RETURN, TURNOVER, DRAWDOWN = "equity", "start_equity", "return", "turnover", "drawdown"
BENCHMARK = "benchmark_"  # prefix of the benchmark's columns
MARKED_AT = "marked_at"


def equity_curve(bars: pd.DataFrame, initial_capital: float, benchmark_allocation: float,
                 interval_ms: int) -> pd.DataFrame:
    """The book per mark interval (``bars``: one row per interval with ``bar_start``, pnl, fees,
    traded_notional, trades, gross_notional, open_positions, benchmark_pnl_per_unit,
    benchmark_entries) with ``marked_at`` (the interval's end, when its equity is marked), equity,
    drawdown and the benchmark's pnl / traded notional / equity / drawdown;
    ``benchmark_allocation`` is the money put in each symbol (capital / symbols)."""
    curve = bars.sort_values(BAR_START).reset_index(drop=True)
    curve[MARKED_AT] = pd.to_datetime(curve[BAR_START]) + pd.Timedelta(milliseconds=interval_ms)
    curve[DATE] = pd.to_datetime(curve[BAR_START], utc=True).dt.date
    curve[BENCHMARK + PNL] = curve[BENCH_PNL_UNIT] * benchmark_allocation
    curve[BENCHMARK + TRADED] = curve[BENCH_ENTRIES] * benchmark_allocation
    for prefix in ("", BENCHMARK):
        curve[prefix + EQUITY] = initial_capital + curve[prefix + PNL].cumsum()
        curve[prefix + DRAWDOWN] = drawdown(curve[prefix + EQUITY], initial_capital)
    return curve.drop(columns=[BENCH_PNL_UNIT, BENCH_ENTRIES])


def daily_pnl(curve: pd.DataFrame, initial_capital: float) -> pd.DataFrame:
    """One row per UTC date from :func:`equity_curve`: pnl, fees, traded notional, trades, equity
    at the day's end, start-of-day equity, return and turnover -- for the strategy and, prefixed
    ``benchmark_``, the benchmark -- plus the day-end gross notional and open positions."""
    sums = [PNL, FEES, TRADED, TRADES, BENCHMARK + PNL, BENCHMARK + TRADED]
    lasts = [EQUITY, BENCHMARK + EQUITY, GROSS, OPEN_POSITIONS]
    daily = curve.groupby(DATE, sort=True).agg({**{c: "sum" for c in sums}, **{c: "last" for c in lasts}})
    daily = daily.reset_index()
    for prefix in ("", BENCHMARK):
        start = daily[prefix + EQUITY].shift(1).fillna(initial_capital)
        daily[prefix + START_EQUITY] = start
        daily[prefix + RETURN] = daily[prefix + PNL] / start
        daily[prefix + TURNOVER] = daily[prefix + TRADED] / start
    return daily


def total_return(equity: pd.Series, initial_capital: float) -> float:
    """Final equity / initial capital - 1 (0 for an empty curve)."""
    return float(equity.iloc[-1] / initial_capital - 1.0) if len(equity) else 0.0


def annualised_volatility(returns: pd.Series, periods_per_year: int) -> float:
    """Sample standard deviation of the daily returns × sqrt(periods); NaN with fewer than 2."""
    return float(returns.std(ddof=1) * math.sqrt(periods_per_year)) if len(returns) >= 2 else math.nan


def sharpe_ratio(returns: pd.Series, periods_per_year: int) -> float:
    """Annualised Sharpe ratio of daily returns (risk-free 0); NaN if undefined."""
    if len(returns) < 2:
        return math.nan
    std = returns.std(ddof=1)
    return float(returns.mean() / std * math.sqrt(periods_per_year)) if std > 0 else math.nan


def sortino_ratio(returns: pd.Series, periods_per_year: int) -> float:
    """Annualised Sortino ratio: mean return over the downside deviation (target 0, all days in the
    denominator's mean); NaN with fewer than two days or no losing day."""
    if len(returns) < 2:
        return math.nan
    downside = math.sqrt(float((np.minimum(returns.to_numpy(float), 0.0) ** 2).mean()))
    return float(returns.mean() / downside * math.sqrt(periods_per_year)) if downside > 0 else math.nan


def drawdown(equity: pd.Series, initial_capital: float) -> pd.Series:
    """Equity / running peak - 1 (<= 0), the initial capital counting as the first peak."""
    peak = np.maximum(equity.cummax(), initial_capital)
    return equity / peak - 1.0


def max_drawdown(equity: pd.Series, initial_capital: float) -> float:
    """The largest peak-to-trough fall as a positive fraction (0.12 = 12 %); 0 for an empty curve."""
    return float(-drawdown(equity, initial_capital).min()) if len(equity) else 0.0


def max_leverage(curve: pd.DataFrame) -> float:
    """Largest gross notional / equity over the curve (:func:`equity_curve`); inf once the equity is
    zero or below with a position open, 0 for an empty curve."""
    if not len(curve):
        return 0.0
    equity, gross = curve[EQUITY].to_numpy(float), curve[GROSS].to_numpy(float)
    if ((equity <= 0) & (gross > 0)).any():
        return math.inf
    return float(np.max(np.divide(gross, equity, out=np.zeros_like(gross), where=equity > 0)))


def hit_rate(winners: int, total: int) -> float:
    """Share of winners; NaN when there is nothing to count."""
    return winners / total if total else math.nan


def turnover(traded_notional: pd.Series, start_equity: pd.Series) -> float:
    """Mean daily traded notional / start-of-day equity (1.0 = the book traded once a day)."""
    return float((traded_notional / start_equity).mean()) if len(traded_notional) else 0.0


def exposure(in_market_ms: pd.Series, span_ms: pd.Series) -> float:
    """Share of the observed time with an open position, over all symbols; NaN if no time passed."""
    span = float(span_ms.sum())
    return float(in_market_ms.sum()) / span if span > 0 else math.nan


@dataclass(frozen=True)
class Metrics:
    """The headline numbers of one book (returns and drawdown as fractions, pnl in money)."""

    final_equity: float
    pnl: float
    total_return: float
    annualised_volatility: float
    sharpe: float
    sortino: float
    max_drawdown: float
    hit_rate: float
    turnover: float
    exposure: float
    days: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def book_metrics(daily: pd.DataFrame, curve: pd.DataFrame, initial_capital: float, periods_per_year: int,
                 hit: float, exposure_share: float, prefix: str = "") -> Metrics:
    """:class:`Metrics` of the book whose columns in ``daily`` (:func:`daily_pnl`) and ``curve``
    (:func:`equity_curve`) carry ``prefix`` ("" = strategy, ``BENCHMARK`` = benchmark)."""
    returns = daily[prefix + RETURN] if len(daily) else pd.Series(dtype=float)
    equity = curve[prefix + EQUITY] if len(curve) else pd.Series(dtype=float)
    final = float(equity.iloc[-1]) if len(equity) else initial_capital
    return Metrics(
        final_equity=final,
        pnl=final - initial_capital,
        total_return=total_return(equity, initial_capital),
        annualised_volatility=annualised_volatility(returns, periods_per_year),
        sharpe=sharpe_ratio(returns, periods_per_year),
        sortino=sortino_ratio(returns, periods_per_year),
        max_drawdown=max_drawdown(equity, initial_capital),
        hit_rate=hit,
        turnover=turnover(daily[prefix + TRADED], daily[prefix + START_EQUITY]) if len(daily) else 0.0,
        exposure=exposure_share,
        days=len(daily),
    )
