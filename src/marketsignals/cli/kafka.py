"""``marketsignals kafka up|down|status|reset``: the local single-node broker."""

from __future__ import annotations

import argparse
import json

from marketsignals.local_broker import LocalBroker
from marketsignals.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "reset"],
                        help="up: start (idempotent) and create topics; down: stop; status: up/down, "
                             "topics, end offsets; reset: stop and delete all broker data")
    parser.add_argument("--json", action="store_true", help="status as JSON")


def run(args: argparse.Namespace, settings: Settings) -> int:
    broker = LocalBroker(settings.broker, settings.kafka)
    if args.action == "up":
        broker.up()
    elif args.action == "down":
        broker.down()
    elif args.action == "reset":
        broker.reset()
    else:
        info = broker.status()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(f"kafka: {'up' if info['up'] else 'down'} at {info['address']}"
                  + (f" (pid {info['pid']})" if info["pid"] else ""))
            for topic, parts in info.get("topics", {}).items():
                total = sum(parts.values())
                offsets = " ".join(f"p{p}={o}" for p, o in parts.items())
                print(f"  {topic:<20} {total:>12,} messages   {offsets}")
        return 0 if info["up"] else 1
    return 0
