"""``marketsignals feed``: synthetic (or replayed) market ticks to Kafka, or a parquet history."""

from __future__ import annotations

import argparse
import signal
import threading

from marketsignals import feed
from marketsignals.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbols", default="20",
                        help="a number of symbols (AAPL, MSFT, ... then SYM00001...) or a comma list")
    parser.add_argument("--rate", type=float, default=1000.0, help="ticks per second (default 1000)")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--count", type=int, help="stop after this many ticks")
    bound.add_argument("--duration", type=float, help="stop after this many seconds of ticks")
    parser.add_argument("--topics", help="comma list of tick topics (default: kafka.topics from conf)")
    parser.add_argument("--seed", type=int, default=7, help="same seed and options -> same ticks, byte for byte")
    parser.add_argument("--start", help="event time of the first tick, ISO-8601 (default: now)")
    parser.add_argument("--bad", action="append", default=[], metavar="KIND=FRACTION",
                        help=f"inject a fraction of a bad-tick kind; kinds: {', '.join(feed.BAD_KINDS)}; "
                             "'all=F' sets every kind (repeatable)")
    parser.add_argument("--unpaced", action="store_true", help="send as fast as possible (event time still "
                                                               "advances by 1/rate per tick)")
    parser.add_argument("--from", dest="from_file", help="replay a parquet/CSV/JSON-lines tick file instead")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="replay speed factor for --from (0 = as fast as possible)")
    parser.add_argument("--to-parquet", help="write a parquet data set partitioned by date here, not Kafka")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_bad(items: list[str]) -> dict[str, float]:
    bad: dict[str, float] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--bad expects KIND=FRACTION, got {item!r}")
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"--bad {kind}: fraction must be a number like 0.01, got {value!r}") from None
        for k in feed.BAD_KINDS if kind == "all" else [kind]:
            bad[k] = fraction
    return bad


def options_from_args(args: argparse.Namespace, settings: Settings) -> feed.FeedOptions:
    symbols = (feed.symbol_names(int(args.symbols)) if args.symbols.isdigit()
               else tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()))
    topics = tuple(args.topics.split(",")) if args.topics else tuple(settings.kafka.topics)
    start_ms = feed.parse_iso_ms(args.start) if args.start else None
    return feed.FeedOptions(symbols=symbols, rate=args.rate, count=args.count, duration_s=args.duration,
                            topics=topics, seed=args.seed, start_ms=start_ms, bad=parse_bad(args.bad))


def run(args: argparse.Namespace, settings: Settings) -> int:
    topics = tuple(args.topics.split(",")) if args.topics else tuple(settings.kafka.topics)
    if args.from_file:
        messages = feed.replay_file(args.from_file, topics, args.speed)
        total, rate = None, None
    else:
        opts = options_from_args(args, settings)
        messages = feed.generate(opts)
        total, rate = opts.total, None if args.unpaced else opts.rate
    progress = not args.no_progress
    if args.to_parquet:
        stats = feed.run_to_parquet(messages, args.to_parquet, progress=progress, total=total)
        print(f"feed: wrote {stats.produced:,} ticks to {args.to_parquet} in {stats.seconds:.1f}s "
              f"({stats.rate:,.0f}/s); kinds: {stats.by_kind}")
        return 0
    from marketsignals import kafka_client

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    producer = kafka_client.producer(settings.kafka)
    try:
        stats = feed.run_to_kafka(messages, producer, rate, progress=progress, total=total,
                                  should_stop=stop.is_set)
    except KeyboardInterrupt:
        stats = None
    finally:
        producer.close()
    if stats is not None:
        print(f"feed: sent {stats.produced:,} ticks to {settings.kafka.bootstrap_servers} in "
              f"{stats.seconds:.1f}s ({stats.rate:,.0f}/s); kinds: {stats.by_kind}")
    return 0
