"""SPEC §3 rules on hand-computed examples (numpy functions and the Spark transform)."""

import math

import numpy as np
import pytest
from chispa import assert_approx_df_equality

from marketsignals import risk
from marketsignals.settings import StrategySettings

S = StrategySettings()


def test_momentum():
    assert risk.momentum_signal(np.array([11.0, 9.0, 10.0]), np.array([10.0, 10.0, 10.0])).tolist() == [1, -1, 0]


def test_volatility_regime_and_liquidity():
    assert risk.volatility_regime(np.array([2.5, 0.1, 1.0, 2.0, 0.5, np.nan]), S).tolist() == \
        ["high", "low", "normal", "normal", "normal", None]
    assert risk.liquidity_score(np.array([2_000_000, 1_000_000, 100_001, 100_000, 0]), S).tolist() == \
        ["high", "medium", "medium", "low", "low"]


def test_risk_score_signal_actionable_confidence_and_size():
    # volatility 1.0, spread 0.5 %, medium liquidity: 1.0*0.4 + 0.5*0.3 + 1*0.3 = 0.85
    vol, spread = np.array([1.0, 1.0, 4.0, np.nan]), np.array([0.5, 0.5, 0.5, 0.5])
    liq = np.array(["medium", "low", "high", "high"], dtype=object)
    score = risk.risk_score(vol, spread, liq, S)
    assert score[:3].tolist() == pytest.approx([0.85, 1.45, 1.75]) and math.isnan(score[3])
    signal = risk.trading_signal(np.array([1, -1, 1, 1]), score, S)
    assert signal.tolist() == ["BUY", "SELL", "BUY", "HOLD"]  # null risk -> HOLD
    assert risk.actionable(signal, score, liq, S).tolist() == [True, False, True, False]  # low liquidity
    assert risk.confidence(score, S)[:3].tolist() == pytest.approx([83.0, 71.0, 65.0])
    # int(100000 * max(0.1, 1 - 0.85*0.2) * max(0.1, 1 - 1.0*0.1)) = int(100000 * 0.83 * 0.9) = 74700
    size = risk.position_size(score, vol, S)
    assert size[0] == 74700
    assert size[2] == int(100000 * (1 - 1.75 * 0.2) * max(0.1, 1 - 0.4))
    assert math.isnan(size[3])


def test_clamps_and_floors():
    score = np.array([6.0, -1.0])
    assert risk.confidence(score, S).tolist() == [0.0, 100.0]
    # 1 - 6*0.2 < 0.1 and 1 - 20*0.1 < 0.1: both floors -> 100000*0.1*0.1
    assert risk.position_size(np.array([6.0]), np.array([20.0]), S).tolist() == [1000.0]


def test_thresholds_come_from_settings():
    strict = StrategySettings(signal_max_risk=0.5)
    assert risk.trading_signal(np.array([1]), np.array([0.85]), strict).tolist() == ["HOLD"]


def test_with_risk_on_a_spark_dataframe(spark):
    df = spark.createDataFrame([(11.0, 500_000, 10.0, 0.5, 1.0)],
                               "price double, volume long, sma_20 double, spread_pct double, volatility_20 double")
    expected = spark.createDataFrame(
        [(11.0, 500_000, 10.0, 0.5, 1.0, 1, "normal", "medium", 0.85, "BUY", True, 83.0, 74700)],
        "price double, volume long, sma_20 double, spread_pct double, volatility_20 double, momentum_signal int, "
        "volatility_regime string, liquidity_score string, risk_score double, trading_signal string, "
        "actionable boolean, confidence double, recommended_position_size long")
    assert_approx_df_equality(risk.with_risk(df, S), expected, precision=1e-12, ignore_nullable=True,
                              allow_nan_equality=True)
