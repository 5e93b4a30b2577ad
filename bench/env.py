"""Where the benchmark runs: its own broker (ports and data folder apart from the developer's and the
tests'), fresh topics per run, and settings for the product built from conf/local.yaml."""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from bench.workload import ROOT
from marketsignals.local_broker import LocalBroker
from marketsignals.settings import Settings, load_settings

WORK = ROOT / ".local" / "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_settings(bootstrap: str, *overrides: str) -> Settings:
    return load_settings("local", [f"kafka.bootstrap_servers={bootstrap}", "spark.log_level=ERROR",
                                   "spark.conf.spark.ui.showConsoleProgress=false", *overrides], env={})


@dataclass
class BenchBroker:
    """The broker the harness uses: an existing one (``--bootstrap``) or one it starts and stops."""

    bootstrap: str
    local: LocalBroker | None = None

    @classmethod
    def start(cls, port: int | None = None, data_dir: Path | None = None) -> BenchBroker:
        port = port or free_port()
        cport = free_port()
        data = data_dir or WORK / f"kafka-{port}"
        shutil.rmtree(data, ignore_errors=True)
        settings = bench_settings(f"127.0.0.1:{port}", f"broker.port={port}", f"broker.controller_port={cport}",
                                  f"broker.data_dir={data}", "broker.heap=1g")
        local = LocalBroker(settings.broker, settings.kafka, jars=ROOT / ".jars" / "kafka")
        for attempt in range(3):  # a random cluster id starting with '-' fails to format: retry
            try:
                local.up(create_topics=False, log=lambda *_: None)
                break
            except Exception:
                if attempt == 2:
                    raise
                shutil.rmtree(data, ignore_errors=True)
        return cls(settings.kafka.bootstrap_servers, local)

    def stop(self) -> None:
        if self.local is not None:
            self.local.down(log=lambda *_: None)
            shutil.rmtree(self.local.paths.root, ignore_errors=True)

    def topics(self, prefix: str, partitions: int) -> Settings:
        """Settings with fresh tick/signal/dead-letter topics named ``prefix-*``."""
        topics = [f"{prefix}-market", f"{prefix}-level2", f"{prefix}-trade"]
        settings = bench_settings(self.bootstrap, f"kafka.topics=[{', '.join(topics)}]",
                                  f"kafka.signals_topic={prefix}-signals",
                                  f"kafka.dead_letter_topic={prefix}-dead-letter",
                                  f"kafka.partitions={partitions}")
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            existing = set(admin.list_topics())
            wanted = [t for t in settings.kafka.all_topics if t not in existing]
            if wanted:
                admin.create_topics([NewTopic(t, partitions, 1) for t in wanted])
        finally:
            admin.close()
        return settings

    def end_offsets(self, topics: list[str]) -> int:
        """Messages in ``topics`` (sum of the partitions' end offsets)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            parts = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
            return sum(consumer.end_offsets(parts).values())
        finally:
            consumer.close()
