"""The AWS API requests of a deployment, as plain dicts ready for boto3 (``client.op(**request)``).

Each builder is pure: deployment profile + artifact + app overrides in, request out. Before building,
:meth:`RenderContext.checked` refuses a platform whose deploy.yaml sections or rendered app settings
still hold placeholders, so nothing half-filled reaches AWS. IDs only known at run time (cluster id,
application id, virtual cluster id) are parameters; left as None they are omitted, which is how the
files for ``aws ... --cli-input-json`` are written (the id then comes from the command line).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, NamedTuple

from marketsignals.emr.artifact import (
    BOOTSTRAP_SCRIPT,
    INSTALLED_PYTHON,
    Artifact,
    ArtifactLocation,
    runtime_for_release,
)
from marketsignals.emr.deployment import Deployment, PlaceholderError, find_placeholders, require_filled
from marketsignals.emr.service_model import validate_request
from marketsignals.emr.submission import JobSubmission, job_submission
from marketsignals.settings import Settings, load_settings

Target = Literal["ec2", "serverless", "eks"]
TARGETS: tuple[Target, ...] = ("ec2", "serverless", "eks")
# The deploy.yaml sections each platform's requests read (placeholders elsewhere do not block it).
_SECTIONS: dict[Target, tuple[str, ...]] = {
    "ec2": ("name", "s3", "app_settings", "spark_defaults", "jobs", "security", "ec2"),
    "serverless": ("name", "s3", "app_settings", "spark_defaults", "jobs", "security", "serverless"),
    "eks": ("name", "s3", "app_settings", "spark_defaults", "jobs", "eks"),
}
COMMAND_RUNNER = "command-runner.jar"


@dataclass(frozen=True)
class RenderContext:
    """One region's deployment, the built artifact, and the user's extra app overrides (``--set``)."""

    deployment: Deployment
    artifact: Artifact
    app_overrides: tuple[str, ...] = ()
    profile_source: str = "conf/emr/deploy.yaml"

    @cached_property
    def location(self) -> ArtifactLocation:
        return ArtifactLocation(
            self.deployment.s3.artifact_bucket, self.deployment.s3.artifact_prefix, self.artifact
        )

    @property
    def job_overrides(self) -> tuple[str, ...]:
        """deploy.yaml app_settings, then the user's --set: what every job receives as --set."""
        return (*(f"{k}={v}" for k, v in self.deployment.app_settings.items()), *self.app_overrides)

    @cached_property
    def app_settings(self) -> Settings:
        """The settings the job will build on the cluster (shipped conf + overrides, no local env)."""
        if self.artifact.root is None:
            raise ValueError("the artifact's settings file is needed locally to validate the app settings")
        conf_file = self.artifact.root / self.artifact.require(self.artifact.conf_file)
        return load_settings(self.deployment.app_profile, self.job_overrides, env={}, conf_file=conf_file)

    def checked(self, target: Target) -> RenderContext:
        """This context, once the target's sections and the app settings are free of placeholders."""
        if getattr(self.deployment, target) is None:
            raise ValueError(f"{self.profile_source} has no {target} section: add it to deploy to {target}")
        require_filled(self.deployment, _SECTIONS[target], self.profile_source)
        found = list(find_placeholders(self.app_settings))
        if found:
            listed = ", ".join(f"{k} = {v!r}" for k, v in found)
            raise PlaceholderError(
                f"app settings for {self.deployment.region} still hold placeholders: {listed}. "
                f"Set them under app_settings in {self.profile_source} (or in "
                f"{self.artifact.conf_file})."
            )
        return self

    def submission(self, job: str, release_label: str) -> JobSubmission:
        return job_submission(
            self.deployment, self.location, job, runtime_for_release(release_label), self.job_overrides
        )


def _tags(ctx: RenderContext, extra: dict[str, str]) -> dict[str, str]:
    """Every resource says which build it runs, so a console view leads back to the artifact."""
    return {
        **extra,
        "marketsignals:version": ctx.artifact.version,
        "marketsignals:build": ctx.artifact.build_id,
    }


