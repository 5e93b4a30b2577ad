"""The backtest report: a page a person reads in a minute -- headline numbers, then charts.

Writes ``report.md`` and ``report.html`` (same content) plus PNG charts into a local folder: equity
against the benchmark, drawdown, daily PnL, PnL by symbol. The job copies the folder to the output
location (local or S3). Charts are drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import FuncFormatter, PercentFormatter

from marketsignals.backtest.performance import BENCHMARK, DRAWDOWN, EQUITY, MARKED_AT
from marketsignals.backtest.simulation import BAR_START, DATE, PNL, SYMBOL

STRATEGY_COLOR, BENCHMARK_COLOR = "#1f77b4", "#7f7f7f"
GAIN_COLOR, LOSS_COLOR = "#2ca02c", "#d62728"
TOP_SYMBOLS = 12  # best and worst symbols shown in the PnL-by-symbol chart and table
DAILY_ROWS = 31  # days listed in the report's daily table (the table in parquet has them all)
DPI = 110

# (label, key in the metrics dict, format) in the order of the summary table.
METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("Final equity", "final_equity", "money"),
    ("PnL", "pnl", "money"),
    ("Total return", "total_return", "pct"),
    ("Annualised volatility", "annualised_volatility", "pct"),
    ("Sharpe (daily, ann.)", "sharpe", "ratio"),
    ("Sortino (daily, ann.)", "sortino", "ratio"),
    ("Max drawdown", "max_drawdown", "pct"),
    ("Hit rate", "hit_rate", "pct"),
    ("Turnover (per day)", "turnover", "ratio"),
    ("Exposure (time in market)", "exposure", "pct"),
    ("Days", "days", "int"),
)


def fmt(value: Any, kind: str) -> str:
    """A number for people: money with separators, percentages, ratios; NaN/None as 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if kind == "money":
        return f"{value:,.2f}"
    if kind == "pct":
        return f"{value * 100:.2f} %"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "int":
        return f"{int(value):,}"
    return str(value)


# --- document model: rendered to Markdown and HTML --------------------------------------------------
@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Image:
    file: str
    alt: str


Block = str | Table | Image  # a str is a paragraph


def to_markdown(title: str, sections: Iterable[tuple[str, list[Block]]]) -> str:
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(block.header) + " |")
                lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(block.header))) + "|")
                lines += ["| " + " | ".join(row) + " |" for row in block.rows]
            elif isinstance(block, Image):
                lines.append(f"![{block.alt}]({block.file})")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


