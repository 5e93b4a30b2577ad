"""Rendering of the EMR requests (marketsignals.emr): each one is a request AWS's own service model accepts.

The deployment profile is the shipped conf/emr/deploy.yaml with its placeholders filled in, and the
artifact a small fake dist/ written by the real packaging code (a stub instead of the venv archive),
so these tests need neither AWS nor a build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import validate_parameters

from marketsignals.cli import main
from marketsignals.emr import api_requests, aws_cli, deploy, package
from marketsignals.emr.api_requests import RenderContext
from marketsignals.emr.artifact import ENV_ARCHIVE, Artifact, runtime_for_release
from marketsignals.emr.deployment import PlaceholderError, load_profile
from marketsignals.emr.service_model import validate_request

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "conf" / "emr" / "deploy.yaml"
BOOTSTRAP = ROOT / "bootstrap" / "install-marketsignals.sh"
REGION = "us-east-1"
ACCOUNT = "111122223333"
# Every placeholder of conf/emr/deploy.yaml, filled the way a user would.
FILLED = (
    "s3.artifact_bucket=acme-artifacts",
    "s3.data_bucket=acme-data",
    "app_settings.kafka.bootstrap_servers=b-1.ticks.abc123.c2.kafka.us-east-1.amazonaws.com:9098",
    f"security.kms_key_arn=arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "ec2.service_role=EMR_DefaultRole_V2",
    "ec2.instance_profile=EMR_EC2_DefaultRole",
    "ec2.ec2_key_name=ops",
    "ec2.subnet_ids=[subnet-0a1b2c3d4e5f60001, subnet-0a1b2c3d4e5f60002]",
    "ec2.emr_managed_master_security_group=sg-0a1b2c3d4e5f60001",
    "ec2.emr_managed_slave_security_group=sg-0a1b2c3d4e5f60002",
    "ec2.service_access_security_group=sg-0a1b2c3d4e5f60003",
    f"serverless.execution_role_arn=arn:aws:iam::{ACCOUNT}:role/marketsignals-job",
    "serverless.subnet_ids=[subnet-0a1b2c3d4e5f60001]",
    "serverless.security_group_ids=[sg-0a1b2c3d4e5f60004]",
    "eks.cluster_name=analytics",
    f"eks.execution_role_arn=arn:aws:iam::{ACCOUNT}:role/marketsignals-eks-job",
)
# The jars of `make jars` (Spark 4.0 / Scala 2.13) and of the EMR 7.x fetch (Spark 3.5 / Scala 2.12).
FAKE_JARS = (
    "spark-sql-kafka-0-10_2.13-4.0.2.jar",
    "spark-token-provider-kafka-0-10_2.13-4.0.0.jar",
    "delta-spark_2.13-4.0.0.jar",
    "kafka-clients-3.9.1.jar",
    "commons-pool2-2.12.0.jar",
    "delta-storage-4.0.0.jar",
    "aws-msk-iam-auth-2.3.2-all.jar",
)
FAKE_JARS_EMR7 = (
    "spark-sql-kafka-0-10_2.12-3.5.6.jar",
    "spark-token-provider-kafka-0-10_2.12-3.5.6.jar",
    "delta-spark_2.12-3.3.2.jar",
    "kafka-clients-3.4.1.jar",
    "aws-msk-iam-auth-2.3.2-all.jar",
)
EMR7 = (
    "ec2.release_label=emr-7.12.0",
    "serverless.release_label=emr-7.12.0",
    "eks.release_label=emr-7.12.0-latest",
)
# Which botocore operation each rendered file is a request of.
OPERATIONS = {
    "emr-create-security-configuration.json": ("emr", "CreateSecurityConfiguration"),
    "emr-run-job-flow.json": ("emr", "RunJobFlow"),
    "emr-run-job-flow-transient.json": ("emr", "RunJobFlow"),
    "emr-add-job-flow-steps.json": ("emr", "AddJobFlowSteps"),
    "emr-serverless-create-application.json": ("emr-serverless", "CreateApplication"),
    "emr-serverless-start-job-run-stream.json": ("emr-serverless", "StartJobRun"),
    "emr-serverless-start-job-run-backtest.json": ("emr-serverless", "StartJobRun"),
    "emr-containers-create-virtual-cluster.json": ("emr-containers", "CreateVirtualCluster"),
    "emr-containers-start-job-run-stream.json": ("emr-containers", "StartJobRun"),
    "emr-containers-start-job-run-backtest.json": ("emr-containers", "StartJobRun"),
}
# Run-time ids the rendered files leave to the command line.
RUNTIME_IDS = {
    "JobFlowId": "j-2AXXXXXXGAPLF",
    "applicationId": "00fabcdefghij012",
    "virtualClusterId": "abcdefghij0123456789klmno",
}


def make_fake_dist(dist: Path, jars: tuple[str, ...] = FAKE_JARS) -> Artifact:
    """dist/ as `make package` writes it (same payload copy, same manifest), with a stub env archive."""
    jar_dir = dist.parent / f"{dist.name}-jars"
    jar_dir.mkdir(parents=True, exist_ok=True)
    for jar in jars:
        (jar_dir / jar).write_bytes(f"fake {jar}".encode())
    package.copy_payload(ROOT, dist, [jar_dir], app_profile="emr")
    (dist / "marketsignals-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    (dist / ENV_ARCHIVE).write_bytes(b"env")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package.write_manifest(dist, pyproject, {"pandas": "2.3.3"}, package.TARGET_PLATFORMS, "/usr", "emr")
    return Artifact.load(dist)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return make_fake_dist(tmp_path_factory.mktemp("emr") / "dist")


@pytest.fixture(scope="module")
def artifact_emr7(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return make_fake_dist(tmp_path_factory.mktemp("emr7") / "dist", FAKE_JARS_EMR7)


def context(artifact: Artifact, *overrides: str, region: str = REGION) -> RenderContext:
    profile = load_profile(PROFILE, [*FILLED, *overrides])
    return RenderContext(profile.for_region(region), artifact, profile_source=str(PROFILE))


def _operation_input(service: str, operation: str) -> Any:
    return botocore.session.get_session().get_service_model(service).operation_model(operation).input_shape


# --- every request is one AWS accepts ---------------------------------------------------------------


@pytest.mark.parametrize("emr7", [False, True], ids=["emr-spark-8.0.0", "emr-7.12.0"])
def test_every_rendered_request_validates_against_the_botocore_service_model(artifact, artifact_emr7, emr7):
    ctx = context(artifact_emr7, *EMR7) if emr7 else context(artifact)
    rendered = api_requests.render_requests(ctx, api_requests.TARGETS)  # validates each one
    assert {name: (r.service, r.operation) for name, r in rendered.items()} == OPERATIONS
    for item in rendered.values():  # and again here, straight with botocore, with the run-time ids
        shape = _operation_input(item.service, item.operation)
        ids = {k: v for k, v in RUNTIME_IDS.items() if k in shape.members}
        # botocore (and the aws CLI) fill idempotency tokens (clientToken) in before validating
        tokens = {k: "token" for k, m in shape.members.items() if m.metadata.get("idempotencyToken")}
        validate_parameters({**tokens, **ids, **item.request}, shape)
        validate_request(item.service, item.operation, {**ids, **item.request})  # + enum values


def test_the_service_model_check_catches_names_types_required_members_and_enums():
    bad = {
        "JobFlowId": "j-1",
        "Steps": [{"Name": "x", "ActionOnFailure": "RETRY", "HadoopJarStep": {"Args": [1], "Jarr": "x"}}],
    }
    with pytest.raises(ValueError) as raised:
        validate_request("emr", "AddJobFlowSteps", bad)
    message = str(raised.value)
    assert 'Missing required parameter in Steps[0].HadoopJarStep: "Jar"' in message
    assert 'Unknown parameter in Steps[0].HadoopJarStep: "Jarr"' in message
    assert "Invalid type for parameter Steps[0].HadoopJarStep.Args[0]" in message
    # botocore's own validator leaves enums to the service; this check does not
    validate_parameters(
        {"JobFlowId": "j-1", "Steps": [{**bad["Steps"][0], "HadoopJarStep": {"Jar": "x"}}]},
        _operation_input("emr", "AddJobFlowSteps"),
    )
    assert "Invalid value for parameter Steps[0].ActionOnFailure: 'RETRY'" in message


def test_installed_botocore_has_the_streaming_mode_used_for_serverless():
    assert _operation_input("emr-serverless", "StartJobRun").members["mode"].enum == ["BATCH", "STREAMING"]


# --- EMR on EC2 -------------------------------------------------------------------------------------


def test_streaming_step_is_spark_submit_in_cluster_mode_with_the_artifact(artifact):
    ctx = context(artifact)
    step = api_requests.job_flow_step(ctx, "stream")
    args = step["HadoopJarStep"]["Args"]
    base = ctx.location.base_uri
    assert step["ActionOnFailure"] == "CONTINUE"
    assert step["HadoopJarStep"]["Jar"] == "command-runner.jar"
    assert args[:5] == ["spark-submit", "--deploy-mode", "cluster", "--master", "yarn"]
    assert base == f"s3://acme-artifacts/marketsignals/artifacts/0.1.0/{artifact.build_id}"

    def flag(name: str) -> str:
        return args[args.index(name) + 1]

    assert flag("--archives") == f"{base}/marketsignals-env.tar.gz#environment"
    assert flag("--files") == f"{base}/conf/emr.yaml"
    jars = flag("--jars").split(",")
    assert all(j.startswith(f"{base}/jars/") for j in jars)
    assert len(jars) == len(FAKE_JARS) and any("spark-sql-kafka-0-10_2.13" in j for j in jars)
    conf = [args[i + 1] for i, a in enumerate(args) if a == "--conf" and i > 5 and args[i - 1] != "--profile"]
    assert "spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python" in conf
    assert "spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python" in conf
    entry = args.index(f"{base}/jobs/stream_signals.py")
    assert args[entry + 1 : entry + 5] == ["--profile", "emr", "--conf", "emr.yaml"]
    job_sets = args[entry + 5 :]
    assert ("--set", "stream.checkpoint=s3://acme-data/marketsignals/checkpoints/stream") in zip(
        job_sets[::2], job_sets[1::2], strict=True
    )


def test_emr7_variant_takes_the_scala_212_artifact(artifact_emr7):
    ctx = context(artifact_emr7, *EMR7)
    args = api_requests.job_flow_step(ctx, "stream")["HadoopJarStep"]["Args"]
    jars = args[args.index("--jars") + 1]
    assert "spark-sql-kafka-0-10_2.12-3.5.6.jar" in jars and "_2.13" not in jars
    assert api_requests.run_job_flow(ctx)["ReleaseLabel"] == "emr-7.12.0"
    assert runtime_for_release("emr-7.12.0").scala == "2.12"
    assert runtime_for_release("emr-spark-8.0.0-latest").scala == "2.13"


def test_a_release_and_an_artifact_of_different_spark_lines_are_refused(artifact, artifact_emr7):
    with pytest.raises(ValueError, match=r"Scala 2\.13 jars, but Spark 3\.5 needs Scala 2\.12 jars only"):
        api_requests.job_flow_step(context(artifact, *EMR7), "stream")
    with pytest.raises(ValueError, match=r"Scala 2\.12 jars, but Spark 4\.0 needs Scala 2\.13 jars only"):
        api_requests.start_serverless_job_run(context(artifact_emr7), "stream")
    with pytest.raises(ValueError, match="not a supported EMR release line"):
        runtime_for_release("emr-6.15.0")


def test_an_artifact_serves_one_spark_line(tmp_path):
    with pytest.raises(RuntimeError, match=r"jars for Scala 2\.12 and 2\.13 .* one Spark line"):
        make_fake_dist(tmp_path / "dist", FAKE_JARS + FAKE_JARS_EMR7)


def test_cluster_configurations_for_the_streaming_job(artifact):
    configurations = {c["Classification"]: c for c in api_requests.cluster_configurations(context(artifact))}
    defaults = configurations["spark-defaults"]["Properties"]
    assert defaults["spark.sql.streaming.stateStore.providerClass"] == (
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
    )
    assert defaults["spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled"] == "true"
    assert defaults["spark.dynamicAllocation.enabled"] == "false"
    assert defaults["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert defaults["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    export = configurations["spark-env"]["Configurations"][0]
    assert export == {
        "Classification": "export",
        "Properties": {"PYSPARK_PYTHON": "/opt/marketsignals/current/env/bin/python"},
    }


def test_long_running_and_transient_clusters(artifact):
    ctx = context(artifact)
    cluster = api_requests.run_job_flow(ctx, ["stream"])
    fleets = {f["InstanceFleetType"]: f for f in cluster["Instances"]["InstanceFleets"]}
    assert cluster["ReleaseLabel"] == "emr-spark-8.0.0"
    assert (fleets["MASTER"]["TargetOnDemandCapacity"], fleets["MASTER"]["TargetSpotCapacity"]) == (1, 0)
    assert (fleets["CORE"]["TargetOnDemandCapacity"], fleets["CORE"]["TargetSpotCapacity"]) == (2, 0)
    assert (fleets["TASK"]["TargetOnDemandCapacity"], fleets["TASK"]["TargetSpotCapacity"]) == (0, 2)
    assert fleets["TASK"]["LaunchSpecifications"]["SpotSpecification"]["AllocationStrategy"] == (
        "price-capacity-optimized"
    )
    volume = fleets["CORE"]["InstanceTypeConfigs"][0]["EbsConfiguration"]["EbsBlockDeviceConfigs"][0]
    assert volume["VolumeSpecification"]["VolumeType"] == "gp3"
    assert cluster["ManagedScalingPolicy"]["ComputeLimits"]["MaximumCapacityUnits"] == 12
    assert cluster["LogUri"] == "s3://acme-data/marketsignals/logs/"
    assert cluster["SecurityConfiguration"] == "marketsignals-us-east-1"
    assert cluster["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert cluster["Instances"]["TerminationProtected"] is True
    assert "AutoTerminationPolicy" not in cluster
    assert [s["Name"] for s in cluster["Steps"]] == ["marketsignals-stream"]
    action = cluster["BootstrapActions"][0]["ScriptBootstrapAction"]
    assert action == {
        "Path": f"{ctx.location.base_uri}/bootstrap/install-marketsignals.sh",
        "Args": ["--artifact", ctx.location.base_uri, "--install-dir", "/opt/marketsignals"],
    }
    assert {"Key": "marketsignals:build", "Value": artifact.build_id} in cluster["Tags"]

    transient = api_requests.run_job_flow(ctx, ["backtest"], transient=True)
    assert transient["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    assert transient["Instances"]["KeepJobFlowAliveWhenNoSteps"] is False  # ends after its steps
    assert transient["Instances"]["TerminationProtected"] is False
    idle = api_requests.run_job_flow(ctx, [], transient=True)
    assert idle["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True  # waits for steps, ends when idle


def test_security_configuration_encrypts_at_rest_and_in_transit_with_kms(artifact):
    request = api_requests.create_security_configuration(context(artifact))
    document = json.loads(request["SecurityConfiguration"])["EncryptionConfiguration"]
    kms = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert document["EnableAtRestEncryption"] and document["EnableInTransitEncryption"]
    at_rest = document["AtRestEncryptionConfiguration"]
    assert at_rest["S3EncryptionConfiguration"] == {"EncryptionMode": "SSE-KMS", "AwsKmsKey": kms}
    assert at_rest["LocalDiskEncryptionConfiguration"]["AwsKmsKey"] == kms
    assert at_rest["LocalDiskEncryptionConfiguration"]["EnableEbsEncryption"] is True
    tls = document["InTransitEncryptionConfiguration"]["TLSCertificateConfiguration"]
    assert tls["S3Object"] == "s3://acme-artifacts/marketsignals/tls/emr-certificates.zip"


def test_graviton_instance_types_are_refused_for_the_x86_artifact(artifact):
    with pytest.raises(ValueError, match=r"m7g\.xlarge: Graviton"):
        context(artifact, "ec2.master={on_demand: 1, instance_types: [m7g.xlarge]}")


def test_concurrent_steps_need_action_on_failure_continue(artifact):
    with pytest.raises(ValueError, match="action_on_failure must be CONTINUE"):
        context(artifact, "jobs.stream.action_on_failure=TERMINATE_CLUSTER")


# --- EMR Serverless and EKS -------------------------------------------------------------------------


def test_serverless_application_and_job_runs(artifact):
    ctx = context(artifact)
    app = api_requests.create_application(ctx)
    assert app["initialCapacity"]["EXECUTOR"] == {
        "workerCount": 4,
        "workerConfiguration": {"cpu": "4vCPU", "memory": "16GB", "disk": "20GB"},
    }
    assert app["maximumCapacity"] == {"cpu": "64vCPU", "memory": "256GB", "disk": "1000GB"}
    assert app["autoStartConfiguration"] == {"enabled": True}
    assert app["autoStopConfiguration"] == {"enabled": True, "idleTimeoutMinutes": 15}
    assert app["architecture"] == "X86_64"

    stream = api_requests.start_serverless_job_run(ctx, "stream", application_id="00fabcdefghij012")
    backtest = api_requests.start_serverless_job_run(ctx, "backtest")
    assert (stream["mode"], backtest["mode"]) == ("STREAMING", "BATCH")
    assert stream["retryPolicy"] == {"maxFailedAttemptsPerHour": 5}
    assert "executionTimeoutMinutes" not in stream and backtest["executionTimeoutMinutes"] == 240
    driver = stream["jobDriver"]["sparkSubmit"]
    params = dict(p.split("=", 1) for p in driver["sparkSubmitParameters"].split(" --conf ")[1:])
    assert params["spark.archives"] == f"{ctx.location.base_uri}/marketsignals-env.tar.gz#environment"
    assert params["spark.emr-serverless.driverEnv.PYSPARK_PYTHON"] == "./environment/bin/python"
    assert params["spark.executorEnv.PYSPARK_PYTHON"] == "./environment/bin/python"
    assert params["spark.files"] == f"{ctx.location.base_uri}/conf/emr.yaml"
    assert driver["entryPoint"] == f"{ctx.location.base_uri}/jobs/stream_signals.py"
    assert driver["entryPointArguments"][:4] == ["--profile", "emr", "--conf", "emr.yaml"]


def test_the_three_platforms_run_the_same_submission(artifact):
    """Entry point, archive, jars, settings file and job arguments are identical everywhere."""
    ctx = context(artifact)
    step_args = api_requests.job_flow_step(ctx, "stream")["HadoopJarStep"]["Args"]
    serverless = api_requests.start_serverless_job_run(ctx, "stream")["jobDriver"]["sparkSubmit"]
    eks = api_requests.start_eks_job_run(ctx, "stream")["jobDriver"]["sparkSubmitJobDriver"]
    for driver in (serverless, eks):
        entry = step_args.index(driver["entryPoint"])
        assert step_args[entry + 1 :] == driver["entryPointArguments"]
        for flag, key in (
            ("--archives", "spark.archives"),
            ("--jars", "spark.jars"),
            ("--files", "spark.files"),
        ):
            assert f"--conf {key}={step_args[step_args.index(flag) + 1]}" in driver["sparkSubmitParameters"]


def test_eks_virtual_cluster_and_job_run(artifact):
    ctx = context(artifact)
    vc = api_requests.create_virtual_cluster(ctx)
    assert vc["containerProvider"] == {
        "id": "analytics",
        "type": "EKS",
        "info": {"eksInfo": {"namespace": "marketsignals"}},
    }
    assert vc["name"] == "marketsignals-us-east-1"
    run = api_requests.start_eks_job_run(ctx, "stream", virtual_cluster_id="abcdefghij0123456789klmno")
    assert run["releaseLabel"] == "emr-spark-8.0.0-latest"
    assert (
        "--conf spark.pyspark.python=./environment/bin/python"
        in (run["jobDriver"]["sparkSubmitJobDriver"]["sparkSubmitParameters"])
    )
    assert run["configurationOverrides"]["monitoringConfiguration"]["s3MonitoringConfiguration"] == {
        "logUri": "s3://acme-data/marketsignals/logs/eks/"
    }


def test_a_spark_value_with_blanks_is_refused_for_submit_parameters(artifact):
    ctx = context(artifact, "jobs.stream.spark_conf.spark.driver.extraJavaOptions=-Da=1 -Db=2")
    with pytest.raises(ValueError, match=r"spark\.driver\.extraJavaOptions: empty or contains blanks"):
        api_requests.start_serverless_job_run(ctx, "stream")
    assert (
        "spark.driver.extraJavaOptions=-Da=1 -Db=2"
        in api_requests.job_flow_step(ctx, "stream")["HadoopJarStep"]["Args"]
    )  # a step's argument list carries it as one argument


# --- one source of truth: regions, templates, placeholders ------------------------------------------


def test_region_overrides_and_templates(artifact):
    ctx = context(
        artifact,
        "regions=[us-east-1, eu-west-1]",
        "region_overrides.eu-west-1.s3.data_bucket=acme-data-eu",
        "region_overrides.eu-west-1.s3.artifact_bucket=acme-artifacts-eu",
        region="eu-west-1",
    )
    assert ctx.location.base_uri.startswith("s3://acme-artifacts-eu/")
    assert ctx.deployment.s3.log_uri == "s3://acme-data-eu/marketsignals/logs/"
    assert ctx.deployment.security.configuration_name == "marketsignals-eu-west-1"
    assert ctx.app_settings.stream.checkpoint == "s3://acme-data-eu/marketsignals/checkpoints/stream"
    with pytest.raises(ValueError, match="region 'ap-south-1' is not in"):
        load_profile(PROFILE, FILLED).for_region("ap-south-1")


def test_unknown_template_variable_names_the_key(artifact):
    with pytest.raises(ValueError, match=r"s3.log_uri: unknown variable \{bucket\}"):
        context(artifact, "s3.log_uri=s3://{bucket}/logs/")


def test_unfilled_template_is_refused_naming_each_key(artifact):
    ctx = RenderContext(load_profile(PROFILE).for_region(REGION), artifact)
    with pytest.raises(PlaceholderError) as raised:
        api_requests.render_requests(ctx, ["ec2"])
    message = str(raised.value)
    for key in (
        "s3.artifact_bucket = '<ARTIFACT_BUCKET>'",
        "ec2.subnet_ids[0] = '<PRIVATE_SUBNET_ID>'",
        "ec2.service_role",
        "security.kms_key_arn",
        "app_settings.kafka.bootstrap_servers",
    ):
        assert key in message


def test_only_the_sections_a_platform_uses_must_be_filled(artifact):
    ctx = context(artifact, "eks.cluster_name=<EKS_CLUSTER_NAME>")
    assert api_requests.render_requests(ctx, ["ec2", "serverless"])  # EKS placeholders do not block EC2
    with pytest.raises(PlaceholderError, match=r"eks\.cluster_name"):
        api_requests.render_requests(ctx, ["eks"])


def test_app_settings_placeholders_from_conf_emr_yaml_are_refused(artifact):
    ctx = context(artifact, "app_settings={}")  # conf/emr.yaml's example-bucket and example broker remain
    with pytest.raises(PlaceholderError, match=r"kafka.bootstrap_servers = 'b-1.example.kafka") as raised:
        ctx.checked("serverless")
    assert "stream.checkpoint = 's3://example-bucket/" in str(raised.value)


def test_cli_refuses_placeholders_before_any_aws_call(artifact, monkeypatch, capsys):
    def no_aws(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an AWS client was created")

    monkeypatch.setattr("boto3.session.Session.client", no_aws)
    code = main(
        [
            "emr",
            "create-cluster",
            "--with-steps",
            "--dist",
            str(artifact.root),
            "--deploy",
            str(PROFILE),
            "--endpoint-url",
            "http://127.0.0.1:9",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "ec2.subnet_ids[0] = '<PRIVATE_SUBNET_ID>'" in err and len(err.strip().splitlines()) == 1


# --- aws CLI commands for hand deployment ------------------------------------------------------------


def test_create_cluster_command_carries_every_run_job_flow_member(artifact):
    request = api_requests.run_job_flow(context(artifact), ["stream"])
    argv, files = aws_cli.create_cluster_command(request, REGION, "aws-emr-create-cluster")
    assert argv[:5] == ["aws", "emr", "create-cluster", "--region", REGION]
    assert files["aws-emr-create-cluster-instance-fleets.json"] == request["Instances"]["InstanceFleets"]
    assert files["aws-emr-create-cluster-ec2-attributes.json"]["InstanceProfile"] == "EMR_EC2_DefaultRole"
    assert (
        files["aws-emr-create-cluster-steps.json"][0]["Args"] == request["Steps"][0]["HadoopJarStep"]["Args"]
    )
    assert "--no-auto-terminate" in argv and "--termination-protected" in argv
    with pytest.raises(ValueError, match="without an `aws emr create-cluster` option: \\['Kerberos'\\]"):
        aws_cli.create_cluster_command({**request, "Kerberos": {}}, REGION, "x")


def test_render_writes_requests_scripts_and_ignores_them(artifact, tmp_path, capsys):
    out = tmp_path / "rendered"
    args = ["emr", "render", "--dist", str(artifact.root), "--deploy", str(PROFILE), "--write", str(out)]
    assert main([*args, *(a for item in FILLED for a in ("--deploy-set", item))]) == 0
    written = {p.name for p in (out / REGION).iterdir()}
    assert set(OPERATIONS) <= written
    assert {
        "aws-emr-create-cluster.sh",
        "aws-emr-create-cluster-transient.sh",
        "aws-emr-add-steps.json",
    } <= written
    assert (out / ".gitignore").read_text().splitlines()[-1] == "*"
    script = (out / REGION / "aws-emr-create-cluster.sh").read_text()
    assert "file://aws-emr-create-cluster-instance-fleets.json" in script and script.rstrip().endswith('"$@"')
    assert os.access(out / REGION / "aws-emr-create-cluster.sh", os.X_OK)
    assert (
        json.loads((out / REGION / "emr-run-job-flow.json").read_text())["ReleaseLabel"] == "emr-spark-8.0.0"
    )
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(out / REGION / "aws-emr-create-cluster.sh")], check=True)


# --- status: waiting with progress ---------------------------------------------------------------------


def test_wait_prints_progress_on_change_and_stops_when_settled_or_timed_out():
    states = iter(["PENDING", "PENDING", "RUNNING"])
    now = [0.0]
    printed: list[str] = []

    def look() -> deploy.Snapshot:
        state = next(states)
        return deploy.Snapshot([f"step s-1: {state}"], settled=state == "RUNNING", ok=True)

    def sleep(seconds: float) -> None:
        now[0] += seconds

    snapshot = deploy.wait(
        look, timeout_s=60, interval_s=15, report=printed.append, clock=lambda: now[0], sleep=sleep
    )
    assert snapshot.settled and printed == ["[   0s] step s-1: PENDING", "[  30s] step s-1: RUNNING"]

    never = deploy.wait(
        lambda: deploy.Snapshot(["x: PENDING"], settled=False, ok=True),
        timeout_s=40,
        interval_s=15,
        report=printed.append,
        clock=lambda: now[0],
        sleep=sleep,
    )
    assert not never.settled


# --- packaging and the bootstrap action ---------------------------------------------------------------


def test_runtime_requirements_leave_pyspark_to_emr():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    with_deps, without_deps = package.runtime_requirements(pyproject)
    assert not any(r.startswith("pyspark") for r in with_deps + without_deps)
    assert without_deps == ["delta-spark==4.0.0"]
    assert any(r.startswith("pandas==") for r in with_deps)
    # the extras (tests, bench/) stay out of the cluster's environment
    assert not any(r.startswith(("orjson", "pytest", "moto")) for r in with_deps + without_deps)


def test_the_environments_delta_is_the_shipped_jars_delta():
    """An emr-7.x artifact ships Delta 3 jars (README): its Python side is installed at their version."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    emr7 = ["delta-spark_2.12-3.3.2.jar", "delta-storage-3.3.2.jar", "spark-sql-kafka-0-10_2.12-3.5.3.jar"]
    assert package.runtime_requirements(pyproject, emr7)[1] == ["delta-spark==3.3.2"]
    emr8 = ["delta-spark_2.13-4.0.0.jar", "delta-kernel-api-4.0.0.jar"]
    assert package.runtime_requirements(pyproject, emr8)[1] == ["delta-spark==4.0.0"]


