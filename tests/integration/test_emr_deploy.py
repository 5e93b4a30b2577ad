"""The `marketsignals emr` deploy flow end to end against a moto server on loopback (no AWS account).

moto runs as its own process with request recording on, so the tests assert on what the API really
received (the JSON bodies), not only on what the client meant to send. Credentials are fake and every
client is pointed at the moto endpoint: nothing can reach AWS.

moto's EMR Serverless / EKS accept only ``emr-X.Y.0`` release labels, so those two run the emr-7.12.0
variant here, from a second artifact with the Scala 2.12 jars (an artifact serves one Spark line);
EMR on EC2 runs the default emr-spark-8.0.0 from the Scala 2.13 artifact.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from marketsignals.cli import main
from marketsignals.emr import api_requests, package
from marketsignals.emr.api_requests import RenderContext
from marketsignals.emr.artifact import ENV_ARCHIVE, MANIFEST, Artifact
from marketsignals.emr.deployment import load_profile

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "conf" / "emr" / "deploy.yaml"
REGIONS = ("us-east-1", "eu-west-1")
BUCKETS = {"us-east-1": ("acme-artifacts", "acme-data"), "eu-west-1": ("acme-artifacts-eu", "acme-data-eu")}
# 123456789012: moto's account (it refuses to pass a role of another account).
KMS = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DEPLOY_SET = (
    f"regions=[{', '.join(REGIONS)}]",
    "s3.artifact_bucket=acme-artifacts",
    "s3.data_bucket=acme-data",
    "region_overrides.eu-west-1.s3.artifact_bucket=acme-artifacts-eu",
    "region_overrides.eu-west-1.s3.data_bucket=acme-data-eu",
    "app_settings.kafka.bootstrap_servers=b-1.ticks.abc123.c2.kafka.us-east-1.amazonaws.com:9098",
    f"security.kms_key_arn={KMS}",
    "ec2.service_role=EMR_DefaultRole_V2",
    "ec2.instance_profile=EMR_EC2_DefaultRole",
    "ec2.ec2_key_name=ops",
    "ec2.subnet_ids=[subnet-0a1b2c3d4e5f60001]",
    "ec2.emr_managed_master_security_group=sg-0a1b2c3d4e5f60001",
    "ec2.emr_managed_slave_security_group=sg-0a1b2c3d4e5f60002",
    "ec2.service_access_security_group=sg-0a1b2c3d4e5f60003",
    "serverless.release_label=emr-7.12.0",
    "serverless.execution_role_arn=arn:aws:iam::123456789012:role/marketsignals-job",
    "serverless.subnet_ids=[subnet-0a1b2c3d4e5f60001]",
    "serverless.security_group_ids=[sg-0a1b2c3d4e5f60004]",
    "eks.release_label=emr-7.12.0-latest",
    "eks.cluster_name=analytics",
    "eks.execution_role_arn=arn:aws:iam::123456789012:role/marketsignals-eks-job",
)
JARS = (
    "spark-sql-kafka-0-10_2.13-4.0.2.jar",
    "delta-spark_2.13-4.0.0.jar",
    "kafka-clients-3.9.1.jar",
    "aws-msk-iam-auth-2.3.2-all.jar",
)
JARS_EMR7 = (
    "spark-sql-kafka-0-10_2.12-3.5.6.jar",
    "delta-spark_2.12-3.3.2.jar",
    "kafka-clients-3.4.1.jar",
    "aws-msk-iam-auth-2.3.2-all.jar",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake keys, and no shared config or profile that could point a client at a real account."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


class MotoServer:
    """A moto server process on 127.0.0.1 that records every request it receives."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.recording = workdir / "moto-recording.jsonl"
        env = {**os.environ, "MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "moto.log").open("w"),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {(workdir / 'moto.log').read_text()}") from None
                time.sleep(0.1)

    def received(self, operation: str) -> list[Any]:
        """Bodies (JSON ones parsed) of the requests received for ``operation``: an X-Amz-Target
        operation name, or 'METHOD /path' prefix for the REST APIs (S3, Serverless, EKS)."""
        bodies = []
        for line in self.recording.read_text().splitlines() if self.recording.exists() else []:
            entry = json.loads(line)
            target = entry["headers"].get("X-Amz-Target", "")
            path = entry["url"].split("://", 1)[-1].split("/", 1)[-1].split("?")[0]
            if target.endswith(f".{operation}") or f"{entry['method']} /{path}".startswith(operation):
                raw = base64.b64decode(entry["body"]) if entry.get("body_encoded") else entry["body"]
                is_json = "json" in entry["headers"].get("Content-Type", "")
                bodies.append((json.loads(raw) if raw else {}) if is_json else raw)
        return bodies

    def client(self, service: str, region: str = REGIONS[0]) -> Any:
        return boto3.session.Session().client(service, region_name=region, endpoint_url=self.endpoint)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


