"""The backtest job: history -> live kernel signals -> strategy simulation -> tables and report.

    read history (parquet / CSV / JSON lines)            history.read_history
      -> validate + indicators + risk + signals          signals.batch_signals (the live kernel)
      -> simulation (positions, fills, PnL per symbol)    simulation.simulate
      -> small aggregates -> metrics -> report            performance, report

Two distributed passes over the ticks (the kernel and the simulation, each one
``groupBy(symbol).applyInPandas``); the validated history is cached between them. Only per-interval,
per-day and per-symbol aggregates reach the driver. Tables (parquet, overwritten on each run) under
``backtest.output``: signals, rejects, trades, round_trips, symbol_pnl, symbol_daily_pnl,
equity_curve, daily_pnl, summary; plus report.md / report.html / *.png / summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from pandas.api import types as ptypes
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketsignals.backtest import performance, report, simulation
from marketsignals.backtest.history import read_history
from marketsignals.backtest.signals import batch_signals, validated_history
from marketsignals.kernel import KIND, KIND_COUNT, PROCESSED
from marketsignals.local_paths import local_path
from marketsignals.risk import BUY, SELL
from marketsignals.schema import ACTION, REASON
from marketsignals.settings import Settings, load_settings
from marketsignals.stream.job import kernel_config

TABLES = ("signals", "rejects", "trades", "round_trips", "symbol_pnl", "symbol_daily_pnl", "equity_curve",
          "daily_pnl", "summary")
PROGRESS_CONF = "spark.ui.showConsoleProgress"

Log = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


class _Phases:
    """Prints a line when each phase starts and how long it took; keeps the timings."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.seconds: dict[str, float] = {}
        self.started = time.monotonic()

    @contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        self.log(f"backtest: {what} ...")
        t0 = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - t0, 2)
        self.log(f"backtest: {what} done in {self.seconds[name]:.1f}s")

    @property
    def total(self) -> float:
        return round(time.monotonic() - self.started, 2)


def run_backtest(spark: SparkSession, settings: Settings, now_ms: int | None = None,
                 log: Log = _print) -> dict:
    """Run the whole backtest described by ``settings.backtest`` and return the summary dict
    (``run``: inputs, counts, timings; ``strategy`` and ``benchmark``: :class:`performance.Metrics`).

    ``now_ms`` is the processing time for the future-timestamp rule (default: the wall clock when the
    run starts, fixed for the whole run)."""
    bt = settings.backtest
    phases = _Phases(log)
    out = bt.output.rstrip("/")
    now = F.lit(now_ms if now_ms is not None else int(time.time() * 1000))
    skew_ms = settings.stream.max_future_skew_ms
    log(f"backtest: {bt.input} ({bt.input_format}) -> {out}; fill={bt.fill}, fee={bt.fee_bps} bps, "
        f"allow_short={bt.allow_short}, mark interval={bt.mark_interval}")

    ticks = read_history(spark, bt.input, bt.input_format)
    # Cached once, used twice: batch_signals builds this same plan (Spark substitutes the cached
    # data for it), and the simulation reads its valid rows -- validation is the costliest step
    # per row, so it runs once.
    checked = validated_history(ticks, now, skew_ms).persist(StorageLevel.MEMORY_AND_DISK)
    signals, rejects, kernel_out = batch_signals(ticks, kernel_config(settings), now, skew_ms)
    kernel_out = kernel_out.persist(StorageLevel.MEMORY_AND_DISK)
    records: DataFrame | None = None
    try:
        with phases("signals", "validating ticks and computing signals (live kernel, one pass per symbol)"):
            signals.write.mode("overwrite").parquet(f"{out}/signals")
        with phases("rejects", "writing rejected ticks and counting"):
            rejects.write.mode("overwrite").parquet(f"{out}/rejects")
            counts = _signal_counts(spark, out, kernel_out)
        kernel_out.unpersist()

        cfg = simulation.SimulationConfig.from_settings(bt)
        valid = checked.filter(F.col(REASON).isNull())
        records = simulation.simulate(valid, spark.read.parquet(f"{out}/signals"), cfg)
        records = records.persist(StorageLevel.MEMORY_AND_DISK)
        with phases("simulation", "simulating positions, fills and PnL (one pass per symbol)"):
            simulation.trades(records).write.mode("overwrite").parquet(f"{out}/trades")
        checked.unpersist()
        with phases("tables", "writing round trips, per-symbol and per-day PnL"):
            simulation.round_trips(records).write.mode("overwrite").parquet(f"{out}/round_trips")
            simulation.symbol_pnl(records).write.mode("overwrite").parquet(f"{out}/symbol_pnl")
            bars = simulation.symbol_bars(records)
            simulation.symbol_daily_pnl(bars).write.mode("overwrite").parquet(f"{out}/symbol_daily_pnl")
            book = simulation.portfolio_bars(bars).toPandas()  # one row per mark interval
            symbols = spark.read.parquet(f"{out}/symbol_pnl").toPandas()  # one row per symbol
    finally:
        for frame in (checked, kernel_out, records):
            if frame is not None:
                frame.unpersist()

    with phases("report", "computing metrics and writing the report"):
        capital = initial_capital(settings, len(symbols))
        allocation = capital / len(symbols) if len(symbols) else 0.0
        curve = performance.equity_curve(book, capital, allocation, bt.mark_interval_ms)
        daily = performance.daily_pnl(curve, capital)
        symbols = _symbol_view(symbols, allocation)
        summary = _summary(settings, counts, symbols, curve, daily, capital)
        summary["run"]["seconds"] = phases.total
        summary["run"]["phase_seconds"] = phases.seconds
        _write_outputs(spark, out, summary, curve, daily, symbols)
    summary["run"]["seconds"] = phases.total
    return summary


