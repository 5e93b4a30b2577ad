"""The domain's names and schemas, defined once: ticks (SPEC §1), signals (SPEC §4), dead letters.

Modules import the column names and schemas from here instead of retyping strings.
"""

from __future__ import annotations

from pyspark.sql import types as T

# --- tick fields as they arrive in the Kafka JSON value (SPEC §1) -----------------------------------
SYMBOL = "symbol"
TIMESTAMP = "timestamp"
PRICE = "price"
VOLUME = "volume"
BID = "bid"
ASK = "ask"
EXCHANGE = "exchange"
CURRENCY = "currency"
TICK_FIELDS: tuple[str, ...] = (SYMBOL, TIMESTAMP, PRICE, VOLUME, BID, ASK, EXCHANGE, CURRENCY)

# --- where a tick came from (Kafka coordinates; the last ordering tie-break, SPEC §2) -----------------
TOPIC = "topic"
PARTITION = "partition"
OFFSET = "offset"

# --- derived columns -----------------------------------------------------------------------------------
EVENT_TIME = "event_time"  # TimestampType, what the watermark runs on
TS_MS = "ts_ms"  # the same instant as epoch milliseconds (long), used by the kernel
REASON = "reason"  # null for a valid tick, else the machine-readable rejection reason
RAW = "raw"  # the raw Kafka value (only carried for rejected ticks)

# Deterministic order of a symbol's ticks (SPEC §2): event time, then exchange, then Kafka position.
ORDER_KEYS: tuple[str, ...] = (TS_MS, EXCHANGE, PARTITION, OFFSET)
# What makes two ticks exact duplicates (SPEC §1).
DUPLICATE_KEYS: tuple[str, ...] = (SYMBOL, TS_MS, EXCHANGE, PRICE, VOLUME)

# The text parse of a tick: every field as text, so a wrong JSON type is told apart from a missing field.
RAW_TICK_SCHEMA = T.StructType([T.StructField(name, T.StringType()) for name in TICK_FIELDS])
# The typed first parse of a tick (validation.py): numbers as numbers, the rest as text, and the column
# where Spark names a record any of whose fields failed to convert.
UNPARSED = "_unparsed"
FAST_TICK_SCHEMA = T.StructType(
    [T.StructField(name, {PRICE: T.DoubleType(), BID: T.DoubleType(), ASK: T.DoubleType(),
                          VOLUME: T.LongType()}.get(name, T.StringType())) for name in TICK_FIELDS]
    + [T.StructField(UNPARSED, T.StringType())])

# A valid, typed tick (what the feed writes to parquet and what the backtest reads).
TICK_SCHEMA = T.StructType(
    [
        T.StructField(SYMBOL, T.StringType(), False),
        T.StructField(TIMESTAMP, T.TimestampType(), False),
        T.StructField(PRICE, T.DoubleType(), False),
        T.StructField(VOLUME, T.LongType(), False),
        T.StructField(BID, T.DoubleType(), False),
        T.StructField(ASK, T.DoubleType(), False),
        T.StructField(EXCHANGE, T.StringType(), False),
        T.StructField(CURRENCY, T.StringType(), False),
    ]
)

# --- rejection reasons (machine-readable, stable: consumers alert on them) ----------------------------
class Reason:
    NOT_JSON = "not_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_SYMBOL = "invalid_symbol"
    INVALID_TIMESTAMP = "invalid_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    INVALID_PRICE = "invalid_price"
    INVALID_VOLUME = "invalid_volume"
    INVALID_QUOTE = "invalid_quote"
    CROSSED_QUOTE = "crossed_quote"
    INVALID_EXCHANGE = "invalid_exchange"
    INVALID_CURRENCY = "invalid_currency"
    LATE = "late"
    OUT_OF_ORDER = "out_of_order"
    DUPLICATE = "duplicate"

    ALL: tuple[str, ...] = (
        NOT_JSON, MISSING_FIELD, WRONG_TYPE, INVALID_SYMBOL, INVALID_TIMESTAMP, FUTURE_TIMESTAMP,
        INVALID_PRICE, INVALID_VOLUME, INVALID_QUOTE, CROSSED_QUOTE, INVALID_EXCHANGE, INVALID_CURRENCY,
        LATE, OUT_OF_ORDER, DUPLICATE,
    )


