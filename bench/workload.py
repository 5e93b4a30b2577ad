"""The benchmark's input: synthetic ticks generated with numpy (millions in seconds) and sent to the
local broker by a JVM producer (bench/Feeder.java), either all at once (pre-load) or at a fixed rate.

The ticks follow the same model as ``marketsignals.feed`` (per-symbol geometric Brownian motion,
Zipf-like symbol activity, home venue plus US venues, 1% zero volume), all valid, each symbol's
ticks in event-time order on one partition (the symbol is the Kafka key).
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marketsignals import feed

ROOT = Path(__file__).resolve().parents[1]
FEEDER = Path(__file__).with_name("Feeder.java")


@dataclass(frozen=True)
class Workload:
    ticks: int
    symbols: int
    rate: float = 10_000.0  # ticks per second of event time
    start_ms: int = 1_767_312_000_000  # 2026-01-02T00:00:00Z
    seed: int = 7


def tick_columns(w: Workload) -> dict[str, np.ndarray]:
    """The workload's ticks as columns (numpy, vectorised: ~1M ticks/s)."""
    rng = np.random.default_rng(w.seed)
    names = np.array(feed.symbol_names(w.symbols), dtype=object)
    weights = 1.0 / np.arange(1, w.symbols + 1) ** 0.6
    sym = rng.choice(w.symbols, size=w.ticks, p=weights / weights.sum())
    sigma = rng.uniform(0.03, 1.2, w.symbols) / 100.0
    drift = rng.normal(0.0, 0.01, w.symbols) / 100.0
    start_price = rng.uniform(10.0, 500.0, w.symbols)
    spread_bps = rng.uniform(1.0, 25.0, w.symbols)
    venues = list(feed.VENUES)
    home = rng.integers(0, len(venues), w.symbols)
    # per-symbol cumulative log returns: sort by symbol (stable keeps time order), cumsum per group
    step = drift[sym] - 0.5 * sigma[sym] ** 2 + sigma[sym] * rng.standard_normal(w.ticks)
    order = np.argsort(sym, kind="stable")
    csum = np.cumsum(step[order])
    first = np.r_[True, sym[order][1:] != sym[order][:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(w.ticks), 0))
    base = np.where(group_start > 0, csum[group_start - 1], 0.0)
    cum = np.empty(w.ticks)
    cum[order] = csum - base
    price = np.round(start_price[sym] * np.exp(cum), 4)
    half = price * spread_bps[sym] * rng.lognormal(0.0, 0.35, w.ticks) / 20_000.0
    bid = np.floor((price - half) * 10_000) / 10_000
    ask = np.ceil((price + half) * 10_000) / 10_000
    volume = np.exp(np.log(80_000) + 1.5 * rng.standard_normal(w.ticks)).astype(np.int64)
    volume[rng.random(w.ticks) < 0.01] = 0
    home_venue = np.array(venues, dtype=object)[home[sym]]
    us = np.isin(home_venue, feed.US_VENUES)
    exchange = np.where(us & (rng.random(w.ticks) < 0.3),
                        np.array(feed.US_VENUES, dtype=object)[rng.integers(0, 4, w.ticks)], home_venue)
    currency = np.array([feed.VENUES[v] for v in venues], dtype=object)[home[sym]]
    ts = w.start_ms + (np.arange(w.ticks) * (1000.0 / w.rate)).astype(np.int64)
    return {"symbol": names[sym], "ts_ms": ts, "price": price, "volume": volume, "bid": bid, "ask": ask,
            "exchange": exchange, "currency": currency}


def write_records(w: Workload, topics: list[str], path: Path) -> Path:
    """The Feeder's records file for the workload (see Feeder.java for the layout)."""
    cols = tick_columns(w)
    topic_of = {}
    pack = struct.Struct(">bbh").pack
    with open(path, "wb") as fh:
        out = []
        for s, ts, p, v, b, a, e, c in zip(cols["symbol"].tolist(), cols["ts_ms"].tolist(), cols["price"].tolist(),
                                           cols["volume"].tolist(), cols["bid"].tolist(), cols["ask"].tolist(),
                                           cols["exchange"].tolist(), cols["currency"].tolist(), strict=True):
            t = topic_of.get(s)
            if t is None:
                t = topic_of[s] = topics.index(feed.topic_of(s, topics))
            key = s.encode()
            prefix = f'{{"symbol":"{s}","timestamp":'.encode()
            suffix = (f',"price":{p!r},"volume":{v},"bid":{b!r},"ask":{a!r},"exchange":"{e}",'
                      f'"currency":"{c}"}}').encode()
            # like the feed: the last topic carries epoch millis, the others ISO-8601
            out.append(pack(t, 0 if t == len(topics) - 1 else 1, len(key)) + key
                       + struct.pack(">i", len(prefix)) + prefix + struct.pack(">i", len(suffix)) + suffix
                       + struct.pack(">q", ts))
            if len(out) >= 65536:
                fh.write(b"".join(out))
                out.clear()
        fh.write(b"".join(out))
    return path


def feeder_command(bootstrap: str, records: Path, topics: list[str], mode: str, rate: float = 0,
                   seconds: float = 0) -> list[str]:
    jars = ROOT / ".jars" / "kafka"
    if not any(jars.glob("kafka-clients-*.jar")):
        raise RuntimeError(f"Kafka jars not found in {jars}: run `make jars`")
    return ["java", "-Xmx1g", "-XX:+UseSerialGC", "-cp", f"{jars}/*", str(FEEDER), bootstrap, str(records),
            ",".join(topics), mode, str(rate), str(seconds)]


def run_feeder(bootstrap: str, records: Path, topics: list[str], mode: str, rate: float = 0,
               seconds: float = 0) -> dict:
    """Run the feeder to the end; its JSON summary (sent, seconds, rate, errors, max_behind_ms)."""
    proc = subprocess.run(feeder_command(bootstrap, records, topics, mode, rate, seconds),
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"feeder failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_feeder(bootstrap: str, records: Path, topics: list[str], rate: float, seconds: float,
                 lead: bool = False) -> subprocess.Popen:
    """The feeder at ``rate`` for ``seconds``; with ``lead``, it sends at that rate from now on and counts
    its ``seconds`` from :func:`start_measured_feed` (Feeder.java's mode "lead")."""
    return subprocess.Popen(feeder_command(bootstrap, records, topics, "lead" if lead else "paced", rate, seconds),
                            stdin=subprocess.PIPE if lead else None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def start_measured_feed(proc: subprocess.Popen) -> None:
    """A leading feeder's measured ``seconds`` start now (its pace goes on unchanged)."""
    proc.stdin.write("go\n")
    proc.stdin.flush()


def wait_feeder(proc: subprocess.Popen, timeout: float | None = None) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"feeder failed ({proc.returncode}): {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


if __name__ == "__main__":  # quick check: python -m bench.workload
    t = time.time()
    path = write_records(Workload(ticks=200_000, symbols=100), ["a", "b", "c"], Path("/tmp/bench-records.bin"))
    print(f"200k records in {time.time() - t:.2f}s -> {path.stat().st_size / 1e6:.1f} MB")
