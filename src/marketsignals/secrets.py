"""Setting values from AWS Secrets Manager, resolved once at startup (the EMR profiles' Kafka credentials).

A string setting may name a secret instead of holding it:

    secretsmanager:<secret-id>                 the whole SecretString (or SecretBinary as UTF-8)
    secretsmanager:<secret-id>#<key>           one key of a JSON secret
    ...${secretsmanager:<secret-id>#<key>}...  the same, in place inside a longer value

``<secret-id>`` is a secret name or its full ARN (the ARN also gives the region; a bare name uses the
default region of boto3: AWS_REGION / AWS_DEFAULT_REGION). An Amazon MSK SCRAM secret holds
``{"username": ..., "password": ...}``, so the job's SCRAM login reads:

    kafka:
      options:
        sasl.jaas.config: >-
          org.apache.kafka.common.security.scram.ScramLoginModule required
          username="${secretsmanager:AmazonMSK_marketsignals#username}"
          password="${secretsmanager:AmazonMSK_marketsignals#password}";

Each secret is read once (``secretsmanager:GetSecretValue``: the only permission needed, see
conf/emr/iam/msk-scram-secret.json). Nothing here logs or prints a value: errors name the setting and
the secret id, never what the secret holds. The resolved values live only in the returned Settings
and reach Spark as ``kafka.*`` source/sink options, which Spark redacts (session.BASE_CONF).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from marketsignals.settings import Settings, SettingsError

PREFIX = "secretsmanager:"
# ${secretsmanager:<id>[#<key>]}; ids are names (letters, digits, /_+=.@-) or ARNs (add ':')
_PLACEHOLDER = re.compile(r"\$\{secretsmanager:([A-Za-z0-9/_+=.@:-]+)(?:#([^}]+))?\}")


class SecretResolutionError(SettingsError):
    """A secret a setting names cannot be read; says which setting, which secret and what to do."""


SecretReader = Callable[[str], str]  # secret id -> SecretString


def references(settings: Settings) -> list[str]:
    """The dotted names of the settings that name a secret (for a startup message; no values)."""
    found: list[str] = []
    _walk(settings.model_dump(), (), lambda path, value: found.append(".".join(path)) or value)
    return found


def resolve_secrets(settings: Settings, reader: SecretReader | None = None) -> Settings:
    """``settings`` with every secret reference replaced by the secret's value. Without a reference it
    returns ``settings`` itself and makes no AWS call. ``reader`` (for tests) maps a secret id to its
    SecretString; by default a boto3 Secrets Manager client per region reads it."""
    data = settings.model_dump()
    if not _has_reference(data):
        return settings
    cache: dict[str, str] = {}
    read = reader or _boto3_reader()

    def secret(path: tuple[str, ...], secret_id: str, key: str | None) -> str:
        if secret_id not in cache:
            cache[secret_id] = _read(read, secret_id, path)
        return _pick(cache[secret_id], secret_id, key, path)

    def substitute(path: tuple[str, ...], value: str) -> str:
        if value.startswith(PREFIX):
            secret_id, _, key = value[len(PREFIX):].partition("#")
            return secret(path, secret_id.strip(), key.strip() or None)
        return _PLACEHOLDER.sub(lambda m: secret(path, m.group(1), m.group(2)), value)

    resolved = _walk(data, (), substitute)
    try:
        return Settings.model_validate(resolved)
    except ValidationError as exc:
        # pydantic would echo the offending (secret) input: name the keys only
        keys = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors())
        raise SecretResolutionError(f"a secret's value does not fit the setting {keys}: check what the secret "
                                    "holds (it must be the setting's plain value)") from None


def _has_reference(node: Any) -> bool:
    if isinstance(node, str):
        return node.startswith(PREFIX) or "${" + PREFIX in node
    if isinstance(node, dict):
        return any(_has_reference(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_reference(v) for v in node)
    return False


def _walk(node: Any, path: tuple[str, ...], fn: Callable[[tuple[str, ...], str], str]) -> Any:
    if isinstance(node, dict):
        return {k: _walk(v, (*path, str(k)), fn) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(v, (*path, str(i)), fn) for i, v in enumerate(node)]
    if isinstance(node, str) and _has_reference(node):
        return fn(path, node)
    return node


def _pick(value: str, secret_id: str, key: str | None, path: tuple[str, ...]) -> str:
    if key is None:
        return value
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise SecretResolutionError(f"{'.'.join(path)}: secret {secret_id!r} is not a JSON object, so it has no key "
                                    f"{key!r}: drop '#{key}' or store the secret as JSON")
    if key not in doc:
        raise SecretResolutionError(f"{'.'.join(path)}: secret {secret_id!r} has no key {key!r} "
                                    f"(it has: {', '.join(sorted(doc)) or 'none'})")
    return str(doc[key])


def _read(read: SecretReader, secret_id: str, path: tuple[str, ...]) -> str:
    try:
        return read(secret_id)
    except SecretResolutionError:
        raise
    except Exception as exc:  # botocore's errors: turned into one line without any value
        raise SecretResolutionError(f"{'.'.join(path)}: cannot read secret {secret_id!r} from AWS Secrets "
                                    f"Manager: {_explain(exc)}") from None


def _explain(exc: Exception) -> str:
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = (response.get("Error") or {}).get("Code", "")
    name = type(exc).__name__
    if code == "ResourceNotFoundException":
        return "no such secret in this account and region (create it, or give its full ARN)"
    if code in ("AccessDeniedException", "AccessDenied"):
        return ("access denied: the job's role needs secretsmanager:GetSecretValue on this secret, and kms:Decrypt "
                "on its key (conf/emr/iam/msk-scram-secret.json)")
    if code == "DecryptionFailure":
        return "the secret's KMS key refused to decrypt it: allow kms:Decrypt for the job's role"
    if code == "InvalidRequestException":
        return "the secret cannot be read now (scheduled for deletion?)"
    if name == "NoRegionError":
        return "no AWS region: give the secret's full ARN or set AWS_REGION"
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return "no AWS credentials (on EMR the job role provides them; locally set AWS_PROFILE)"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
        return "Secrets Manager is unreachable (private subnet without a secretsmanager VPC endpoint or NAT?)"
    return f"{name}{' ' + code if code else ''}"


@contextmanager
def _quiet_wire_logs() -> Iterator[None]:
    """botocore logs every response body at DEBUG (a GetSecretValue body is the secret): with DEBUG
    logging on (e.g. a --verbose run), mute those loggers for the one call."""
    loggers = [logging.getLogger(name) for name in ("botocore.parsers", "botocore.endpoint", "botocore.hooks")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.INFO))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _boto3_reader() -> SecretReader:
    import boto3

    clients: dict[str | None, Any] = {}

    def read(secret_id: str) -> str:
        region = secret_id.split(":")[3] if secret_id.startswith("arn:") and secret_id.count(":") >= 6 else None
        region = region or os.environ.get("AWS_REGION") or None
        if region not in clients:
            clients[region] = boto3.client("secretsmanager", region_name=region)
        with _quiet_wire_logs():
            response = clients[region].get_secret_value(SecretId=secret_id)
        if response.get("SecretString") is not None:
            return response["SecretString"]
        return bytes(response["SecretBinary"]).decode("utf-8")

    return read
