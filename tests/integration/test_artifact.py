"""The artifact runs: build dist/, lay it out the way a cluster node sees it, and spark-submit the
streaming entry point with the very arguments of the rendered EMR step, against the local broker,
until signals come out.

Only two things differ from the step on EMR, both forced by running without YARN: the master
(``local[2]`` instead of ``yarn`` in cluster mode) and where the files come from (the unpacked dist/
instead of ``s3://``). What YARN does for the driver's container is done by hand: the environment
archive is unpacked as ``environment/`` and the settings file put next to it, in the driver's working
directory, and PYSPARK_PYTHON points into it as the step's ``spark.yarn.appMasterEnv`` does.

On the Spark line of the venv it runs in: emr-spark-8.0.0's artifact on Spark 4.0 (CI); run from a
Spark 3.5 venv with ``MARKETSIGNALS__SPARK__JARS_DIR`` at the Scala 2.12 jars (README, emr-7.x), it
builds emr-7.x's artifact from those jars and submits it with that venv's spark-submit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pyspark
import pytest

from marketsignals import feed, kafka_client
from marketsignals.emr import api_requests, package
from marketsignals.emr.api_requests import RenderContext
from marketsignals.emr.artifact import ENV_ALIAS, ENV_ARCHIVE, ENV_PYTHON, Artifact
from marketsignals.emr.deployment import load_profile
from support import JARS_DIR_ENV

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SIGNALS_DEADLINE_S = 300.0
SPARK_3 = pyspark.__version__.startswith("3.")
EMR7_RELEASE = "emr-7.12.0"  # Spark 3.5.6


def _node_python_prefix() -> str:
    """The prefix of a python3.11 on this machine, standing in for /usr/bin/python3.11 on EMR nodes."""
    for prefix in ("/usr", sys.base_prefix):
        if Path(prefix, "bin", f"python{package.TARGET_PYTHON}").exists():
            return prefix
    pytest.skip(f"no python{package.TARGET_PYTHON} interpreter to run the environment with")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """`make package`, into a temporary dist/."""
    dist = tmp_path_factory.mktemp("package") / "dist"
    jars = os.environ.get(JARS_DIR_ENV)  # the Spark line's jars, as the session's (tests/conftest.py)
    jar_dirs = [ROOT / jars, ROOT / ".jars/spark-aws"] if jars else None  # and the MSK IAM jar, as by default
    package.build(ROOT, dist, python_prefix=_node_python_prefix(), jar_dirs=jar_dirs)
    return Artifact.load(dist)


def local_spark_submit(step_args: list[str], base_uri: str, artifact_dir: Path) -> list[str]:
    """The step's command line with YARN cluster mode -> local master and s3:// -> the local copy."""
    assert step_args[:5] == ["spark-submit", "--deploy-mode", "cluster", "--master", "yarn"]
    spark_submit = str(Path(sys.executable).parent / "spark-submit")
    rest = [arg.replace(base_uri, str(artifact_dir)) for arg in step_args[5:]]
    assert not [arg for arg in rest if "s3://" in arg and "=s3://" not in arg], "an s3:// file was not mapped"
    return [spark_submit, "--master", "local[2]", "--deploy-mode", "client", *rest]


def test_streaming_entry_point_runs_from_the_artifact_alone(
    built: Artifact, kafka_broker: Any, tmp_path: Path
) -> None:
    assert built.root is not None
    delta_jar = next(j for j in built.jars if Path(j).name.startswith("delta-spark_"))  # Python, JVM: one Delta
    assert delta_jar.endswith(f"-{built.manifest['packages']['delta-spark']}.jar"), delta_jar
    node = tmp_path / "node"
    artifact_dir = node / "artifact"  # what `aws s3 cp --recursive` of the uploaded build gives
    shutil.copytree(built.root, artifact_dir)
    container = node / "container"  # the driver's working directory in its YARN container
    (container / ENV_ALIAS).mkdir(parents=True)
    with tarfile.open(artifact_dir / ENV_ARCHIVE) as archive:
        archive.extractall(container / ENV_ALIAS, filter="fully_trusted")  # keeps bin/python -> /usr/...
    shutil.copy(artifact_dir / built.conf_file, container / Path(built.conf_file).name)

    # The deployment's app settings, pointed at the local broker (fresh topics) instead of MSK and S3.
    local = kafka_broker.isolated("artifact")
    app_settings = {
        "kafka.bootstrap_servers": local.kafka.bootstrap_servers,
        "kafka.topics": f"[{', '.join(local.kafka.topics)}]",
        "kafka.signals_topic": local.kafka.signals_topic,
        "kafka.dead_letter_topic": local.kafka.dead_letter_topic,
        "kafka.options": "{}",
        "kafka.starting_offsets": "earliest",
        "stream.checkpoint": local.stream.checkpoint,
        "stream.audit_table": local.stream.audit_table,
        "stream.metrics_path": str(local.stream.metrics_path),
        "spark.shuffle_partitions": "2",
    }
    overrides = [
        "app_settings={}",
        *(f"app_settings.{k}={v}" for k, v in app_settings.items()),
        "s3.artifact_bucket=artifact-bucket",
        "s3.data_bucket=data-bucket",
        *([f"ec2.release_label={EMR7_RELEASE}"] if SPARK_3 else []),
    ]
    profile = load_profile(ROOT / "conf" / "emr" / "deploy.yaml", overrides)
    ctx = RenderContext(profile.for_region(profile.regions[0]), built)
    step = api_requests.job_flow_step(ctx, "stream")
    argv = local_spark_submit(step["HadoopJarStep"]["Args"], ctx.location.base_uri, artifact_dir)
    assert f"{artifact_dir}/{ENV_ARCHIVE}#{ENV_ALIAS}" in argv

    settings = ctx.app_settings  # what the job builds from emr.yaml and the step's --set arguments
    assert settings.kafka.topics == local.kafka.topics
    assert settings.stream.trigger.startswith("processingTime")  # runs as on EMR, until stopped
    kafka_broker.produce(
        settings,
        feed.FeedOptions(
            symbols=feed.symbol_names(5), rate=200.0, count=3000, topics=tuple(settings.kafka.topics)
        ),
    )

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MARKETSIGNALS__")},  # none on a node
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "PYSPARK_PYTHON": ENV_PYTHON,
        "PYSPARK_DRIVER_PYTHON": ENV_PYTHON,
    }
    log = tmp_path / "spark-submit.log"
    with log.open("w") as out:
        job = subprocess.Popen(
            argv, cwd=container, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    consumer = kafka_client.consumer(settings.kafka, settings.kafka.signals_topic, consumer_timeout_ms=2000)
    signals: list[bytes] = []
    try:
        deadline = time.monotonic() + SIGNALS_DEADLINE_S
        while not signals and time.monotonic() < deadline and job.poll() is None:
            signals += [m.value for m in consumer]
        tail = "\n".join(log.read_text().splitlines()[-40:])
        assert job.poll() is None, f"spark-submit exited with {job.returncode}:\n{tail}"
        assert signals, (
            f"no signal on {settings.kafka.signals_topic} within {SIGNALS_DEADLINE_S:.0f}s:\n{tail}"
        )
    finally:
        consumer.close()
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)  # the job stops cleanly on SIGTERM
            try:
                job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
    assert b'"signal_id"' in signals[0]
    assert "marketsignals stream: warmed up in" in log.read_text()  # emr.yaml's live stream warms up first
