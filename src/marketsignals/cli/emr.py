"""``marketsignals emr ACTION``: render, upload and run the product on Amazon EMR (EC2, Serverless, EKS).

Everything is rendered from conf/emr/deploy.yaml + the app settings shipped in the artifact
(dist/conf/emr.yaml) + dist/manifest.json; ``--set section.key=value`` items are passed on to every
job. The ``--profile`` setting of the other commands does not apply: the jobs load the deployment's
own app profile on the cluster. Placeholders left in deploy.yaml stop every action before AWS is called.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from marketsignals.cli import UserError
from marketsignals.emr import api_requests, aws_cli, deploy
from marketsignals.emr.api_requests import TARGETS, RenderContext
from marketsignals.emr.artifact import Artifact
from marketsignals.emr.deployment import DEFAULT_PROFILE, Deployment, load_profile
from marketsignals.settings import Settings

ACTIONS = ("render", "upload", "create-cluster", "add-steps", "submit-serverless", "submit-eks", "status", "stop")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=ACTIONS,
        help=(
            "render: print (or --write) every request and aws CLI command; upload: dist/ to S3; "
            "create-cluster: EMR on EC2 (--with-steps to start the jobs); add-steps: to --cluster-id; "
            "submit-serverless / submit-eks: start a job run (creating the application / virtual cluster "
            "on first use); status: wait for a cluster's steps or a job run, print states and log locations; "
            "stop: ask the streaming job to stop after its batch in flight (a stop request in its checkpoint; "
            "with the ids status takes, then wait until it has finished)"
        ),
    )
    parser.add_argument(
        "--deploy", type=Path, default=DEFAULT_PROFILE, help=f"deployment profile (default {DEFAULT_PROFILE})"
    )
    parser.add_argument(
        "--deploy-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a deployment profile value, e.g. ec2.release_label=emr-7.12.0 (repeatable)",
    )
    parser.add_argument("--dist", type=Path, default=Path("dist"), help="the built artifact (default dist/)")
    parser.add_argument(
        "--region",
        action="append",
        default=[],
        help="AWS region (repeatable; default: the profile's regions)",
    )
    parser.add_argument("--endpoint-url", help="AWS endpoint (e.g. a moto server for tests)")
    parser.add_argument(
        "--job",
        action="append",
        default=[],
        help="job(s) of the profile to run (default: the streaming job; transient clusters: the batch jobs)",
    )
    parser.add_argument(
        "--target",
        action="append",
        choices=TARGETS,
        default=[],
        help="render: only these platforms (default: every section the profile has)",
    )
    parser.add_argument(
        "--write",
        nargs="?",
        const="",
        metavar="DIR",
        help="render: write the files to DIR/<region>/ (default conf/emr/rendered)",
    )
    parser.add_argument("--with-steps", action="store_true", help="create-cluster: add the jobs as steps")
    parser.add_argument(
        "--transient",
        action="store_true",
        help="create-cluster: a cluster that terminates after its steps or when idle",
    )
    parser.add_argument("--cluster-id", help="add-steps / status / stop: the EMR cluster (j-...)")
    parser.add_argument("--step-id", action="append", default=[], help="status / stop: only these steps")
    parser.add_argument("--application-id", help="status / stop: the EMR Serverless application")
    parser.add_argument("--virtual-cluster-id", help="status / stop: the EMR on EKS virtual cluster")
    parser.add_argument("--job-run-id", help="status / stop: the Serverless / EKS job run")
    parser.add_argument(
        "--until",
        choices=["running", "finished"],
        default="running",
        help="status: wait until running (a streaming job never finishes) or finished",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="status: seconds to wait (default 1800)"
    )
    parser.add_argument(
        "--interval", type=float, default=15.0, help="status: seconds between polls (default 15)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    profile = load_profile(args.deploy, args.deploy_set)
    regions = args.region or profile.regions
    if not regions:
        raise UserError(f"no region: pass --region or list regions in {args.deploy}")
    if args.action == "status":
        if len(regions) != 1:
            raise UserError("status looks at one region: pass exactly one --region")
        return _status(args, deploy.Aws(regions[0], args.endpoint_url))
    artifact = Artifact.load(args.dist)
    contexts = [
        RenderContext(profile.for_region(r), artifact, tuple(args.overrides), profile.source) for r in regions
    ]
    if args.action == "render":
        return _render(args, contexts)
    if args.action == "stop" and _status_ids(args) and len(regions) != 1:
        raise UserError("stop waits for a job in one region: pass exactly one --region with the job's ids")
    failures = 0
    for ctx in contexts:
        region = ctx.deployment.region
        print(f"== {region}")
        aws = deploy.Aws(region, args.endpoint_url)
        try:
            _act(args, ctx, aws)
        except (ClientError, BotoCoreError) as exc:  # one region failing does not stop the others
            failures += 1
            print(f"{region}: {args.action} failed: {exc}")
    if args.action == "stop" and not failures and _status_ids(args):
        args.until = "finished"
        return _status(args, deploy.Aws(regions[0], args.endpoint_url))
    return 1 if failures else 0


def _status_ids(args: argparse.Namespace) -> bool:
    return bool(args.cluster_id or args.application_id or args.virtual_cluster_id or args.job_run_id)


def _act(args: argparse.Namespace, ctx: RenderContext, aws: deploy.Aws) -> None:
    region = ctx.deployment.region
    if args.action == "upload":
        deploy.upload_artifact(aws, ctx)
    elif args.action == "create-cluster":
        jobs = _jobs(args, ctx.deployment, batch=args.transient) if args.with_steps else []
        cluster_id = deploy.create_cluster(aws, ctx, jobs, transient=args.transient)
        print(f"next: marketsignals emr status --region {region} --cluster-id {cluster_id}")
    elif args.action == "add-steps":
        if not args.cluster_id:
            raise UserError("add-steps needs --cluster-id j-...")
        deploy.add_steps(aws, ctx, args.cluster_id, _jobs(args, ctx.deployment))
        print(f"next: marketsignals emr status --region {region} --cluster-id {args.cluster_id}")
    elif args.action == "stop":
        deploy.request_stop(aws, ctx)
    elif args.action == "submit-serverless":
        for job in _jobs(args, ctx.deployment):
            app_id, run_id = deploy.submit_serverless(aws, ctx, job)
            print(
                f"next: marketsignals emr status --region {region} --application-id {app_id} "
                f"--job-run-id {run_id}"
            )
    elif args.action == "submit-eks":
        for job in _jobs(args, ctx.deployment):
            vc_id, run_id = deploy.submit_eks(aws, ctx, job)
            print(
                f"next: marketsignals emr status --region {region} --virtual-cluster-id {vc_id} "
                f"--job-run-id {run_id}"
            )


def _jobs(args: argparse.Namespace, deployment: Deployment, batch: bool = False) -> list[str]:
    """The --job names (checked against the profile), else the streaming job(s) (batch ones if ``batch``)."""
    if args.job:
        for job in args.job:
            deployment.job(job)
        return list(args.job)
    return [name for name, job in deployment.jobs.items() if job.streaming != batch]


def _render(args: argparse.Namespace, contexts: Sequence[RenderContext]) -> int:
    for ctx in contexts:
        region = ctx.deployment.region
        targets = args.target or api_requests.configured_targets(ctx.deployment)
        files: dict[str, object] = {
            name: item.request for name, item in api_requests.render_requests(ctx, targets).items()
        }
        scripts: dict[str, str] = {}
        if "ec2" in targets:
            for request_file, stem in (
                ("emr-run-job-flow.json", "aws-emr-create-cluster"),
                ("emr-run-job-flow-transient.json", "aws-emr-create-cluster-transient"),
            ):
                argv, parts = aws_cli.create_cluster_command(files[request_file], region, stem)  # type: ignore[arg-type]
                files.update(parts)
                scripts[f"{stem}.sh"] = aws_cli.shell_script(
                    argv, f"RunJobFlow as `aws emr create-cluster` ({region})"
                )
            files["aws-emr-add-steps.json"] = aws_cli.cli_steps(files["emr-add-job-flow-steps.json"]["Steps"])  # type: ignore[index]
        if args.write is None:
            for name, content in files.items():
                print(f"# {region}/{name}\n{aws_cli.json_text(content)}")
            continue
        out = (Path(args.write) if args.write else args.deploy.parent / "rendered") / region
        out.mkdir(parents=True, exist_ok=True)
        ignore = out.parent / ".gitignore"
        if not ignore.exists():  # rendered output holds account ids and ARNs: never committed
            ignore.write_text("# written by `marketsignals emr render`\n*\n")
        for name, content in files.items():
            (out / name).write_text(aws_cli.json_text(content))
        for name, text in scripts.items():
            (out / name).write_text(text)
            (out / name).chmod(0o755)
        print(f"{region}: wrote {len(files) + len(scripts)} files to {out}/")
    return 0


def _status(args: argparse.Namespace, aws: deploy.Aws) -> int:
    if args.cluster_id:

        def look() -> deploy.Snapshot:
            return deploy.cluster_snapshot(aws, args.cluster_id, args.step_id, args.until)
    elif args.application_id and args.job_run_id:

        def look() -> deploy.Snapshot:
            return deploy.serverless_snapshot(aws, args.application_id, args.job_run_id, args.until)
    elif args.virtual_cluster_id and args.job_run_id:

        def look() -> deploy.Snapshot:
            return deploy.eks_snapshot(aws, args.virtual_cluster_id, args.job_run_id, args.until)
    else:
        raise UserError(
            "status needs --cluster-id, or --application-id with --job-run-id, "
            "or --virtual-cluster-id with --job-run-id"
        )
    snapshot = deploy.wait(look, args.timeout, args.interval)
    if not snapshot.settled:
        print(f"still not {args.until} after {args.timeout:.0f}s: run status again to keep waiting")
        return 1
    return 0 if snapshot.ok else 1
