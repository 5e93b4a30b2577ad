"""A synthetic market feed: per-symbol geometric Brownian motion ticks (SPEC §1), with bad ticks on demand.

The generator is pure and seeded: the same seed and options give the same messages byte for byte.
Sinks (Kafka, a date-partitioned parquet data set) and the replay of a recorded file sit at the edge
of this module.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

# Exchanges (MIC) and the currency of their listings; a symbol trades mostly at its home venue.
VENUES: dict[str, str] = {"XNAS": "USD", "XNYS": "USD", "ARCX": "USD", "BATS": "USD",
                          "XLON": "GBP", "XETR": "EUR", "XPAR": "EUR", "XTKS": "JPY"}
US_VENUES = ("XNAS", "XNYS", "ARCX", "BATS")
KNOWN_SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM", "V", "XOM",
                 "UNH", "JNJ", "WMT", "PG", "MA", "HD", "CVX", "KO", "PEP", "BAC")

BAD_KINDS: tuple[str, ...] = ("not_json", "missing_field", "wrong_type", "crossed_quote",
                              "non_positive_price", "future_timestamp", "late", "duplicate")
# The dead-letter reason each bad kind must produce (SPEC §1; the streaming job's contract).
EXPECTED_REASON: dict[str, str] = {
    "not_json": "not_json", "missing_field": "missing_field", "wrong_type": "wrong_type",
    "crossed_quote": "crossed_quote", "non_positive_price": "invalid_price",
    "future_timestamp": "future_timestamp", "late": "late", "duplicate": "duplicate",
}
FUTURE_OFFSET_MS = 3650 * 86_400_000  # "far future": ten years ahead of the tick's own clock


@dataclass(frozen=True)
class FeedOptions:
    """What to generate. ``count`` or ``duration_s`` bounds the run (neither: run until stopped)."""

    symbols: tuple[str, ...] = KNOWN_SYMBOLS
    rate: float = 1000.0  # ticks per second of event time (and of wall time when paced)
    count: int | None = None
    duration_s: float | None = None
    topics: tuple[str, ...] = ("market-data", "level2-data", "trade-data")
    seed: int = 7
    start_ms: int | None = None  # event time of the first tick; None = now
    bad: dict[str, float] = field(default_factory=dict)  # bad kind -> fraction of messages
    late_by_ms: int = 300_000  # how far behind its symbol's clock a "late" tick is stamped

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be > 0 ticks/s")
        if not self.symbols:
            raise ValueError("at least one symbol is needed")
        for kind, fraction in self.bad.items():
            if kind not in BAD_KINDS:
                raise ValueError(f"unknown bad-tick kind {kind!r}: expected one of {', '.join(BAD_KINDS)}")
            if not 0 <= fraction < 1:
                raise ValueError(f"bad-tick fraction for {kind} must be in [0, 1), got {fraction}")
        if sum(self.bad.values()) >= 0.5:
            raise ValueError("bad-tick fractions add up to 50% or more: the feed would be mostly bad")

    @property
    def total(self) -> int | None:
        if self.count is not None:
            return self.count
        if self.duration_s is not None:
            return int(self.duration_s * self.rate)
        return None


@dataclass(frozen=True)
class Message:
    """One Kafka message of the feed; ``kind`` is ``"good"`` or a bad kind; ``ts_ms`` its event time."""

    topic: str
    key: bytes
    value: bytes
    kind: str
    symbol: str
    ts_ms: int


def symbol_names(n: int) -> tuple[str, ...]:
    """``n`` ticker-like names: well-known ones first, then SYM00001..."""
    names = list(KNOWN_SYMBOLS[:n])
    names += [f"SYM{i:05d}" for i in range(n - len(names))]
    return tuple(names)


def topic_of(symbol: str, topics: Sequence[str]) -> str:
    """A symbol always goes to the same topic (and, keyed by symbol, the same partition), so each
    symbol's ticks arrive in event-time order (the condition of the parity promise, SPEC §5)."""
    return topics[zlib.crc32(symbol.encode()) % len(topics)]


