"""The bench report's memory slope (bench/report.py): pure arithmetic over an RSS series."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from conftest import ROOT

MB = 2**20


@pytest.fixture
def report(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import report

    return report


def soak_series(jvm_mb_per_min: float) -> list:
    """60 s of start-up, 600 s of feed (JVM growing at jvm_mb_per_min, workers flat), then two minutes
    of drain and of reading the results back: the query stops and its workers exit, the daemon stays."""
    series = []
    for t in range(0, 780, 5):
        rss = {"jvm": int((900 + jvm_mb_per_min * min(t, 660) / 60) * MB)}
        if t >= 20:
            rss["python_workers"] = (380 if t <= 660 else 53) * MB
        series.append((float(t), rss))
    return series


def test_the_slope_is_taken_over_the_second_half_of_the_feed(report):
    run = {"rss_series": soak_series(2.0), "feed_window_s": [60.0, 660.0]}
    slopes = report.rss_slopes(run)
    assert slopes["jvm"] == pytest.approx(2.0)
    assert slopes["python_workers"] == pytest.approx(0.0, abs=1e-6)


def test_without_the_feed_window_the_drain_would_read_as_a_leak_in_reverse(report):
    # results written before the window was recorded: the second half of the whole series
    slopes = report.rss_slopes({"rss_series": soak_series(2.0)})
    assert slopes["python_workers"] < -10


def test_peak_memory_while_the_feed_ran_leaves_out_the_harness_reading_signals_back(report):
    series = [(t, {**rss, "driver": (1000 if t > 660 else 140) * MB}) for t, rss in soak_series(2.0)]
    peaks = report.feed_peaks({"rss_series": series, "feed_window_s": [60.0, 660.0]})
    assert peaks == {"driver": 140.0, "jvm": 922.0, "python_workers": 380.0}
    assert report.feed_peaks({"rss_series": series}) == {}  # results written before the window was recorded


def test_latency_percentiles_also_over_the_feeds_second_half(monkeypatch):
    """A start-up backlog (the first ticks waiting seconds) lifts p99 over the whole feed; the second
    half's percentiles leave it out, the overall ones keep it."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.spark_runs import latency_summary

    events = [float(t) for t in range(0, 100_000, 100)]  # a tick every 100 ms for 100 s
    latency = [5_000.0 if t < 10_000 else 800.0 for t in events]  # 10 % of them waited 5 s
    summary = latency_summary(latency, events)
    assert summary["signals"] == 1000 and summary["p99_ms"] == 5_000.0 and summary["p50_ms"] == 800.0
    assert summary["second_half"] == {"signals": 500, "p50_ms": 800.0, "p95_ms": 800.0, "p99_ms": 800.0}
    # minute by minute of the feed: the backlog is the first minute's
    assert [(m["minute"], m["signals"], m["p99_ms"]) for m in summary["by_minute"]] == [(0, 600, 5_000.0),
                                                                                         (1, 400, 800.0)]
    assert latency_summary([], []) == {"signals": 0}


def test_the_latency_table_shows_the_second_half(report):
    run = {"rate": 20_000, "trigger": "processingTime=500 milliseconds", "feeder": {"rate": 19_990},
           "p50_ms": 2081.0, "p95_ms": 7371.0, "p99_ms": 9296.2,
           "batch_ms_median": 1400, "max_lag_ticks": 0.0, "sustained": True,
           "second_half": {"signals": 10, "p50_ms": 1500.0, "p95_ms": 2000.0, "p99_ms": 2600.0}}
    old = {**run, "rate": 5_000, "sustained": False}
    del old["second_half"], old["trigger"]  # results written before the split, and before the trigger
    results = {"host": {"load_avg_start": [0.1], "load_avg_end": [0.2], "cpus": 2},
               "runs": {"d_latency_20000": run, "d_latency_5000": old}}
    lines = report.table(results).splitlines()
    [line] = [row for row in lines if row.strip().startswith("20,000")]
    assert line.split()[-4:] == ["yes", "(1,500", "/", "2,600)"]
    [line] = [row for row in lines if row.strip().startswith("5,000")]
    assert line.split()[-1] == "no"
    # the trigger the runs had (results written before it was recorded have none)
    assert "highest sustained rate tried: 20,000 ticks/s (trigger processingTime=500 milliseconds)" in lines
    assert not [row for row in lines if "by minute" in row]  # neither run has minutes (older results)


def test_the_latency_table_shows_p99_by_minute_for_longer_runs(report):
    minutes = [{"minute": 0, "signals": 9, "p50_ms": 1500.0, "p95_ms": 5000.0, "p99_ms": 6435.0},
               {"minute": 1, "signals": 9, "p50_ms": 1200.0, "p95_ms": 1700.0, "p99_ms": 1796.4}]
    long_run = {"rate": 20_000, "feeder": {"rate": 19_990}, "p99_ms": 6435.0, "sustained": True,
                "by_minute": minutes}
    short_run = {**long_run, "rate": 5_000, "by_minute": minutes[:1]}
    soak = {"rate": 2_000, "by_minute": minutes}
    results = {"host": {"load_avg_start": [0.1], "load_avg_end": [0.2], "cpus": 2},
               "runs": {"d_latency_20000": long_run, "d_latency_5000": short_run, "soak": soak}}
    lines = report.table(results).splitlines()
    assert "    20,000: p99 ms by minute of the feed 6,435, 1,796" in lines
    assert not [row for row in lines if row.strip().startswith("5,000:")]  # one minute: nothing to split
    assert "the soak at 2,000 ticks/s: p99 ms by minute of the feed 6,435, 1,796" in lines


