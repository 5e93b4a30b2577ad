"""The fault-injection harness: the streaming job as a real OS process (so it can be killed with -9),
recorded production (every message's Kafka coordinates and kind), a read-only view of the checkpoint
and audit log, the independent oracle, and the SPEC §4 assertions shared by the fault tests.

Every wait here is bounded: a test that would hang fails with the job's own output instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from marketsignals import feed, kafka_client
from marketsignals.schema import EMITTED_AT
from marketsignals.settings import KafkaSettings, Settings
from support import audit_log_batches, consume_all

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "marketsignals"
KAFKA_JARS = ROOT / ".jars" / "kafka"
START_MS = 1_767_312_000_000  # 2026-01-02T00:00:00Z: in the past, so no generated tick is "in the future"
# Bad kinds whose verdict does not depend on arrival timing: the batch oracle judges them the same way.
STATELESS_BAD = ("not_json", "missing_field", "wrong_type", "crossed_quote", "non_positive_price",
                 "future_timestamp", "duplicate")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env_int(name: str, default: int) -> int:
    """A soak knob (MARKETSIGNALS_SOAK_*), read only by tests and the soak runner."""
    return int(os.environ.get(name, default))


# --- the job as a process ------------------------------------------------------------------------------
def write_settings(settings: Settings, path: Path) -> Path:
    """The whole settings object as a --conf YAML file (the subprocess reads exactly these)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    os.chmod(path, 0o600)  # it may hold Kafka credentials
    return path


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without MARKETSIGNALS__* overrides (the YAML file rules)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETSIGNALS__")}
    env.update(extra or {})
    return env


@dataclass
class JobProcess:
    """``marketsignals stream --conf FILE`` in its own process group (driver, JVM, Python workers)."""

    conf: Path
    workdir: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    runs: int = 0

    @property
    def stdout(self) -> Path:
        return self.workdir / f"job-{self.runs}.out"

    @property
    def stderr(self) -> Path:
        return self.workdir / f"job-{self.runs}.err"

    def start(self) -> JobProcess:
        assert self.proc is None or self.proc.poll() is not None, "the previous run is still alive"
        self.runs += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [str(CLI), "stream", "--conf", str(self.conf), *self.args]
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=job_env(self.env), start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self, timeout_s: float = 60.0) -> None:
        """SIGKILL to the whole process group at once (a machine losing power, as far as the job can
        tell), then wait until no member of the group is left running."""
        assert self.proc is not None
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(timeout=timeout_s)
        wait_until(lambda: not group_running(pgid), timeout_s, f"process group {pgid} still running after SIGKILL")

    def terminate(self, timeout_s: float = 120.0) -> int:
        """SIGTERM to the driver (a clean stop), wait for the exit code."""
        assert self.proc is not None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self.kill9()

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"the job did not finish within {timeout_s:.0f}s:\n{self.output()}") from None

    def output(self, tail: int = 40) -> str:
        """The last lines of this run's stdout and stderr (for failure messages)."""
        text = ""
        for path in (self.stdout, self.stderr):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()
                text += f"--- {path.name} ---\n" + "\n".join(lines[-tail:]) + "\n"
        return text


def group_running(pgid: int) -> bool:
    """Is any non-zombie process of group ``pgid`` left? (This container's init reaps no orphans, so
    killed grandchildren linger as zombies: those do not count.)"""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def wait_until(condition: Callable[[], Any], timeout_s: float, message: str | Callable[[], str],
               interval_s: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); AssertionError after timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(interval_s)


