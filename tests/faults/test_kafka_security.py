"""Transport security and secrets (issue 7): a local broker with only a SASL_SSL listener (SCRAM-SHA-256,
users seeded by StorageTool --add-scram, a CA generated here); the feed and the job connect with it;
a wrong password fails clearly and fast; the password never shows in the job's logs, the Spark UI (REST
API and pages), the event log, the metrics, the checkpoint or the audit table.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from pathlib import Path

import pytest

from faults.harness import (
    KAFKA_JARS,
    START_MS,
    JobProcess,
    assert_audit_exactly,
    assert_kafka_signals,
    audit_signals,
    expected_signals,
    free_port,
    produce_recorded,
    progress_lines,
    read_metrics,
    wait_until,
    write_settings,
)
from marketsignals import feed, kafka_client, security
from marketsignals.security import ScramUser

pytestmark = pytest.mark.faults

JAAS_ENV = "MARKETSIGNALS__KAFKA__OPTIONS__SASL__JAAS__CONFIG"


@pytest.fixture(scope="module")
def secure(base_settings, tmp_path_factory):
    """A SASL_SSL-only broker of this module's own; yields (settings with the app user's options, user, tls)."""
    root = tmp_path_factory.mktemp("secure")
    tls = security.generate_tls_files(root / "tls")
    user = ScramUser.generate("marketsignals")
    port, cport = free_port(), free_port()
    settings = base_settings.with_overrides([
        f"broker.port={port}", f"broker.controller_port={cport}", f"broker.data_dir={root / 'kafka'}",
        f"kafka.bootstrap_servers=127.0.0.1:{port}", "broker.heap=256m", "broker.start_timeout_s=120",
        "kafka.topics=[sec-market, sec-level2, sec-trade]", "kafka.signals_topic=sec-signals",
        "kafka.dead_letter_topic=sec-dead-letter", "kafka.partitions=2", "kafka.starting_offsets=earliest",
        f"stream.checkpoint={root}/checkpoint", f"stream.audit_table={root}/audit",
        f"stream.metrics_path={root}/metrics.jsonl", "stream.trigger=processingTime=1 second",
        f"spark.conf.spark.local.dir={root}/spark-local",
    ])
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"options": security.sasl_ssl_client_options(user, tls.ca_cert)})})
    broker = security.SecureLocalBroker(settings.broker, settings.kafka, tls, [user], jars=KAFKA_JARS)
    broker.up(log=lambda *_: None)
    try:
        yield settings, user, tls, root
    finally:
        broker.down(log=lambda *_: None)


def _with_user(settings, user: ScramUser, tls):
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"options": security.sasl_ssl_client_options(user, tls.ca_cert)})})


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode(errors="replace")


def test_feed_and_job_connect_over_sasl_ssl_and_the_password_never_leaks(secure, spark, figures):
    settings, user, _, root = secure
    opts = feed.FeedOptions(symbols=feed.symbol_names(4), count=600, rate=200, start_ms=START_MS, seed=51,
                            topics=tuple(settings.kafka.topics), bad={"not_json": 0.01, "crossed_quote": 0.01})
    sent = produce_recorded(settings.kafka, feed.generate(opts))  # the feed's client: SASL_SSL + SCRAM

    # The job gets its password the way a deployment injects it: an environment variable, not the file.
    ui_port = free_port()
    on_disk = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"options": {
        k: v for k, v in settings.kafka.options.items() if k != "sasl.jaas.config"}})})
    # every driver log line at INFO (where Kafka clients print their configuration and Spark its plans)
    # into a file, as on EMR; PySpark filters INFO out of console appenders whatever the level says
    log4j, driver_log = root / "log4j2-info.properties", root / "driver.log"
    log4j.write_text("rootLogger.level = info\nrootLogger.appenderRef.file.ref = file\n"
                     f"appender.file.type = File\nappender.file.name = file\nappender.file.fileName = {driver_log}\n"
                     "appender.file.layout.type = PatternLayout\nappender.file.layout.pattern = %d %p %c: %m%n%ex\n")
    conf = write_settings(on_disk.with_overrides([
        f"spark.conf.spark.driver.extraJavaOptions=-Dlog4j2.configurationFile=file:{log4j}",
        "spark.log_level=INFO", "spark.conf.spark.ui.enabled=true", f"spark.conf.spark.ui.port={ui_port}",
        "spark.conf.spark.eventLog.enabled=true", f"spark.conf.spark.eventLog.dir={root}/events",
    ]), root / "job.yaml")
    (root / "events").mkdir(exist_ok=True)
    assert user.password not in conf.read_text()
    job = JobProcess(conf, root / "job", env={JAAS_ENV: settings.kafka.options["sasl.jaas.config"]}).start()
    ui: dict[str, str] = {}
    try:
        def caught_up():
            assert job.alive(), f"the job exited:\n{job.output()}"
            lines = progress_lines(read_metrics(settings.stream.metrics_path))
            return sum(m["input_rows"] for m in lines) >= len(sent)

        wait_until(caught_up, 600, lambda: f"the job did not read the {len(sent)} ticks:\n{job.output()}", 1.0)
        base = f"http://127.0.0.1:{ui_port}"
        app = json.loads(_get(f"{base}/api/v1/applications"))[0]["id"]
        for page in ("environment", "sql?details=true&planDescription=true", "jobs", "stages", "executors"):
            ui[f"api/{page}"] = _get(f"{base}/api/v1/applications/{app}/{page}")
        for page in ("environment/", "SQL/", "StreamingQuery/", "jobs/"):
            ui[page] = _get(f"{base}/{page}")
        assert job.terminate() == 0, f"SIGTERM did not stop the job cleanly:\n{job.output()}"
    finally:
        if job.alive():
            job.kill9()

    expected = expected_signals(spark, settings)
    figures.add(messages=len(sent), **assert_audit_exactly(audit_signals(spark, settings), expected))
    figures.add(**assert_kafka_signals(settings.kafka, expected))

    # the grep: every text the job produced or left behind
    places: dict[str, str] = dict(ui)
    for path in [job.stdout, job.stderr, driver_log, Path(settings.stream.metrics_path)]:
        places[str(path)] = path.read_text(errors="replace")
    for folder in (root / "events", Path(settings.stream.checkpoint), Path(settings.stream.audit_table) / "_delta_log"):
        for path in folder.rglob("*"):
            if path.is_file():
                places[str(path)] = path.read_bytes().decode(errors="replace")
    leaks = [where for where, text in places.items() if user.password in text]
    assert not leaks, f"the Kafka password appears in: {leaks}"
    assert sum(len(t) for t in places.values()) > 100_000, "suspiciously little text was searched"
    assert "sasl.jaas.config = [hidden]" in places[str(driver_log)], "the Kafka clients' INFO logs were not captured"
    figures.add(places_searched=len(places), bytes_searched=sum(len(t) for t in places.values()), leaks=0)


def test_a_wrong_password_fails_clearly_and_fast(secure, spark, figures):
    from marketsignals.stream.job import StreamFailed, run

    settings, user, tls, root = secure
    wrong = ScramUser(user.name, "not-the-password-" + "x" * 8)
    bad = _with_user(settings, wrong, tls).with_overrides([
        f"stream.checkpoint={root}/wrong-checkpoint", f"stream.audit_table={root}/wrong-audit",
        f"stream.metrics_path={root}/wrong-metrics.jsonl", "stream.trigger=availableNow"])

    started = time.monotonic()
    with pytest.raises(kafka_client.KafkaAuthError) as feed_error:
        kafka_client.producer(bad.kafka, bootstrap_timeout_ms=5000)
    feed_s = time.monotonic() - started
    # "refused the credentials", or, when kafka-python sees the broker's close before its error
    # response (a race in the client), "closed it during SCRAM-SHA-256 login": both name the fix
    assert "credentials" in str(feed_error.value) and "sasl.jaas.config" in str(feed_error.value)
    assert wrong.password not in str(feed_error.value)

    started = time.monotonic()
    with pytest.raises(StreamFailed) as job_error:
        run(spark, bad)  # the job's own entry: stops with one line, restartable
    job_s = time.monotonic() - started
    message = str(job_error.value)
    assert "authentication" in message.lower(), message
    assert wrong.password not in message
    assert job_s < 180, f"the job took {job_s:.0f}s to give up"
    figures.add(feed_error=str(feed_error.value)[:120], feed_seconds=round(feed_s, 1), job_error=message[:200],
                job_seconds=round(job_s, 1))


def test_the_scram_password_can_come_from_secrets_manager(secure, monkeypatch):
    """The EMR profiles' way: the settings name an MSK-style secret; resolved at startup, the clients connect."""
    import boto3
    from moto import mock_aws

    from marketsignals.secrets import resolve_secrets

    settings, user, _, _ = secure
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    jaas = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
            'username="${secretsmanager:AmazonMSK_marketsignals#username}" '
            'password="${secretsmanager:AmazonMSK_marketsignals#password}";')
    named = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"options": {
        **settings.kafka.options, "sasl.jaas.config": jaas}})})
    with mock_aws():
        boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="AmazonMSK_marketsignals", SecretString=json.dumps({"username": user.name, "password": user.password}))
        resolved = resolve_secrets(named)
    topic = settings.kafka.dead_letter_topic
    before = sum(kafka_client.end_offsets(resolved.kafka, [topic])[topic].values())
    producer = kafka_client.producer(resolved.kafka)
    try:
        producer.send(topic, key=b"probe", value=b"{}").get(timeout=60)
    finally:
        producer.close()
    assert sum(kafka_client.end_offsets(resolved.kafka, [topic])[topic].values()) == before + 1


