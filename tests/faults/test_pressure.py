"""Load and clock abuse on a running job (issue 7): a 10x burst, far-future and late stamps, many symbols
that then go idle. One query (processingTime trigger, in this process) lives through three phases:

    A  many symbols   N distinct symbols, one tick each                        -> N symbols in state
    B  steady         S ticks of 4 "clock" symbols, event time moving on
    C  burst          10 x S clock ticks at once (event time moves 100 s on), with far-future stamps
                      and late ticks mixed in                                   -> absorbed in batches
                      of at most maxOffsetsPerTrigger; the watermark passes the idle symbols' timeout
                      and their state is evicted; the far-future stamps never move the watermark.

The tests below read the metrics lines of that one run (batch sizes, lag, watermark, state rows,
processed, rejects by reason) and the symbols its checkpoint holds (Spark's state data source: the
state rows are buckets of symbols, stream.state_buckets).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from faults.harness import START_MS, consume_all, env_int, produce_recorded, progress_lines, read_metrics, wait_until
from marketsignals import feed
from support import start_live, stop_live

pytestmark = pytest.mark.faults

CLOCK_SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN")
WATERMARK_DELAY_S = 30
IDLE_TIMEOUT_S = 20


def _tick(symbol: str, ts: int | str, price: float = 100.0, volume: int = 150_000) -> bytes:
    return json.dumps({"symbol": symbol, "timestamp": ts, "price": price, "volume": volume, "bid": price - 0.01,
                       "ask": price + 0.01, "exchange": "XNAS", "currency": "USD"}).encode()


def _message(topics, symbol: str, value: bytes, kind: str, ts_ms: int) -> feed.Message:
    return feed.Message(feed.topic_of(symbol, topics), symbol.encode(), value, kind, symbol, ts_ms)


def _future_stamps(n: int) -> list[int | str]:
    """Stamps ahead of the processing clock in every accepted form: epoch millis, ISO Z, ISO +14:00."""
    now = datetime.now(UTC)
    stamps: list[int | str] = []
    for i in range(n):
        ahead = [timedelta(hours=1), timedelta(days=3650), timedelta(minutes=10)][i % 3]
        at = now + ahead + timedelta(seconds=i)
        if i % 3 == 0:
            stamps.append(int(at.timestamp() * 1000))
        elif i % 3 == 1:
            stamps.append(at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        else:
            stamps.append((at + timedelta(hours=14)).strftime("%Y-%m-%dT%H:%M:%S") + "+14:00")
    return stamps


@dataclass
class Run:
    settings: object
    max_offsets: int
    symbols: int
    steady: int
    burst: int
    future: int
    late: int
    last_valid_ms: int
    produced: int
    metrics: list[dict]
    phase_batches: dict[str, list[dict]]
    seconds: float
    held_after_a: set[str] | None  # symbols in state after phase A's last batch (None: no state reader here)
    held_at_end: set[str] | None


def _run_pressure(spark, kafka_broker, tmp_path, symbols: int, steady: int, max_offsets: int) -> Run:
    from pyspark.sql import functions as F

    from marketsignals.stream.metrics import MetricsListener
    from marketsignals.stream.state import bucket_of, has_state_reader, read_symbol_states

    settings = kafka_broker.isolated(
        "pressure", f"kafka.max_offsets_per_trigger={max_offsets}", "stream.trigger=processingTime=500 milliseconds",
        f"stream.state_idle_timeout={IDLE_TIMEOUT_S} seconds", f"stream.watermark_delay={WATERMARK_DELAY_S} seconds",
        "stream.state_buckets=256")
    topics = settings.kafka.topics
    clock_buckets = (spark.createDataFrame([(s,) for s in CLOCK_SYMBOLS], "symbol string")
                     .select(bucket_of(F.col("symbol"), settings.stream.state_buckets)).distinct().count())
    burst, future, late = 10 * steady, max(3, steady // 10), max(2, steady // 20)
    step = 100  # ms of event time between clock ticks
    phase_a = [_message(topics, f"IDLE{i:06d}", _tick(f"IDLE{i:06d}", feed.iso_ms(START_MS + i % 2000)), "good",
                        START_MS) for i in range(symbols)]
    t_b = START_MS + 2_000
    phase_b = [_message(topics, s, _tick(s, t_b + i * step, 100 + i % 7), "good", t_b + i * step)
               for i, s in ((i, CLOCK_SYMBOLS[i % 4]) for i in range(steady))]
    t_c = t_b + steady * step
    phase_c = [_message(topics, s, _tick(s, t_c + i * step, 100 + i % 11), "good", t_c + i * step)
               for i, s in ((i, CLOCK_SYMBOLS[i % 4]) for i in range(burst))]
    for j, stamp in enumerate(_future_stamps(future)):  # spread through the burst
        s = CLOCK_SYMBOLS[j % 4]
        at = (j + 1) * len(phase_c) // (future + 1)
        phase_c.insert(at, _message(topics, s, _tick(s, stamp), "future_timestamp", 0))
    for j in range(late):  # five minutes behind their symbol: behind the watermark
        s = CLOCK_SYMBOLS[j % 4]
        phase_c.insert((j + 1) * len(phase_c) // (late + 1),
                       _message(topics, s, _tick(s, feed.iso_ms(START_MS - 300_000)), "late", START_MS - 300_000))
    last_valid_ms = t_c + (burst - 1) * step

    listener = MetricsListener(settings.stream.metrics_path)
    started = time.monotonic()
    query, sink = start_live(spark, settings, listener)
    phase_batches: dict[str, list[dict]] = {}
    produced = 0
    try:
        for name, messages in (("A", phase_a), ("B", phase_b), ("C", phase_c)):
            before = len(progress_lines(read_metrics(settings.stream.metrics_path)))
            # The burst lands at once: nothing leaves the producer before flush, and flush sends its batches
            # together (one per partition here; the soak's larger burst fills several), so the job's next plan
            # sees all of it (a dribbling burst can be read as it arrives and never show as lag).
            at_once = {"linger_ms": 60_000} if name == "C" else {}
            produced += len(produce_recorded(settings.kafka, messages, **at_once))
            target = produced

            def caught_up(target=target):
                assert query.exception() is None, f"the query failed: {query.exception()}"
                lines = progress_lines(read_metrics(settings.stream.metrics_path))
                return sum(m["input_rows"] for m in lines) >= target

            wait_until(caught_up, 600, f"phase {name}: the job did not read its {len(messages)} messages in 600s")
            phase_batches[name] = progress_lines(read_metrics(settings.stream.metrics_path))[before:]

        final_watermark = feed.iso_ms(last_valid_ms - WATERMARK_DELAY_S * 1000)

        def settled():  # the no-data batch after the burst: watermark at its final value, timeouts run
            assert query.exception() is None, f"the query failed: {query.exception()}"
            last = progress_lines(read_metrics(settings.stream.metrics_path))[-1]
            return last["state_rows"] <= clock_buckets and last.get("watermark") == final_watermark

        wait_until(settled, 300, "within 300s after the burst, the watermark did not reach the last valid tick - "
                   f"{WATERMARK_DELAY_S}s or the idle symbols' state was not evicted", interval_s=0.5)
    finally:
        stop_live(query, sink)
        listener.terminated.wait(60)
        spark.streams.removeListener(listener)
    metrics = progress_lines(read_metrics(settings.stream.metrics_path))
    n = settings.stream.state_buckets
    held_after_a = held_at_end = None
    if has_state_reader(spark):
        held_after_a = set(read_symbol_states(spark, settings.stream.checkpoint, n,
                                              phase_batches["A"][-1]["batch_id"]))
        held_at_end = set(read_symbol_states(spark, settings.stream.checkpoint, n))
    return Run(settings, max_offsets, symbols, steady, burst, future, late, last_valid_ms, produced, metrics,
               phase_batches, time.monotonic() - started, held_after_a, held_at_end)


@pytest.fixture(scope="module")
def pressure(spark, kafka_broker, tmp_path_factory) -> Run:
    return _run_pressure(spark, kafka_broker, tmp_path_factory.mktemp("pressure"), symbols=600, steady=100,
                         max_offsets=700)


def _check_burst(run: Run, figures) -> None:
    sizes = [m["input_rows"] for m in run.metrics]
    assert max(sizes) <= run.max_offsets, f"a batch read more than maxOffsetsPerTrigger: {sizes}"
    burst = [m for m in run.phase_batches["C"] if m["input_rows"] > 0]
    assert len(burst) >= 2, f"the burst was not split into several batches: {[m['input_rows'] for m in burst]}"
    lags = [max(m["kafka_lag"].values(), default=0) for m in run.phase_batches["C"]]
    assert max(lags) > 0, "the burst never showed as lag"
    assert max(run.metrics[-1]["kafka_lag"].values(), default=0) == 0, "the lag did not recover"
    processed = sum(m.get("processed", 0) for m in run.metrics)
    rejected = sum(m.get("rejected", 0) for m in run.metrics)
    assert processed + rejected == run.produced, (processed, rejected, run.produced)
    figures.add(messages=run.produced, burst_messages=run.burst + run.future + run.late,
                burst_batches=len(burst), max_batch=max(sizes), max_offsets_per_trigger=run.max_offsets,
                peak_lag=max(lags), batches=len(run.metrics), seconds=round(run.seconds))


def _check_clock(run: Run, figures) -> None:
    last_watermark = None
    for m in run.metrics:
        if m.get("watermark"):
            wm = datetime.fromisoformat(m["watermark"].replace("Z", "+00:00"))
            wm_ms = int(wm.timestamp() * 1000)
            assert wm_ms <= run.last_valid_ms - WATERMARK_DELAY_S * 1000, (
                f"batch {m['batch_id']}: watermark {m['watermark']} is ahead of every valid tick (a future stamp "
                "moved it)")
            last_watermark = wm_ms
    assert last_watermark == run.last_valid_ms - WATERMARK_DELAY_S * 1000, "the watermark did not follow valid ticks"
    rejects: dict[str, int] = {}
    for m in run.metrics:
        for reason, n in (m.get("rejects") or {}).items():
            rejects[reason] = rejects.get(reason, 0) + n
    assert rejects == {"future_timestamp": run.future, "late": run.late}, rejects
    letters: dict[str, int] = {}
    for _, value in consume_all(run.settings.kafka, run.settings.kafka.dead_letter_topic):
        reason = json.loads(value)["reason"]
        letters[reason] = letters.get(reason, 0) + 1
    assert letters == rejects
    figures.add(future_stamps=run.future, late_ticks=run.late, final_watermark=datetime.fromtimestamp(
        last_watermark / 1000, UTC).isoformat())


def _check_eviction(run: Run, figures) -> None:
    states = [m["state_rows"] for m in run.metrics]
    assert states[-1] < max(states), f"state rows (buckets) never fell: {states}"
    figures.add(symbols=run.symbols, peak_state_rows=max(states), state_rows_after_timeout=states[-1])
    if run.held_after_a is None:  # Spark 3.5: the state rows above only, no symbol-level view
        return
    idle = {f"IDLE{i:06d}" for i in range(run.symbols)}
    assert idle <= run.held_after_a, f"{len(idle - run.held_after_a)} of the {run.symbols} symbols were not in state"
    assert run.held_at_end == set(CLOCK_SYMBOLS), f"symbols in state after the idle timeout: {len(run.held_at_end)}"
    figures.add(symbols_held_after_a=len(run.held_after_a), symbols_held_at_end=len(run.held_at_end))


def test_a_10x_burst_is_absorbed_in_bounded_batches_and_lag_recovers(pressure, figures):
    _check_burst(pressure, figures)


def test_far_future_stamps_never_move_the_watermark_and_late_ticks_are_counted(pressure, figures):
    _check_clock(pressure, figures)


def test_idle_symbols_state_is_evicted_after_the_timeout(pressure, figures):
    _check_eviction(pressure, figures)


@pytest.mark.soak
def test_soak_100k_symbols_and_a_large_burst(spark, kafka_broker, tmp_path, figures):
    run = _run_pressure(spark, kafka_broker, tmp_path, symbols=env_int("MARKETSIGNALS_SOAK_SYMBOLS", 100_000),
                        steady=env_int("MARKETSIGNALS_SOAK_STEADY", 5_000),
                        max_offsets=env_int("MARKETSIGNALS_SOAK_MAX_OFFSETS", 20_000))
    _check_burst(run, figures)
    _check_clock(run, figures)
    _check_eviction(run, figures)
