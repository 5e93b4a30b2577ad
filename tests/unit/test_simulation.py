"""The strategy simulation on hand-checked cases: every expected number is worked out by hand below.

The main case, one symbol AAA, fee 10 bps, fills on the next tick, capital 10,000, one mark per day:

    day 1  t0 bid 99   ask 101   BUY  size 1000  -> fill at t1's ask
           t1 bid 99.5 ask 100.5                    BUY 9 @ 100.5 (floor(1000 / 100.5) = 9)
           t2 bid 101  ask 102   SELL            -> fill at t3's bid
           t3 bid 103  ask 104                      SELL 9 @ 103
    day 2  t4 bid 104  ask 106   BUY  size 2000  -> fill at t5's ask
           t5 bid 99   ask 100                      BUY 20 @ 100 (floor(2000 / 100) = 20)
           t6 bid 95   ask 97    SELL            -> fill at t7's bid
           t7 bid 96   ask 98                       SELL 20 @ 96

    round trip 1: -904.5 - 0.9045 + 927 - 0.927 = 20.6685     return 20.6685 / 904.5
    round trip 2: -2000  - 2.0    + 1920 - 1.92 = -83.92      return -83.92 / 2000
"""

import math

import pandas as pd
import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import Row
from pyspark.sql import functions as F

from marketsignals.backtest import performance
from marketsignals.backtest.simulation import (
    SIM_INPUT_SCHEMA,
    SimulationConfig,
    portfolio_bars,
    round_trips,
    simulate,
    simulate_symbol,
    symbol_bars,
    symbol_daily_pnl,
    symbol_pnl,
    trades,
)

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
DAY = 86_400_000
SECOND = 1_000
CAPITAL = 10_000.0
CFG = SimulationConfig(fill="next_tick", fee_bps=10.0, allow_short=False, mark_interval_ms=DAY)

# (event time ms, bid, ask) of AAA's ticks; the price is the mid.
QUOTES = [
    (T0, 99.0, 101.0), (T0 + 1 * SECOND, 99.5, 100.5), (T0 + 2 * SECOND, 101.0, 102.0), (T0 + 3 * SECOND, 103.0, 104.0),
    (T0 + DAY, 104.0, 106.0), (T0 + DAY + 1 * SECOND, 99.0, 100.0), (T0 + DAY + 2 * SECOND, 95.0, 97.0),
    (T0 + DAY + 3 * SECOND, 96.0, 98.0),
]
# (index of the tick the signal was emitted on, action, recommended_position_size)
SIGNALS = [(0, "BUY", 1000), (2, "SELL", 1000), (4, "BUY", 2000), (6, "SELL", 1500)]


def _tick(ts, bid, ask, symbol="AAA") -> dict:
    return {"symbol": symbol, "ts_ms": ts, "exchange": "XNAS", "price": (bid + ask) / 2, "volume": 500_000,
            "bid": bid, "ask": ask, "currency": "USD"}


def _rows(quotes=QUOTES, signals=SIGNALS, symbol="AAA") -> pd.DataFrame:
    """Simulation input rows: the ticks, then one row per signal (the signal's tick + action, size)."""
    ticks = [_tick(*q, symbol=symbol) | {"signal_id": None, "action": None, "recommended_position_size": None}
             for q in quotes]
    sigs = [_tick(*quotes[i], symbol=symbol) | {"currency": None, "signal_id": f"s{i}", "action": action,
                                                 "recommended_position_size": size}
            for i, action, size in signals]
    return pd.DataFrame(ticks + sigs, columns=[f.name for f in SIM_INPUT_SCHEMA.fields])


def _records(rows: pd.DataFrame, kind: str) -> pd.DataFrame:
    return rows[rows["record"] == kind].dropna(axis=1, how="all").reset_index(drop=True)


@pytest.fixture(scope="module")
def sim_records(spark):
    """The main case through the Spark path: ticks and SPEC §4-shaped signal records."""
    rows = _rows()
    tick_rows = rows[rows["action"].isna()]
    ticks = spark.createDataFrame(tick_rows[["symbol", "ts_ms", "exchange", "price", "volume", "bid", "ask",
                                             "currency"]])
    sig_rows = rows[rows["action"].notna()]
    signals = (spark.createDataFrame(sig_rows[["signal_id", "symbol", "action", "price", "ts_ms", "volume",
                                               "bid", "ask", "exchange", "recommended_position_size"]])
               .withColumn("event_time", F.timestamp_millis("ts_ms")).drop("ts_ms"))
    return simulate(ticks, signals, CFG).cache()