def test_manifest_lists_every_file_with_its_sha256(artifact):
    assert artifact.root is not None
    on_disk = {
        str(p.relative_to(artifact.root))
        for p in artifact.root.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert set(artifact.files) == on_disk
    assert {
        "jobs/stream_signals.py",
        "jobs/backtest.py",
        "conf/emr.yaml",
        "bootstrap/install-marketsignals.sh",
        ENV_ARCHIVE,
    } <= on_disk
    artifact.verify()


def test_venv_is_retargeted_at_the_nodes_interpreter(tmp_path):
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    package._retarget_interpreter(env, "/usr")
    assert (
        os.readlink(env / "bin" / f"python{package.TARGET_PYTHON}")
        == f"/usr/bin/python{package.TARGET_PYTHON}"
    )
    assert os.readlink(env / "bin" / "python") == f"python{package.TARGET_PYTHON}"
    cfg = (env / "pyvenv.cfg").read_text()
    assert "home = /usr/bin\n" in cfg and f"executable = /usr/bin/python{package.TARGET_PYTHON}\n" in cfg


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)"
)
def test_bootstrap_script_is_shellcheck_clean():
    result = subprocess.run(
        ["shellcheck", "--severity=style", str(BOOTSTRAP)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def _bootstrap_bucket(tmp_path: Path) -> tuple[Path, Path, str]:
    """A fake S3 artifact (a folder served by a stub `aws`) whose env needs a stub interpreter."""
    prefix = tmp_path / "python-prefix"
    (prefix / "bin").mkdir(parents=True)
    stub_python = prefix / "bin" / "python3.11"
    stub_python.write_text('#!/bin/sh\necho stub python "$@"\n')
    stub_python.chmod(0o755)
    env = tmp_path / "env-src"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(stub_python)
    dist = tmp_path / "bucket" / "marketsignals" / "0.1.0" / "b1"
    dist.mkdir(parents=True)
    with tarfile.open(dist / ENV_ARCHIVE, "w:gz") as tar:
        tar.add(env, arcname=".")
    (dist / "jobs").mkdir()
    (dist / "jobs" / "stream_signals.py").write_text("print('job')\n")
    files = {
        str(p.relative_to(dist)): {"sha256": package.sha256_file(p), "bytes": p.stat().st_size}
        for p in dist.rglob("*")
        if p.is_file()
    }
    manifest = {
        "python": {"version": "3.11", "prefix": str(prefix)},
        "environment": ENV_ARCHIVE,
        "files": files,
    }
    (dist / "manifest.json").write_text(json.dumps(manifest))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    aws = bin_dir / "aws"  # `aws s3 cp --recursive --only-show-errors s3://bucket/key/ DEST/`
    aws.write_text(f'#!/bin/sh\nsrc="$5"; cp -r "{tmp_path}/bucket/${{src#s3://bucket/}}." "$6"\n')
    aws.chmod(0o755)
    return bin_dir, dist, "s3://bucket/marketsignals/0.1.0/b1"


def test_bootstrap_installs_verifies_and_is_idempotent(tmp_path):
    bin_dir, dist, uri = _bootstrap_bucket(tmp_path)
    install = tmp_path / "opt" / "marketsignals"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = ["bash", str(BOOTSTRAP), "--artifact", uri, "--install-dir", str(install)]
    first = subprocess.run(command, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr + first.stdout
    assert os.readlink(install / "current") == "0.1.0-b1"
    assert (install / "current" / "env" / "bin" / "python").exists()  # spark-env's PYSPARK_PYTHON
    assert (install / "current" / "jobs" / "stream_signals.py").is_file()
    assert "verifying sha256" in first.stdout and "done:" in first.stdout

    second = subprocess.run(command, env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "already installed" in second.stdout

    (dist / "jobs" / "stream_signals.py").write_text("tampered\n")
    command[3] = uri.replace("b1", "b2")
    (dist.parent / "b2").symlink_to(dist)
    corrupt = subprocess.run(command, env=env, capture_output=True, text=True)
    assert corrupt.returncode != 0 and "checksum mismatch" in corrupt.stderr
    assert os.readlink(install / "current") == "0.1.0-b1"  # the failed install left the node as it was
    assert not list(install.glob(".staging-*"))