NMT_TEXT = """12345:

Native Memory Tracking:

(Omitting categories weighting less than 1KB)

Total: reserved=3036311KB, committed=1505363KB
       malloc: 81234KB #412345
       mmap:   reserved=2955077KB, committed=1424129KB

-                 Java Heap (reserved=1048576KB, committed=1048576KB)
                            (mmap: reserved=1048576KB, committed=1048576KB)

-                      Code (reserved=251387KB, committed=50663KB)
                            (malloc=3KB #1234)

-                 Metaspace (reserved=131370KB, committed=78634KB)
-    Native Memory Tracking (reserved=15921KB, committed=15921KB)
"""


def test_nmt_summary_is_read_by_category(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.procs import parse_nmt

    assert parse_nmt(NMT_TEXT) == {"Total": 1505363 * 1024, "Java Heap": 1048576 * 1024, "Code": 50663 * 1024,
                                   "Metaspace": 78634 * 1024, "Native Memory Tracking": 15921 * 1024}
    assert parse_nmt("12345:\nNative memory tracking is not enabled\n") == {}


def test_nmt_slopes_split_the_jvm_growth_by_category_and_outside_nmt(report):
    # code cache +3 MB/min, heap flat, native allocations outside NMT +1 MB/min, over the feed's second half;
    # before it (warm-up) everything grows fast and must not count
    series = []
    for t in range(0, 700, 30):
        minutes = t / 60
        code = (40 + 3 * minutes if t >= 360 else 10 * minutes) * MB
        heap, outside = 1024 * MB, (30 + minutes if t >= 360 else 5 * minutes) * MB
        series.append((float(t), {"Total": int(heap + code), "Java Heap": int(heap), "Code": int(code),
                                  "rss": int(heap + code + outside)}))
    slopes = report.nmt_slopes({"nmt_series": series, "feed_window_s": [60.0, 660.0]})
    assert slopes["Code"] == pytest.approx(3.0)
    assert slopes["Total"] == pytest.approx(3.0)
    assert slopes["outside NMT"] == pytest.approx(1.0)
    assert slopes["Java Heap"] == pytest.approx(0.0, abs=1e-6)
    assert list(slopes)[-1] == "Java Heap"  # the biggest movers first
    assert report.nmt_slopes({"rss_series": []}) == {}


def test_the_state_stores_memory_is_read_over_the_feeds_second_half(report):
    # a RocksDB block cache filling for the first half of the feed (+1 MB/min), then full: flat where it counts
    series = [(float(t), int((4 + min(t - 60, 300) / 60) * MB)) for t in range(60, 661, 1)]
    state = report.state_memory({"state_memory_series": series, "feed_window_s": [60.0, 660.0]})
    assert state["end_mb"] == pytest.approx(9.0)
    assert state["mb_per_min"] == pytest.approx(0.0, abs=1e-6)
    still_filling = [(t, int((4 + (t - 60) / 60) * MB)) for t, _ in series]
    assert report.state_memory({"state_memory_series": still_filling,
                                "feed_window_s": [60.0, 660.0]})["mb_per_min"] == pytest.approx(1.0)
    assert report.state_memory({"rss_series": []}) == {}


def test_the_state_stores_memory_is_stamped_at_each_batchs_end_on_the_monotonic_clock(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.spark_runs import _state_memory

    progress = [{"timestamp": "2026-12-02T04:00:00.000Z", "batch_duration_ms": 1500, "state_memory_bytes": 7},
                {"timestamp": "2026-12-02T04:00:02.000Z", "batch_duration_ms": None, "state_memory_bytes": 9}]
    epoch = datetime(2026, 12, 2, 3, 59, 50, tzinfo=UTC).timestamp()  # the same instant as monotonic 100.0
    assert _state_memory(progress, 100.0, epoch) == [(111.5, 7), (112.0, 9)]


def test_a_batchs_phases_are_medians_with_sparks_own_part_of_add_batch(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.spark_runs import _phases

    busy = [{"duration_ms": {"addBatch": 800, "queryPlanning": 40}, "sink_ms": {"compute": 500, "total": 720}},
            {"duration_ms": {"addBatch": 900, "queryPlanning": 44}, "sink_ms": {"compute": 560, "total": 830}},
            {"duration_ms": {"addBatch": 700, "queryPlanning": 42}, "sink_ms": {"compute": 450}}]  # no total
    phases = _phases(busy)
    assert phases["addBatch"] == 800 and phases["queryPlanning"] == 42 and phases["compute"] == 500
    assert phases["total"] == 775
    assert phases["addBatch_outside_sink"] == 75  # (80 + 70) / 2: the batch without the sink's total is left out


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_a_restart_is_timed_from_the_stop_to_its_catch_up_and_back_to_steady_latency(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.spark_runs import restart_summary

    stop = datetime(2026, 12, 2, 4, 0, 0, tzinfo=UTC).timestamp() * 1000
    lag = {"maxOffsetsBehindLatest": 0.0}
    busy = [  # the batch the stop cut, replayed (no lag reported), then the backlog, then caught up
        {"timestamp": _iso(stop + 30_000), "input_rows": 20_000, "batch_duration_ms": 9_000, "kafka_lag": {}},
        {"timestamp": _iso(stop + 39_000), "input_rows": 200_000, "batch_duration_ms": 5_000,
         "kafka_lag": {"maxOffsetsBehindLatest": 90_000.0}},
        {"timestamp": _iso(stop + 44_000), "input_rows": 200_000, "batch_duration_ms": 5_000,
         "kafka_lag": {"maxOffsetsBehindLatest": 3_000.0}},  # more than a second's 20,000 / 9 partitions
        {"timestamp": _iso(stop + 49_000), "input_rows": 150_000, "batch_duration_ms": 4_000, "kafka_lag": lag},
        *({"timestamp": _iso(stop + t), "input_rows": 20_000, "batch_duration_ms": 900, "kafka_lag": lag}
          for t in range(53_000, 180_000, 1_000)),
    ]
    latency, event, emitted = [], [], []
    for t in range(-60_000, 180_000, 100):  # a tick every 100 ms of the feed, from before the stop
        fed = stop + t
        # 1 s before the stop and from 50 s on; the backlog's from 40 s to 65 s, their wait from 40 s to 15 s
        out = fed + 1_000 if t < 0 or t >= 50_000 else stop + 40_000 + t * 0.5
        latency.append(out - fed), event.append(fed), emitted.append(out)
    summary = restart_summary(busy, latency, event, emitted, stop_ms=stop, rate=20_000, partitions=9)
    assert summary["first_batch_at_s"] == 30.0 and summary["first_batch_ticks"] == 20_000
    assert summary["first_batch_ms"] == 9_000 and summary["batch_ms_max"] == 9_000
    assert summary["caught_up_at_s"] == 49.0  # not the replayed batch, which reports no lag
    assert summary["steady_p99_ms"] == 1_000.0
    # the first signal after the restart's first batch within twice the steady p99: the tick fed at 50 s,
    # sent at 51 s (those sent before the stop, and the backlog's, do not count)
    assert summary["recovered_at_s"] == 51.0
    assert summary["backlog_ticks"] == 20_000 + 200_000 + 200_000 + 150_000
    assert summary["max_ms"] == 40_000.0
    windows = {w["from_s"]: w for w in summary["windows"]}
    assert windows[-10]["p99_ms"] == 1_000.0 and windows[40]["p99_ms"] > 30_000 and windows[70]["p99_ms"] == 1_000.0
    assert restart_summary([], [], [], [], stop_ms=stop, rate=1, partitions=1) == {
        "error": "no batch with data or no signal after the restart"}


def test_the_table_shows_a_restarts_timeline_and_its_latency_window_by_window(report):
    resume = {"process_started_at_s": 1.3, "query_started_at_s": 10.0, "warm_up_and_start_s": 2.5,
              "first_batch_at_s": 10.2, "first_batch_ticks": 17_590, "first_batch_ms": 15_503,
              "caught_up_at_s": 44.1, "recovered_at_s": 52.1, "backlog_ticks": 1_009_024, "max_ms": 35_098.0,
              "steady_p99_ms": 1_994.0, "repeated_signals": 0,
              "windows": [{"from_s": -30, "p99_ms": 2_900.0}, {"from_s": -10, "p99_ms": 2_265.0},
                          {"from_s": 20, "p99_ms": 23_258.0}]}
    results = {"host": {"load_avg_start": [0.1], "load_avg_end": [0.2], "cpus": 2},
               "runs": {"restart_20000": {"rate": 20_000, "first": {"stop_s": 0.1, "stopped": "committed"},
                                          "resume": resume},
                        "restart_5000": {"rate": 5_000, "first": {"error": "exit 1: no broker\nmore"}}}}
    lines = report.table(results).splitlines()
    [line] = [row for row in lines if row.startswith("restart at 20,000")]
    assert "(seconds from the stop): stopped in 0.1 (committed), process 1.3, query 10.0" in line
    assert "first batch 10.2 (17,590 ticks in 15,503 ms), caught up 44.1, back at steady latency 52.1 after " \
           "1,009,024 ticks; worst latency 35,098 ms" in line
    assert lines[lines.index(line) + 1] == "  p99 ms by 10 s of emission from the stop: -10: 2,265, 20: 23,258"
    assert "restart at 5,000 ticks/s: failed: exit 1: no broker" in lines
