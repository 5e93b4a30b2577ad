"""Signals for a batch of historical ticks, computed by the streaming job's own kernel.

One distributed job: validation (the live rules), then ``groupBy(symbol).applyInPandas`` running
:func:`marketsignals.kernel.process` over each symbol's whole history with an empty state -- the
same function the streaming state handler calls per micro-batch. No per-date loop, no collect.
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from marketsignals import kernel, pyworker
from marketsignals.kernel import KIND, KIND_REJECT, KernelConfig, SymbolState
from marketsignals.schema import (
    ASK,
    BID,
    DEAD_LETTER_SCHEMA,
    EXCHANGE,
    OFFSET,
    PARTITION,
    PRICE,
    RAW,
    REASON,
    SYMBOL,
    TOPIC,
    TS_MS,
    VOLUME,
)
from marketsignals.stream.sinks import signal_records
from marketsignals.validation import raw_text, validate_typed_ticks

KERNEL_INPUT = (SYMBOL, TS_MS, PRICE, VOLUME, BID, ASK, EXCHANGE, PARTITION, OFFSET, TOPIC)


def validated_history(ticks: DataFrame, now_ms: Column, max_future_skew_ms: int) -> DataFrame:
    """Typed historical ticks with the live validation's ``reason`` (null = valid)."""
    if "value" in ticks.columns and "symbol" not in ticks.columns:  # raw JSON lines
        from marketsignals.validation import parse_ticks, with_reject_reason

        return with_reject_reason(parse_ticks(ticks), now_ms, max_future_skew_ms)
    return validate_typed_ticks(ticks, now_ms, max_future_skew_ms)


def kernel_output(valid: DataFrame, cfg: KernelConfig) -> DataFrame:
    """Run each symbol's valid ticks through the kernel (empty state, no watermark)."""
    cols = [F.col(c) if c in valid.columns else F.lit(None).cast(t).alias(c)
            for c, t in zip(KERNEL_INPUT, ("string", "bigint", "double", "bigint", "double", "double",
                                           "string", "int", "bigint", "string"), strict=True)]

    def run(key: tuple, pdf: pd.DataFrame) -> pd.DataFrame:
        pyworker.prepare()  # a closure: Spark does not import this module in the worker
        ticks = kernel.columns_of(pdf.drop(columns=[c for c in (PARTITION, OFFSET, TOPIC)
                                                    if pdf[c].isna().all()]))
        return kernel.process(key[0], ticks, SymbolState(), cfg, watermark_ms=None).output

    return valid.select(*cols).groupBy(SYMBOL).applyInPandas(run, kernel.OUTPUT_SCHEMA)


def batch_signals(ticks: DataFrame, cfg: KernelConfig, now_ms: Column | None = None,
                  max_future_skew_ms: int = 5000) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(signals, rejects, kernel output) for historical ticks: the SPEC §4 signal records, the
    dead-letter records of invalid and duplicate ticks, and the raw kernel rows (for counts)."""
    now_ms = now_ms if now_ms is not None else F.unix_millis(F.current_timestamp())
    checked = validated_history(ticks, now_ms, max_future_skew_ms)
    out = kernel_output(checked.filter(F.col(REASON).isNull()), cfg)
    def column(name: str):
        return F.col(name) if name in checked.columns else F.lit(None).alias(name)

    # a raw value as the stream's dead letters carry it (text, or base64 if not UTF-8; cut if huge): the
    # kernel's rejects are text, and Spark 3.5 does not union Kafka's binary value with text
    raw = raw_text(F.col("value")).alias(RAW) if "value" in checked.columns else F.lit(None).alias(RAW)
    invalid = (checked.filter(F.col(REASON).isNotNull())
               .select(REASON, raw, column(TOPIC), column(PARTITION), column(OFFSET), SYMBOL))
    rejects = (out.filter(F.col(KIND) == KIND_REJECT).select(REASON, RAW, TOPIC, PARTITION, OFFSET, SYMBOL)
               .unionByName(invalid, allowMissingColumns=True)
               .withColumn("rejected_at", F.current_timestamp())
               .select(*[F.col(f.name).cast(f.dataType) for f in DEAD_LETTER_SCHEMA.fields]))
    return signal_records(out), rejects, out
