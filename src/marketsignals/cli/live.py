"""``marketsignals live`` (what `make run` runs): broker, feed, streaming job and a live console view.

Ctrl-C (or --duration) stops the feed and the job cleanly, then the broker.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from marketsignals import stop_request
from marketsignals.local_broker import LocalBroker
from marketsignals.settings import Settings
from marketsignals.shutdown import StopSignals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbols", default="20", help="feed symbols (number or comma list)")
    parser.add_argument("--rate", type=float, default=2000.0, help="feed ticks per second (default 2000)")
    parser.add_argument("--bad", default="0.002", help="fraction of each bad-tick kind in the feed")
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--keep-broker", action="store_true", help="leave the broker running at the end")
    parser.add_argument("--fresh", action="store_true", help="delete the job's checkpoint and audit table first")


def run(args: argparse.Namespace, settings: Settings) -> int:
    logs = Path(".local/logs")
    logs.mkdir(parents=True, exist_ok=True)
    broker = LocalBroker(settings.broker, settings.kafka)
    broker.up()
    if args.fresh:
        import shutil

        for path in (settings.stream.checkpoint, settings.stream.audit_table):
            shutil.rmtree(path, ignore_errors=True)
        if settings.stream.metrics_path:
            Path(settings.stream.metrics_path).unlink(missing_ok=True)
    left = stop_request.remove_local(settings.stream.checkpoint)  # it would stop the job as it starts
    if left:
        print(f"live: removed a stop request no job acted on ({left})", flush=True)
    cli = [sys.executable, "-m", "marketsignals.cli"]
    passthrough = [a for o in args.overrides for a in ("--set", o)] + ["--profile", args.profile]
    if args.conf_file:
        passthrough += ["--conf", args.conf_file]
    feed_cmd = [*cli, "feed", *passthrough, "--symbols", args.symbols, "--rate", str(args.rate),
                "--bad", f"all={args.bad}", "--no-progress"]
    job_cmd = [*cli, "stream", *passthrough]
    children: list[tuple[str, subprocess.Popen]] = []
    log_paths = {name: logs / f"{name}.log" for name in ("stream", "feed")}
    log_starts: dict[str, int] = {}  # the logs are appended to: this run's part starts here
    signals = StopSignals()  # again: a second Ctrl-C while the children stop
    stop, again = signals.stop, signals.again
    deadline = time.monotonic() + args.duration if args.duration else None
    from marketsignals.stream.job import MAINTENANCE_WAIT_S

    # the job's stop waits for its batch in flight (stream.stop_grace), then for the audit table's upkeep
    job_grace_s = settings.stream.stop_grace_ms / 1000 + MAINTENANCE_WAIT_S + 30
    exit_code = 0  # a child that exits by itself: exit_code_after
    try:
        for name, cmd in (("stream", job_cmd), ("feed", feed_cmd)):
            log_starts[name] = log_paths[name].stat().st_size if log_paths[name].exists() else 0
            log = open(log_paths[name], "ab")  # noqa: SIM115 (closed with the child below)
            # own session: Ctrl-C in the terminal reaches only this process, which stops the children
            children.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)))
            print(f"live: started {name} (pid {children[-1][1].pid}, log {log_paths[name]})", flush=True)
        from marketsignals.console import watch

        def should_stop() -> bool:
            nonlocal exit_code
            for name, proc in children:
                if proc.poll() is not None:
                    exit_code = exit_code_after(name, proc.returncode)
                    if exit_code == 0:
                        print(f"live: the streaming job ended cleanly (a stop request, or a bounded trigger); see "
                              f"{log_paths[name]}")
                        return True
                    print(f"live: {name} exited with code {proc.returncode}; see {log_paths[name]}")
                    reason = last_error(log_paths[name], log_starts[name])
                    if reason:
                        print(f"live: {reason}")
                        from marketsignals.stream.job import IncompatibleCheckpoint

                        if IncompatibleCheckpoint.PREFIX in reason:
                            print("live: `marketsignals live --fresh` (make run RUN_ARGS=--fresh) deletes the local "
                                  "checkpoint and audit table and starts over")
                    return True
            return stop.is_set() or (deadline is not None and time.monotonic() > deadline)

        view = watch(settings.kafka, settings.kafka.signals_topic, settings.kafka.dead_letter_topic,
                     settings.stream.metrics_path, should_stop)
        print(f"\nlive: {view.signals:,} signals, {sum(view.rejects.values()):,} rejects seen", flush=True)
    finally:
        stop.set()  # from here a Ctrl-C is a second one: the job's stop cuts its batch at once
        for name, proc in reversed(children):
            _stop(name, proc, job_grace_s if name == "stream" else 60.0, again)
        signals.restore()
        if not args.keep_broker:
            broker.down()
    return exit_code


def last_error(log: Path, start: int = 0) -> str | None:
    """The one-line error a child command ended its log with (``marketsignals <cmd>: error: ...``),
    looking no further back than ``start`` (the log's size when the child started)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(start, fh.seek(0, os.SEEK_END) - 16_384))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    return next((line.strip() for line in reversed(lines) if ": error: " in line), None)


def exit_code_after(name: str, returncode: int) -> int:
    """live's exit code once its child ``name`` has exited by itself with ``returncode``: 0 for a job that
    ended cleanly (exit 0: a stop request, ``marketsignals stop``, or a bounded trigger), else the child's
    code; 1 for a feed that ended, or a child killed by a signal."""
    if name == "stream" and returncode == 0:
        return 0
    return returncode if returncode > 0 else 1


def _stop(name: str, proc: subprocess.Popen, grace_s: float = 60.0, again: threading.Event | None = None) -> None:
    """SIGTERM to the child only (not its group: the job's JVM must not die before the query stops); a
    second one once ``again`` is set (the job's stop then cuts the batch it waits for); SIGKILL to its
    group after ``grace_s`` seconds."""
    if proc.poll() is None:
        print(f"live: stopping {name}", flush=True)
        os.kill(proc.pid, signal.SIGTERM)
        deadline, repeated = time.monotonic() + grace_s, False
        while proc.poll() is None and time.monotonic() < deadline:
            if again is not None and again.is_set() and not repeated:
                print(f"live: stopping {name} at once", flush=True)
                os.kill(proc.pid, signal.SIGTERM)
                repeated = True
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
