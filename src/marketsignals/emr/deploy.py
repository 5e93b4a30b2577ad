"""The AWS calls behind ``marketsignals emr``: upload the artifact, create and submit, wait for states.

This is the edge: the requests come ready-made from :mod:`marketsignals.emr.api_requests`, and here
they are only sent (boto3, one region per :class:`Aws`), with the create-if-missing lookups that make
a second run reuse what the first created (security configuration, Serverless application, EKS
virtual cluster) rather than pile up duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError

from marketsignals import stop_request
from marketsignals.emr import api_requests
from marketsignals.emr.api_requests import RenderContext
from marketsignals.emr.artifact import MANIFEST, sha256_file
from marketsignals.emr.deployment import require_filled
from marketsignals.emr.service_model import validate_request

Report = Callable[[str], None]
Until = Literal["running", "finished"]

# Terminal states per API, and the "running" state a streaming job stays in for good.
_STEP_FINAL = {"COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED"}
_STEP_OK = {"COMPLETED", "RUNNING"}
_CLUSTER_FINAL = {"TERMINATED", "TERMINATED_WITH_ERRORS"}
_SERVERLESS_FINAL = {"SUCCESS", "FAILED", "CANCELLED"}
_SERVERLESS_OK = {"SUCCESS", "RUNNING"}
_EKS_FINAL = {"COMPLETED", "FAILED", "CANCELLED"}
_EKS_OK = {"COMPLETED", "RUNNING"}


@dataclass
class Aws:
    """boto3 clients for one region (``endpoint_url`` points them at moto in tests)."""

    region: str
    endpoint_url: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    def call(self, service: str, method: str, request: dict[str, Any]) -> Any:
        """Send a rendered request, after checking it against the service model (enums included)."""
        client = self.client(service)
        validate_request(service, client.meta.method_to_api_mapping[method], request)
        return getattr(client, method)(**request)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto3.session.Session().client(
                service, region_name=self.region, endpoint_url=self.endpoint_url
            )
        return self._clients[service]


# --- artifact ---------------------------------------------------------------------------------------


def upload_artifact(aws: Aws, ctx: RenderContext, report: Report = print) -> list[str]:
    """Upload dist/ to the build's S3 prefix; files already there with the same sha256 are skipped.

    The manifest goes last: a bootstrap action that finds it can rely on every file it lists.
    Returns the keys uploaded.
    """
    require_filled(ctx.deployment, ("s3",), ctx.profile_source)
    artifact, location = ctx.artifact, ctx.location
    if artifact.root is None:
        raise ValueError("no local artifact to upload")
    artifact.verify()
    s3 = aws.client("s3")
    uploaded = []
    for relpath in [*sorted(artifact.files), MANIFEST]:
        key = f"{location.key_prefix}/{relpath}"
        local = artifact.root / relpath
        digest = artifact.files[relpath]["sha256"] if relpath != MANIFEST else sha256_file(local)
        if _s3_sha256(s3, location.bucket, key) == digest:
            report(f"  = s3://{location.bucket}/{key} (unchanged)")
            continue
        extra = {"Metadata": {"sha256": digest}}
        s3.upload_file(str(local), location.bucket, key, ExtraArgs=extra)
        uploaded.append(key)
        report(f"  + s3://{location.bucket}/{key} ({local.stat().st_size / 1e6:.1f} MB)")
    report(f"artifact {artifact.version}/{artifact.build_id} at {location.base_uri}/")
    return uploaded


def _s3_sha256(s3: Any, bucket: str, key: str) -> str | None:
    try:
        return s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def require_uploaded(aws: Aws, ctx: RenderContext) -> None:
    """Refuse to start anything whose artifact is not in S3 (it would fail later, on the cluster)."""
    key = f"{ctx.location.key_prefix}/{MANIFEST}"
    try:
        aws.client("s3").head_object(Bucket=ctx.location.bucket, Key=key)
    except ClientError:
        raise ValueError(
            f"artifact {ctx.location.base_uri}/ is not uploaded in {aws.region}: "
            "run `marketsignals emr upload` first"
        ) from None


# --- stopping the streaming job ---------------------------------------------------------------------


def _stop_request_key(ctx: RenderContext) -> tuple[str, str] | None:
    """The streaming job's stop request (marketsignals/stop_request.py) as (bucket, key); None for a
    checkpoint outside S3."""
    require_filled(ctx.deployment, ("s3", "app_settings"), ctx.profile_source)
    checkpoint = ctx.app_settings.stream.checkpoint
    if urlparse(checkpoint).scheme not in stop_request.S3_SCHEMES:
        return None
    return stop_request.s3_key(stop_request.location(checkpoint))


def request_stop(aws: Aws, ctx: RenderContext, report: Report = print) -> str:
    """Ask the streaming job on the deployment's checkpoint to stop after its batch in flight: its driver
    finds the request within stream.stop_check, stops the query, removes the request and exits 0. (The
    platforms' own stops -- YARN's kill, CancelJobRun -- signal the JVM, which cuts the batch.)"""
    stream = ctx.app_settings.stream
    if _stop_request_key(ctx) is None:
        raise ValueError(f"stream.checkpoint {stream.checkpoint} is not on S3: write any file at "
                         f"{stop_request.location(stream.checkpoint)} to stop the job")
    written = stop_request.write(stream.checkpoint, aws.client("s3"))  # StopRequestError: a ValueError, said as is
    report(f"stop requested at {written}: the streaming job stops within {stream.stop_check} "
           f"(stream.stop_check), once its batch in flight is committed (at most {stream.stop_grace}), and ends")
    return written


def clear_stop_request(aws: Aws, ctx: RenderContext, jobs: Sequence[str], report: Report = print) -> None:
    """Before a streaming job starts: remove a stop request no job acted on (written while none ran), which
    would keep the new job from starting its query."""
    if not any(ctx.deployment.job(job).streaming for job in jobs):
        return
    found = _stop_request_key(ctx)
    if found is None:
        return
    bucket, key = found
    s3 = aws.client("s3")
    if not stop_request.s3_exists(s3, bucket, key):
        return
    s3.delete_object(Bucket=bucket, Key=key)
    report(f"removed a stop request no job acted on: s3://{bucket}/{key}")


# --- EMR on EC2 -------------------------------------------------------------------------------------


def ensure_security_configuration(aws: Aws, ctx: RenderContext, report: Report = print) -> str:
    request = api_requests.create_security_configuration(ctx)
    emr = aws.client("emr")
    try:
        emr.describe_security_configuration(Name=request["Name"])
        report(f"security configuration {request['Name']} exists")
    except ClientError:
        aws.call("emr", "create_security_configuration", request)
        report(f"security configuration {request['Name']} created")
    return str(request["Name"])


def create_cluster(
    aws: Aws, ctx: RenderContext, jobs: Sequence[str], transient: bool, report: Report = print
) -> str:
    """RunJobFlow (after the artifact and security configuration are in place); returns the cluster id."""
    ctx.checked("ec2")
    require_uploaded(aws, ctx)
    if ctx.deployment.security:
        ensure_security_configuration(aws, ctx, report)
    clear_stop_request(aws, ctx, jobs, report)
    request = api_requests.run_job_flow(ctx, jobs, transient=transient)
    cluster_id = str(aws.call("emr", "run_job_flow", request)["JobFlowId"])
    report(
        f"cluster {cluster_id} ({request['Name']}, {request['ReleaseLabel']}) starting in {aws.region}"
        + (f" with steps: {', '.join(jobs)}" if jobs else "")
    )
    return cluster_id


def add_steps(
    aws: Aws, ctx: RenderContext, cluster_id: str, jobs: Sequence[str], report: Report = print
) -> list[str]:
    ctx.checked("ec2")
    require_uploaded(aws, ctx)
    clear_stop_request(aws, ctx, jobs, report)
    request = api_requests.add_job_flow_steps(ctx, jobs, cluster_id=cluster_id)
    step_ids = [str(s) for s in aws.call("emr", "add_job_flow_steps", request)["StepIds"]]
    for job, step_id in zip(jobs, step_ids, strict=True):
        report(f"step {step_id} ({job}) added to {cluster_id}")
    return step_ids


# --- EMR Serverless ---------------------------------------------------------------------------------


def ensure_application(aws: Aws, ctx: RenderContext, report: Report = print) -> str:
    """The application named after the deployment, created on first use."""
    request = api_requests.create_application(ctx)
    client = aws.client("emr-serverless")
    for page in client.get_paginator("list_applications").paginate():
        for app in page["applications"]:
            if app["name"] == request["name"] and app["state"] not in ("TERMINATED",):
                if app.get("releaseLabel") != request["releaseLabel"]:
                    report(
                        f"warning: application {app['id']} runs {app.get('releaseLabel')}, "
                        f"the deployment says {request['releaseLabel']}"
                    )
                report(f"application {app['id']} ({app['name']}) exists, {app['state']}")
                return str(app["id"])
    app_id = str(aws.call("emr-serverless", "create_application", request)["applicationId"])
    report(f"application {app_id} ({request['name']}, {request['releaseLabel']}) created")
    return app_id


def submit_serverless(aws: Aws, ctx: RenderContext, job: str, report: Report = print) -> tuple[str, str]:
    ctx.checked("serverless")
    require_uploaded(aws, ctx)
    clear_stop_request(aws, ctx, [job], report)
    app_id = ensure_application(aws, ctx, report)
    request = api_requests.start_serverless_job_run(ctx, job, application_id=app_id)
    run_id = str(aws.call("emr-serverless", "start_job_run", request)["jobRunId"])
    report(f"job run {run_id} ({job}, {request['mode']}) started on application {app_id}")
    return app_id, run_id


# --- EMR on EKS -------------------------------------------------------------------------------------


def ensure_virtual_cluster(aws: Aws, ctx: RenderContext, report: Report = print) -> str:
    request = api_requests.create_virtual_cluster(ctx)
    client = aws.client("emr-containers")
    provider = request["containerProvider"]
    for page in client.get_paginator("list_virtual_clusters").paginate(
        containerProviderId=provider["id"], containerProviderType="EKS", states=["RUNNING"]
    ):
        for vc in page["virtualClusters"]:
            if vc["name"] == request["name"]:
                report(f"virtual cluster {vc['id']} ({vc['name']}) exists")
                return str(vc["id"])
    vc_id = str(aws.call("emr-containers", "create_virtual_cluster", request)["id"])
    report(f"virtual cluster {vc_id} ({request['name']}) created on {provider['id']}")
    return vc_id


def submit_eks(aws: Aws, ctx: RenderContext, job: str, report: Report = print) -> tuple[str, str]:
    ctx.checked("eks")
    require_uploaded(aws, ctx)
    clear_stop_request(aws, ctx, [job], report)
    vc_id = ensure_virtual_cluster(aws, ctx, report)
    request = api_requests.start_eks_job_run(ctx, job, virtual_cluster_id=vc_id)
    run_id = str(aws.call("emr-containers", "start_job_run", request)["id"])
    report(f"job run {run_id} ({job}) started on virtual cluster {vc_id}")
    return vc_id, run_id


# --- status -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One look at a cluster or job run: a line per unit of work, and whether it is settled and fine."""

    lines: list[str]
    settled: bool
    ok: bool