def fake_dist(work: Path, jars: tuple[str, ...]) -> Artifact:
    """A small dist/ written by the real packaging code, with a stub environment archive."""
    jar_dir, dist = work / "jars", work / "dist"
    jar_dir.mkdir()
    for jar in jars:
        (jar_dir / jar).write_bytes(f"fake {jar}".encode())
    package.copy_payload(ROOT, dist, [jar_dir], app_profile="emr")
    (dist / "marketsignals-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    (dist / ENV_ARCHIVE).write_bytes(b"env")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package.write_manifest(dist, pyproject, {}, package.TARGET_PLATFORMS, "/usr", "emr")
    return Artifact.load(dist)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return fake_dist(tmp_path_factory.mktemp("dist"), JARS)


@pytest.fixture(scope="module")
def artifact_emr7(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return fake_dist(tmp_path_factory.mktemp("dist-emr7"), JARS_EMR7)


def emr(moto: MotoServer, artifact: Artifact, *args: str) -> int:
    deploy_sets = [a for item in DEPLOY_SET for a in ("--deploy-set", item)]
    return main(
        [
            "emr",
            *args,
            "--deploy",
            str(PROFILE),
            *deploy_sets,
            "--dist",
            str(artifact.root),
            "--endpoint-url",
            moto.endpoint,
        ]
    )


def emr_status(moto: MotoServer, *args: str) -> int:
    return main(
        [
            "emr",
            "status",
            "--region",
            "us-east-1",
            "--endpoint-url",
            moto.endpoint,
            "--deploy",
            str(PROFILE),
            "--timeout",
            "10",
            "--interval",
            "0.2",
            *args,
        ]
    )


def without_token(body: dict[str, Any]) -> dict[str, Any]:
    """A request body less the idempotency token boto3 adds to it."""
    return {k: v for k, v in body.items() if k != "clientToken"}


def context(artifact: Artifact, region: str = REGIONS[0]) -> RenderContext:
    profile = load_profile(PROFILE, DEPLOY_SET)
    return RenderContext(profile.for_region(region), artifact, profile_source=str(PROFILE))


def test_deploy_flow_end_to_end(
    moto: MotoServer, artifact: Artifact, artifact_emr7: Artifact, capsys: pytest.CaptureFixture[str]
) -> None:
    for region, (artifact_bucket, data_bucket) in BUCKETS.items():
        s3 = moto.client("s3", region)
        for bucket in (artifact_bucket, data_bucket):
            location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            s3.create_bucket(Bucket=bucket, **location)

    # Nothing starts before the artifact is in S3.
    assert emr(moto, artifact, "create-cluster", "--region", "us-east-1") == 2
    assert "run `marketsignals emr upload` first" in capsys.readouterr().err
    assert moto.received("RunJobFlow") == []

    # upload, to every region of the profile; a second upload sends nothing.
    assert emr(moto, artifact, "upload") == 0
    expected = {*artifact.files, MANIFEST}
    for region, (bucket, _) in BUCKETS.items():
        ctx = context(artifact, region)
        s3 = moto.client("s3", region)
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=ctx.location.key_prefix + "/")["Contents"]
        assert {o["Key"].removeprefix(ctx.location.key_prefix + "/") for o in listed} == expected
        head = s3.head_object(Bucket=bucket, Key=ctx.location.key("conf/emr.yaml"))
        assert head["Metadata"]["sha256"] == artifact.files["conf/emr.yaml"]["sha256"]
        body = s3.get_object(Bucket=bucket, Key=f"{ctx.location.key_prefix}/{MANIFEST}")["Body"].read()
        assert json.loads(body)["build_id"] == artifact.build_id
    puts = len(moto.received("PUT /acme-artifacts"))
    assert emr(moto, artifact, "upload", "--region", "us-east-1") == 0
    assert len(moto.received("PUT /acme-artifacts")) == puts
    assert "(unchanged)" in capsys.readouterr().out

    # create-cluster with the streaming step: the API receives exactly the rendered request.
    ctx = context(artifact)
    assert emr(moto, artifact, "create-cluster", "--with-steps", "--region", "us-east-1") == 0
    out = capsys.readouterr().out
    cluster_id = out.split("next: marketsignals emr status --region us-east-1 --cluster-id ")[1].split()[0]
    assert moto.received("CreateSecurityConfiguration") == [api_requests.create_security_configuration(ctx)]
    assert moto.received("RunJobFlow") == [api_requests.run_job_flow(ctx, ["stream"])]
    client = moto.client("emr")
    action = client.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"][0]
    assert action["ScriptPath"] == f"{ctx.location.base_uri}/bootstrap/install-marketsignals.sh"
    assert action["Args"] == ["--artifact", ctx.location.base_uri, "--install-dir", "/opt/marketsignals"]
    cluster = client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-spark-8.0.0"
    assert {c["Classification"] for c in cluster["Configurations"]} == {"spark-defaults", "spark-env"}
    (stream_step,) = client.list_steps(ClusterId=cluster_id)["Steps"]
    assert stream_step["Config"]["Args"] == api_requests.job_flow_step(ctx, "stream")["HadoopJarStep"]["Args"]
    assert stream_step["ActionOnFailure"] == "CONTINUE"

    # add-steps: the backtest beside the streaming job.
    assert (
        emr(
            moto,
            artifact,
            "add-steps",
            "--region",
            "us-east-1",
            "--cluster-id",
            cluster_id,
            "--job",
            "backtest",
        )
        == 0
    )
    assert moto.received("AddJobFlowSteps") == [api_requests.add_job_flow_steps(ctx, ["backtest"], cluster_id)]
    assert [s["Name"] for s in client.list_steps(ClusterId=cluster_id)["Steps"]] == [
        "marketsignals-backtest",
        "marketsignals-stream",
    ]
    capsys.readouterr()

    # status: waits until the streaming step runs, prints its state and where its logs are.
    assert emr_status(moto, "--cluster-id", cluster_id, "--step-id", stream_step["Id"]) == 0
    status = capsys.readouterr().out
    assert f"step {stream_step['Id']} marketsignals-stream: RUNNING" in status
    assert f"logs: s3://acme-data/marketsignals/logs/{cluster_id}/steps/{stream_step['Id']}/" in status

    # EMR Serverless (emr-7.12.0, its own artifact): the application is created once, then reused;
    # each job run is the rendered one.
    ctx = context(artifact_emr7)
    assert emr(moto, artifact_emr7, "submit-serverless", "--region", "us-east-1") == 2
    assert "is not uploaded" in capsys.readouterr().err
    assert emr(moto, artifact_emr7, "upload", "--region", "us-east-1") == 0
    assert emr(moto, artifact_emr7, "submit-serverless", "--region", "us-east-1") == 0
    assert emr(moto, artifact_emr7, "submit-serverless", "--region", "us-east-1", "--job", "backtest") == 0
    out = capsys.readouterr().out
    apps = moto.client("emr-serverless").list_applications()["applications"]
    assert [(a["name"], a["releaseLabel"]) for a in apps] == [("marketsignals", "emr-7.12.0")]
    app_id = apps[0]["id"]
    created = [without_token(b) for b in moto.received("POST /applications") if "releaseLabel" in b]
    assert created == [api_requests.create_application(ctx)]
    runs = moto.received(f"POST /applications/{app_id}/jobruns")
    for body, job in zip(runs, ("stream", "backtest"), strict=True):
        expected_run = api_requests.start_serverless_job_run(ctx, job)
        assert without_token(body) == expected_run
    assert [r["mode"] for r in runs] == ["STREAMING", "BATCH"]
    run_id = out.split(f"--application-id {app_id} --job-run-id ")[1].split()[0]
    assert emr_status(moto, "--application-id", app_id, "--job-run-id", run_id, "--until", "finished") == 0
    status = capsys.readouterr().out
    assert f"logs: s3://acme-data/marketsignals/logs/serverless/applications/{app_id}/jobs/{run_id}/" in status

    # EMR on EKS: the virtual cluster is created on first use, then the job run.
    assert emr(moto, artifact_emr7, "submit-eks", "--region", "us-east-1") == 0
    (vc,) = moto.client("emr-containers").list_virtual_clusters()["virtualClusters"]
    assert vc["name"] == "marketsignals-us-east-1"
    (eks_run,) = moto.received(f"POST /virtualclusters/{vc['id']}/jobruns")
    assert {k: v for k, v in eks_run.items() if k != "clientToken"} == api_requests.start_eks_job_run(ctx, "stream")


@pytest.mark.skipif(shutil.which("aws") is None, reason="the aws CLI is not installed")
def test_readme_aws_cli_commands_send_the_rendered_requests(
    moto: MotoServer, artifact: Artifact, artifact_emr7: Artifact, tmp_path: Path
) -> None:
    """The README's hand-deploy commands (aws CLI on the rendered files) send what the API path sends."""
    ec2_dir, sls_dir = tmp_path / "ec2", tmp_path / "serverless"
    assert emr(moto, artifact, "render", "--region", "us-east-1", "--target", "ec2", "--write", str(ec2_dir)) == 0
    assert (
        emr(moto, artifact_emr7, "render", "--region", "us-east-1", "--target", "serverless", "--write", str(sls_dir))
        == 0
    )
    ec2, sls = ec2_dir / "us-east-1", sls_dir / "us-east-1"

    def aws(*args: str | Path) -> dict[str, Any]:
        argv = ["aws", *map(str, args), "--region", "us-east-1", "--endpoint-url", moto.endpoint, "--output", "json"]
        result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "AWS_PAGER": ""}, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout or "{}")

    def sent(operation: str, call: Any) -> list[Any]:
        before = len(moto.received(operation))
        call()
        return [without_token(b) for b in moto.received(operation)[before:]]

    ctx, ctx7 = context(artifact), context(artifact_emr7)
    security = sent(
        "CreateSecurityConfiguration",
        lambda: aws(
            "emr",
            "create-security-configuration",
            "--name",
            "by-hand",  # the API test made the rendered name
            "--cli-input-json",
            f"file://{ec2}/emr-create-security-configuration.json",
        ),
    )
    assert security == [{**api_requests.create_security_configuration(ctx), "Name": "by-hand"}]
    cluster: dict[str, Any] = {}
    run_job_flow = sent("RunJobFlow", lambda: cluster.update(_run_script(ec2 / "aws-emr-create-cluster.sh", moto)))
    assert run_job_flow == [api_requests.run_job_flow(ctx, ["stream"])]
    steps = sent(
        "AddJobFlowSteps",
        lambda: aws(
            "emr", "add-steps", "--cluster-id", cluster["ClusterId"], "--steps", f"file://{ec2}/aws-emr-add-steps.json"
        ),
    )
    assert steps == [api_requests.add_job_flow_steps(ctx, list(ctx.deployment.jobs), cluster["ClusterId"])]

    app = aws(
        "emr-serverless",
        "create-application",
        "--cli-input-json",
        f"file://{sls}/emr-serverless-create-application.json",
    )
    run = sent(
        f"POST /applications/{app['applicationId']}/jobruns",
        lambda: aws(
            "emr-serverless",
            "start-job-run",
            "--application-id",
            app["applicationId"],
            "--cli-input-json",
            f"file://{sls}/emr-serverless-start-job-run-stream.json",
        ),
    )
    assert run == [api_requests.start_serverless_job_run(ctx7, "stream")]