def _drop_none(request: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if v is not None}


# --- EMR on EC2 -------------------------------------------------------------------------------------


def create_security_configuration(ctx: RenderContext) -> dict[str, Any]:
    """CreateSecurityConfiguration: KMS at rest (S3, local disks, EBS), TLS in transit (PEM zip in S3)."""
    security = ctx.deployment.section("security")
    document = {
        "EncryptionConfiguration": {
            "EnableInTransitEncryption": True,
            "EnableAtRestEncryption": True,
            "InTransitEncryptionConfiguration": {
                "TLSCertificateConfiguration": {
                    "CertificateProviderType": "PEM",
                    "S3Object": security.tls_certificates_zip,
                },
            },
            "AtRestEncryptionConfiguration": {
                "S3EncryptionConfiguration": {"EncryptionMode": "SSE-KMS", "AwsKmsKey": security.kms_key_arn},
                "LocalDiskEncryptionConfiguration": {
                    "EncryptionKeyProviderType": "AwsKms",
                    "AwsKmsKey": security.kms_key_arn,
                    "EnableEbsEncryption": True,
                },
            },
        }
    }
    return {
        "Name": security.configuration_name,
        "SecurityConfiguration": json.dumps(document, sort_keys=True),
    }


def bootstrap_actions(ctx: RenderContext) -> list[dict[str, Any]]:
    """The bootstrap action installing this build on every node (bootstrap/install-marketsignals.sh)."""
    ec2 = ctx.deployment.section("ec2")
    return [
        {
            "Name": f"install {ctx.artifact.name} {ctx.artifact.version} ({ctx.artifact.build_id})",
            "ScriptBootstrapAction": {
                "Path": ctx.location.uri(BOOTSTRAP_SCRIPT),
                "Args": ["--artifact", ctx.location.base_uri, "--install-dir", ec2.install_dir],
            },
        }
    ]


def cluster_configurations(ctx: RenderContext) -> list[dict[str, Any]]:
    """spark-defaults for every job, and PYSPARK_PYTHON from the environment the bootstrap installed.

    Steps ship their own copy of the environment (``--archives``) and point Python into it, so a step
    always runs the build it names; the cluster-wide PYSPARK_PYTHON serves everything else on the
    cluster (pyspark shell, notebooks) with the same interpreter and packages.
    """
    ec2 = ctx.deployment.section("ec2")
    return [
        {"Classification": "spark-defaults", "Properties": dict(ctx.deployment.spark_defaults)},
        {
            "Classification": "spark-env",
            "Properties": {},
            "Configurations": [
                {
                    "Classification": "export",
                    "Properties": {"PYSPARK_PYTHON": f"{ec2.install_dir}/{INSTALLED_PYTHON}"},
                },
            ],
        },
    ]


def job_flow_step(ctx: RenderContext, job: str) -> dict[str, Any]:
    """One step: ``spark-submit --deploy-mode cluster`` through command-runner.jar."""
    ec2 = ctx.deployment.section("ec2")
    submission = ctx.submission(job, ec2.release_label)
    return {
        "Name": submission.name,
        "ActionOnFailure": ctx.deployment.job(job).action_on_failure,
        "HadoopJarStep": {
            "Jar": COMMAND_RUNNER,
            "Args": [
                "spark-submit",
                "--deploy-mode",
                "cluster",
                "--master",
                "yarn",
                *submission.spark_submit_args("yarn"),
            ],
        },
    }


def add_job_flow_steps(
    ctx: RenderContext, jobs: Sequence[str], cluster_id: str | None = None
) -> dict[str, Any]:
    """AddJobFlowSteps for ``jobs`` (``JobFlowId`` omitted when ``cluster_id`` is None)."""
    return _drop_none({"JobFlowId": cluster_id, "Steps": [job_flow_step(ctx, job) for job in jobs]})


