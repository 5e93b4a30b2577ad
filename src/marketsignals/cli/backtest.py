"""``marketsignals backtest``: the strategy on historical ticks, through the live logic, with a report."""

from __future__ import annotations

import argparse
import json

from marketsignals.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", help="override backtest.input: a folder, file or glob; local or s3://")
    parser.add_argument("--format", choices=("parquet", "csv", "json"),
                        help="override backtest.input_format (json = JSON lines, one tick per line)")
    parser.add_argument("--output", help="override backtest.output: where the tables and the report go")


def run(args: argparse.Namespace, settings: Settings) -> int:
    # JSON-quoted: a YAML string whatever the path looks like (a bare 2026 would become a number).
    overrides = [f"backtest.{key}={json.dumps(value)}" for key, value in
                 (("input", args.input), ("input_format", args.format), ("output", args.output)) if value]
    settings = settings.with_overrides(overrides)
    from marketsignals.backtest.job import progress_conf, run_backtest
    from marketsignals.backtest.report import summary_text
    from marketsignals.session import build_session

    spark = build_session(settings.spark, progress_conf(settings), bounded=True)
    summary = run_backtest(spark, settings)
    print(summary_text(summary), flush=True)
    return 0
