"""The bench report's memory slope (bench/report.py): pure arithmetic over an RSS series."""

from __future__ import annotations

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
