"""bench/stage0.py, the stream's stage 0 timed alone, runs on a tiny input and reports its runs and
the size of the code Spark generated for it."""

from __future__ import annotations

import json

from conftest import ROOT


def _report(printed: str) -> dict:
    (line,) = [x for x in printed.splitlines() if x.startswith("BENCH-STAGE0 ")]
    return json.loads(line[len("BENCH-STAGE0 "):])


def test_the_stage0_bench_runs_the_products_stage_and_from_json_alone(spark, monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import stage0

    common = ["--ticks", "600", "--symbols", "20", "--runs", "3", "--data", str(tmp_path)]
    assert stage0.main(common) == 0
    printed = capsys.readouterr().out
    assert "600 ticks, stage 0: JVM CPU median" in printed and "over 1 runs after 2 warm-up" in printed
    report = _report(printed)
    assert len(report["runs"]) == 3 and all(wall > 0 for wall, _ in report["runs"])
    # the product's stage: the parse projections fall outside whole-stage codegen, the rest in stages
    assert len(report["generated_method_bytes"]) >= 2 and not report["parse_only"]
    assert [p.name for p in tmp_path.iterdir()] == ["stage0-600-20.parquet"]
    rows = spark.read.parquet(str(tmp_path / "stage0-600-20.parquet"))
    assert rows.count() == 600 and rows.select("topic").distinct().count() == 3

    assert stage0.main([*common, "--parse-only"]) == 0
    report = _report(capsys.readouterr().out)
    assert report["parse_only"] and len(report["runs"]) == 3
