"""Shared fixtures: one SparkSession and one real Kafka broker per test session.

The broker runs on its own ports and data folder (never the developer's `make run` broker) and is
stopped at the end of the session even when tests fail.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from marketsignals.settings import Settings, load_settings
from support import JARS_DIR_ENV

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings("local", [
        "spark.shuffle_partitions=2",
        "spark.conf.spark.ui.showConsoleProgress=false",
        "spark.conf.spark.sql.execution.arrow.maxRecordsPerBatch=5000",
        "spark.log_level=ERROR",
        "stream.state_buckets=4",  # the tests' few symbols share buckets (production: hundreds of buckets)
        "stream.warm_up_ticks=0",  # a live stream's warm-up: the tests that cover it turn it on
    ], env={JARS_DIR_ENV: os.environ[JARS_DIR_ENV]} if os.environ.get(JARS_DIR_ENV) else {})


@pytest.fixture(scope="session")
def spark(base_settings):
    from marketsignals.session import build_session

    # Hadoop's S3A too (`make jars`: .jars/s3a), for the checkpoint and audit table on s3a:// against moto (test_s3a.py)
    s3a = sorted(str(p) for p in (ROOT / ".jars" / "s3a").glob("*.jar"))
    assert s3a, f"no S3A jars in {ROOT / '.jars' / 's3a'}: run `make jars`"
    session = build_session(base_settings.spark, extra_conf={"spark.jars": ",".join(s3a)})
    yield session
    # What SparkSession.stop leaves running, and which logs at WARN (with its stack) while the JVM exits,
    # after pytest's summary: Spark's pooled Kafka producers (one JVM-wide pool) reconnecting to a broker a
    # test stopped, and the state stores' maintenance task finding "SparkEnv not active".
    _call_spark_object(session, "org.apache.spark.sql.kafka010.producer.InternalKafkaProducerPool$", "reset",
                       "close Spark's Kafka producers")
    _call_spark_object(session, "org.apache.spark.sql.execution.streaming.state.StateStore$", "stop",
                       "stop Spark's state store maintenance")
    session.stop()


def _call_spark_object(session, name: str, method: str, what: str) -> None:
    """Call ``method`` of the Scala object ``name`` (its class, ending in $), found by Spark's class loader
    (spark.jars); a failure is printed, never raised: Spark internals must not fail the session's end."""
    try:
        jvm = session.sparkContext._jvm
        found = jvm.org.apache.spark.util.Utils.classForName(name, True, False)
        getattr(found.getField("MODULE$").get(None), method)()
    except Exception as exc:
        print(f"could not {what}: {exc}")


@pytest.fixture(scope="session")
def kafka_broker(base_settings, tmp_path_factory):
    """A real single-node KRaft broker for the whole session (see tests/support.py: Broker)."""
    from marketsignals.local_broker import LocalBroker
    from support import Broker

    data_dir = tmp_path_factory.mktemp("kafka")  # per session: concurrent sessions never share a broker
    port, cport = _free_port(), _free_port()
    settings = base_settings.with_overrides([
        f"broker.port={port}", f"broker.controller_port={cport}", f"broker.data_dir={data_dir}",
        f"kafka.bootstrap_servers=127.0.0.1:{port}", "broker.heap=384m",
    ])
    broker = LocalBroker(settings.broker, settings.kafka, jars=ROOT / ".jars" / "kafka")
    broker.up(create_topics=False, log=lambda *_: None)
    try:
        yield Broker(local=broker, settings=settings, root=tmp_path_factory.mktemp("streams"))
    finally:
        broker.down(log=lambda *_: None)
