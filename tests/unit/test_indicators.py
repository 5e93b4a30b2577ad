"""SPEC §2 on hand-computed examples, and the numpy kernel against Spark's window functions."""

import math

import numpy as np
import pytest
from pyspark.sql import functions as F

from marketsignals.indicators import HISTORY, History, rolling_indicators, with_indicators

NAN = float("nan")


def _run(price, volume, bid=None, ask=None, history=None):
    price = np.array(price, float)
    bid = np.array(bid if bid is not None else price - 0.1)
    ask = np.array(ask if ask is not None else price + 0.1)
    return rolling_indicators(price, np.array(volume), bid, ask, history or History.empty())


def test_first_tick_and_partial_windows():
    cols, _ = _run([10.0, 11.0, 12.0], [100, 200, 300], bid=[9.9, 10.8, 11.9], ask=[10.1, 11.2, 12.1])
    assert math.isnan(cols["price_change"][0]) and math.isnan(cols["price_change_pct"][0])
    assert cols["price_change"][1:].tolist() == [1.0, 1.0]
    assert cols["price_change_pct"][1] == pytest.approx(10.0)
    assert cols["price_change_pct"][2] == pytest.approx(100 / 11)
    assert cols["sma_20"].tolist() == pytest.approx([10.0, 10.5, 11.0])  # partial window = ticks so far
    assert cols["sma_50"].tolist() == pytest.approx([10.0, 10.5, 11.0])
    # vwap = sum(p*v)/sum(v): (1000+2200+3600)/600
    assert cols["vwap"][2] == pytest.approx(6800 / 600)
    assert cols["bid_ask_spread"].tolist() == pytest.approx([0.2, 0.4, 0.2])
    assert cols["spread_pct"][1] == pytest.approx(0.4 / 11 * 100)
    # volatility: null on the first two ticks (fewer than 2 non-null pct values), then sample std
    assert math.isnan(cols["volatility_20"][0]) and math.isnan(cols["volatility_20"][1])
    assert cols["volatility_20"][2] == pytest.approx(np.std([10.0, 100 / 11], ddof=1))


def test_zero_volume_window_gives_null_vwap():
    cols, _ = _run([10.0, 10.5, 11.0], [0, 0, 5])
    assert math.isnan(cols["vwap"][0]) and math.isnan(cols["vwap"][1])
    assert cols["vwap"][2] == pytest.approx(11.0)


def test_windows_slide_over_the_last_n_ticks():
    prices = list(range(1, 61))
    cols, _ = _run(prices, [1] * 60)
    assert cols["sma_20"][59] == pytest.approx(np.mean(prices[40:60]))
    assert cols["sma_50"][59] == pytest.approx(np.mean(prices[10:60]))
    assert cols["vwap"][59] == pytest.approx(np.mean(prices[49:60]))
    pct = np.diff(prices) / np.array(prices[:-1]) * 100
    assert cols["volatility_20"][59] == pytest.approx(np.std(pct[-20:], ddof=1))


def test_continuing_from_history_is_bitwise_identical_to_one_pass():
    rng = np.random.default_rng(1)
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    volume = rng.integers(0, 1000, 300)
    whole, _ = _run(price, volume)
    history, parts = History.empty(), []
    for lo, hi in ((0, 1), (1, 7), (7, 60), (60, 61), (61, 300)):
        cols, history = _run(price[lo:hi], volume[lo:hi], history=history)
        parts.append(cols)
        assert len(history) <= HISTORY
    for name, values in whole.items():
        pieces = np.concatenate([p[name] for p in parts])
        assert np.array_equal(values, pieces, equal_nan=True), name


def test_kernel_matches_spark_window_functions(spark):
    rng = np.random.default_rng(7)
    rows = []
    for s, symbol in enumerate(["AAA", "BBB"]):
        price = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, 120)))
        volume = rng.integers(0, 5, 120)  # many zero-volume windows
        for i in range(120):
            rows.append((symbol, 1000 * i + s, "XNAS", i, float(price[i]), int(volume[i]),
                         float(price[i]) - 0.01, float(price[i]) + 0.02))
    df = spark.createDataFrame(rows, "symbol string, ts_ms long, exchange string, offset long, price double, "
                                     "volume long, bid double, ask double").withColumn("partition", F.lit(0))
    spark_rows = {(r.symbol, r.ts_ms): r for r in with_indicators(df).collect()}
    for symbol in ("AAA", "BBB"):
        mine = sorted((r for r in rows if r[0] == symbol), key=lambda r: r[1])
        cols, _ = _run([r[4] for r in mine], [r[5] for r in mine], [r[6] for r in mine], [r[7] for r in mine])
        for i, r in enumerate(mine):
            expected = spark_rows[(symbol, r[1])]
            for name, values in cols.items():
                want = getattr(expected, name)
                if want is None:
                    assert math.isnan(values[i]), (symbol, i, name)
                else:
                    assert values[i] == pytest.approx(want, rel=1e-9, abs=1e-12), (symbol, i, name)