# --- indicator, risk and signal columns (SPEC §2-4) ----------------------------------------------------
PRICE_CHANGE = "price_change"
PRICE_CHANGE_PCT = "price_change_pct"
BID_ASK_SPREAD = "bid_ask_spread"
SPREAD_PCT = "spread_pct"
VWAP = "vwap"
SMA_20 = "sma_20"
SMA_50 = "sma_50"
VOLATILITY_20 = "volatility_20"
INDICATOR_COLUMNS: tuple[str, ...] = (
    PRICE_CHANGE, PRICE_CHANGE_PCT, BID_ASK_SPREAD, SPREAD_PCT, VWAP, SMA_20, SMA_50, VOLATILITY_20,
)

MOMENTUM = "momentum_signal"
VOLATILITY_REGIME = "volatility_regime"
LIQUIDITY = "liquidity_score"
RISK_SCORE = "risk_score"
TRADING_SIGNAL = "trading_signal"
ACTIONABLE = "actionable"
CONFIDENCE = "confidence"
POSITION_SIZE = "recommended_position_size"

SIGNAL_ID = "signal_id"
ACTION = "action"
STRATEGY_VERSION = "strategy_version"
EMITTED_AT = "emitted_at"

# The signal record (SPEC §4), in this column order, for the Kafka topic and the audit table.
SIGNAL_SCHEMA = T.StructType(
    [
        T.StructField(SIGNAL_ID, T.StringType(), False),
        T.StructField(SYMBOL, T.StringType(), False),
        T.StructField(ACTION, T.StringType(), False),
        T.StructField(PRICE, T.DoubleType(), False),
        T.StructField(CONFIDENCE, T.DoubleType(), True),
        T.StructField(RISK_SCORE, T.DoubleType(), True),
        T.StructField("volatility", T.DoubleType(), True),
        T.StructField("momentum", T.IntegerType(), True),
        T.StructField(EVENT_TIME, T.TimestampType(), False),
        T.StructField(POSITION_SIZE, T.LongType(), True),
        T.StructField(VOLUME, T.LongType(), False),
        T.StructField(BID, T.DoubleType(), False),
        T.StructField(ASK, T.DoubleType(), False),
        T.StructField(EXCHANGE, T.StringType(), False),
        *[T.StructField(name, T.DoubleType(), True) for name in INDICATOR_COLUMNS],
        T.StructField(VOLATILITY_REGIME, T.StringType(), True),
        T.StructField(LIQUIDITY, T.StringType(), True),
        T.StructField(STRATEGY_VERSION, T.StringType(), False),
        T.StructField(EMITTED_AT, T.TimestampType(), False),
    ]
)
SIGNAL_COLUMNS: tuple[str, ...] = tuple(f.name for f in SIGNAL_SCHEMA.fields)

# The signal columns whose values almost never repeat: ids (hashes), and ratios and averages of prices.
# Parquet builds a dictionary for every column of every file it writes and, where the dictionary saves
# nothing, writes the column plain after all, as it always did for these. The session writes them plain
# from the start (session.BASE_CONF): the same files, ~5-7 % less CPU for the audit write (Parquet's
# dictionaries were a third of its samples; bench/ROUNDS.md, twenty-fifth round). Price, bid, ask,
# volume and the spreads keep the dictionary: on a real feed they repeat on the tick grid.
PLAIN_ENCODED_COLUMNS: tuple[str, ...] = (
    SIGNAL_ID, CONFIDENCE, RISK_SCORE, "volatility", PRICE_CHANGE_PCT, SPREAD_PCT, VWAP, SMA_20, SMA_50, VOLATILITY_20,
)

# The dead-letter record (SPEC §1).
DEAD_LETTER_SCHEMA = T.StructType(
    [
        T.StructField(REASON, T.StringType(), False),
        T.StructField(RAW, T.StringType(), True),
        T.StructField(TOPIC, T.StringType(), True),
        T.StructField(PARTITION, T.IntegerType(), True),
        T.StructField(OFFSET, T.LongType(), True),
        T.StructField(SYMBOL, T.StringType(), True),
        T.StructField("rejected_at", T.TimestampType(), False),
    ]
)