def _instance_fleet(ctx: RenderContext, fleet_type: str) -> dict[str, Any]:
    ec2 = ctx.deployment.section("ec2")
    fleet = getattr(ec2, fleet_type.lower())
    volume = _drop_none(
        {
            "VolumeType": ec2.ebs.volume_type,
            "SizeInGB": ec2.ebs.size_gb,
            "Iops": ec2.ebs.iops,
            "Throughput": ec2.ebs.throughput_mibps,
        }
    )
    ebs = {
        "EbsBlockDeviceConfigs": [
            {"VolumeSpecification": volume, "VolumesPerInstance": ec2.ebs.volumes_per_instance}
        ],
        "EbsOptimized": True,
    }
    launch: dict[str, Any] = {"OnDemandSpecification": {"AllocationStrategy": "lowest-price"}}
    if fleet.spot:
        launch["SpotSpecification"] = {
            "AllocationStrategy": ec2.spot.allocation_strategy,
            "TimeoutDurationMinutes": ec2.spot.timeout_minutes,
            "TimeoutAction": ec2.spot.timeout_action,
        }
    return {
        "Name": fleet_type.lower(),
        "InstanceFleetType": fleet_type,
        "TargetOnDemandCapacity": fleet.on_demand,
        "TargetSpotCapacity": fleet.spot,
        # Weight 1: capacity units are instances, which the managed scaling limits count.
        "InstanceTypeConfigs": [
            {"InstanceType": t, "WeightedCapacity": 1, "EbsConfiguration": ebs} for t in fleet.instance_types
        ],
        "LaunchSpecifications": launch,
    }


def run_job_flow(ctx: RenderContext, jobs: Sequence[str] = (), transient: bool = False) -> dict[str, Any]:
    """RunJobFlow: the long-running streaming cluster, or a transient one that ends when idle.

    A transient cluster created with steps terminates when they are done; without steps it waits
    for work and the auto-termination policy ends it after ``transient_idle_timeout_s`` idle.
    """
    d = ctx.deployment
    ec2, security = d.section("ec2"), d.security
    fleets = ["MASTER", "CORE", *(["TASK"] if ec2.task else [])]
    instances = _drop_none(
        {
            "InstanceFleets": [_instance_fleet(ctx, f) for f in fleets],
            "Ec2SubnetIds": list(ec2.subnet_ids),
            "Ec2KeyName": ec2.ec2_key_name,
            "EmrManagedMasterSecurityGroup": ec2.emr_managed_master_security_group,
            "EmrManagedSlaveSecurityGroup": ec2.emr_managed_slave_security_group,
            "ServiceAccessSecurityGroup": ec2.service_access_security_group,
            "KeepJobFlowAliveWhenNoSteps": not (transient and jobs),
            "TerminationProtected": ec2.termination_protected and not transient,
        }
    )
    scaling = ec2.managed_scaling
    request = {
        "Name": f"{d.name}-{'transient' if transient else 'stream'}",
        "ReleaseLabel": ec2.release_label,
        "LogUri": d.s3.log_uri,
        "LogEncryptionKmsKeyId": security.kms_key_arn if security else None,
        "Applications": [{"Name": app} for app in ec2.applications],
        "ServiceRole": ec2.service_role,
        "JobFlowRole": ec2.instance_profile,
        "SecurityConfiguration": security.configuration_name if security else None,
        "Instances": instances,
        "BootstrapActions": bootstrap_actions(ctx),
        "Configurations": cluster_configurations(ctx),
        "Steps": [job_flow_step(ctx, job) for job in jobs] or None,
        "StepConcurrencyLevel": ec2.step_concurrency_level,
        "ManagedScalingPolicy": {
            "ComputeLimits": {
                "UnitType": "InstanceFleetUnits",
                "MinimumCapacityUnits": scaling.minimum_units,
                "MaximumCapacityUnits": scaling.maximum_units,
                "MaximumOnDemandCapacityUnits": scaling.maximum_on_demand_units,
                "MaximumCoreCapacityUnits": scaling.maximum_core_units,
            }
        }
        if scaling
        else None,
        "AutoTerminationPolicy": {"IdleTimeout": ec2.transient_idle_timeout_s} if transient else None,
        "EbsRootVolumeSize": ec2.root_volume_size_gb,
        "VisibleToAllUsers": True,
        "Tags": [{"Key": k, "Value": v} for k, v in _tags(ctx, ec2.tags).items()],
    }
    return _drop_none(request)


