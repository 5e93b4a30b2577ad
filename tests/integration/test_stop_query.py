"""``stop_query`` on a real query: a rate source into a foreachBatch function run through
``run_stoppable``, whose work is a Spark job that sleeps in its task (Java's ``Thread.sleep`` by
``reflect``), so a stop finds a batch in flight. The job's own SIGTERM path, on the streaming job
against Kafka, is tests/faults/test_clean_stop.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from marketsignals.stream.job import stop_query
from marketsignals.stream.sinks import StopGate, run_stoppable


def start(spark, checkpoint: Path, work_ms: int, done: list[int], trigger: str = "100 milliseconds"):
    gate = StopGate()

    def work(df, batch_id: int) -> None:
        df.limit(1).selectExpr(f"reflect('java.lang.Thread', 'sleep', cast({work_ms} as bigint))").collect()
        done.append(batch_id)

    query = (spark.readStream.format("rate").option("rowsPerSecond", 50).load().writeStream
             .option("checkpointLocation", str(checkpoint)).trigger(processingTime=trigger)
             .foreachBatch(lambda df, batch_id: run_stoppable(gate, df, batch_id, work)).start())
    return query, gate


def in_flight(query, gate: StopGate, timeout_s: float = 120.0) -> int:
    """A batch past the gate, after the first one (slow: a new query's planning)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and query.isActive:
        running = gate.running
        if running is not None and running >= 1:
            return running
        time.sleep(0.01)
    raise AssertionError(f"no batch in flight after {timeout_s} s: {query.exception()}")


def logged(checkpoint: Path, log: str) -> list[int]:
    return sorted(int(p.name) for p in (checkpoint / log).iterdir() if p.name.isdigit())


def test_a_stop_waits_for_the_batch_in_flight_to_commit(spark, tmp_path):
    done: list[int] = []
    query, gate = start(spark, tmp_path / "cp", 1500, done)
    running = in_flight(query, gate)
    began = time.monotonic()
    assert stop_query(query, gate, 30) == "committed"
    assert time.monotonic() - began < 10 and not query.isActive and query.exception() is None
    assert done[-1] == running  # its work ran to the end, and no later batch's began
    commits, offsets = logged(tmp_path / "cp", "commits"), logged(tmp_path / "cp", "offsets")
    assert commits[-1] == running and offsets[-1] - running in (0, 1), (commits, offsets)


def test_a_stop_cuts_the_batch_at_the_end_of_the_grace_or_at_a_second_signal(spark, tmp_path):
    for name, grace_s, cut_after_s in (("grace", 0.5, None), ("second", 30.0, 0.5), ("none", 0.0, None)):
        done: list[int] = []
        checkpoint = tmp_path / name
        query, gate = start(spark, checkpoint, 8000, done)
        running = in_flight(query, gate)
        cut = threading.Event()
        if cut_after_s is not None:
            threading.Timer(cut_after_s, cut.set).start()
        began = time.monotonic()
        assert stop_query(query, gate, grace_s, cut) == "cut", name
        # cut: well before its work's 8 s; a clean stop all the same, the batch uncommitted (replayed next time)
        assert time.monotonic() - began < 6, name
        assert not query.isActive and query.exception() is None, (name, query.exception())
        assert running not in done and logged(checkpoint, "commits")[-1] == running - 1, name
        assert logged(checkpoint, "offsets")[-1] == running, name


def test_a_stop_between_batches_waits_for_nothing(spark, tmp_path):
    done: list[int] = []
    query, gate = start(spark, tmp_path / "cp", 0, done, trigger="30 seconds")
    deadline = time.monotonic() + 120
    while not done and time.monotonic() < deadline:
        time.sleep(0.05)
    while query.lastProgress is None and time.monotonic() < deadline:  # reported after the commit
        time.sleep(0.05)
    began = time.monotonic()
    assert stop_query(query, gate, 30) == "between batches"
    assert time.monotonic() - began < 5 and query.exception() is None
    assert done == [0] and logged(tmp_path / "cp", "commits") == [0]
