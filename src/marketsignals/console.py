"""The live console view of `make run`: latest signal per symbol, rates, rejects, job health.

Reads the signals and dead-letter topics (kafka-python) and the job's metrics file; rendering is a
pure function of that state so it can be tested without a terminal.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ViewState:
    latest: dict[str, dict] = field(default_factory=dict)  # symbol -> last signal
    signals: int = 0
    rejects: Counter = field(default_factory=Counter)
    recent: deque = field(default_factory=lambda: deque(maxlen=20_000))  # arrival times of signals
    job: dict | None = None  # last metrics line of the streaming job

    def add_signal(self, signal: dict, now: float) -> None:
        self.latest[signal["symbol"]] = signal
        self.signals += 1
        self.recent.append(now)

    def add_reject(self, letter: dict) -> None:
        self.rejects[letter.get("reason", "?")] += 1

    def signal_rate(self, now: float, window_s: float = 10.0) -> float:
        while self.recent and self.recent[0] < now - window_s:
            self.recent.popleft()
        return len(self.recent) / window_s


def render(view: ViewState, now: float, max_rows: int = 25) -> str:
    """The screen as text."""
    lines = [f"marketsignals live   signals: {view.signals:,} ({view.signal_rate(now):,.1f}/s)   "
             f"rejected: {sum(view.rejects.values()):,}   (Ctrl-C stops feed, job and broker)", ""]
    job = view.job
    if job:
        lag = job.get("kafka_lag", {}).get("maxOffsetsBehindLatest", "?")
        lines.append(f"job: batch {job.get('batch_id')}  input {job.get('input_rows_per_s') or 0:,.0f} ticks/s  "
                     f"processed {job.get('processed_rows_per_s') or 0:,.0f} ticks/s  "
                     f"batch {job.get('batch_duration_ms')} ms  watermark {job.get('watermark')}  "
                     f"state rows {job.get('state_rows')}  lag {lag}")
    else:
        lines.append("job: starting (first micro-batch not done yet)")
    lines.append("")
    header = (f"{'symbol':<10}{'action':<7}{'price':>12}{'conf':>7}{'risk':>7}{'size':>9}  "
              f"{'regime':<7}{'liq':<7}event time")
    lines += [header, "-" * len(header)]
    for symbol in sorted(view.latest)[:max_rows]:
        s = view.latest[symbol]
        lines.append(f"{symbol:<10}{s.get('action', ''):<7}{s.get('price', 0):>12.4f}{s.get('confidence') or 0:>7.1f}"
                     f"{s.get('risk_score') or 0:>7.2f}{s.get('recommended_position_size') or 0:>9}  "
                     f"{s.get('volatility_regime') or '':<7}{s.get('liquidity_score') or '':<7}"
                     f"{s.get('event_time', '')}")
    if view.rejects:
        lines += ["", "rejects: " + "  ".join(f"{r}={n}" for r, n in view.rejects.most_common())]
    return "\n".join(lines)


def last_metrics_line(path: Path) -> dict | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 8192))
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if '"progress"' in ln]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def watch(kafka_settings, signals_topic: str, dead_letter_topic: str, metrics_path: str | None,
          should_stop, refresh_s: float = 1.0, out=print) -> ViewState:
    """Follow the topics until ``should_stop()``; redraw every ``refresh_s``."""
    from marketsignals import kafka_client

    consumer = kafka_client.consumer(kafka_settings, signals_topic, dead_letter_topic,
                                     auto_offset_reset="latest", consumer_timeout_ms=200)
    view = ViewState()
    next_draw = 0.0
    try:
        while not should_stop():
            for batch in consumer.poll(timeout_ms=200, max_records=5000).values():
                now = time.monotonic()
                for record in batch:
                    try:
                        value = json.loads(record.value)
                    except ValueError:
                        continue
                    if record.topic == signals_topic:
                        view.add_signal(value, now)
                    else:
                        view.add_reject(value)
            now = time.monotonic()
            if now >= next_draw:
                view.job = last_metrics_line(Path(metrics_path)) if metrics_path else None
                out("\033[2J\033[H" + render(view, now), flush=True)
                next_draw = now + refresh_s
    finally:
        consumer.close()
    return view
