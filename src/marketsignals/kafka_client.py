"""Python-side Kafka clients (kafka-python) built from the same settings as the Spark job.

Spark's Kafka source takes Java client properties (``security.protocol``, ``sasl.jaas.config``...);
kafka-python takes keyword arguments. This module translates the one into the other so the feed, the
CLI and the tests connect exactly as the job does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from marketsignals.settings import KafkaSettings

# Java client property -> kafka-python keyword
_DIRECT = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "ssl.ca.location": "ssl_cafile",
    "ssl.cafile": "ssl_cafile",
    "ssl.certfile": "ssl_certfile",
    "ssl.keyfile": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "ssl.endpoint.identification.algorithm": None,  # handled below
    "client.id": "client_id",
    "request.timeout.ms": "request_timeout_ms",
}
_JAAS_USER = re.compile(r'username\s*=\s*"([^"]*)"')
_JAAS_PASSWORD = re.compile(r'password\s*=\s*"([^"]*)"')


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments for the configured brokers and security options."""
    kwargs: dict[str, Any] = {"bootstrap_servers": kafka.bootstrap_servers.split(",")}
    opts = kafka.options
    for key, value in opts.items():
        target = _DIRECT.get(key)
        if target:
            kwargs[target] = int(value) if target.endswith("_ms") else value
    if opts.get("ssl.truststore.type", "").upper() == "PEM" and opts.get("ssl.truststore.location"):
        # the Java clients' PEM truststore is a CA bundle file: kafka-python's ssl_cafile
        kwargs.setdefault("ssl_cafile", opts["ssl.truststore.location"])
    if opts.get("ssl.endpoint.identification.algorithm", "https") == "":
        kwargs["ssl_check_hostname"] = False
    jaas = opts.get("sasl.jaas.config", "")
    if "ScramLoginModule" in jaas or "PlainLoginModule" in jaas:
        user, password = _JAAS_USER.search(jaas), _JAAS_PASSWORD.search(jaas)
        if user and password:
            kwargs["sasl_plain_username"] = user.group(1)
            kwargs["sasl_plain_password"] = password.group(1)
    return kwargs


class KafkaAuthError(RuntimeError):
    """The brokers refused the client's credentials or the client did not trust their certificate."""


@contextmanager
def _clear_connect_errors(kafka: KafkaSettings) -> Iterator[None]:
    """kafka-python retries a refused SASL handshake or TLS verification until its bootstrap timeout and
    then only says "Unable to bootstrap"; keep the handshake's own error and raise that instead."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError, SaslAuthenticationFailedError

    causes: list[BaseException] = []

    class _Remember(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            args = record.args if isinstance(record.args, tuple) else ()
            causes.extend(a for a in args if isinstance(a, BaseException))

    handler = _Remember(logging.WARNING)
    logger = logging.getLogger("kafka")
    logger.addHandler(handler)
    try:
        yield
    except KafkaTimeoutError:
        where = kafka.bootstrap_servers
        for cause in reversed(causes):
            if isinstance(cause, SaslAuthenticationFailedError):
                mechanism = kafka.options.get("sasl.mechanism", "SASL")
                raise KafkaAuthError(f"Kafka at {where} refused the credentials ({mechanism}): check the user and "
                                     "password in kafka.options.sasl.jaas.config (or the secret it names)") from None
            if "certificate verify failed" in str(cause).lower():
                raise KafkaAuthError(f"the TLS certificate of Kafka at {where} is not trusted: set kafka.options."
                                     "ssl.truststore.location (type PEM) to the CA that signed it") from None
        sasl = kafka.options.get("security.protocol", "").upper().startswith("SASL")
        lost = [c for c in causes if isinstance(c, KafkaConnectionError)]
        if sasl and lost and all("disconnected" in str(c).lower() for c in lost):
            # The broker closes the connection right after a failed SASL exchange; kafka-python may see
            # the close before the error response (a race), so a refusal can look like this.
            mechanism = kafka.options.get("sasl.mechanism", "SASL")
            raise KafkaAuthError(f"Kafka at {where} accepted the connection and then closed it during {mechanism} "
                                 "login: the credentials are most likely wrong -- check the user and password in "
                                 "kafka.options.sasl.jaas.config (or the secret it names)") from None
        raise
    finally:
        logger.removeHandler(handler)


def producer(kafka: KafkaSettings, **extra: Any):
    """A KafkaProducer for the configured cluster (acks=all, batched)."""
    from kafka import KafkaProducer

    params = {"acks": "all", "linger_ms": 20, "batch_size": 256 * 1024, "max_in_flight_requests_per_connection": 5}
    params.update(extra)
    with _clear_connect_errors(kafka):
        return KafkaProducer(**client_kwargs(kafka), **params)


def consumer(kafka: KafkaSettings, *topics: str, **extra: Any):
    """A KafkaConsumer reading ``topics`` from the earliest offset, without a consumer group."""
    from kafka import KafkaConsumer

    params = {"auto_offset_reset": "earliest", "enable_auto_commit": False, "consumer_timeout_ms": 1000}
    params.update(extra)
    with _clear_connect_errors(kafka):
        return KafkaConsumer(*topics, **client_kwargs(kafka), **params)


def admin(kafka: KafkaSettings, **extra: Any):
    """A KafkaAdminClient for topic management."""
    from kafka import KafkaAdminClient

    with _clear_connect_errors(kafka):
        return KafkaAdminClient(**client_kwargs(kafka), **extra)


def end_offsets(kafka: KafkaSettings, topics: list[str]) -> dict[str, dict[int, int]]:
    """Latest offset of every partition of ``topics`` (topic -> partition -> offset)."""
    from kafka import TopicPartition

    cons = consumer(kafka)
    try:
        result: dict[str, dict[int, int]] = {}
        for topic in topics:
            parts = cons.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = cons.end_offsets(tps) if tps else {}
            result[topic] = {tp.partition: off for tp, off in sorted(ends.items(), key=lambda kv: kv[0].partition)}
        return result
    finally:
        cons.close()