def iso_ms(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _SymbolBook:
    """Per-symbol GBM parameters and current state."""

    def __init__(self, symbols: Sequence[str], rng: np.random.Generator) -> None:
        n = len(symbols)
        self.symbols = list(symbols)
        self.price = rng.uniform(10.0, 500.0, n)
        self.sigma_pct = rng.uniform(0.03, 1.2, n)  # per-tick volatility, percent
        self.drift_pct = rng.normal(0.0, 0.01, n)
        self.spread_bps = rng.uniform(1.0, 25.0, n)
        venues = list(VENUES)
        self.home = [venues[i] for i in rng.integers(0, len(venues), n)]
        weights = 1.0 / np.arange(1, n + 1) ** 0.6  # some symbols trade more (Zipf-like)
        self.weights = weights / weights.sum()
        self.last_value: list[bytes | None] = [None] * n
        self.last_ts: list[int | None] = [None] * n


def generate(opts: FeedOptions, now_ms: Callable[[], int] | None = None) -> Iterator[Message]:
    """Yield the feed's messages in send order (event time increases by 1/rate per message)."""
    rng = np.random.default_rng(opts.seed)
    book = _SymbolBook(opts.symbols, rng)
    start = opts.start_ms if opts.start_ms is not None else (now_ms or _now_ms)()
    total = opts.total
    step_ms = 1000.0 / opts.rate
    kinds = list(opts.bad)
    chunk = 8192
    produced = 0
    while total is None or produced < total:
        n = chunk if total is None else min(chunk, total - produced)
        sym_idx = rng.choice(len(book.symbols), size=n, p=book.weights)
        shocks = rng.standard_normal(n)
        vol_z = rng.standard_normal(n)
        spread_noise = rng.lognormal(0.0, 0.35, n)
        venue_roll = rng.random(n)
        venue_pick = rng.integers(0, len(US_VENUES), n)
        zero_volume = rng.random(n) < 0.01
        bad_of = _assign_bad(rng, n, kinds, opts, produced, total)
        for j in range(n):
            i = int(sym_idx[j])
            symbol = book.symbols[i]
            ts = start + int((produced + j) * step_ms)
            kind = bad_of[j]
            if kind == "duplicate" and book.last_value[i] is not None:
                yield Message(topic_of(symbol, opts.topics), symbol.encode(), book.last_value[i], kind,
                              symbol, book.last_ts[i])
                continue
            if kind == "late" and book.last_ts[i] is not None:
                ts = book.last_ts[i] - opts.late_by_ms
            elif kind in ("duplicate", "late"):
                kind = "good"  # nothing to repeat or be late behind yet: send a good tick
            if kind != "late":
                sig = book.sigma_pct[i] / 100.0
                mu = book.drift_pct[i] / 100.0
                book.price[i] *= math.exp(mu - 0.5 * sig * sig + sig * shocks[j])
            price = round(float(book.price[i]), 4)
            half = price * book.spread_bps[i] * spread_noise[j] / 20_000.0
            bid = math.floor((price - half) * 10_000) / 10_000
            ask = math.ceil((price + half) * 10_000) / 10_000
            volume = 0 if zero_volume[j] else int(math.exp(math.log(80_000) + 1.5 * vol_z[j]))
            home = book.home[i]
            exchange = US_VENUES[venue_pick[j]] if home in US_VENUES and venue_roll[j] < 0.3 else home
            topic = topic_of(symbol, opts.topics)
            tick = {"symbol": symbol, "timestamp": ts if topic == opts.topics[-1] else iso_ms(ts),
                    "price": price, "volume": volume, "bid": bid, "ask": ask,
                    "exchange": exchange, "currency": VENUES[home]}
            value = _corrupt(tick, kind, rng) if kind != "good" else _encode(tick)
            if kind == "good":
                book.last_value[i] = value
                book.last_ts[i] = ts
            yield Message(topic, symbol.encode(), value, kind, symbol, ts)
        produced += n


def _assign_bad(rng: np.random.Generator, n: int, kinds: list[str], opts: FeedOptions,
                produced: int, total: int | None) -> list[str]:
    """The kind of each message of a chunk. With a known total, each kind gets exactly
    round(fraction x total) messages, spread over the run; otherwise each message is drawn."""
    if not kinds:
        return ["good"] * n
    if total is not None:
        # Exact counts: positions are fixed by a separate, seeded permutation of the whole run.
        exact = _exact_positions(opts, total)
        return [exact.get(produced + j, "good") for j in range(n)]
    out = ["good"] * n
    roll = rng.random(n)
    edge = 0.0
    for kind in kinds:
        lo, edge = edge, edge + opts.bad[kind]
        for j in np.nonzero((roll >= lo) & (roll < edge))[0]:
            out[int(j)] = kind
    return out


_EXACT_CACHE: dict[tuple, dict[int, str]] = {}


def _exact_positions(opts: FeedOptions, total: int) -> dict[int, str]:
    key = (opts.seed, total, tuple(sorted(opts.bad.items())))
    if key not in _EXACT_CACHE:
        rng = np.random.default_rng([opts.seed, 99])
        counts = [round(opts.bad[k] * total) for k in opts.bad]
        # Bad ticks are kept out of the first 2% of the run so that "late" and "duplicate" ticks
        # have a prior tick of their symbol to refer to.
        lo = min(total - 1, max(0, int(total * 0.02)))
        positions = rng.permutation(np.arange(lo, total))[: sum(counts)]
        mapping: dict[int, str] = {}
        at = 0
        for kind, c in zip(opts.bad, counts, strict=True):
            for p in positions[at: at + c]:
                mapping[int(p)] = kind
            at += c
        _EXACT_CACHE.clear()
        _EXACT_CACHE[key] = mapping
    return _EXACT_CACHE[key]


def _encode(tick: dict) -> bytes:
    return json.dumps(tick, separators=(",", ":")).encode()


def _corrupt(tick: dict, kind: str, rng: np.random.Generator) -> bytes:
    """The bytes of a bad tick of ``kind`` built from a good one."""
    tick = dict(tick)
    if kind == "not_json":
        return b"<tick " + _encode(tick)[1:-5] + b" ..."
    if kind == "missing_field":
        fields = ["timestamp", "price", "volume", "bid", "ask", "exchange", "currency"]
        del tick[fields[int(rng.integers(0, len(fields)))]]
    elif kind == "wrong_type":
        field_name = ("price", "volume", "bid")[int(rng.integers(0, 3))]
        tick[field_name] = {"price": "N/A", "volume": [tick["volume"]], "bid": True}[field_name]
    elif kind == "crossed_quote":
        tick["bid"], tick["ask"] = tick["ask"] + 0.01, tick["bid"]
    elif kind == "non_positive_price":
        tick["price"] = -abs(tick["price"]) if rng.random() < 0.5 else 0.0
    elif kind == "future_timestamp":
        ts = tick["timestamp"]
        ts_ms = ts if isinstance(ts, int) else parse_iso_ms(ts)
        tick["timestamp"] = ts_ms + FUTURE_OFFSET_MS if isinstance(ts, int) else iso_ms(ts_ms + FUTURE_OFFSET_MS)
    # "late" ticks are well-formed: only their timestamp (set by the caller) is behind.
    return _encode(tick)


def parse_iso_ms(text: str) -> int:
    """Epoch milliseconds of an ISO-8601 timestamp (``Z`` or an offset); the inverse of :func:`iso_ms`."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- sinks -----------------------------------------------------------------------------------------
@dataclass
class FeedStats:
    produced: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, kind: str) -> None:
        self.produced += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    @property
    def rate(self) -> float:
        return self.produced / self.seconds if self.seconds > 0 else 0.0


def run_to_kafka(messages: Iterator[Message], producer, rate: float | None, progress: bool = True,
                 total: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> FeedStats:
    """Send ``messages`` with ``producer`` (kafka-python), paced at ``rate`` msgs/s (None: unpaced)."""
    stats = FeedStats()
    bar = _progress(total, progress)
    started = time.monotonic()
    try:
        for n, msg in enumerate(messages):
            if should_stop():
                break
            producer.send(msg.topic, key=msg.key, value=msg.value)
            stats.add(msg.kind)
            if rate and n % 100 == 0:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if bar is not None and n % 1000 == 999:
                bar.update(1000)
                bar.set_postfix_str(f"{stats.produced / max(time.monotonic() - started, 1e-9):,.0f} ticks/s")
        producer.flush()
    finally:
        stats.seconds = time.monotonic() - started
        if bar is not None:
            bar.update(stats.produced - bar.n)
            bar.close()
    return stats


def run_to_parquet(messages: Iterator[Message], out_dir: str | Path, progress: bool = True,
                   total: int | None = None, rows_per_file: int = 500_000) -> FeedStats:
    """Write the ticks as a parquet data set partitioned by date (``date=YYYY-MM-DD``), typed per
    SPEC §1. Kinds a typed file cannot hold (not JSON, wrong JSON type) are skipped and counted."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    stats = FeedStats()
    bar = _progress(total, progress)
    started = time.monotonic()
    columns: dict[str, list] = {k: [] for k in ("symbol", "timestamp", "price", "volume", "bid", "ask",
                                                "exchange", "currency", "date")}
    schema = pa.schema([("symbol", pa.string()), ("timestamp", pa.timestamp("ms", tz="UTC")),
                        ("price", pa.float64()), ("volume", pa.int64()), ("bid", pa.float64()),
                        ("ask", pa.float64()), ("exchange", pa.string()), ("currency", pa.string()),
                        ("date", pa.string())])
    part = 0

    def flush() -> None:
        nonlocal part
        if not columns["symbol"]:
            return
        table = pa.table(columns, schema=schema)
        ds.write_dataset(table, str(out_dir), format="parquet", partitioning=["date"],
                         partitioning_flavor="hive", existing_data_behavior="overwrite_or_ignore",
                         basename_template=f"part-{part:05d}-{{i}}.parquet")
        part += 1
        for values in columns.values():
            values.clear()

    for msg in messages:
        if msg.kind in ("not_json", "wrong_type"):
            stats.add(f"skipped_{msg.kind}")
            continue
        tick = json.loads(msg.value)
        ts = tick.get("timestamp")
        ts_ms = ts if isinstance(ts, int) else (parse_iso_ms(ts) if ts is not None else None)
        columns["symbol"].append(tick.get("symbol"))
        columns["timestamp"].append(ts_ms)
        for name in ("price", "volume", "bid", "ask", "exchange", "currency"):
            columns[name].append(tick.get(name))
        columns["date"].append(iso_ms(ts_ms)[:10] if ts_ms is not None else "unknown")
        stats.add(msg.kind)
        if bar is not None and stats.produced % 1000 == 0:
            bar.update(1000)
        if len(columns["symbol"]) >= rows_per_file:
            flush()
    flush()
    stats.seconds = time.monotonic() - started
    if bar is not None:
        bar.close()
    return stats


def replay_file(path: str | Path, topics: Sequence[str], speed: float) -> Iterator[Message]:
    """Messages for the ticks recorded in a parquet (file or data set), CSV or JSON-lines file, in
    timestamp order, spaced by their original gaps divided by ``speed`` (0 = as fast as possible)."""
    import pandas as pd

    p = Path(path)
    if p.is_dir() or p.suffix == ".parquet":
        frame = pd.read_parquet(p)
    elif p.suffix == ".csv":
        frame = pd.read_csv(p)
    elif p.suffix in (".jsonl", ".json", ".ndjson"):
        frame = pd.read_json(p, lines=True)
    else:
        raise ValueError(f"{path}: expected a .parquet file or folder, .csv or .jsonl file")
    missing = {"symbol", "timestamp", "price", "volume", "bid", "ask", "exchange", "currency"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing tick columns {', '.join(sorted(missing))} (SPEC §1)")
    ts = pd.to_datetime(frame["timestamp"], utc=True, format="mixed")
    frame = frame.assign(event_ms=ts.dt.as_unit("ms").astype("int64")).sort_values("event_ms", kind="stable")
    started = time.monotonic()
    first = None
    for row in frame.itertuples(index=False):
        ts_ms = int(row.event_ms)
        first = ts_ms if first is None else first
        if speed > 0:
            ahead = (ts_ms - first) / 1000.0 / speed - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        tick = {"symbol": row.symbol, "timestamp": iso_ms(ts_ms), "price": float(row.price),
                "volume": int(row.volume), "bid": float(row.bid), "ask": float(row.ask),
                "exchange": row.exchange, "currency": row.currency}
        yield Message(topic_of(row.symbol, topics), str(row.symbol).encode(), _encode(tick), "good",
                      str(row.symbol), ts_ms)


def _progress(total: int | None, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tick", unit_scale=True, dynamic_ncols=True, mininterval=0.5)