# --- EMR Serverless ---------------------------------------------------------------------------------


def create_application(ctx: RenderContext) -> dict[str, Any]:
    """CreateApplication: pre-initialised driver/executor workers, a ceiling, auto start and stop."""
    d = ctx.deployment
    sls = d.section("serverless")

    def workers(w: Any) -> dict[str, Any]:
        return {
            "workerCount": w.workers,
            "workerConfiguration": {"cpu": w.cpu, "memory": w.memory, "disk": w.disk},
        }

    network = (
        {"subnetIds": list(sls.subnet_ids), "securityGroupIds": list(sls.security_group_ids)}
        if sls.subnet_ids
        else None
    )
    return _drop_none(
        {
            "name": d.name,
            "releaseLabel": sls.release_label,
            "type": "SPARK",
            "architecture": sls.architecture,
            "initialCapacity": {"DRIVER": workers(sls.driver), "EXECUTOR": workers(sls.executor)},
            "maximumCapacity": {
                "cpu": sls.maximum_cpu,
                "memory": sls.maximum_memory,
                "disk": sls.maximum_disk,
            },
            "autoStartConfiguration": {"enabled": True},
            "autoStopConfiguration": {"enabled": True, "idleTimeoutMinutes": sls.auto_stop_idle_minutes},
            "networkConfiguration": network,
            "imageConfiguration": {"imageUri": sls.image_uri} if sls.image_uri else None,
            "runtimeConfiguration": [
                {"classification": "spark-defaults", "properties": dict(d.spark_defaults)}
            ],
            "tags": _tags(ctx, sls.tags),
        }
    )


def _s3_monitoring(ctx: RenderContext, target: str) -> dict[str, Any]:
    security = ctx.deployment.security
    return _drop_none(
        {
            "logUri": f"{ctx.deployment.s3.log_uri}{target}/",
            "encryptionKeyArn": security.kms_key_arn if security and target == "serverless" else None,
        }
    )


def start_serverless_job_run(
    ctx: RenderContext, job: str, application_id: str | None = None
) -> dict[str, Any]:
    """StartJobRun on the application; the streaming job runs in STREAMING mode (restarted on failure)."""
    d = ctx.deployment
    sls = d.section("serverless")
    spec = d.job(job)
    submission = ctx.submission(job, sls.release_label)
    retry = (
        {"maxFailedAttemptsPerHour": spec.max_failed_attempts_per_hour}
        if spec.streaming
        else {"maxAttempts": spec.max_attempts}
    )
    return _drop_none(
        {
            "applicationId": application_id,
            "name": submission.name,
            "executionRoleArn": sls.execution_role_arn,
            "mode": "STREAMING" if spec.streaming else "BATCH",
            "jobDriver": {
                "sparkSubmit": {
                    "entryPoint": submission.entry_point,
                    "entryPointArguments": list(submission.arguments),
                    "sparkSubmitParameters": submission.spark_submit_parameters("serverless"),
                }
            },
            "configurationOverrides": {
                "monitoringConfiguration": {"s3MonitoringConfiguration": _s3_monitoring(ctx, "serverless")}
            },
            "retryPolicy": retry,
            "executionTimeoutMinutes": None if spec.streaming else spec.execution_timeout_minutes,
            "tags": _tags(ctx, sls.tags),
        }
    )


# --- EMR on EKS -------------------------------------------------------------------------------------


def create_virtual_cluster(ctx: RenderContext) -> dict[str, Any]:
    """CreateVirtualCluster: registers the EKS namespace with EMR."""
    eks = ctx.deployment.section("eks")
    return {
        "name": eks.virtual_cluster_name,
        "containerProvider": {
            "id": eks.cluster_name,
            "type": "EKS",
            "info": {"eksInfo": {"namespace": eks.namespace}},
        },
        "tags": _tags(ctx, eks.tags),
    }