def test_trades_fill_on_the_next_tick_at_ask_and_bid_with_fees(spark, sim_records):
    ts = lambda ms: pd.Timestamp(ms, unit="ms").to_pydatetime()  # noqa: E731
    expected = spark.createDataFrame([
        Row(symbol="AAA", time=ts(T0 + 1 * SECOND), side="BUY", qty=9, price=100.5, notional=904.5, fee=0.9045,
            position=9, signal_id="s0", signal_time=ts(T0)),
        Row(symbol="AAA", time=ts(T0 + 3 * SECOND), side="SELL", qty=9, price=103.0, notional=927.0, fee=0.927,
            position=0, signal_id="s2", signal_time=ts(T0 + 2 * SECOND)),
        Row(symbol="AAA", time=ts(T0 + DAY + SECOND), side="BUY", qty=20, price=100.0, notional=2000.0, fee=2.0,
            position=20, signal_id="s4", signal_time=ts(T0 + DAY)),
        Row(symbol="AAA", time=ts(T0 + DAY + 3 * SECOND), side="SELL", qty=20, price=96.0, notional=1920.0,
            fee=1.92, position=0, signal_id="s6", signal_time=ts(T0 + DAY + 2 * SECOND)),
    ], schema=trades(sim_records).schema)
    assert_approx_df_equality(trades(sim_records).orderBy("time"), expected, precision=1e-9,
                              ignore_nullable=True)


def test_two_round_trips_pnl_and_returns(sim_records):
    trips = round_trips(sim_records).orderBy("open_time").toPandas()
    assert trips["direction"].tolist() == ["LONG", "LONG"]
    assert trips["entry_notional"].tolist() == [904.5, 2000.0]
    assert trips["exit_notional"].tolist() == [927.0, 1920.0]
    assert trips["fees"].tolist() == pytest.approx([0.9045 + 0.927, 2.0 + 1.92])
    assert trips["pnl"].tolist() == pytest.approx([20.6685, -83.92])
    assert trips["trade_return"].tolist() == pytest.approx([20.6685 / 904.5, -83.92 / 2000])
    total = symbol_pnl(sim_records).toPandas().iloc[0]
    assert total["pnl"] == pytest.approx(20.6685 - 83.92)
    assert total["realized_pnl"] == pytest.approx(20.6685 - 83.92)
    assert (total["round_trips"], total["winning_round_trips"], total["trades"]) == (2, 1, 4)
    assert total["fees"] == pytest.approx(0.9045 + 0.927 + 2.0 + 1.92)
    assert total["in_market_ms"] == 4 * SECOND  # t1 -> t3 and t5 -> t7
    # buy & hold per unit of money: bought at 101 (+ 0.1 % fee), marked at the last mid 97
    assert total["benchmark_return"] == pytest.approx(97 / 101 - 1 - 0.001)


def test_daily_pnl_and_returns(sim_records):
    daily = symbol_daily_pnl(symbol_bars(sim_records)).orderBy("date").toPandas()
    assert daily["pnl"].tolist() == pytest.approx([20.6685, -83.92])
    assert daily["trades"].tolist() == [2, 2]
    book = portfolio_bars(symbol_bars(sim_records)).toPandas()
    curve = performance.equity_curve(book, CAPITAL, CAPITAL, DAY)  # one symbol: all capital in it
    days = performance.daily_pnl(curve, CAPITAL)
    assert days["equity"].tolist() == pytest.approx([10_020.6685, 10_020.6685 - 83.92])
    assert days["return"].tolist() == pytest.approx([20.6685 / 10_000, -83.92 / 10_020.6685])
    # benchmark: 10,000 at ask 101 + 10 fee; day 1 marked at mid 103.5, day 2 at mid 97
    bench_day1 = 10_000 * (103.5 / 101 - 1) - 10
    bench_day2 = 10_000 * (97 - 103.5) / 101
    assert days["benchmark_pnl"].tolist() == pytest.approx([bench_day1, bench_day2])
    assert days["benchmark_return"].tolist() == pytest.approx([bench_day1 / 10_000,
                                                               bench_day2 / (10_000 + bench_day1)])


def test_same_tick_fills_at_the_signal_tick():
    out = simulate_symbol("AAA", _rows(), SimulationConfig(fill="same_tick", fee_bps=0.0, mark_interval_ms=DAY))
    fills = _records(out, "trade")
    # BUY at t0's ask 101: floor(1000 / 101) = 9; SELL at t2's bid 101; BUY at t4's ask 106:
    # floor(2000 / 106) = 18; SELL at t6's bid 95
    assert fills["time_ms"].tolist() == [QUOTES[i][0] for i in (0, 2, 4, 6)]
    assert fills["qty"].tolist() == [9, 9, 18, 18]
    assert fills["price"].tolist() == [101.0, 101.0, 106.0, 95.0]
    total = _records(out, "symbol").iloc[0]
    assert total["pnl"] == pytest.approx(9 * (101 - 101) + 18 * (95 - 106))


