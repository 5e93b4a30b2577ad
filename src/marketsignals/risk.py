"""Risk, trading signal, actionable filter, confidence and position sizing (SPEC §3).

Vectorised numpy over columns, every constant from :class:`StrategySettings`. The streaming state
handler and the backtest call these same functions; :func:`with_risk` applies them to a Spark
DataFrame (batch or stream) for research and tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from marketsignals.schema import (
    ACTIONABLE,
    CONFIDENCE,
    LIQUIDITY,
    MOMENTUM,
    POSITION_SIZE,
    PRICE,
    RISK_SCORE,
    SMA_20,
    SPREAD_PCT,
    TRADING_SIGNAL,
    VOLATILITY_20,
    VOLATILITY_REGIME,
    VOLUME,
)
from marketsignals.settings import StrategySettings

BUY, SELL, HOLD = "BUY", "SELL", "HOLD"

RISK_FIELDS = T.StructType(
    [
        T.StructField(MOMENTUM, T.IntegerType()),
        T.StructField(VOLATILITY_REGIME, T.StringType()),
        T.StructField(LIQUIDITY, T.StringType()),
        T.StructField(RISK_SCORE, T.DoubleType()),
        T.StructField(TRADING_SIGNAL, T.StringType()),
        T.StructField(ACTIONABLE, T.BooleanType()),
        T.StructField(CONFIDENCE, T.DoubleType()),
        T.StructField(POSITION_SIZE, T.LongType()),
    ]
)


def momentum_signal(price: np.ndarray, sma_20: np.ndarray) -> np.ndarray:
    """+1 if price > sma_20, -1 if price < sma_20, else 0 (int8)."""
    return np.sign(np.asarray(price, np.float64) - np.asarray(sma_20, np.float64)).astype(np.int8)


def volatility_regime(volatility: np.ndarray, s: StrategySettings) -> np.ndarray:
    """'high' above ``volatility_high``, 'low' below ``volatility_low``, else 'normal'; None when
    volatility is null (a symbol's first ticks)."""
    vol = np.asarray(volatility, np.float64)
    out = np.where(vol > s.volatility_high, "high", np.where(vol < s.volatility_low, "low", "normal"))
    return np.where(np.isnan(vol), None, out).astype(object)


def liquidity_score(volume: np.ndarray, s: StrategySettings) -> np.ndarray:
    """'high' above ``liquidity_high_volume``, 'medium' above ``liquidity_medium_volume``, else 'low'."""
    vol = np.asarray(volume)
    return np.where(vol > s.liquidity_high_volume, "high",
                    np.where(vol > s.liquidity_medium_volume, "medium", "low")).astype(object)


def liquidity_penalty(liquidity: np.ndarray, s: StrategySettings) -> np.ndarray:
    return np.where(liquidity == "high", s.liquidity_penalty_high,
                    np.where(liquidity == "medium", s.liquidity_penalty_medium, s.liquidity_penalty_low))


def risk_score(volatility: np.ndarray, spread_pct: np.ndarray, liquidity: np.ndarray,
               s: StrategySettings) -> np.ndarray:
    """volatility_20 x w_vol + spread_pct x w_spread + liquidity_penalty x w_liq (NaN if volatility is)."""
    return (np.asarray(volatility, np.float64) * s.weight_volatility
            + np.asarray(spread_pct, np.float64) * s.weight_spread
            + liquidity_penalty(liquidity, s) * s.weight_liquidity)


def trading_signal(momentum: np.ndarray, risk: np.ndarray, s: StrategySettings) -> np.ndarray:
    """BUY if momentum +1 and risk < signal_max_risk, SELL if -1 and risk below it, else HOLD
    (a null risk gives HOLD: NaN comparisons are false)."""
    low_risk = np.asarray(risk) < s.signal_max_risk
    return np.where((momentum == 1) & low_risk, BUY, np.where((momentum == -1) & low_risk, SELL, HOLD)).astype(object)


def actionable(signal: np.ndarray, risk: np.ndarray, liquidity: np.ndarray, s: StrategySettings) -> np.ndarray:
    """BUY/SELL with risk < actionable_max_risk and liquidity high or medium."""
    return (((signal == BUY) | (signal == SELL)) & (np.asarray(risk) < s.actionable_max_risk)
            & ((liquidity == "high") | (liquidity == "medium")))


def confidence(risk: np.ndarray, s: StrategySettings) -> np.ndarray:
    """clamp(100 - risk x confidence_risk_factor, 0, 100); NaN when risk is null."""
    return np.clip(100.0 - np.asarray(risk, np.float64) * s.confidence_risk_factor, 0.0, 100.0)


def position_size(risk: np.ndarray, volatility: np.ndarray, s: StrategySettings) -> np.ndarray:
    """int(base x max(floor, 1 - risk x f_risk) x max(floor, 1 - volatility x f_vol)); NaN when
    risk is null (float array so that NaN can stand for null)."""
    r = np.asarray(risk, np.float64)
    v = np.asarray(volatility, np.float64)
    raw = (s.base_position * np.maximum(s.position_floor, 1.0 - r * s.position_risk_factor)
           * np.maximum(s.position_floor, 1.0 - v * s.position_volatility_factor))
    return np.trunc(raw)


def risk_columns(price: np.ndarray, volume: np.ndarray, indicators: Mapping[str, np.ndarray],
                 s: StrategySettings) -> dict[str, np.ndarray]:
    """All SPEC §3 columns for ticks with their indicators."""
    vol = indicators[VOLATILITY_20]
    liquidity = liquidity_score(volume, s)
    momentum = momentum_signal(price, indicators[SMA_20])
    risk = risk_score(vol, indicators[SPREAD_PCT], liquidity, s)
    signal = trading_signal(momentum, risk, s)
    return {
        MOMENTUM: momentum,
        VOLATILITY_REGIME: volatility_regime(vol, s),
        LIQUIDITY: liquidity,
        RISK_SCORE: risk,
        TRADING_SIGNAL: signal,
        ACTIONABLE: actionable(signal, risk, liquidity, s),
        CONFIDENCE: confidence(risk, s),
        POSITION_SIZE: position_size(risk, vol, s),
    }


def with_risk(df: DataFrame, s: StrategySettings) -> DataFrame:
    """Append the SPEC §3 columns to a DataFrame that has price, volume and the indicators."""
    out_schema = T.StructType(df.schema.fields + RISK_FIELDS.fields)

    def apply(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            cols = risk_columns(pdf[PRICE].to_numpy(np.float64), pdf[VOLUME].to_numpy(),
                                {c: pdf[c].to_numpy(np.float64, na_value=np.nan)
                                 for c in (SMA_20, SPREAD_PCT, VOLATILITY_20)}, s)
            out = pdf.assign(**{k: v for k, v in cols.items() if k != POSITION_SIZE})
            out[POSITION_SIZE] = pd.array(cols[POSITION_SIZE], dtype="Float64").astype("Int64")
            out[RISK_SCORE] = out[RISK_SCORE].where(~np.isnan(cols[RISK_SCORE]), None)
            out[CONFIDENCE] = out[CONFIDENCE].where(~np.isnan(cols[CONFIDENCE]), None)
            yield out

    return df.mapInPandas(apply, out_schema)