def cluster_snapshot(aws: Aws, cluster_id: str, step_ids: Sequence[str], until: Until) -> Snapshot:
    emr = aws.client("emr")
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    state = cluster["Status"]["State"]
    log_uri = cluster.get("LogUri", "").replace("s3n://", "s3://")
    steps = [
        s for page in emr.get_paginator("list_steps").paginate(ClusterId=cluster_id) for s in page["Steps"]
    ]
    if step_ids:
        steps = [s for s in steps if s["Id"] in step_ids]
    reason = cluster["Status"].get("StateChangeReason", {}).get("Message")
    # EMR copies logs to S3 every few minutes; a step's spark-submit output is under steps/<id>/, the
    # driver's and executors' (YARN cluster mode) under containers/<application id>/.
    where = f"  logs: {log_uri}{cluster_id}/ (driver/executors: containers/)" if log_uri else ""
    lines = [f"cluster {cluster_id} {state}{f' ({reason})' if reason else ''}{where}"]
    for step in steps:
        s_state = step["Status"]["State"]
        detail = step["Status"].get("FailureDetails", {}).get("Reason", "")
        logs = f"{log_uri}{cluster_id}/steps/{step['Id']}/" if log_uri else "(no LogUri)"
        lines.append(
            f"  step {step['Id']} {step['Name']}: {s_state}{' - ' + detail if detail else ''}  logs: {logs}"
        )
    step_states = [s["Status"]["State"] for s in steps]
    steps_ok = all(s in _STEP_OK for s in step_states)
    if state in _CLUSTER_FINAL:  # a transient cluster ends normally as TERMINATED after its steps
        return Snapshot(lines, settled=True, ok=state == "TERMINATED" and bool(steps) and steps_ok)
    settled_states = _STEP_FINAL if until == "finished" else _STEP_FINAL | {"RUNNING"}
    settled = all(s in settled_states for s in step_states) and (
        bool(steps) or state in ("WAITING", "RUNNING")
    )
    return Snapshot(lines, settled=settled, ok=steps_ok)