def test_an_untrusted_broker_certificate_fails_clearly(secure, tmp_path):
    settings, user, _, _ = secure
    other_ca = security.generate_tls_files(tmp_path / "other")
    with pytest.raises(kafka_client.KafkaAuthError, match="not trusted"):
        kafka_client.producer(_with_user(settings, user, other_ca).kafka, bootstrap_timeout_ms=5000)


def test_client_options_translate_for_the_python_clients(tmp_path):
    user = ScramUser("app", "s3cret-password")
    opts = security.sasl_ssl_client_options(user, tmp_path / "ca.pem")
    from marketsignals.settings import KafkaSettings

    kwargs = kafka_client.client_kwargs(KafkaSettings(options=opts))
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("app", "s3cret-password")
    assert kwargs["ssl_cafile"] == str((tmp_path / "ca.pem").resolve())
    assert "s3cret-password" not in repr(user)


@pytest.mark.parametrize(("name", "password"), [("app\n", "s3cret-password"), ("app", "s3cret-password\n"),
                                                ("app", "s3cret pass"), ("", "s3cret-password")])
def test_a_scram_user_outside_the_safe_alphabet_is_refused(name, password):
    with pytest.raises(security.SecurityError, match="SCRAM"):
        ScramUser(name, password)


@pytest.mark.parametrize("generator", ["cryptography", "openssl"])
def test_the_local_ca_signs_a_certificate_python_and_java_accept(tmp_path, generator):
    make = security._generate_with_cryptography if generator == "cryptography" else security._generate_with_openssl
    tls = make(tmp_path, ("127.0.0.1", "localhost"), 2)
    assert oct(tls.server_keystore.stat().st_mode & 0o777) == "0o600"
    keystore = tls.server_keystore.read_text()
    assert keystore.index("PRIVATE KEY") < keystore.index("CERTIFICATE")  # Kafka's PEM keystore layout
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(tls.server_keystore))
    assert context.verify_mode == ssl.CERT_REQUIRED
    import socket
    import threading

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(
                raw, server_hostname="127.0.0.1") as client:
            client.sendall(b"x")
            assert client.getpeercert()["subjectAltName"]
        thread.join(10)
