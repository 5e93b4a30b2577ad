"""A real single-node Apache Kafka (KRaft broker+controller) run from the Maven Central jars.

``up`` formats the storage once, starts the JVM detached (logs to a file), waits until the broker
answers and creates the configured topics; ``down`` stops it (SIGTERM, then SIGKILL after a grace
period); ``status`` reports up/down, topics and end offsets. No Docker needed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from marketsignals.settings import BrokerSettings, KafkaSettings


class BrokerError(RuntimeError):
    """The local broker cannot be started, reached or stopped; the message says what to do."""


@dataclass(frozen=True)
class BrokerPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.root / "log4j2.properties"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pid(self) -> Path:
        return self.root / "broker.pid"

    @property
    def stdout(self) -> Path:
        return self.logs / "broker.out"

    @property
    def formatted_marker(self) -> Path:
        return self.data / "meta.properties"


def jars_dir(project_root: Path | None = None) -> Path:
    root = project_root or Path.cwd()
    return root / ".jars" / "kafka"


def java_executable() -> str:
    """The java binary (JAVA_HOME first), or a BrokerError saying how to get Java 17."""
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    java = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not java:
        raise BrokerError("java not found: install OpenJDK 17 (apt-get install openjdk-17-jre-headless) "
                          "or set JAVA_HOME")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)', out)
    if match and int(match.group(1)) < 17:
        raise BrokerError(f"Kafka 4 needs Java 17+, found {match.group(1)} at {java}: set JAVA_HOME to a JDK 17")
    return java


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class LocalBroker:
    """The project's local broker, identified by its data folder."""

    def __init__(self, broker: BrokerSettings, kafka: KafkaSettings, jars: Path | None = None,
                 extra_properties: dict[str, str] | None = None) -> None:
        self.broker = broker
        self.kafka = kafka
        self.paths = BrokerPaths(Path(broker.data_dir).resolve())
        self.jars = (jars or jars_dir()).resolve()
        # Listener overrides, e.g. a SASL_SSL listener (see marketsignals.security)
        self.extra_properties = extra_properties or {}

    # --- lifecycle ---------------------------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.paths.pid.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        # A pid file can outlive its process and the pid be reused: check it is our java.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return pid
        return pid if "kafka.Kafka" in cmdline and str(self.paths.config) in cmdline else None

    def is_up(self) -> bool:
        return self.pid() is not None and port_answers(self.broker.host, self.broker.port)

    def up(self, create_topics: bool = True, log=print) -> None:
        """Start the broker unless it already runs, wait until it answers, create the topics."""
        if self.is_up():
            log(f"kafka: already up on {self.broker.host}:{self.broker.port} (pid {self.pid()})")
        else:
            self._start(log)
        if create_topics:
            self.create_topics(log)

    def _start(self, log) -> None:
        if self.pid() is not None:  # started but not answering: a previous start still coming up
            self._wait_until_answers()
            return
        java = java_executable()
        if not self.jars.is_dir() or not any(self.jars.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"Kafka jars not found in {self.jars}: run `make jars` first")
        for port in (self.broker.port, self.broker.controller_port):
            if not port_is_free(self.broker.host, port):
                raise BrokerError(
                    f"port {port} on {self.broker.host} is already in use by another process: stop it, or "
                    f"choose free ports with --set broker.port=<n> --set broker.controller_port=<m>"
                )
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.data.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not self.paths.formatted_marker.exists():
            self._format_storage(java)
        classpath = f"{self.jars}/*"
        cmd = [
            java, f"-Xmx{self.broker.heap}", f"-Xms{self.broker.heap}", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.paths.log4j}",
            f"-Dkafka.logs.dir={self.paths.logs}", "-cp", classpath, "kafka.Kafka", str(self.paths.config),
        ]
        with open(self.paths.stdout, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.paths.root)
        self.paths.pid.write_text(str(proc.pid))
        log(f"kafka: starting broker pid {proc.pid} on {self.broker.host}:{self.broker.port} "
            f"(logs: {self.paths.logs})")
        self._wait_until_answers(proc)
        log(f"kafka: up on {self.broker.host}:{self.broker.port}")

    def _wait_until_answers(self, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + self.broker.start_timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = _tail(self.paths.stdout, 15)
                raise BrokerError(f"the broker exited with code {proc.returncode} while starting; "
                                  f"see {self.paths.stdout}:\n{tail}")
            if port_answers(self.broker.host, self.broker.port) and self._metadata_ready():
                return
            time.sleep(0.25)
        raise BrokerError(f"the broker did not answer on {self.broker.host}:{self.broker.port} within "
                          f"{self.broker.start_timeout_s:.0f}s; see {self.paths.stdout}")

    def _metadata_ready(self) -> bool:
        from marketsignals import kafka_client

        try:
            client = kafka_client.admin(self.kafka, request_timeout_ms=3000)
        except Exception:  # NoBrokersAvailable and friends while the broker boots
            return False
        try:
            client.list_topics()
            return True
        except Exception:
            return False
        finally:
            client.close()

    def _format_storage(self, java: str) -> None:
        cluster_id = "-"
        while cluster_id.startswith("-"):  # StorageTool would read "-xyz" as an option (1 id in 64)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        cmd = [java, "-cp", f"{self.jars}/*", f"-Dlog4j2.configurationFile={self.paths.log4j}",
               "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
               "-c", str(self.paths.config), *self.format_extra_args()]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(f"formatting Kafka storage in {self.paths.data} failed: "
                              f"{(result.stdout + result.stderr).strip()[-800:]}")

    def format_extra_args(self) -> list[str]:
        """Extra StorageTool arguments (SCRAM users are seeded here by secured brokers)."""
        return []

    def _write_config(self) -> None:
        host, port, cport = self.broker.host, self.broker.port, self.broker.controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{host}:{cport}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.paths.data),
            "num.partitions": str(self.kafka.partitions),
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.retention.hours": "168",
            "log.segment.bytes": str(256 * 1024 * 1024),
        }
        props.update(self.extra_properties)
        self.paths.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.paths.log4j.write_text(
            "status = warn\n"
            "appender.file.type = RollingFile\n"
            "appender.file.name = file\n"
            f"appender.file.fileName = {self.paths.logs}/server.log\n"
            f"appender.file.filePattern = {self.paths.logs}/server.log.%i\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "appender.file.policies.type = Policies\n"
            "appender.file.policies.size.type = SizeBasedTriggeringPolicy\n"
            "appender.file.policies.size.size = 50MB\n"
            "appender.file.strategy.type = DefaultRolloverStrategy\n"
            "appender.file.strategy.max = 3\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = file\n"
        )

    def down(self, grace_s: float = 30.0, log=print) -> None:
        """Stop the broker: SIGTERM (controlled shutdown), SIGKILL after ``grace_s``."""
        pid = self.pid()
        if pid is None:
            log("kafka: not running")
            self.paths.pid.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            log(f"kafka: pid {pid} did not stop within {grace_s:.0f}s, killing it")
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self.paths.pid.unlink(missing_ok=True)
        log(f"kafka: stopped (pid {pid})")

    def reset(self, log=print) -> None:
        """Stop the broker and delete its data (all topics)."""
        self.down(log=log)
        shutil.rmtree(self.paths.root, ignore_errors=True)
        log(f"kafka: removed {self.paths.root}")

    # --- topics ------------------------------------------------------------------------------------
    def create_topics(self, log=print, topics: list[str] | None = None) -> list[str]:
        """Create the configured topics that do not exist yet; return the ones created."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        from marketsignals import kafka_client

        wanted = topics or self.kafka.all_topics
        client = kafka_client.admin(self.kafka)
        try:
            existing = set(client.list_topics())
            missing = [t for t in wanted if t not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    client.create_topics([NewTopic(t, self.kafka.partitions, 1) for t in missing])
                log(f"kafka: created topics {', '.join(missing)} ({self.kafka.partitions} partitions)")
            return missing
        finally:
            client.close()

    def status(self) -> dict:
        """up/down, pid, address, and each topic's end offsets."""
        info: dict = {"address": f"{self.broker.host}:{self.broker.port}", "pid": self.pid(),
                      "up": self.is_up(), "data_dir": str(self.paths.root)}
        if info["up"]:
            from marketsignals import kafka_client

            client = kafka_client.admin(self.kafka)
            try:
                names = sorted(t for t in client.list_topics() if not t.startswith("__"))
            finally:
                client.close()
            info["topics"] = kafka_client.end_offsets(self.kafka, names)
        return info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0); treat it as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return state != "Z"
    except OSError:
        return False


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
