"""The benchmark harness (bench/, `make bench`) runs end to end on a tiny input and writes its
results. A smoke test only: the numbers are not checked -- a benchmark never fails CI."""

from __future__ import annotations

import json
import os

import pyspark
import pytest

from conftest import ROOT
from support import JARS_DIR_ENV

pytestmark = pytest.mark.integration


def jars_set() -> list[str]:
    """The bench's settings ignore the environment (a measurement is the profile's); the suites run on
    Spark 3.5 with its jars (tests/conftest.py) give them to the bench as a setting."""
    jars = os.environ.get(JARS_DIR_ENV)
    return ["--set", f"spark.jars_dir={jars}"] if jars else []


def test_bench_harness_writes_its_json_table_and_chart(kafka_broker, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    from bench import run

    code = run.main(["--bootstrap", kafka_broker.bootstrap, "--ticks", "3000", "--symbols", "20",
                     "--scale-symbols", "200", "--rates", "300", "--rate-seconds", "4", "--partitions", "1",
                     "--set", "spark.conf.spark.sql.execution.arrow.maxRecordsPerBatch=5000",
                     "--jfr", "--out", str(tmp_path), *jars_set()])
    assert code == 0
    printed = capsys.readouterr().out
    assert "(b) product" in printed and "b/a =" in printed and "feed rate" in printed
    [result] = tmp_path.glob("*.json")
    runs = json.loads(result.read_text())["runs"]
    assert {"a_ceiling", "b_product", "c_simple", "e_scale", "d_latency_300"} <= runs.keys()
    for name in ("a_ceiling", "b_product", "c_simple", "e_scale"):
        assert "error" not in runs[name], runs[name]["error"]
        assert runs[name]["ticks"] > 0
    if not pyspark.__version__.startswith("3."):  # read back from the checkpoint by Spark 4.0's state data source
        assert runs["e_scale"]["state_symbols"] == 200 and "200 symbols in" in printed
    assert runs["d_latency_300"]["signals"] > 0 and "p99_ms" in runs["d_latency_300"]  # read back from Kafka
    # the feeder ran at the rate while the job started, and its measured seconds began at the first batch
    feeder = runs["d_latency_300"]["feeder"]
    assert feeder["lead_sent"] > 0 and feeder["lead_seconds"] > 0 and feeder["sent"] == 300 * 4, feeder
    start, end = runs["d_latency_300"]["feed_window_s"]  # the soak's memory slope is taken inside it
    assert 0 < start < end
    # RocksDB's own count at each batch's end, on the same clock: the feed starts once the first batch is done
    state = runs["d_latency_300"]["state_memory_series"]
    assert 0 < state[0][0] <= start + 0.5 and all(t < end + 180 for t, _ in state), (start, end, state)
    assert any(t > start and b > 0 for t, b in state), state
    assert list(tmp_path.glob("*.png"))
    # --jfr: each Spark run's JVM recorded and summarised (bench/jfr.py); (b)'s tasks read through a shuffle map
    for name in run.PROFILED:
        profile = runs[name]["jfr"]
        assert "error" not in profile and profile["task_samples"] > 0, profile
        assert f"JVM profile of {name}:" in printed
    assert any(stage.startswith("shuffle map") for stage in runs["b_product"]["jfr"]["stages"])


def test_a_leading_feeder_whose_caller_goes_away_stops(kafka_broker, tmp_path, monkeypatch):
    """Feeder.java's mode "lead" sends until its caller's line; stdin closed before it (the bench died)
    ends it with exit code 3 instead of a feed that never stops."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.workload import Workload, start_feeder, write_records

    topics = kafka_broker.isolated("lead-feeder").kafka.tick_topics
    records = write_records(Workload(ticks=100, symbols=5), topics, tmp_path / "records.bin")
    proc = start_feeder(kafka_broker.bootstrap, records, topics, rate=100, seconds=1, lead=True)
    _, err = proc.communicate(timeout=120)  # closes its stdin without a line
    assert proc.returncode == 3 and "stdin closed before" in err, (proc.returncode, err[-2000:])


def test_the_restart_run_times_a_second_process_on_the_first_ones_checkpoint(kafka_broker, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    from bench import run

    code = run.main(["--bootstrap", kafka_broker.bootstrap, "--skip", "a,b,c,e", "--rates", "", "--symbols", "20",
                     "--partitions", "1", "--restart-after", "3", "--restart-rate", "300", "--restart-seconds", "8",
                     "--set", "stream.warm_up_ticks=2000", "--out", str(tmp_path), *jars_set()])
    assert code == 0
    [result] = tmp_path.glob("*.json")
    restart = json.loads(result.read_text())["runs"]["restart_300"]
    first, resume = restart["first"], restart.get("resume", {})
    assert "error" not in first and "error" not in resume, (first.get("error"), resume.get("error"))
    assert first["batches"] > 0 and any("warmed up in" in line for line in first["job_said"])  # a new query
    # the stop let the batch in flight commit (or came between two batches): nothing replayed but a batch
    # held before its work, and no signal sent twice
    assert first["stopped"] in ("committed", "between batches"), first
    assert first["planned"] - first["committed"] in (0, 1), first
    # the second process resumed the first one's checkpoint, found the ticks sent meanwhile and did not warm up
    assert any("no warm-up: the query resumes its checkpoint" in line for line in resume["job_said"])
    assert 0 < resume["process_started_at_s"] < resume["query_started_at_s"]
    assert resume["first_batch_at_s"] > resume["process_started_at_s"]
    assert resume["feeder"]["sent"] == 300 * 8 and resume["first_batch_ticks"] > 0
    assert resume["recovered_at_s"] is not None and resume["windows"]
    assert resume["repeated_signals"] == 0
