"""kill -9 of the streaming job at chosen and random moments while the feed runs (issue 7, SPEC §4).

After the last kill a final availableNow run catches up from the checkpoint. Then the audit table must
hold exactly the signals of one batch computation over the same Kafka data (0 lost, 0 duplicate, every
value equal), the signals topic must hold all of them (a repeat only as a whole copy), and every bad
tick must be dead-lettered with its reason.

A kill aims at one of these windows (the window it really hit is read back from the checkpoint after the
process is dead and reported):
- ``mid_batch``: the batch's offset-log entry exists, the sink has not finished;
- ``in_sink``: right after the Kafka write of signals and dead letters, before the audit commit;
- ``after_audit_commit``: the Delta commit of batch N is done, the commit-log entry N is not yet written;
- ``random``: any time after the query started;
- ``startup`` (soak only): while the JVM and the query are still starting.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from faults.harness import (
    START_MS,
    STATELESS_BAD,
    FeedThread,
    JobProcess,
    Progress,
    assert_audit_exactly,
    assert_dead_letters,
    assert_kafka_signals,
    audit_signals,
    catch_up,
    env_int,
    expected_signals,
    topic_total,
    wait_until,
    write_settings,
)
from marketsignals import feed

pytestmark = pytest.mark.faults

MOMENTS = ("mid_batch", "in_sink", "after_audit_commit", "random")
SOAK_MOMENTS = (*MOMENTS, "startup")  # also: before the query even started


def _wait_for_moment(job: JobProcess, settings, moment: str, rng: random.Random, timeout_s: float) -> None:
    """Return at the chosen moment (or when the job died, which the caller reports)."""
    start = Progress.of(settings)
    signals_before = topic_total(settings.kafka, settings.kafka.signals_topic)

    def died_or(cond):
        return lambda: (not job.alive()) or cond()

    def why() -> str:
        return f"the job never reached the moment {moment!r} within {timeout_s:.0f}s\n{job.output()}"

    if moment == "mid_batch":
        wait_until(died_or(lambda: (p := Progress.of(settings)).planned > max(p.committed, start.planned)),
                   timeout_s, why, interval_s=0.02)
        time.sleep(rng.uniform(0.0, 0.4))
    elif moment == "in_sink":
        wait_until(died_or(lambda: topic_total(settings.kafka, settings.kafka.signals_topic) > signals_before),
                   timeout_s, why, interval_s=0.02)
    elif moment == "after_audit_commit":
        wait_until(died_or(lambda: Progress.of(settings).audited > start.audited), timeout_s, why, interval_s=0.005)
    elif moment == "startup":
        time.sleep(rng.uniform(0.5, 10.0))
    else:
        wait_until(died_or(lambda: Progress.of(settings).planned > start.planned), timeout_s, why)
        time.sleep(rng.uniform(0.0, 4.0))


def _kill_restart_cycle(spark, kafka_broker, tmp_path, figures, kills: int, count: int, rate: float, seed: int,
                        max_offsets: int):
    rng = random.Random(seed)
    settings = kafka_broker.isolated(
        "kill", f"kafka.max_offsets_per_trigger={max_offsets}", "stream.trigger=processingTime=200 milliseconds",
        f"spark.conf.spark.local.dir={tmp_path}/spark-local")
    conf = write_settings(settings, tmp_path / "job.yaml")
    opts = feed.FeedOptions(symbols=feed.symbol_names(8), count=count, rate=rate, start_ms=START_MS, seed=seed,
                            topics=tuple(settings.kafka.topics), bad={k: 0.01 for k in STATELESS_BAD})
    feeder = FeedThread(settings.kafka, feed.generate(opts), rate=rate)
    feeder.start()
    job = JobProcess(conf, tmp_path / "job")
    phases: Counter[str] = Counter()
    try:
        for i in range(kills):
            moment = MOMENTS[i] if i < len(MOMENTS) else rng.choice(SOAK_MOMENTS)
            job.start()
            _wait_for_moment(job, settings, moment, rng, timeout_s=240)
            assert job.alive(), f"the job exited on its own before kill {i + 1} ({moment}):\n{job.output()}"
            job.kill9()
            at = Progress.of(settings)
            phases[at.phase] += 1
            # printed, so a failure's captured output tells which batches each kill cut
            print(f"kill {i + 1} ({moment}): {at.phase}, offsets log {at.planned}, commit log {at.committed}, "
                  f"audit {at.audited}", flush=True)
    except BaseException:
        feeder.stop.set()
        raise
    finally:
        if job.alive():
            job.kill9()
    sent = feeder.join_checked(timeout_s=600)
    assert len(sent) == count
    metrics = catch_up(spark, settings)  # the final restart, to the end of the data
    assert metrics, "the final run wrote no metrics"

    expected = expected_signals(spark, settings)
    assert len(expected) > 50, "too few signals to prove anything: change the feed"
    figures.add(kills=kills, kill_windows=dict(phases), messages=len(sent),
                bad_messages=sum(s.kind != "good" for s in sent), batches_planned=Progress.of(settings).planned + 1)
    figures.add(**assert_audit_exactly(audit_signals(spark, settings), expected))
    figures.add(**assert_kafka_signals(settings.kafka, expected))
    figures.add(**assert_dead_letters(settings.kafka, sent))
    assert sum(phases.values()) == kills
    return phases


def test_kill9_at_random_moments_loses_and_duplicates_nothing(spark, kafka_broker, tmp_path, figures):
    phases = _kill_restart_cycle(spark, kafka_broker, tmp_path, figures, kills=3, count=1200, rate=40, seed=21,
                                 max_offsets=400)
    # the targeted kills must have landed inside a batch at least twice, or the test proved little
    assert phases["between_batches"] <= 1, phases


@pytest.mark.soak
def test_soak_many_kills(spark, kafka_broker, tmp_path, figures):
    kills = env_int("MARKETSIGNALS_SOAK_KILLS", 40)
    _kill_restart_cycle(spark, kafka_broker, tmp_path, figures, kills=kills, count=kills * 1200, rate=60,
                        seed=env_int("MARKETSIGNALS_SOAK_SEED", 2207), max_offsets=1000)


def test_checkpoint_progress_reads_the_windows(tmp_path, kafka_broker):
    """The harness's reading of the checkpoint (what the kill report relies on)."""
    settings = kafka_broker.settings.with_overrides([f"stream.checkpoint={tmp_path}/cp",
                                                     f"stream.audit_table={tmp_path}/audit"])
    cp, log = Path(settings.stream.checkpoint), Path(settings.stream.audit_table) / "_delta_log"
    for d in (cp / "offsets", cp / "commits", log):
        d.mkdir(parents=True)
    assert Progress.of(settings).phase == "between_batches"
    (cp / "offsets" / "0").write_text("v1")
    assert Progress.of(settings).phase == "between_offset_log_and_audit_commit"
    (log / "00000000000000000000.json").write_text('{"txn":{"appId":"q","version":0}}\n')
    assert Progress.of(settings).phase == "after_audit_commit_before_commit_log"
    (cp / "commits" / "0").write_text("v1")
    assert Progress.of(settings) == Progress(0, 0, 0)
