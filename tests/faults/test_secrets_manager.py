"""Kafka credentials from AWS Secrets Manager (issue 7), against moto: resolved once at startup, each
secret read once, errors that name the setting and the secret but never a value, nothing logged."""

from __future__ import annotations

import json
import logging

import boto3
import pytest
from moto import mock_aws

from marketsignals import kafka_client
from marketsignals.secrets import SecretResolutionError, references, resolve_secrets
from marketsignals.settings import Settings, SettingsError, load_settings

pytestmark = pytest.mark.faults

PASSWORD = "Zq8-very-secret-pass-91c"
SCRAM_JAAS = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
              'username="${secretsmanager:AmazonMSK_marketsignals#username}" '
              'password="${secretsmanager:AmazonMSK_marketsignals#password}";')


@pytest.fixture
def aws(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_REGION": "us-east-1",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        client.create_secret(Name="AmazonMSK_marketsignals",
                             SecretString=json.dumps({"username": "marketsignals", "password": PASSWORD}))
        yield client


def _settings(**options: str) -> Settings:
    base = load_settings("local", [], env={})
    return base.model_copy(update={"kafka": base.kafka.model_copy(update={"options": {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", **options}})})


def test_a_scram_login_is_assembled_from_an_msk_secret(aws, caplog, capsys):
    caplog.set_level(logging.DEBUG)  # even with DEBUG logging (botocore logs response bodies there)
    settings = _settings(**{"sasl.jaas.config": SCRAM_JAAS})
    assert references(settings) == ["kafka.options.sasl.jaas.config"]
    resolved = resolve_secrets(settings)
    jaas = resolved.kafka.options["sasl.jaas.config"]
    assert f'username="marketsignals" password="{PASSWORD}";' in jaas
    kwargs = kafka_client.client_kwargs(resolved.kafka)
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("marketsignals", PASSWORD)
    assert settings.kafka.options["sasl.jaas.config"] == SCRAM_JAAS  # the input is left alone
    out = capsys.readouterr()
    assert PASSWORD not in caplog.text + out.out + out.err


def test_a_whole_value_reference_by_arn_uses_the_arns_region(aws):
    other = boto3.client("secretsmanager", region_name="eu-west-1")
    arn = other.create_secret(Name="marketsignals/jaas", SecretString="the-whole-jaas-line")["ARN"]
    resolved = resolve_secrets(_settings(**{"sasl.jaas.config": f"secretsmanager:{arn}"}))
    assert resolved.kafka.options["sasl.jaas.config"] == "the-whole-jaas-line"


def test_each_secret_is_read_once_and_no_reference_means_no_call():
    calls: list[str] = []

    def reader(secret_id: str) -> str:
        calls.append(secret_id)
        return json.dumps({"username": "u", "password": "p"})

    username = "${secretsmanager:AmazonMSK_marketsignals#username}"
    resolve_secrets(_settings(**{"sasl.jaas.config": SCRAM_JAAS, "extra": username}), reader=reader)
    assert calls == ["AmazonMSK_marketsignals"]

    def must_not_be_called(secret_id: str) -> str:
        raise AssertionError("no secret was referenced")

    plain = _settings(**{"sasl.jaas.config": "inline"})
    assert resolve_secrets(plain, reader=must_not_be_called) is plain


@pytest.mark.parametrize(("value", "expected"), [
    ("secretsmanager:no-such-secret", "no such secret"),
    ("${secretsmanager:AmazonMSK_marketsignals#token}", "has no key 'token' (it has: password, username)"),
    ("secretsmanager:plain-text#password", "is not a JSON object"),
])
def test_errors_name_the_setting_and_the_secret_never_a_value(aws, caplog, value, expected):
    aws.create_secret(Name="plain-text", SecretString=PASSWORD)
    with pytest.raises(SecretResolutionError) as error:
        resolve_secrets(_settings(**{"sasl.jaas.config": value}))
    message = str(error.value)
    assert message.startswith("kafka.options.sasl.jaas.config: ")
    assert expected in message
    assert PASSWORD not in message + caplog.text
    assert isinstance(error.value, SettingsError)  # the CLI prints it as one line, exit code 2


def test_access_denied_says_which_permission_is_missing():
    from botocore.exceptions import ClientError

    def denied(secret_id: str) -> str:
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "GetSecretValue")

    with pytest.raises(SecretResolutionError, match="secretsmanager:GetSecretValue"):
        resolve_secrets(_settings(**{"sasl.jaas.config": "secretsmanager:AmazonMSK_marketsignals"}), reader=denied)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic notices the str in an int field, as intended
def test_a_secret_that_does_not_fit_its_setting_is_not_echoed(aws):
    aws.create_secret(Name="port", SecretString=PASSWORD)
    base = load_settings("local", [], env={})
    bad = Settings.model_construct(**{**dict(base), "broker": base.broker.model_construct(
        **{**dict(base.broker), "port": "secretsmanager:port"})})
    with pytest.raises(SecretResolutionError) as error:
        resolve_secrets(bad)
    assert "broker.port" in str(error.value) and PASSWORD not in str(error.value)


def test_the_security_examples_are_valid_settings_and_the_msk_one_resolves():
    import yaml

    from faults.harness import ROOT
    from marketsignals.settings import KafkaSettings

    examples = yaml.safe_load((ROOT / "conf" / "kafka-security.example.yaml").read_text())
    parsed = {name: KafkaSettings.model_validate(example["kafka"]) for name, example in examples.items()}
    assert {"local_scram", "msk_scram_secrets_manager", "mtls", "msk_iam"} <= set(parsed)
    base = load_settings("local", [], env={})
    msk = base.model_copy(update={"kafka": parsed["msk_scram_secrets_manager"]})
    resolved = resolve_secrets(msk, reader=lambda _: json.dumps({"username": "u1", "password": "p1"}))
    kwargs = kafka_client.client_kwargs(resolved.kafka)
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("u1", "p1")
