"""Transport security for Kafka: SASL_SSL with SCRAM-SHA-256 on the local broker, the matching client
options for the job and the Python clients, and a throwaway certificate authority for local runs and tests.

Production clusters (Amazon MSK) bring their own certificates and users; there this module only builds
the client options (:func:`sasl_ssl_client_options`), with the password taken from AWS Secrets Manager
(:mod:`marketsignals.secrets`). The local broker gets the same listener shape so that the job, the feed
and the tests connect exactly as they would to a secured cluster:

    listeners     SASL_SSL://host:port (clients and inter-broker), CONTROLLER://host:cport (KRaft, local)
    TLS           PEM keystore (key + chain) and PEM truststore: no JKS, no keytool
    users         seeded at format time with ``StorageTool format --add-scram`` (no broker round trip)

Nothing here prints or logs a password; :class:`ScramUser` hides it from ``repr``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets as _random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from marketsignals.local_broker import LocalBroker
from marketsignals.settings import BrokerSettings, KafkaSettings

SCRAM_MECHANISM = "SCRAM-SHA-256"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
LISTENER = "SASL_SSL"
# StorageTool parses "[name=...,password=...]": keep generated and accepted passwords to a safe alphabet.
# \Z, not $: Python's $ also matches before a final line break, which would let "name\n" through.
_SAFE_PASSWORD = re.compile(r"^[A-Za-z0-9_\-.~]{8,128}\Z")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_\-.]{1,64}\Z")


class SecurityError(RuntimeError):
    """Certificates or users cannot be prepared; the message says what to do."""


@dataclass(frozen=True)
class ScramUser:
    """A SCRAM user; the password never shows in ``repr`` (tracebacks, logs, pytest output)."""

    name: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not _SAFE_NAME.match(self.name):
            raise SecurityError(f"SCRAM user name {self.name!r}: use 1-64 of A-Z a-z 0-9 _ - .")
        if not _SAFE_PASSWORD.match(self.password):
            raise SecurityError(f"SCRAM password of {self.name!r}: use 8-128 of A-Z a-z 0-9 _ - . ~")

    @classmethod
    def generate(cls, name: str) -> ScramUser:
        """A user with a fresh random password (32 URL-safe characters)."""
        return cls(name, _random.token_urlsafe(24))


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a local certificate authority and one server certificate it signed."""

    ca_cert: Path  # the trust anchor: clients' ssl.truststore.location (type PEM) / ssl_cafile
    server_keystore: Path  # the broker's private key followed by its certificate chain


def scram_jaas_config(user: ScramUser) -> str:
    """The ``sasl.jaas.config`` value of a SCRAM client (contains the password: a secret)."""
    return f'{SCRAM_LOGIN_MODULE} required username="{user.name}" password="{user.password}";'


def sasl_ssl_client_options(user: ScramUser, ca_cert: str | Path | None = None) -> dict[str, str]:
    """Kafka client options (``kafka.options`` in settings) for SASL_SSL + SCRAM-SHA-256.

    ``ca_cert``: a PEM file with the CA that signed the brokers' certificates; None trusts the JVM's
    and Python's default CAs (Amazon MSK's certificates chain to public roots)."""
    opts = {
        "security.protocol": LISTENER,
        "sasl.mechanism": SCRAM_MECHANISM,
        "sasl.jaas.config": scram_jaas_config(user),
    }
    if ca_cert is not None:
        opts["ssl.truststore.type"] = "PEM"
        opts["ssl.truststore.location"] = str(Path(ca_cert).resolve())
    return opts


def sasl_ssl_broker_properties(broker: BrokerSettings, tls: TlsFiles, inter_broker: ScramUser) -> dict[str, str]:
    """server.properties entries that replace the PLAINTEXT listener by SASL_SSL (SCRAM-SHA-256)."""
    host, port, cport = broker.host, broker.port, broker.controller_port
    return {
        "listeners": f"{LISTENER}://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"{LISTENER}://{host}:{port}",
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{LISTENER}:{LISTENER}",
        "inter.broker.listener.name": LISTENER,
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        f"listener.name.{LISTENER.lower()}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": scram_jaas_config(inter_broker),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls.server_keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.ca_cert),
        "ssl.client.auth": "none",
        "ssl.endpoint.identification.algorithm": "https",
    }