# --- checkpoint and audit log, read from outside ---------------------------------------------------
def batch_ids(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@dataclass(frozen=True)
class Progress:
    """Where the query stood: last planned batch (offset log), last committed (commit log), last batch
    the audit table has (its commits' batch tags)."""

    planned: int
    committed: int
    audited: int

    @classmethod
    def of(cls, settings: Settings) -> Progress:
        cp = Path(settings.stream.checkpoint)
        offsets, commits = batch_ids(cp / "offsets"), batch_ids(cp / "commits")
        audited = set().union(*audit_log_batches(Path(settings.stream.audit_table)))
        return cls(offsets[-1] if offsets else -1, commits[-1] if commits else -1, max(audited, default=-1))

    @property
    def phase(self) -> str:
        """Which window a kill hit."""
        if self.planned > self.committed:
            if self.audited >= self.planned:
                return "after_audit_commit_before_commit_log"
            return "between_offset_log_and_audit_commit"
        return "between_batches"


# --- production -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sent:
    """One produced message with the coordinates Kafka gave it."""

    topic: str
    partition: int
    offset: int
    kind: str
    value: bytes | None


def produce_recorded(kafka: KafkaSettings, messages: Iterable[feed.Message], rate: float | None = None,
                     should_stop: Callable[[], bool] = lambda: False, **producer_args: Any) -> list[Sent]:
    """Send ``messages`` (paced at ``rate`` msgs/s if given) and return each one's coordinates."""
    producer = kafka_client.producer(kafka, **producer_args)
    pending = []
    started = time.monotonic()
    try:
        for n, msg in enumerate(messages):
            if should_stop():
                break
            pending.append((msg, producer.send(msg.topic, key=msg.key, value=msg.value)))
            if rate and n % 50 == 0:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(timeout=120)
        sent = []
        for msg, future in pending:
            meta = future.get(timeout=120)
            sent.append(Sent(meta.topic, meta.partition, meta.offset, msg.kind, msg.value))
        return sent
    finally:
        producer.close()


class FeedThread(threading.Thread):
    """The feed running beside the job (paced), recording what it sent; errors are re-raised by join."""

    def __init__(self, kafka: KafkaSettings, messages: Iterable[feed.Message], rate: float) -> None:
        super().__init__(name="feed", daemon=True)
        self.kafka, self.messages, self.rate = kafka, messages, rate
        self.sent: list[Sent] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self.sent = produce_recorded(self.kafka, self.messages, self.rate, self.stop.is_set)
        except BaseException as exc:  # surfaced by join_checked
            self.error = exc

    def join_checked(self, timeout_s: float) -> list[Sent]:
        self.join(timeout_s)
        assert not self.is_alive(), f"the feed did not finish within {timeout_s:.0f}s"
        if self.error is not None:
            raise self.error
        return self.sent


def topic_total(kafka: KafkaSettings, topic: str) -> int:
    return sum(kafka_client.end_offsets(kafka, [topic])[topic].values())


# --- metrics --------------------------------------------------------------------------------------
def read_metrics(path: str | Path | None) -> list[dict]:
    """The metrics JSON lines (a line cut by a kill -9 is skipped)."""
    if not path or not Path(path).exists():
        return []
    lines = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def progress_lines(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if m.get("event") == "progress"]


def catch_up(spark, settings: Settings, timeout_s: float = 900.0) -> list[dict]:
    """Run the job in this process with availableNow from its checkpoint to the end of the data; return
    this run's metrics lines. Bounded: a query still running after ``timeout_s`` is stopped and fails."""
    from marketsignals.stream.job import start_stream
    from marketsignals.stream.metrics import MetricsListener

    path = Path(f"{settings.stream.metrics_path}.catch-up-{time.time_ns()}")
    settings = settings.with_overrides(["stream.trigger=availableNow", f"stream.metrics_path={path}"])
    listener = MetricsListener(str(path))
    query = start_stream(spark, settings, listener=listener)
    try:
        if not query.awaitTermination(timeout_s):
            query.stop()
            raise AssertionError(f"the availableNow run did not finish within {timeout_s:.0f}s (a hang)")
        listener.terminated.wait(timeout=60)  # the listener bus is asynchronous
    finally:
        spark.streams.removeListener(listener)
    if query.exception() is not None:
        raise AssertionError(f"the streaming query failed: {query.exception()}")
    return read_metrics(path)


# --- the oracle and the SPEC §4 assertions ---------------------------------------------------------
def read_ticks(spark, settings: Settings):
    """The tick topics as a batch DataFrame (same client options as the job)."""
    from marketsignals.stream.source import client_options

    return (spark.read.format("kafka").options(**client_options(settings.kafka))
            .option("subscribe", ",".join(settings.kafka.topics)).load())


def expected_signals(spark, settings: Settings, where=None) -> dict[str, dict]:
    """SPEC §4 signals of the whole tick data, computed once in batch (the backtest's path: the kernel
    over each symbol's full history, no micro-batches, no checkpoint, no restart); ``where``: a Column
    filter on the signal records."""
    from marketsignals.backtest.signals import batch_signals
    from marketsignals.stream.job import kernel_config

    signals, _, _ = batch_signals(read_ticks(spark, settings), kernel_config(settings))
    if where is not None:
        signals = signals.filter(where)
    rows = [r.asDict() for r in signals.drop(EMITTED_AT).collect()]
    by_id = {r["signal_id"]: r for r in rows}
    assert len(by_id) == len(rows), "the oracle itself produced duplicate signal ids"
    return by_id


def audit_signals(spark, settings: Settings) -> list[dict]:
    path = Path(settings.stream.audit_table)
    if not (path / "_delta_log").is_dir():
        return []
    df = spark.read.format("delta").load(str(path))
    return [r.asDict() for r in df.drop(EMITTED_AT, "event_date").collect()]


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def assert_audit_exactly(actual: list[dict], expected: dict[str, dict]) -> dict[str, int]:
    """The audit table holds exactly the expected signals: none lost, none duplicated, every value equal."""
    counts = Counter(r["signal_id"] for r in actual)
    duplicated = {k: n for k, n in counts.items() if n > 1}
    lost = sorted(set(expected) - set(counts))
    extra = sorted(set(counts) - set(expected))
    assert not duplicated, f"{len(duplicated)} signal ids appear more than once in the audit table"
    assert not lost, f"{len(lost)} expected signals are missing from the audit table, e.g. {expected[lost[0]]}"
    assert not extra, f"{len(extra)} audit signals are not expected, e.g. {extra[:3]}"
    differing = {}
    for row in actual:
        want = expected[row["signal_id"]]
        diff = {k: (row[k], want.get(k)) for k in row if not _same_value(row[k], want.get(k))}
        if diff:
            differing[row["signal_id"]] = (row["symbol"], row["event_time"], diff)
    # all of them, not the first: one differing signal (a one-off) reads differently from a whole run
    # of a symbol's signals (its state went wrong from some batch on)
    assert not differing, (f"{len(differing)} of {len(actual)} audit signals differ from the oracle (symbol, "
                           f"event time, {{column: (audit, oracle)}}): "
                           + "; ".join(f"{k} {v}" for k, v in list(differing.items())[:5]))
    return {"audit_rows": len(actual), "expected_signals": len(expected), "lost": 0, "duplicates": 0}


def assert_kafka_signals(kafka: KafkaSettings, expected: dict[str, dict]) -> dict[str, int]:
    """The signals topic holds every expected signal; a repeat is a whole copy of the same signal."""
    copies: dict[str, list[dict]] = {}
    for _, value in consume_all(kafka, kafka.signals_topic):
        record = json.loads(value)
        copies.setdefault(record["signal_id"], []).append(record)
    missing = sorted(set(expected) - set(copies))
    extra = sorted(set(copies) - set(expected))
    assert not missing, f"{len(missing)} expected signals never reached the signals topic"
    assert not extra, f"{len(extra)} signals on the topic are not expected, e.g. {extra[:3]}"
    repeated = 0
    for sid, records in copies.items():
        first = {k: v for k, v in records[0].items() if k != EMITTED_AT}
        for other in records[1:]:
            assert {k: v for k, v in other.items() if k != EMITTED_AT} == first, (
                f"signal {sid} was sent twice with different contents")
            repeated += 1
    return {"kafka_signals": sum(len(r) for r in copies.values()), "kafka_repeats": repeated}


def assert_dead_letters(kafka: KafkaSettings, sent: list[Sent]) -> dict[str, int]:
    """Every bad message was dead-lettered once or more (at-least-once) with its kind's reason, and no
    good message was."""
    letters: dict[tuple[str, int, int], str] = {}
    for _, value in consume_all(kafka, kafka.dead_letter_topic):
        record = json.loads(value)
        letters[(record["topic"], record["partition"], record["offset"])] = record["reason"]
    want = {(s.topic, s.partition, s.offset): feed.EXPECTED_REASON[s.kind] for s in sent if s.kind != "good"}
    wrong = {k: (letters.get(k), v) for k, v in want.items() if letters.get(k) != v}
    assert not wrong, f"{len(wrong)} bad messages lack their dead letter or reason, e.g. {list(wrong.items())[:3]}"
    extra = set(letters) - set(want)
    assert not extra, f"{len(extra)} good messages were dead-lettered, e.g. {sorted(extra)[:3]}"
    return {"dead_letters": len(letters)}


@dataclass
class Figures:
    """Numbers a fault test reports (printed at the end of the run and kept in .local/faults/)."""

    test: str
    values: dict[str, Any] = field(default_factory=dict)

    def add(self, **values: Any) -> None:
        self.values.update(values)
