"""The local KRaft broker really starts, serves and stops; the feed's ticks come back intact."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from marketsignals import feed, kafka_client
from marketsignals.local_broker import BrokerError, LocalBroker

pytestmark = pytest.mark.integration


def test_ticks_produced_are_consumed_back_with_the_right_count_and_schema(kafka_broker):
    settings = kafka_broker.isolated("roundtrip")
    opts = feed.FeedOptions(symbols=feed.symbol_names(7), count=3000, rate=1000, seed=3,
                            start_ms=1_767_312_000_000, topics=tuple(settings.kafka.topics))
    stats = kafka_broker.produce(settings, opts)
    assert stats.produced == 3000
    received = []
    for topic in settings.kafka.topics:
        received += kafka_broker.consume(settings, topic)
    assert len(received) == 3000
    sent = sorted((m.key, m.value) for m in feed.generate(opts))
    assert sorted(received) == sent  # byte for byte, keyed by symbol
    for key, value in received[:200]:
        tick = json.loads(value)
        assert set(tick) == {"symbol", "timestamp", "price", "volume", "bid", "ask", "exchange", "currency"}
        assert key.decode() == tick["symbol"]


def test_status_reports_topics_and_end_offsets(kafka_broker):
    settings = kafka_broker.isolated("status")
    kafka_broker.produce(settings, feed.FeedOptions(count=50, start_ms=1_767_312_000_000,
                                                    topics=tuple(settings.kafka.topics)))
    info = kafka_broker.local.status()
    assert info["up"] is True
    assert sum(sum(p.values()) for t, p in info["topics"].items() if t in settings.kafka.topics) == 50
    assert set(settings.kafka.all_topics) <= set(info["topics"])


def test_up_twice_is_a_no_op(kafka_broker):
    pid = kafka_broker.local.pid()
    messages = []
    kafka_broker.local.up(create_topics=False, log=messages.append)
    assert kafka_broker.local.pid() == pid
    assert "already up" in messages[0]


def test_a_taken_port_is_a_clear_error(kafka_broker, tmp_path):
    taken = kafka_broker.settings.broker.port  # the session broker holds it
    settings = kafka_broker.settings.with_overrides([f"broker.data_dir={tmp_path}", f"broker.port={taken}",
                                                     "broker.controller_port=1"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    settings = settings.with_overrides([f"broker.controller_port={free}"])
    with pytest.raises(BrokerError, match=rf"port {taken} .* in use .*broker.port"):
        LocalBroker(settings.broker, settings.kafka, jars=kafka_broker.local.jars).up(log=lambda *_: None)


def test_missing_java_is_a_clear_error(kafka_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = kafka_broker.settings.with_overrides([f"broker.data_dir={tmp_path}"])
    with pytest.raises(BrokerError, match="java not found"):
        LocalBroker(settings.broker, settings.kafka, jars=kafka_broker.local.jars).up(log=lambda *_: None)


def test_a_second_broker_starts_serves_and_stops_cleanly(kafka_broker, tmp_path):
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    settings = kafka_broker.settings.with_overrides([
        f"broker.data_dir={tmp_path / 'b2'}", f"broker.port={ports[0]}", f"broker.controller_port={ports[1]}",
        f"kafka.bootstrap_servers=127.0.0.1:{ports[0]}", "kafka.topics=[only-one]"])
    broker = LocalBroker(settings.broker, settings.kafka, jars=kafka_broker.local.jars)
    try:
        broker.up(log=lambda *_: None)
        assert broker.is_up()
        producer = kafka_client.producer(settings.kafka)
        producer.send("only-one", key=b"k", value=b"v").get(timeout=30)
        producer.close()
        assert broker.status()["topics"]["only-one"] and sum(broker.status()["topics"]["only-one"].values()) == 1
    finally:
        broker.down(log=lambda *_: None)
    assert broker.pid() is None and not broker.is_up()
    assert broker.status()["up"] is False


def test_cli_answers_help_for_every_subcommand():
    from marketsignals.cli import COMMANDS

    for name in ["", *COMMANDS]:
        args = [sys.executable, "-m", "marketsignals.cli", *([name] if name else []), "--help"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (name, result.stderr)
        assert "usage: marketsignals" in result.stdout


def test_cli_config_error_names_the_key():
    result = subprocess.run([sys.executable, "-m", "marketsignals.cli", "kafka", "status", "--set",
                             "broker.port=not-a-port"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "broker.port" in result.stderr and "Traceback" not in result.stderr
