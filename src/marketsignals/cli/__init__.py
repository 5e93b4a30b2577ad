"""The ``marketsignals`` command line: one subcommand per capability, each with ``--help``.

Every subcommand shares ``--profile``, ``--conf``, ``--set section.key=value`` and ``--verbose``.
Errors a person can fix (bad settings, broker not running, missing jars) end with one line saying
what to do, exit code 2; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from marketsignals import __version__
from marketsignals.settings import Settings, SettingsError, load_settings

# Subcommand modules under marketsignals.cli, each with add_arguments(parser) and run(args, settings).
COMMANDS: dict[str, str] = {
    "kafka": "Run the local single-node Kafka broker (KRaft) from the Maven jars",
    "feed": "Produce synthetic market ticks to Kafka or to a parquet history",
    "stream": "Run the streaming signals job (Kafka ticks -> risk-scored signals)",
    "backtest": "Backtest the strategy on historical ticks (same logic as live)",
    "stop": "Ask the streaming job on the profile's checkpoint to stop after its batch in flight",
    "live": "Broker + feed + streaming job + live console view (what `make run` runs)",
    "emr": "Package, render and run the jobs on Amazon EMR (EC2 steps, Serverless, EKS)",
}


class UserError(Exception):
    """An error whose message tells the user what to fix (no traceback shown)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketsignals", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"marketsignals {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="local", help="conf/<profile>.yaml to load (default: local)")
    common.add_argument("--conf", dest="conf_file", help="a settings YAML file instead of conf/<profile>.yaml")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set stream.ordering=event_time (repeatable)")
    common.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and Spark/Java logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"marketsignals.cli.{name}")
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings: Settings = load_settings(args.profile, args.overrides, conf_file=args.conf_file)
        if args.command not in ("emr", "stop"):  # emr renders requests for the cluster, which resolves its own
            # secrets; stop writes a file to the checkpoint
            from marketsignals.secrets import resolve_secrets

            settings = resolve_secrets(settings)
        result = args._module.run(args, settings)
        return int(result or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place where errors become a message for people
        if args.verbose or not _is_user_error(exc):
            raise
        print(f"marketsignals {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _is_user_error(exc: BaseException) -> bool:
    from marketsignals.local_broker import BrokerError
    from marketsignals.stream.job import IncompatibleCheckpoint

    return isinstance(exc, (UserError, SettingsError, BrokerError, IncompatibleCheckpoint, ValueError,
                            FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
