"""``marketsignals stream``: run the streaming signals job locally (local[*], jars from make jars)."""

from __future__ import annotations

import argparse

from marketsignals.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trigger", help="override stream.trigger: availableNow or processingTime=<duration>")
    parser.add_argument("--from-beginning", action="store_true", help="kafka.starting_offsets=earliest")


def run(args: argparse.Namespace, settings: Settings) -> int:
    overrides = []
    if args.trigger:
        overrides.append(f"stream.trigger={args.trigger}")
    if args.from_beginning:
        overrides.append("kafka.starting_offsets=earliest")
    settings = settings.with_overrides(overrides)
    from marketsignals.session import build_session
    from marketsignals.stream.job import run as run_stream

    spark = build_session(settings.spark, bounded=settings.stream.bounded)
    print(f"marketsignals stream: reading {', '.join(settings.kafka.tick_topics)} from "
          f"{settings.kafka.bootstrap_servers}; ordering={settings.stream.ordering}, "
          f"emission={settings.stream.emission}, checkpoint={settings.stream.checkpoint}", flush=True)
    return run_stream(spark, settings)