def start_eks_job_run(ctx: RenderContext, job: str, virtual_cluster_id: str | None = None) -> dict[str, Any]:
    """StartJobRun on the virtual cluster (``virtualClusterId`` omitted when None)."""
    d = ctx.deployment
    eks = d.section("eks")
    spec = d.job(job)
    submission = ctx.submission(job, eks.release_label)
    return _drop_none(
        {
            "virtualClusterId": virtual_cluster_id,
            "name": submission.name,
            "executionRoleArn": eks.execution_role_arn,
            "releaseLabel": eks.release_label,
            "jobDriver": {
                "sparkSubmitJobDriver": {
                    "entryPoint": submission.entry_point,
                    "entryPointArguments": list(submission.arguments),
                    "sparkSubmitParameters": submission.spark_submit_parameters("kubernetes"),
                }
            },
            "configurationOverrides": {
                "applicationConfiguration": [
                    {"classification": "spark-defaults", "properties": dict(d.spark_defaults)}
                ],
                "monitoringConfiguration": {
                    "persistentAppUI": "ENABLED",
                    "s3MonitoringConfiguration": _s3_monitoring(ctx, "eks"),
                },
            },
            "retryPolicyConfiguration": {"maxAttempts": spec.max_attempts},
            "tags": _tags(ctx, eks.tags),
        }
    )


# --- everything, for `marketsignals emr render` -------------------------------------------------------


def configured_targets(deployment: Deployment) -> list[Target]:
    return [t for t in TARGETS if getattr(deployment, t) is not None]


class Rendered(NamedTuple):
    """A rendered request and the API operation it is for."""

    service: str
    operation: str
    request: dict[str, Any]


# Members a rendered file leaves out, because they are only known at run time (the CLI passes them).
RUNTIME_IDS = ("JobFlowId", "applicationId", "virtualClusterId")


def render_requests(ctx: RenderContext, targets: Iterable[Target]) -> dict[str, Rendered]:
    """File name -> request for each target, each validated against botocore's service model."""
    jobs = list(ctx.deployment.jobs)
    streaming = [j for j in jobs if ctx.deployment.jobs[j].streaming]
    batch = [j for j in jobs if not ctx.deployment.jobs[j].streaming]
    rendered: dict[str, Rendered] = {}
    for target in targets:
        ctx.checked(target)
        if target == "ec2":
            rendered["emr-create-security-configuration.json"] = Rendered(
                "emr", "CreateSecurityConfiguration", create_security_configuration(ctx)
            )
            rendered["emr-run-job-flow.json"] = Rendered("emr", "RunJobFlow", run_job_flow(ctx, streaming))
            rendered["emr-run-job-flow-transient.json"] = Rendered(
                "emr", "RunJobFlow", run_job_flow(ctx, batch, transient=True)
            )
            rendered["emr-add-job-flow-steps.json"] = Rendered(
                "emr", "AddJobFlowSteps", add_job_flow_steps(ctx, jobs)
            )
        elif target == "serverless":
            rendered["emr-serverless-create-application.json"] = Rendered(
                "emr-serverless", "CreateApplication", create_application(ctx)
            )
            for job in jobs:
                rendered[f"emr-serverless-start-job-run-{job}.json"] = Rendered(
                    "emr-serverless", "StartJobRun", start_serverless_job_run(ctx, job)
                )
        else:
            rendered["emr-containers-create-virtual-cluster.json"] = Rendered(
                "emr-containers", "CreateVirtualCluster", create_virtual_cluster(ctx)
            )
            for job in jobs:
                rendered[f"emr-containers-start-job-run-{job}.json"] = Rendered(
                    "emr-containers", "StartJobRun", start_eks_job_run(ctx, job)
                )
    for item in rendered.values():
        validate_request(item.service, item.operation, item.request, assumed=RUNTIME_IDS)
    return rendered
