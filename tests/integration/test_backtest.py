"""The backtest end to end on a generated multi-day history (no broker needed).

One history of 8 symbols over ~3.5 days, with bad ticks of several kinds, written the way the feed
writes it (parquet partitioned by date); the same ticks as one JSON-lines file and one CSV file.
"""

import json
import random

import pandas as pd
import pytest
from pyspark import StorageLevel
from pyspark.sql import functions as F

from marketsignals import feed
from marketsignals.backtest.history import HistoryError, read_history
from marketsignals.backtest.job import TABLES, run_backtest
from marketsignals.backtest.signals import batch_signals, validated_history
from marketsignals.schema import TICK_FIELDS
from marketsignals.stream.job import kernel_config

pytestmark = pytest.mark.integration

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
NOW_MS = T0 + 30 * 86_400_000  # processing time for the future-timestamp rule
BAD = {"crossed_quote": 0.004, "duplicate": 0.004, "missing_field": 0.004, "non_positive_price": 0.004,
       "future_timestamp": 0.004}
FEED = feed.FeedOptions(symbols=feed.symbol_names(8), rate=0.02, count=6000, seed=11, start_ms=T0, bad=BAD)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """{format: path} of the same ticks: date-partitioned parquet, one JSON-lines file, one CSV file."""
    root = tmp_path_factory.mktemp("history")
    feed.run_to_parquet(feed.generate(FEED), root / "parquet", progress=False)
    # nullable dtypes: a volume column with a missing value stays integer (no "80000.0" in the CSV)
    frame = pd.read_parquet(root / "parquet", dtype_backend="numpy_nullable").drop(columns=["date"])
    ts_ms = frame["timestamp"].map(lambda t: pd.NA if pd.isna(t) else t.value // 1_000_000).astype("Int64")
    rows = frame.assign(timestamp=ts_ms).to_dict("records")
    random.Random(3).shuffle(rows)  # a file need not be in time order
    with open(root / "ticks.jsonl", "w") as out:
        for i, row in enumerate(rows):
            tick = {k: v for k, v in row.items() if not pd.isna(v)}  # a missing field stays missing
            if "timestamp" in tick and i % 2:
                tick["timestamp"] = feed.iso_ms(int(tick["timestamp"]))  # ISO text and epoch ms, mixed
            out.write(json.dumps(tick, default=int) + "\n")
    frame.assign(timestamp=ts_ms).sample(frac=1.0, random_state=5)[list(reversed(TICK_FIELDS))] \
        .to_csv(root / "ticks.csv", index=False)  # columns in another order: read by header name
    return {"parquet": str(root / "parquet"), "json": str(root / "ticks.jsonl"), "csv": str(root / "ticks.csv"),
            "rows": len(frame)}


def _settings(base_settings, history, fmt, output):
    return base_settings.with_overrides([f"backtest.input={history[fmt]}", f"backtest.input_format={fmt}",
                                         f"backtest.output={output}", "backtest.fee_bps=2.0"])


@pytest.fixture(scope="module")
def parquet_run(spark, base_settings, history, tmp_path_factory):
    output = tmp_path_factory.mktemp("backtest-parquet")
    summary = run_backtest(spark, _settings(base_settings, history, "parquet", output), now_ms=NOW_MS,
                           log=lambda _: None)
    return summary, output


def test_run_backtest_writes_every_table_and_the_report(spark, history, parquet_run):
    summary, output = parquet_run
    run = summary["run"]
    for table in TABLES:
        assert spark.read.parquet(str(output / table)) is not None
    for name in ("report.md", "report.html", "summary.json", "equity.png", "drawdown.png", "daily_pnl.png",
                 "pnl_by_symbol.png"):
        assert (output / name).stat().st_size > 0, name
    assert "![equity curve](equity.png)" in (output / "report.md").read_text()

    # every row read is either processed or rejected, with the live reasons
    assert run["ticks_read"] == history["rows"]
    assert run["ticks_valid"] + run["ticks_rejected"] == history["rows"]
    assert {"crossed_quote", "duplicate", "missing_field", "invalid_price", "future_timestamp"} \
        <= set(run["rejects_by_reason"])
    assert spark.read.parquet(str(output / "rejects")).count() == run["ticks_rejected"]
    assert run["symbols"] == 8 and run["days"] >= 3
    # capital left null: fully funded, symbols × strategy.base_position, never levered
    assert run["initial_capital"] == 8 * 100_000 and run["capital_source"] == "symbols x strategy.base_position"
    assert 0 < run["max_leverage"] <= 1.1  # positions sized at entry; prices move a little after
    assert spark.read.parquet(str(output / "signals")).count() == run["signals"] > 0
    assert spark.read.parquet(str(output / "trades")).count() == run["trades"] > 0

    # the books add up: daily PnL sums to the final PnL, which is the sum over symbols
    daily = spark.read.parquet(str(output / "daily_pnl")).toPandas()
    symbols = spark.read.parquet(str(output / "symbol_pnl")).toPandas()
    strategy, benchmark = summary["strategy"], summary["benchmark"]
    assert daily["pnl"].sum() == pytest.approx(strategy["pnl"])
    assert symbols["pnl"].sum() == pytest.approx(strategy["pnl"])
    assert daily["benchmark_pnl"].sum() == pytest.approx(benchmark["pnl"])
    assert benchmark["pnl"] == pytest.approx(
        (symbols["benchmark_return"] * run["initial_capital"] / run["symbols"]).sum())
    assert daily["fees"].sum() == pytest.approx(run["traded_notional"] * 2.0 / 10_000)
    assert 0 <= strategy["exposure"] <= 1 and benchmark["exposure"] == pytest.approx(1.0)
    assert 0 <= strategy["hit_rate"] <= 1 and strategy["max_drawdown"] >= 0
    per_day = spark.read.parquet(str(output / "symbol_daily_pnl")).toPandas()
    assert per_day["pnl"].sum() == pytest.approx(strategy["pnl"])


def test_partitioned_history_equals_the_same_ticks_in_one_json_lines_file(spark, base_settings, history,
                                                                         parquet_run, tmp_path):
    parquet_summary, parquet_out = parquet_run
    summary = run_backtest(spark, _settings(base_settings, history, "json", tmp_path), now_ms=NOW_MS,
                           log=lambda _: None)

    def table(root, name, drop=(), order=()):
        frame = spark.read.parquet(str(root / name)).drop(*drop).toPandas()
        return frame.sort_values(list(order or frame.columns)).reset_index(drop=True)

    pd.testing.assert_frame_equal(table(tmp_path, "signals", drop=["emitted_at"], order=["signal_id"]),
                                  table(parquet_out, "signals", drop=["emitted_at"], order=["signal_id"]))
    pd.testing.assert_frame_equal(table(tmp_path, "trades"), table(parquet_out, "trades"))
    pd.testing.assert_frame_equal(table(tmp_path, "daily_pnl"), table(parquet_out, "daily_pnl"))
    # equal up to the order of floating-point sums over symbols (partitioning differs)
    assert summary["strategy"] == pytest.approx(parquet_summary["strategy"], nan_ok=True)
    assert summary["benchmark"] == pytest.approx(parquet_summary["benchmark"], nan_ok=True)
    assert summary["run"]["rejects_by_reason"] == parquet_summary["run"]["rejects_by_reason"]


def test_csv_history_gives_the_same_valid_ticks_and_rejects(spark, base_settings, history):
    """CSV (columns in another order, epoch-ms text timestamps) validates to exactly the parquet's
    ticks and rejects -- the kernel is deterministic on its input, so the signals follow."""
    skew = base_settings.stream.max_future_skew_ms

    def checked(fmt):
        columns = ["symbol", "ts_ms", "price", "volume", "bid", "ask", "exchange", "currency", "reason"]
        frame = validated_history(read_history(spark, history[fmt], fmt), F.lit(NOW_MS), skew)
        return frame.select(*columns).toPandas().sort_values(columns).reset_index(drop=True)

    pd.testing.assert_frame_equal(checked("csv"), checked("parquet"))


def test_validation_is_computed_once_for_signals_and_simulation(spark, base_settings, history):
    """run_backtest caches the validated history; batch_signals' plan must pick that cache up."""
    ticks = read_history(spark, history["parquet"], "parquet")
    now, skew = F.lit(NOW_MS), base_settings.stream.max_future_skew_ms
    checked = validated_history(ticks, now, skew).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        signals, rejects, _ = batch_signals(ticks, kernel_config(base_settings), now, skew)
        for frame in (signals, rejects):
            assert "InMemoryRelation" in frame._jdf.queryExecution().withCachedData().toString()
    finally:
        checked.unpersist()


def test_history_problems_are_reported_not_thrown_as_spark_errors(spark, tmp_path, history):
    with pytest.raises(HistoryError, match="no history at"):
        read_history(spark, str(tmp_path / "nowhere"), "parquet")
    with pytest.raises(HistoryError, match="no history at"):
        read_history(spark, f"file:{tmp_path}/nowhere", "parquet")
    assert read_history(spark, f"file:{history['parquet']}", "parquet").count() > 0  # as Hadoop prints it
    pd.DataFrame({"symbol": ["AAPL"], "price": [1.0]}).to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(HistoryError, match="missing tick columns timestamp, volume, bid, ask"):
        read_history(spark, str(tmp_path / "partial.csv"), "csv")