def _write_outputs(spark: SparkSession, out: str, summary: dict, curve: pd.DataFrame, daily: pd.DataFrame,
                   symbols: pd.DataFrame) -> None:
    """The small tables (equity_curve, daily_pnl, summary), summary.json and the report."""
    _write_small(spark, curve, f"{out}/equity_curve")
    _write_small(spark, daily, f"{out}/daily_pnl")
    _write_small(spark, _summary_rows(summary), f"{out}/summary")
    with tempfile.TemporaryDirectory(prefix="backtest-report-") as tmp:
        folder = Path(tmp)
        files = report.write_report(summary, curve, daily, symbols, folder)
        (folder / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, default=str))
        publish(spark, [*files, folder / "summary.json"], out)


def initial_capital(settings: Settings, symbols: int) -> float:
    """``backtest.initial_capital``, or when it is null: symbols × ``strategy.base_position`` (the
    largest position the strategy takes in a symbol at entry: a fully funded, unlevered book)."""
    configured = settings.backtest.initial_capital
    return configured if configured is not None else max(symbols, 1) * float(settings.strategy.base_position)


def _signal_counts(spark: SparkSession, out: str, kernel_out: DataFrame) -> dict:
    """Ticks processed by the kernel, rejects by reason and signals by action (from the tables)."""
    processed = kernel_out.filter(F.col(KIND) == KIND_COUNT).agg(F.sum(PROCESSED)).first()[0] or 0
    by_reason = {r[REASON]: r["count"] for r in spark.read.parquet(f"{out}/rejects").groupBy(REASON).count().collect()}
    by_action = {r[ACTION]: r["count"] for r in spark.read.parquet(f"{out}/signals").groupBy(ACTION).count().collect()}
    return {"ticks_valid": int(processed), "rejects_by_reason": by_reason,
            "signals_buy": by_action.get(BUY, 0), "signals_sell": by_action.get(SELL, 0)}


def _symbol_view(symbols: pd.DataFrame, allocation: float) -> pd.DataFrame:
    """Per-symbol results with the benchmark's PnL in money and the hit rate (for the report)."""
    view = symbols.copy()
    view[performance.BENCHMARK + simulation.PNL] = view[simulation.BENCH_RETURN] * allocation
    trips = view[simulation.ROUND_TRIPS]
    view["hit_rate"] = (view[simulation.WINS] / trips.where(trips > 0)).astype(float)
    return view