def _run_script(script: Path, moto: MotoServer) -> dict[str, Any]:
    result = subprocess.run(
        ["bash", str(script), "--endpoint-url", moto.endpoint, "--output", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "AWS_PAGER": ""},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_stop_writes_the_request_the_driver_looks_for_and_a_start_clears_a_stale_one(
    moto: MotoServer, artifact: Artifact, artifact_emr7: Artifact, capsys: pytest.CaptureFixture[str]
) -> None:
    """`emr stop`: the platforms' own stop signals the JVM, which cuts the batch in flight, so the job is
    asked through its checkpoint (marketsignals/stop_request.py; the driver's side: tests/faults)."""
    s3 = moto.client("s3")
    for bucket in BUCKETS["us-east-1"]:
        s3.create_bucket(Bucket=bucket)  # moto's us-east-1: creating one that exists is no error
    checkpoint = context(artifact).app_settings.stream.checkpoint
    assert checkpoint == "s3://acme-data/marketsignals/checkpoints/stream"
    key = "marketsignals/checkpoints/stream/marketsignals.stop"

    def requested() -> bool:
        return s3.list_objects_v2(Bucket="acme-data", Prefix=key).get("KeyCount", 0) == 1

    # no query has started there: refused, nothing written
    assert emr(moto, artifact, "stop", "--region", "us-east-1") == 2
    assert "no streaming query has started with the checkpoint" in capsys.readouterr().err
    assert not requested()

    s3.put_object(Bucket="acme-data", Key="marketsignals/checkpoints/stream/metadata", Body=b'{"id":"q"}')
    assert emr(moto, artifact, "stop", "--region", "us-east-1") == 0
    assert f"stop requested at {checkpoint}/marketsignals.stop" in capsys.readouterr().out
    said = json.loads(s3.get_object(Bucket="acme-data", Key=key)["Body"].read())
    assert set(said) == {"requested_at", "by"}

    # a streaming job about to start removes a request no job acted on; a batch job leaves it
    assert emr(moto, artifact_emr7, "upload", "--region", "us-east-1") == 0
    assert emr(moto, artifact_emr7, "submit-serverless", "--region", "us-east-1", "--job", "backtest") == 0
    assert requested()
    assert emr(moto, artifact_emr7, "submit-serverless", "--region", "us-east-1") == 0
    out = capsys.readouterr().out
    assert f"removed a stop request no job acted on: s3://acme-data/{key}" in out and not requested()
    app_id, run_id = out.rsplit("--application-id ", 1)[1].split(" --job-run-id ")
    run_id = run_id.split()[0]

    # with the job's ids, stop waits until it has finished (moto ends every job run at once)
    assert emr(moto, artifact_emr7, "stop", "--region", "us-east-1", "--application-id", app_id,
               "--job-run-id", run_id, "--timeout", "10", "--interval", "0.2") == 0
    out = capsys.readouterr().out
    assert "stop requested at" in out and f"job run {run_id}" in out and "SUCCESS" in out, out
    assert requested()  # the driver removes it when it stops; moto runs no driver
