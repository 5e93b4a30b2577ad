"""Performance metrics on tiny series, every expected value computed by hand (closed forms noted)."""

import math

import pandas as pd
import pytest

from marketsignals.backtest import performance as perf

RETURNS = pd.Series([0.01, -0.01, 0.02])
# mean = 2/3 %; deviations 1/3, -5/3, 4/3 (%) -> sample variance (1 + 25 + 16) / 9 / 2 = 7/3 %²
# Sharpe = (2/3) / sqrt(7/3) × sqrt(252) = (2/3) × sqrt(108) = 4 × sqrt(3)
# downside: min(r, 0) = 0, -1 %, 0 -> mean square 1/3 %² -> Sortino = (2/3) / sqrt(1/3) × sqrt(252) = 4 × sqrt(21)


def test_sharpe_ratio():
    assert perf.sharpe_ratio(RETURNS, 252) == pytest.approx(4 * math.sqrt(3))


def test_sortino_ratio():
    assert perf.sortino_ratio(RETURNS, 252) == pytest.approx(4 * math.sqrt(21))


def test_annualised_volatility():
    assert perf.annualised_volatility(RETURNS, 252) == pytest.approx(math.sqrt(7 / 3) / 100 * math.sqrt(252))


@pytest.mark.parametrize("returns", [[0.01], [0.01, 0.01]])
def test_sharpe_is_undefined_with_one_day_or_no_dispersion(returns):
    assert math.isnan(perf.sharpe_ratio(pd.Series(returns), 252))


def test_sortino_is_undefined_without_a_losing_day():
    assert math.isnan(perf.sortino_ratio(pd.Series([0.01, 0.02]), 252))


def test_max_drawdown_from_the_running_peak():
    # peak 120, then trough 80: 1 - 80 / 120 = 1/3 (the later 130 is a new peak, not a recovery of it)
    equity = pd.Series([100.0, 120.0, 90.0, 110.0, 80.0, 130.0])
    assert perf.max_drawdown(equity, 100.0) == pytest.approx(1 / 3)
    assert perf.drawdown(equity, 100.0).tolist() == pytest.approx([0, 0, -0.25, -1 / 12, -1 / 3, 0])


def test_max_drawdown_counts_the_initial_capital_as_a_peak():
    assert perf.max_drawdown(pd.Series([90.0, 95.0]), 100.0) == pytest.approx(0.10)


def test_hit_rate_turnover_exposure():
    assert perf.hit_rate(1, 2) == 0.5
    assert math.isnan(perf.hit_rate(0, 0))
    # (100 / 1000 + 300 / 1000) / 2
    assert perf.turnover(pd.Series([100.0, 300.0]), pd.Series([1000.0, 1000.0])) == pytest.approx(0.2)
    # (5 + 0) ms in the market out of (10 + 10) ms observed
    assert perf.exposure(pd.Series([5, 0]), pd.Series([10, 10])) == pytest.approx(0.25)
    assert perf.total_return(pd.Series([1000.0, 1100.0]), 1000.0) == pytest.approx(0.1)


@pytest.fixture
def bars() -> pd.DataFrame:
    """Two marks on day 1 (+100, -50), one on day 2 (+200); benchmark +10 %, 0, -20 % per unit."""
    return pd.DataFrame({
        "bar_start": pd.to_datetime(["2026-01-05 00:00", "2026-01-05 12:00", "2026-01-06 00:00"]),
        "pnl": [100.0, -50.0, 200.0], "fees": [1.0, 1.0, 2.0], "traded_notional": [500.0, 500.0, 2100.0],
        "trades": [1, 1, 2], "gross_notional": [500.0, 0.0, 2100.0], "open_positions": [1, 0, 1],
        "benchmark_pnl_per_unit": [0.1, 0.0, -0.2], "benchmark_entries": [2, 0, 0],
    })


def test_equity_curve_and_daily_returns(bars):
    curve = perf.equity_curve(bars, initial_capital=1000.0, benchmark_allocation=500.0, interval_ms=43_200_000)
    assert curve["equity"].tolist() == [1100.0, 1050.0, 1250.0]
    assert curve["marked_at"].iloc[0] == pd.Timestamp("2026-01-05 12:00")
    assert curve["drawdown"].tolist() == pytest.approx([0.0, 1050 / 1100 - 1, 0.0])
    assert curve["benchmark_equity"].tolist() == pytest.approx([1050.0, 1050.0, 950.0])  # 500 × (0.1, 0, -0.2)
    daily = perf.daily_pnl(curve, 1000.0)
    assert daily["pnl"].tolist() == [50.0, 200.0]
    assert daily["start_equity"].tolist() == [1000.0, 1050.0]
    assert daily["return"].tolist() == pytest.approx([0.05, 200 / 1050])
    assert daily["turnover"].tolist() == pytest.approx([1.0, 2100 / 1050])
    assert daily["benchmark_return"].tolist() == pytest.approx([0.05, -100 / 1050])
    assert daily["benchmark_traded_notional"].tolist() == [1000.0, 0.0]  # two symbols × 500 on day 1


def test_book_metrics(bars):
    curve = perf.equity_curve(bars, 1000.0, 500.0, 43_200_000)
    daily = perf.daily_pnl(curve, 1000.0)
    m = perf.book_metrics(daily, curve, 1000.0, 252, hit=0.5, exposure_share=0.4)
    assert (m.final_equity, m.pnl, m.days) == (1250.0, 250.0, 2)
    assert m.total_return == pytest.approx(0.25)
    assert m.max_drawdown == pytest.approx(1 - 1050 / 1100)
    r = pd.Series([0.05, 200 / 1050])
    assert m.sharpe == pytest.approx(r.mean() / r.std() * math.sqrt(252))
    assert math.isnan(m.sortino)  # no losing day
    assert m.turnover == pytest.approx((1.0 + 2100 / 1050) / 2)
    b = perf.book_metrics(daily, curve, 1000.0, 252, hit=0.5, exposure_share=1.0, prefix=perf.BENCHMARK)
    assert b.final_equity == pytest.approx(950.0)
    assert b.max_drawdown == pytest.approx(1 - 950 / 1050)


def test_empty_history_gives_neutral_metrics():
    empty = pd.DataFrame(columns=["bar_start", "pnl", "fees", "traded_notional", "trades", "gross_notional",
                                  "open_positions", "benchmark_pnl_per_unit", "benchmark_entries"])
    curve = perf.equity_curve(empty, 1000.0, 0.0, 3_600_000)
    daily = perf.daily_pnl(curve, 1000.0)
    m = perf.book_metrics(daily, curve, 1000.0, 252, hit=math.nan, exposure_share=math.nan)
    assert (m.final_equity, m.pnl, m.total_return, m.max_drawdown, m.days) == (1000.0, 0.0, 0.0, 0.0, 0)
    assert math.isnan(m.sharpe)
