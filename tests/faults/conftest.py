"""Fixtures of the fault-injection suite (issue 7): figures reporting and a throwaway broker factory.

The session fixtures (``spark``, ``kafka_broker``) come from tests/conftest.py. Tests that stop a broker
or secure it get their own LocalBroker (own ports, own data folder), never the session broker.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from faults.harness import ROOT, Figures, free_port

# one JSON line per test with figures; the soak runner points this at its own report
FIGURES_FILE = Path(os.environ.get("MARKETSIGNALS_FAULTS_FIGURES", ROOT / ".local" / "faults" / "figures.jsonl"))
_reported: list[Figures] = []


@pytest.fixture
def figures(request) -> Figures:
    """Numbers the test reports (kills survived, messages tried, rows compared...)."""
    fig = Figures(request.node.nodeid)
    yield fig
    if fig.values:
        _reported.append(fig)
        FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(FIGURES_FILE, "a") as fh:
            fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "test": fig.test, **fig.values},
                                default=str) + "\n")


def pytest_terminal_summary(terminalreporter) -> None:
    if not _reported:
        return
    terminalreporter.section("fault-injection figures")
    for fig in _reported:
        values = ", ".join(f"{k}={v}" for k, v in fig.values.items())
        terminalreporter.write_line(f"{fig.test.split('::')[-1]}: {values}")


@pytest.fixture
def own_broker_settings(base_settings, tmp_path):
    """Settings for a broker of the test's own (free ports, data under tmp_path), not yet started."""

    def make(name: str, *overrides: str):
        port, cport = free_port(), free_port()
        data = tmp_path / f"{name}-kafka"
        shutil.rmtree(data, ignore_errors=True)
        base = tmp_path / name
        return base_settings.with_overrides([
            f"broker.port={port}", f"broker.controller_port={cport}", f"broker.data_dir={data}",
            f"kafka.bootstrap_servers=127.0.0.1:{port}", "broker.heap=256m", "broker.start_timeout_s=120",
            f"kafka.topics=[{name}-market, {name}-level2, {name}-trade]",
            f"kafka.signals_topic={name}-signals", f"kafka.dead_letter_topic={name}-dead-letter",
            "kafka.partitions=2", "kafka.starting_offsets=earliest",
            f"stream.checkpoint={base}/checkpoint", f"stream.audit_table={base}/audit",
            f"stream.metrics_path={base}/metrics.jsonl", "stream.trigger=availableNow",
            f"spark.conf.spark.local.dir={base}/spark-local",
            *overrides,
        ])

    return make
