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
