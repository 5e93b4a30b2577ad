"""The stream's state handler alone, without Spark: its Python CPU per run of micro-batches.

``python -m bench.handler --symbols 10000`` feeds the bench workload's ticks (bench/workload.py), cut
into micro-batches and split into the stream's buckets, to ``stream.state.make_handler`` with a
stand-in for Spark's GroupState that keeps each bucket's state row and timer, and the watermark
trailing each batch's newest tick by the watermark delay. It prints the handler's CPU seconds, the
rows it returned and a digest of those rows and of the symbols' final states, so two versions of the
kernel can be compared for speed and, on the same input, for identical output (``--code``).

In the product the handler is most of the Python workers' time; the rest is PySpark moving Arrow
batches in and out (py-spy, bench/README.md). What grows with the number of symbols is the handler's
per-symbol work: at ~20 ticks a symbol a batch, 10,000 symbols cost it 2.5-3.5 times the CPU of 100
in earlier rounds, ~1.2 times since the twenty-ninth (bench/ROUNDS.md).
``--profile`` adds a cProfile listing of the hottest functions.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import hashlib
import pickle
import pstats
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from bench import use_checkout

ROOT = Path(__file__).resolve().parents[1]


class _GroupState:
    """What the handler uses of Spark's GroupState, for one bucket across batches."""

    def __init__(self) -> None:
        self.value: tuple | None = None
        self.timeout: int | None = None
        self.watermark = 0

    @property
    def exists(self) -> bool:
        return self.value is not None

    @property
    def get(self) -> tuple:
        return self.value

    def update(self, value: tuple) -> None:
        self.value = value

    def remove(self) -> None:
        self.value = None

    def setTimeoutTimestamp(self, timeout: int) -> None:
        self.timeout = timeout

    def getCurrentWatermarkMs(self) -> int:
        return self.watermark


def batches(ticks: int, symbols: int, per_batch: int, buckets: int) -> list[tuple[int, list[tuple[int, pd.DataFrame]]]]:
    """The workload as the handler gets it: per micro-batch, its newest event time and each bucket's
    ticks (one frame, the handler's TICK_COLUMNS, offsets in arrival order, no rejects)."""
    from bench.workload import Workload, tick_columns

    cols = tick_columns(Workload(ticks=ticks, symbols=symbols))
    n = len(cols["symbol"])
    frame = pd.DataFrame({
        "symbol": cols["symbol"], "ts_ms": cols["ts_ms"], "volume": cols["volume"], "price": cols["price"],
        "bid": cols["bid"], "ask": cols["ask"], "partition": np.zeros(n, np.int32),
        "offset": np.arange(n, dtype=np.int64), "exchange": cols["exchange"], "topic": np.full(n, "ticks", object),
        "reason": np.full(n, None, object), "raw": np.full(n, None, object)})
    # any stable hash does here: only how many symbols share a bucket matters, not which
    bucket = frame["symbol"].map({s: zlib.crc32(s.encode()) % buckets for s in pd.unique(frame["symbol"])})
    out = []
    for lo in range(0, n, per_batch):
        part = frame.iloc[lo:lo + per_batch]
        groups = [(int(b), g.reset_index(drop=True)) for b, g in part.groupby(bucket.iloc[lo:lo + per_batch])]
        out.append((int(part["ts_ms"].max()), groups))
    return out


def run(work: list, handler, delay_ms: int) -> tuple[list[pd.DataFrame], dict[int, _GroupState]]:
    """Every batch through the handler, as Spark calls it: each bucket with data, then each bucket
    without data whose timer the watermark has passed (EventTimeTimeout)."""
    states: dict[int, _GroupState] = {}
    outputs = []
    watermark = 0
    for newest, groups in work:
        for b, group in groups:
            state = states.setdefault(b, _GroupState())
            state.watermark = watermark
            outputs.extend(handler((b,), iter([group]), state))
        called = {b for b, _ in groups}
        for b, state in states.items():
            if b not in called and state.exists and state.timeout is not None and state.timeout < watermark:
                state.watermark = watermark
                outputs.extend(handler((b,), iter([]), state))
        watermark = newest - delay_ms
    return outputs, states