class SecureLocalBroker(LocalBroker):
    """The local broker with only a SASL_SSL listener for clients (and itself), SCRAM users seeded at
    format time. ``kafka`` must carry client options that authenticate (see :func:`sasl_ssl_client_options`):
    the broker uses them to wait until it answers and to create topics."""

    def __init__(self, broker: BrokerSettings, kafka: KafkaSettings, tls: TlsFiles, users: list[ScramUser],
                 inter_broker: ScramUser | None = None, jars: Path | None = None) -> None:
        self.inter_broker = inter_broker or ScramUser.generate("broker")
        self.users = [*users, self.inter_broker]
        super().__init__(broker, kafka, jars=jars,
                         extra_properties=sasl_ssl_broker_properties(broker, tls, self.inter_broker))

    def format_extra_args(self) -> list[str]:
        # SCRAM credentials live in the cluster metadata; seeding them at format time needs no running
        # broker and no admin call. (The passwords pass through this one short-lived command line.)
        args: list[str] = []
        for user in self.users:
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user.name},password={user.password}]"]
        return args

    def _write_config(self) -> None:
        super()._write_config()
        os.chmod(self.paths.config, 0o600)  # it holds the inter-broker password


# --- a throwaway certificate authority ----------------------------------------------------------------
def generate_tls_files(folder: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                       days: int = 7) -> TlsFiles:
    """A new self-signed CA and a server certificate for ``hosts`` (IPs and DNS names), as PEM files in
    ``folder`` (private keys mode 0600). Uses the ``cryptography`` package, or the ``openssl`` command
    when the package is not installed. For local brokers and tests only: MSK brings its own."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _generate_with_openssl(out, hosts, days)
    return _generate_with_cryptography(out, hosts, days)


def _generate_with_cryptography(out: Path, hosts: tuple[str, ...], days: int) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "marketsignals local CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path = out / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    # Kafka's PEM keystore: an unencrypted PKCS#8 key, then the chain (server, CA).
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    keystore = out / "server-keystore.pem"
    _write_private(keystore, key_pem + cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    return TlsFiles(ca_cert=ca_path, server_keystore=keystore)


def _generate_with_openssl(out: Path, hosts: tuple[str, ...], days: int) -> TlsFiles:
    openssl = shutil.which("openssl")
    if not openssl:
        raise SecurityError("neither the Python package 'cryptography' nor the 'openssl' command is available: "
                            "pip install cryptography (or apt-get install openssl)")
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        t = Path(tmp)

        def run(*args: str) -> None:
            result = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise SecurityError(f"openssl {args[0]} failed: {result.stderr.strip()[-400:]}")

        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(t / "ca.key"))
        run("req", "-x509", "-new", "-key", str(t / "ca.key"), "-sha256", "-days", str(days), "-subj",
            "/CN=marketsignals local CA", "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", "-out", str(t / "ca.pem"))
        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(t / "server.ec"))
        run("pkcs8", "-topk8", "-nocrypt", "-in", str(t / "server.ec"), "-out", str(t / "server.key"))
        run("req", "-new", "-key", str(t / "server.key"), "-subj", f"/CN={hosts[0]}", "-out", str(t / "server.csr"))
        (t / "ext.cnf").write_text(f"basicConstraints=critical,CA:FALSE\nsubjectAltName={san}\n"
                                   "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n")
        run("x509", "-req", "-in", str(t / "server.csr"), "-CA", str(t / "ca.pem"), "-CAkey", str(t / "ca.key"),
            "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", str(t / "ext.cnf"),
            "-out", str(t / "server.pem"))
        ca_path = out / "ca.pem"
        ca_path.write_bytes((t / "ca.pem").read_bytes())
        keystore = out / "server-keystore.pem"
        _write_private(keystore, (t / "server.key").read_bytes() + (t / "server.pem").read_bytes()
                       + (t / "ca.pem").read_bytes())
    return TlsFiles(ca_cert=ca_path, server_keystore=keystore)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
