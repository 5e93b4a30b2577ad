"""bench/delta_log.py, an audit-table append timed as the Delta log grows, runs on a tiny input."""

from __future__ import annotations

import pytest

from conftest import ROOT


def test_the_delta_log_bench_times_appends_as_the_log_grows(spark, monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import delta_log

    assert delta_log.main(["--files", "0,200", "--appends", "3", "--rows", "10", "--data", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in printed if line.strip()[:1].isdigit()]
    entries = [int(row[0].replace(",", "")) for row in rows]
    assert len(rows) == 2 and entries[1] - entries[0] == 200 and entries[0] > 0  # the table's own, then 200 more
    assert all(float(row[1].replace(",", "")) > 0 for row in rows)
    assert [line for line in printed if line.startswith("per log entry: ")]
    assert not (tmp_path / "table").exists()
    assert spark.range(3).count() == 3  # the test session is still there


def test_the_delta_log_bench_refuses_counts_out_of_order(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import delta_log

    with pytest.raises(SystemExit) as exit_:
        delta_log.main(["--files", "100,0"])
    assert exit_.value.code == 2 and "--files must ascend" in capsys.readouterr().err


def test_the_delta_log_bench_counts_an_s3a_tables_list_requests_with_and_without_fast_listing(
        spark, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import delta_log

    assert delta_log.main(["--s3", "--files", "0,1100", "--appends", "3", "--rows", "5"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[1] for row in rows] == ["false", "true"] * 2
    entries = [int(row[0].replace(",", "")) for row in rows]
    assert entries[0] == entries[1] > 0 and entries[2] == entries[3] > 1100
    lists = {(row[0], row[1]): int(row[2]) for row in rows}
    padded = rows[2][0]
    assert lists[padded, "false"] - lists[padded, "true"] >= 1  # a second page of the whole log
    assert spark.conf.get(delta_log.FAST_LOG_LISTING, None) is None  # the bench leaves the session as it was