def test_a_signal_on_the_last_tick_is_not_filled():
    signals = [*SIGNALS, (7, "BUY", 5000)]
    out = simulate_symbol("AAA", _rows(signals=signals), CFG)
    total = _records(out, "symbol").iloc[0]
    assert (total["signals"], total["unfilled_signals"], total["trades"]) == (5, 1, 4)


def test_a_repeated_buy_retargets_the_position():
    # BUY 1000 at t0 -> 9 shares at 100.5; BUY 2000 at t2 -> target floor(2000 / 104) = 19: buy 10 more
    out = simulate_symbol("AAA", _rows(signals=[(0, "BUY", 1000), (2, "BUY", 2000)]), CFG)
    fills = _records(out, "trade")
    assert fills["qty"].tolist() == [9, 10]
    assert fills["position"].tolist() == [9, 19]
    assert _records(out, "round_trip").empty  # still open: its PnL is marked, not realised
    total = _records(out, "symbol").iloc[0]
    assert total["position"] == 19
    # marked at the last mid 97: 19 × 97 - (9 × 100.5 + 10 × 104) - fees
    fees = (9 * 100.5 + 10 * 104) * 0.001
    assert total["pnl"] == pytest.approx(19 * 97 - (9 * 100.5 + 10 * 104) - fees)


def test_short_selling_flips_and_splits_the_round_trip():
    # allow_short: BUY 1000 at t0 -> long 9 @ t1 ask 100.5; SELL 1030 at t2 -> target
    # -floor(1030 / 103) = -10 at t3's bid 103: one fill of 19 shares, 9 close the long, 10 open a short;
    # BUY 0 at t4 -> target 0 at t5's ask 100: the short closes.
    cfg = SimulationConfig(fill="next_tick", fee_bps=0.0, allow_short=True, mark_interval_ms=DAY)
    out = simulate_symbol("AAA", _rows(signals=[(0, "BUY", 1000), (2, "SELL", 1030), (4, "BUY", 0)]), cfg)
    assert _records(out, "trade")["qty"].tolist() == [9, 19, 10]
    trips = _records(out, "round_trip")
    assert trips["direction"].tolist() == ["LONG", "SHORT"]
    assert trips["pnl"].tolist() == pytest.approx([9 * (103 - 100.5), 10 * (103 - 100)])
    assert trips["entry_notional"].tolist() == pytest.approx([9 * 100.5, 10 * 103])


def test_mark_intervals_cover_gaps_and_carry_the_position():
    # Hourly marks over one long position: BUY at t0 fills at t1; the next ticks are 3 h later.
    quotes = [(T0, 99.0, 101.0), (T0 + SECOND, 99.0, 101.0), (T0 + 3 * 3_600_000, 109.0, 111.0)]
    cfg = SimulationConfig(fee_bps=0.0, mark_interval_ms=3_600_000)
    bars = _records(simulate_symbol("AAA", _rows(quotes=quotes, signals=[(0, "BUY", 1010)]), cfg), "bar")
    assert bars["bar_start_ms"].tolist() == [T0 + h * 3_600_000 for h in range(4)]
    assert bars["position"].tolist() == [10, 10, 10, 10]  # floor(1010 / 101) = 10
    assert bars["gross_notional"].tolist() == [1000.0, 1000.0, 1000.0, 1100.0]
    assert bars["pnl"].tolist() == pytest.approx([10 * (100 - 101), 0, 0, 10 * (110 - 100)])
    assert bars["benchmark_entries"].tolist() == [1, 0, 0, 0]


def test_exact_duplicate_ticks_count_once():
    rows = _rows()
    doubled = pd.concat([rows, rows[rows["action"].isna()].iloc[[2]]], ignore_index=True)
    total = _records(simulate_symbol("AAA", doubled, CFG), "symbol").iloc[0]
    assert total["ticks"] == len(QUOTES)
    assert total["pnl"] == pytest.approx(20.6685 - 83.92)


def test_no_signals_no_trades():
    out = simulate_symbol("AAA", _rows(signals=[]), CFG)
    total = _records(out, "symbol").iloc[0]
    assert (total["trades"], total["round_trips"], total["pnl"]) == (0, 0, 0.0)
    assert math.isclose(total["benchmark_return"], 97 / 101 - 1 - 0.001)