def to_html(title: str, sections: Iterable[tuple[str, list[Block]]]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for heading, blocks in sections:
        body.append(f"<h2>{esc(heading)}</h2>")
        for block in blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
                rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif isinstance(block, Image):
                body.append(f'<img src="{esc(block.file)}" alt="{esc(block.alt)}">')
            else:
                body.append(f"<p>{esc(block)}</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px}"
             "td:not(:first-child){text-align:right}img{max-width:100%;margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


# --- charts ------------------------------------------------------------------------------------------
def _money_axis(ax) -> None:
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _finish(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def equity_chart(curve: pd.DataFrame, initial_capital: float, path: Path) -> Path:
    """Equity of the strategy and the benchmark per mark interval."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    start = pd.DataFrame({MARKED_AT: [curve[BAR_START].iloc[0]], EQUITY: [initial_capital],
                          BENCHMARK + EQUITY: [initial_capital]})
    points = pd.concat([start, curve[[MARKED_AT, EQUITY, BENCHMARK + EQUITY]]], ignore_index=True)
    ax.plot(points[MARKED_AT], points[EQUITY], color=STRATEGY_COLOR, lw=1.6, label="strategy")
    ax.plot(points[MARKED_AT], points[BENCHMARK + EQUITY], color=BENCHMARK_COLOR, lw=1.4, ls="--",
            label="buy & hold benchmark")
    ax.axhline(initial_capital, color="black", lw=0.6, alpha=0.5)
    ax.set_title("Equity: strategy vs buy-and-hold")
    _money_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    return _finish(fig, path)


def drawdown_chart(curve: pd.DataFrame, path: Path) -> Path:
    """Drawdown from the running peak (percent) of both books."""
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.fill_between(curve[MARKED_AT], curve[DRAWDOWN] * 100, 0, color=STRATEGY_COLOR, alpha=0.35,
                    label="strategy")
    ax.plot(curve[MARKED_AT], curve[BENCHMARK + DRAWDOWN] * 100, color=BENCHMARK_COLOR, lw=1.2, ls="--",
            label="benchmark")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=1))
    ax.set_title("Drawdown from peak")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.autofmt_xdate()
    return _finish(fig, path)


def daily_pnl_chart(daily: pd.DataFrame, path: Path) -> Path:
    """Daily PnL, strategy bars coloured by sign, benchmark as a line of markers."""
    fig, ax = plt.subplots(figsize=(10, 3.2))
    days = pd.to_datetime(daily[DATE])
    colors = [GAIN_COLOR if v >= 0 else LOSS_COLOR for v in daily[PNL]]
    ax.bar(days, daily[PNL], width=0.8, color=colors, label="strategy")
    ax.plot(days, daily[BENCHMARK + PNL], "o--", ms=3 if len(days) > 40 else 5, color=BENCHMARK_COLOR,
            label="benchmark")
    ax.axhline(0, color="black", lw=0.6)
    _money_axis(ax)
    ax.set_title("Daily PnL (marked at each day's last mid)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", framealpha=0.9)
    fig.autofmt_xdate()
    return _finish(fig, path)


def symbol_chart(symbols: pd.DataFrame, path: Path, top: int = TOP_SYMBOLS) -> Path:
    """The best and worst symbols by strategy PnL (horizontal bars) with the benchmark's PnL."""
    ranked = extremes(symbols, top)
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.32 * len(ranked) + 1.2)))
    y = range(len(ranked))
    ax.barh(y, ranked[PNL], color=[GAIN_COLOR if v >= 0 else LOSS_COLOR for v in ranked[PNL]], label="strategy")
    ax.scatter(ranked[BENCHMARK + PNL], y, color=BENCHMARK_COLOR, marker="|", s=200, zorder=3,
               label="benchmark")
    ax.set_yticks(list(y), ranked[SYMBOL])
    ax.axvline(0, color="black", lw=0.6)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    shown = f"best and worst {top} of {len(symbols)}" if len(symbols) > len(ranked) else f"all {len(symbols)}"
    ax.set_title(f"PnL by symbol ({shown} symbols)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    return _finish(fig, path)


def extremes(symbols: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` best and ``top`` worst symbols by pnl, best first (all of them if few)."""
    ranked = symbols.sort_values(PNL, ascending=True)
    if len(ranked) > 2 * top:
        ranked = pd.concat([ranked.head(top), ranked.tail(top)])
    return ranked.reset_index(drop=True)


# --- the report ----------------------------------------------------------------------------------------
def write_report(summary: dict, curve: pd.DataFrame, daily: pd.DataFrame, symbols: pd.DataFrame,
                 folder: Path) -> list[Path]:
    """Write report.md, report.html and the charts into ``folder``; returns the files written.

    ``summary`` is :func:`marketsignals.backtest.job.run_backtest`'s dict; ``curve`` and ``daily``
    come from :mod:`marketsignals.backtest.performance`; ``symbols`` has one row per symbol with
    ``symbol``, ``pnl`` and ``benchmark_pnl``."""
    folder.mkdir(parents=True, exist_ok=True)
    run = summary["run"]
    files: list[Path] = []
    sections: list[tuple[str, list[Block]]] = [("Summary", [_headline(summary), _metrics_table(summary)])]
    if len(curve):
        files += [equity_chart(curve, run["initial_capital"], folder / "equity.png"),
                  drawdown_chart(curve, folder / "drawdown.png"),
                  daily_pnl_chart(daily, folder / "daily_pnl.png"),
                  symbol_chart(symbols, folder / "pnl_by_symbol.png")]
        sections += [
            ("Equity and drawdown", [Image("equity.png", "equity curve"), Image("drawdown.png", "drawdown")]),
            ("Daily PnL", [Image("daily_pnl.png", "daily PnL"), *_daily_table(daily)]),
            ("PnL by symbol", [Image("pnl_by_symbol.png", "PnL by symbol"), _symbol_table(symbols)]),
        ]
    else:
        sections.append(("No data", ["No valid tick in the history: nothing was simulated."]))
    sections += [("Data", [_data_table(run)]), ("How these numbers are computed", _method_notes(run))]
    title = f"Backtest {run['strategy_version']}: {run['first_tick'] or '-'} to {run['last_tick'] or '-'}"
    for name, text in (("report.md", to_markdown(title, sections)), ("report.html", to_html(title, sections))):
        (folder / name).write_text(text, encoding="utf-8")
        files.append(folder / name)
    return files


def _headline(summary: dict) -> str:
    s, b = summary["strategy"], summary["benchmark"]
    verdict = ("beat" if s["total_return"] > b["total_return"] else
               "trailed" if s["total_return"] < b["total_return"] else "matched")
    return (f"The strategy returned {fmt(s['total_return'], 'pct')} (PnL {fmt(s['pnl'], 'money')}) and {verdict} "
            f"buy-and-hold ({fmt(b['total_return'], 'pct')}); max drawdown {fmt(s['max_drawdown'], 'pct')}, "
            f"{summary['run']['round_trips']:,} round trips with a hit rate of {fmt(s['hit_rate'], 'pct')}.")


def _metrics_table(summary: dict) -> Table:
    rows = [[label, fmt(summary["strategy"][key], kind), fmt(summary["benchmark"][key], kind)]
            for label, key, kind in METRIC_ROWS]
    return Table(["", "strategy", "buy & hold"], rows)


def _daily_table(daily: pd.DataFrame, last: int = DAILY_ROWS) -> list[Block]:
    shown = daily.tail(last)
    rows = [[str(r[DATE]), fmt(r[PNL], "money"), fmt(r["return"], "pct"), fmt(r[EQUITY], "money"),
             fmt(r[BENCHMARK + "return"], "pct"), fmt(int(r["trades"]), "int")]
            for _, r in shown.iterrows()]
    table = Table(["date", "PnL", "return", "equity", "benchmark return", "trades"], rows)
    if len(daily) <= last:
        return [table]
    return [f"The last {last} of {len(daily)} days (all of them in the daily_pnl table):", table]


def _symbol_table(symbols: pd.DataFrame) -> Table:
    ranked = extremes(symbols, TOP_SYMBOLS).iloc[::-1]
    rows = [[r[SYMBOL], fmt(r[PNL], "money"), fmt(r[BENCHMARK + PNL], "money"), fmt(int(r["trades"]), "int"),
             fmt(r["hit_rate"], "pct")] for _, r in ranked.iterrows()]
    return Table(["symbol", "PnL", "benchmark PnL", "trades", "hit rate"], rows)


def _data_table(run: dict) -> Table:
    reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(run["rejects_by_reason"].items())) or "none"
    rows = [
        ["input", f"{run['input']} ({run['input_format']})"],
        ["ticks read / valid / rejected",
         f"{run['ticks_read']:,} / {run['ticks_valid']:,} / {run['ticks_rejected']:,}"],
        ["rejects by reason", reasons],
        ["symbols / days", f"{run['symbols']:,} / {run['days']:,}"],
        ["currencies", ", ".join(run["currencies"]) or "-"],
        ["signals (BUY / SELL)", f"{run['signals']:,} ({run['signals_buy']:,} / {run['signals_sell']:,})"],
        ["unfilled signals", f"{run['unfilled_signals']:,}"],
        ["trades / round trips / open at end",
         f"{run['trades']:,} / {run['round_trips']:,} / {run['open_positions']:,}"],
        ["traded notional / fees", f"{fmt(run['traded_notional'], 'money')} / {fmt(run['fees'], 'money')}"],
        ["capital", f"{fmt(run['initial_capital'], 'money')} ({run['capital_source']}); benchmark "
                    f"{fmt(run['benchmark_allocation'], 'money')} per symbol"],
        ["max gross notional / leverage", f"{fmt(run['max_gross_notional'], 'money')} / "
                                          f"{fmt(run['max_leverage'], 'ratio')}×"],
        ["settings", f"fill={run['fill']}, fee={run['fee_bps']} bps, allow_short={run['allow_short']}, "
                     f"mark interval={run['mark_interval']}"],
        ["run time", f"{run['seconds']:.1f} s"],
    ]
    return Table(["", ""], rows)


def _method_notes(run: dict) -> list[Block]:
    notes: list[Block] = [
        "Signals come from the live kernel (same validation, indicators, risk and emission as the stream). "
        "BUY targets a long of floor(recommended_position_size / ask) shares, SELL goes "
        + ("short by floor(size / bid) shares" if run["allow_short"] else "flat")
        + f"; fills at the {'next tick after the signal' if run['fill'] == 'next_tick' else 'signal tick'}, "
        f"buying at the ask and selling at the bid, {run['fee_bps']} bps fee on traded notional.",
        "Positions are marked to the mid of each interval's last tick; daily PnL is marked at each day's last "
        "mid. Daily return = PnL / start-of-day equity. Sharpe and Sortino are daily, annualised with "
        f"sqrt({run['trading_days_per_year']}), risk-free rate 0, and need two days or more. Max drawdown is "
        "measured on the interval curve. Exposure = time with an open position / time observed.",
        "Buy & hold: the capital split equally over the symbols, each bought (fractional shares) at its "
        "first tick's ask plus the fee, and marked to mid.",
    ]
    if run["min_equity"] <= 0:
        notes.insert(0, f"Warning: the book's equity fell to {fmt(run['min_equity'], 'money')}: the capital "
                        f"({fmt(run['initial_capital'], 'money')}) is too small for the positions the strategy "
                        "takes, and returns after that point mean nothing. Raise backtest.initial_capital "
                        "or leave it null (fully funded).")
    elif run["max_leverage"] > 1:
        notes.append(f"The book was levered up to {fmt(run['max_leverage'], 'ratio')}× (gross notional / "
                     "equity) at its peak.")
    if len(run["currencies"]) > 1:
        notes.append(f"Caution: the history mixes currencies ({', '.join(run['currencies'])}); amounts are "
                     "added without FX conversion.")
    return notes


def summary_text(summary: dict) -> str:
    """The end-of-run summary for a terminal."""
    run = summary["run"]
    width = max(len(label) for label, _, _ in METRIC_ROWS)
    lines = [f"backtest: {run['ticks_read']:,} ticks ({run['ticks_rejected']:,} rejected), {run['symbols']:,} symbols, "
             f"{run['days']} days, {run['signals']:,} signals, {run['trades']:,} trades in {run['seconds']:.1f}s",
             f"{'':{width}}  {'strategy':>16}  {'buy & hold':>16}"]
    lines += [f"{label:{width}}  {fmt(summary['strategy'][key], kind):>16}  {fmt(summary['benchmark'][key], kind):>16}"
              for label, key, kind in METRIC_ROWS]
    lines.append(f"report: {run['output']}/report.html (and report.md)")
    return "\n".join(lines)
