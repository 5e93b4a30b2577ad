"""The broker stops and starts again under a running job (issue 7). A broker of the test's own (own ports,
own data folder), never the session broker.

The job must either ride through the outage and catch up, or stop with a clear, restartable error;
never hang (every wait here is bounded). After the broker is back, a restart from the checkpoint (if
one was needed) ends with exactly the expected signals: 0 lost, 0 duplicate.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from faults.harness import (
    KAFKA_JARS,
    START_MS,
    STATELESS_BAD,
    assert_audit_exactly,
    assert_dead_letters,
    assert_kafka_signals,
    audit_signals,
    catch_up,
    env_int,
    expected_signals,
    produce_recorded,
    progress_lines,
    read_metrics,
    wait_until,
)
from marketsignals import feed
from marketsignals.local_broker import LocalBroker

pytestmark = pytest.mark.faults


def _outage(spark, own_broker_settings, figures, outage_s: float, hard: bool, recover_s: float) -> None:
    from marketsignals.stream.job import start_stream
    from marketsignals.stream.metrics import MetricsListener

    settings = own_broker_settings("outage", "kafka.max_offsets_per_trigger=600",
                                   "stream.trigger=processingTime=500 milliseconds")
    broker = LocalBroker(settings.broker, settings.kafka, jars=KAFKA_JARS)
    broker.up(log=lambda *_: None)
    query = None
    listener = MetricsListener(settings.stream.metrics_path)
    opts = feed.FeedOptions(symbols=feed.symbol_names(6), count=1200, rate=200, start_ms=START_MS, seed=41,
                            topics=tuple(settings.kafka.topics), bad={k: 0.01 for k in STATELESS_BAD})
    messages = list(feed.generate(opts))
    try:
        half = len(messages) // 2
        sent = produce_recorded(settings.kafka, messages[:half])
        query = start_stream(spark, settings, listener=listener)

        def read(n: int):
            def enough():
                if not query.isActive:
                    return True
                return sum(m["input_rows"] for m in progress_lines(read_metrics(settings.stream.metrics_path))) >= n
            return enough

        wait_until(read(300), 300, "the job read nothing before the outage")
        # the outage: a controlled shutdown, or a crash of the broker process
        if hard:
            os.kill(broker.pid(), signal.SIGKILL)
            wait_until(lambda: broker.pid() is None, 30, "the broker survived SIGKILL")
        else:
            broker.down(log=lambda *_: None)
        down_at = time.monotonic()
        time.sleep(outage_s)
        active_during_outage = query.isActive
        broker.up(log=lambda *_: None)
        figures.add(outage_s=round(time.monotonic() - down_at, 1), hard_kill=hard)
        sent += produce_recorded(settings.kafka, messages[half:])

        # bounded: the job catches up by itself, or it stops with an error
        wait_until(read(len(messages)), recover_s, f"the job neither caught up nor stopped within {recover_s:.0f}s "
                   "of the broker's return (a hang)", interval_s=0.5)
        error = query.exception()
        if error is None:
            figures.add(outcome="rode_through", active_during_outage=active_during_outage)
        else:
            text = str(error.desc if hasattr(error, "desc") else error)
            figures.add(outcome="stopped_with_error", error=text.splitlines()[0][:200])
            assert "kafka" in text.lower() or "timeout" in text.lower(), f"unclear error: {text[:500]}"
    finally:
        if query is not None and query.isActive:
            query.stop()
        listener.terminated.wait(60)
        spark.streams.removeListener(listener)
    try:
        catch_up(spark, settings)  # the restart (a no-op if it rode through)
        expected = expected_signals(spark, settings)
        figures.add(messages=len(sent), **assert_audit_exactly(audit_signals(spark, settings), expected))
        figures.add(**assert_kafka_signals(settings.kafka, expected))
        figures.add(**assert_dead_letters(settings.kafka, sent))
    finally:
        broker.down(log=lambda *_: None)


def test_broker_restart_mid_run_loses_nothing(spark, own_broker_settings, figures):
    _outage(spark, own_broker_settings, figures, outage_s=5, hard=False, recover_s=240)


@pytest.mark.soak
@pytest.mark.parametrize("hard", [False, True], ids=["controlled", "sigkill"])
def test_soak_long_broker_outage(spark, own_broker_settings, figures, hard):
    # longer than the Kafka clients' request and API timeouts (30 s / 60 s): the job may give up
    _outage(spark, own_broker_settings, figures, outage_s=env_int("MARKETSIGNALS_SOAK_OUTAGE_S", 150), hard=hard,
            recover_s=600)