def digest(outputs: list[pd.DataFrame], states: dict[int, _GroupState]) -> str:
    """The same for the same rows in the same order and the same final states, whatever their pickle."""
    h = hashlib.sha256()
    for out in outputs:
        h.update(pd.util.hash_pandas_object(out.astype(str), index=False).to_numpy().tobytes())
    for b in sorted(states):
        if states[b].value is None:
            continue
        symbols = _symbol_states(states[b].value[1])
        for symbol in sorted(symbols):
            timeout, s = symbols[symbol]
            pending = {k: (v.dtype.str, v.tolist()) for k, v in sorted((s.pending or {}).items())}
            h.update(repr((symbol, timeout, s.history.price.tolist(), s.history.volume.tolist(),
                           s.history.price_change_pct.tolist(), s.last_ts, s.high_water, _text_keys(s.recent),
                           s.last_action, pending)).encode())
    return h.hexdigest()[:16]


def _symbol_states(blob: bytes) -> dict:
    """{symbol: (timeout, SymbolState)} of a bucket's state, whichever the format: a table (formats 5 to 7) or,
    as an older checkout (``--code``) writes it, a dict of each symbol's timeout and pickled state."""
    bucket = pickle.loads(blob)[-1]  # after the bucket count (and, from format 7, the keys' partition count)
    if isinstance(bucket, dict):
        return {symbol: (timeout, pickle.loads(pickled)) for symbol, (timeout, pickled) in bucket.items()}
    return {symbol: (timeout, s) for symbol, timeout, s in bucket.rows()}


def _text_keys(recent) -> tuple[str, ...]:
    """A state's duplicate keys in one form whichever its version: text, as state formats 2 and 3 kept
    them (format 4 keeps their columns)."""
    if recent is None or isinstance(recent, tuple):
        return recent or ()
    columns = (recent[c].tolist() for c in ("ts_ms", "exchange", "price", "volume"))
    return tuple(f"{t}|{e}|{p!r}|{v}" for t, e, p, v in zip(*columns, strict=True))


def state_bytes(states: dict[int, _GroupState]) -> int:
    """The buckets' state blobs, in bytes: what every batch moves through Arrow and the state store."""
    return sum(len(s.value[1]) for s in states.values() if s.value is not None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.handler", description=__doc__.split("\n\n")[0])
    p.add_argument("--ticks", type=int, default=1_000_000)
    p.add_argument("--symbols", type=int, default=10_000)
    p.add_argument("--per-batch", type=int, default=200_000, help="ticks per micro-batch")
    p.add_argument("--buckets", type=int, default=None, help="default: stream.state_buckets of conf/local.yaml")
    p.add_argument("--ordering", choices=("arrival", "event_time"), default=None)
    p.add_argument("--code", default=None, help="time another checkout's src/ (a baseline)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the batches this many times, each from empty state; the least CPU is printed "
                        "(this VM's speed drifts by tens of percent between runs)")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, not {args.repeat}")
    if args.code:
        use_checkout(args.code)
    from marketsignals.settings import load_settings
    from marketsignals.stream import state
    from marketsignals.stream.job import kernel_config

    settings = load_settings("local")
    cfg = kernel_config(settings)
    if args.ordering:
        cfg = dataclasses.replace(cfg, ordering=args.ordering)
    buckets = args.buckets or settings.stream.state_buckets
    work = batches(args.ticks, args.symbols, args.per_batch, buckets)
    cpu = []
    for _ in range(args.repeat):
        handler = state.make_handler(cfg, buckets)
        started = time.process_time()
        outputs, states = run(work, handler, cfg.watermark_delay_ms)
        cpu.append(time.process_time() - started)
    runs = f" (least of {args.repeat}, median {np.median(cpu):.2f})" if args.repeat > 1 else ""
    print(f"{args.ticks:,} ticks, {args.symbols:,} symbols, {buckets} buckets, {len(work)} batches, "
          f"{cfg.ordering}: handler {min(cpu):.2f} CPU s{runs}, {sum(map(len, outputs)):,} rows, "
          f"state {state_bytes(states) / 1e6:.1f} MB, digest {digest(outputs, states)} ({state.__file__})")
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run, work, state.make_handler(cfg, buckets), cfg.watermark_delay_ms)
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