def _summary(settings: Settings, counts: dict, symbols: pd.DataFrame, curve: pd.DataFrame,
             daily: pd.DataFrame, capital: float) -> dict:
    bt = settings.backtest
    periods = bt.trading_days_per_year
    allocation = capital / len(symbols) if len(symbols) else 0.0
    total = symbols[[simulation.TRADES, simulation.ROUND_TRIPS, simulation.WINS, simulation.UNFILLED,
                     simulation.TRADED, simulation.FEES]].sum()
    rejected = sum(counts["rejects_by_reason"].values())
    strategy = performance.book_metrics(
        daily, curve, capital, periods,
        hit=performance.hit_rate(int(total[simulation.WINS]), int(total[simulation.ROUND_TRIPS])),
        exposure_share=performance.exposure(symbols[simulation.IN_MARKET_MS], symbols[simulation.SPAN_MS]))
    benchmark = performance.book_metrics(
        daily, curve, capital, periods,
        hit=performance.hit_rate(int((symbols[simulation.BENCH_RETURN] > 0).sum()), len(symbols)),
        exposure_share=performance.exposure(symbols[simulation.SPAN_MS], symbols[simulation.SPAN_MS]),
        prefix=performance.BENCHMARK)
    first = symbols["first_time"].min() if len(symbols) else None
    last = symbols["last_time"].max() if len(symbols) else None
    run = {
        "input": bt.input, "input_format": bt.input_format, "output": bt.output, "fill": bt.fill,
        "fee_bps": bt.fee_bps, "allow_short": bt.allow_short, "mark_interval": bt.mark_interval,
        "initial_capital": capital, "capital_source": "setting" if bt.initial_capital is not None
        else "symbols x strategy.base_position", "benchmark_allocation": allocation,
        "max_gross_notional": float(curve[simulation.GROSS].max()) if len(curve) else 0.0,
        "max_leverage": performance.max_leverage(curve), "min_equity": float(curve[performance.EQUITY].min())
        if len(curve) else capital,
        "trading_days_per_year": periods, "strategy_version": settings.strategy.version,
        "first_tick": _iso(first), "last_tick": _iso(last), "days": len(daily), "symbols": len(symbols),
        "currencies": sorted(symbols[simulation.CURRENCY].dropna().unique().tolist()),
        "ticks_read": counts["ticks_valid"] + rejected, "ticks_valid": counts["ticks_valid"],
        "ticks_rejected": rejected, "rejects_by_reason": counts["rejects_by_reason"],
        "signals": counts["signals_buy"] + counts["signals_sell"], "signals_buy": counts["signals_buy"],
        "signals_sell": counts["signals_sell"], "unfilled_signals": int(total[simulation.UNFILLED]),
        "trades": int(total[simulation.TRADES]), "round_trips": int(total[simulation.ROUND_TRIPS]),
        "open_positions": int((symbols[simulation.POSITION] != 0).sum()),
        "traded_notional": float(total[simulation.TRADED]), "fees": float(total[simulation.FEES]),
    }
    return {"run": run, "strategy": strategy.as_dict(), "benchmark": benchmark.as_dict()}


def _iso(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None or pd.isna(ts) else pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def _summary_rows(summary: dict) -> pd.DataFrame:
    """The summary as a long table: section, metric, value (numbers) or text (everything else)."""
    rows = []
    for section, values in summary.items():
        for key, value in values.items():
            if isinstance(value, dict):
                rows += [(section, f"{key}.{k}", float(v), None) for k, v in value.items()]
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                rows.append((section, key, None, None if value is None else str(value)))
            else:
                rows.append((section, key, float(value), None))
    return pd.DataFrame(rows, columns=["section", "metric", "value", "text"])


def _json_safe(value):
    """NaN and ±inf -> null for strict JSON readers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_small(spark: SparkSession, frame: pd.DataFrame, path: str) -> None:
    """A driver-side aggregate (hundreds of rows) as a one-file parquet table."""
    spark.createDataFrame(frame, schema=_spark_schema(frame)).coalesce(1).write.mode("overwrite").parquet(path)


def _spark_schema(frame: pd.DataFrame) -> T.StructType:
    """Spark types for a small pandas frame, from its dtypes (so an empty frame has a schema too):
    the ``date`` column is a date, other object columns are strings."""
    def spark_type(name: str, dtype) -> T.DataType:
        if name == simulation.DATE:
            return T.DateType()
        if ptypes.is_bool_dtype(dtype):
            return T.BooleanType()
        if ptypes.is_integer_dtype(dtype):
            return T.LongType()
        if ptypes.is_float_dtype(dtype):
            return T.DoubleType()
        if ptypes.is_datetime64_any_dtype(dtype):
            return T.TimestampType()
        return T.StringType()

    return T.StructType([T.StructField(str(n), spark_type(str(n), d)) for n, d in frame.dtypes.items()])


def publish(spark: SparkSession, files: Sequence[Path], destination: str) -> None:
    """Copy local report files to ``destination``: a local folder, or any Hadoop file system URI
    (``s3://`` on EMR) through the session's Hadoop configuration."""
    target = local_path(destination)
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            (target / f.name).write_bytes(f.read_bytes())
        return
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path
    fs = hadoop_path(destination).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    for f in files:
        fs.copyFromLocalFile(False, True, hadoop_path(str(f)), hadoop_path(f"{destination}/{f.name}"))


def main(argv: Sequence[str] | None = None) -> int:
    """spark-submit entry point (jobs/backtest.py): --profile (default emr), --conf, --set KEY=VALUE."""
    parser = argparse.ArgumentParser(prog="backtest", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="emr")
    parser.add_argument("--conf", dest="conf_file")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    settings = load_settings(args.profile, args.overrides, conf_file=args.conf_file)
    from marketsignals.session import build_session

    spark = build_session(settings.spark, progress_conf(settings), bounded=True)
    summary = run_backtest(spark, settings)
    print(report.summary_text(summary), flush=True)
    return 0


def progress_conf(settings: Settings) -> dict[str, str]:
    """Spark's console progress bar on, unless the settings say otherwise."""
    return {} if PROGRESS_CONF in settings.spark.conf else {PROGRESS_CONF: "true"}