def serverless_snapshot(aws: Aws, application_id: str, job_run_id: str, until: Until) -> Snapshot:
    client = aws.client("emr-serverless")
    run = client.get_job_run(applicationId=application_id, jobRunId=job_run_id)["jobRun"]
    log_uri = _s3_log_uri(run)
    logs = (
        f"{log_uri}applications/{application_id}/jobs/{job_run_id}/"
        if log_uri
        else "the application's Spark UI (no S3 log URI set)"
    )
    return _job_run_snapshot("serverless", job_run_id, run, logs, _SERVERLESS_FINAL, _SERVERLESS_OK, until)


def eks_snapshot(aws: Aws, virtual_cluster_id: str, job_run_id: str, until: Until) -> Snapshot:
    client = aws.client("emr-containers")
    run = client.describe_job_run(id=job_run_id, virtualClusterId=virtual_cluster_id)["jobRun"]
    log_uri = _s3_log_uri(run)
    logs = f"{log_uri}{virtual_cluster_id}/jobs/{job_run_id}/" if log_uri else "(no S3 log URI set)"
    return _job_run_snapshot("eks", job_run_id, run, logs, _EKS_FINAL, _EKS_OK, until)


def _s3_log_uri(run: dict[str, Any]) -> str | None:
    """The job run's S3 log folder (with a trailing slash), as sent in its monitoring configuration."""
    overrides = run.get("configurationOverrides") or {}
    uri = overrides.get("monitoringConfiguration", {}).get("s3MonitoringConfiguration", {}).get("logUri")
    return uri.rstrip("/") + "/" if uri else None


def _job_run_snapshot(
    kind: str, run_id: str, run: dict[str, Any], logs: str, final: set[str], ok: set[str], until: Until
) -> Snapshot:
    state = run["state"]
    detail = run.get("stateDetails") or run.get("failureReason") or ""
    line = f"{kind} job run {run_id} ({run.get('name', '')}): {state}{' - ' + detail if detail else ''}"
    settled = final if until == "finished" else final | {"RUNNING"}
    return Snapshot([f"{line}  logs: {logs}"], settled=state in settled, ok=state in ok)


def wait(
    look: Callable[[], Snapshot],
    timeout_s: float,
    interval_s: float,
    report: Report = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Snapshot:
    """Poll until settled or ``timeout_s``; print the state lines whenever they change (the progress)."""
    start = clock()
    last: list[str] = []
    while True:
        snapshot = look()
        if snapshot.lines != last:
            elapsed = int(clock() - start)
            for line in snapshot.lines:
                report(f"[{elapsed:>4}s] {line}")
            last = snapshot.lines
        if snapshot.settled or clock() - start >= timeout_s:
            return snapshot
        sleep(interval_s)
