"""The rendered EMR-on-EC2 requests as ``aws`` CLI commands, for people who deploy by hand.

The AWS CLI does not expose RunJobFlow / AddJobFlowSteps: ``aws emr create-cluster`` and
``aws emr add-steps`` are hand-written commands with their own options (and no ``--cli-input-json``).
So ``aws emr create-cluster`` gets a script whose options carry the JSON parts of the RunJobFlow
request as ``file://`` arguments, and ``aws emr add-steps`` a steps file in its own format. Both are
translated from the request dicts, and the translation refuses a RunJobFlow member it does not know
rather than silently leave it out. (Serverless and EKS requests need no translation:
``--cli-input-json file://...`` takes them as rendered.)
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

# RunJobFlow Instances members -> `aws emr create-cluster --ec2-attributes` keys.
_EC2_ATTRIBUTES = {
    "Ec2KeyName": "KeyName",
    "Ec2SubnetIds": "SubnetIds",
    "EmrManagedMasterSecurityGroup": "EmrManagedMasterSecurityGroup",
    "EmrManagedSlaveSecurityGroup": "EmrManagedSlaveSecurityGroup",
    "ServiceAccessSecurityGroup": "ServiceAccessSecurityGroup",
}
# RunJobFlow members passed as a JSON file of the same shape.
_JSON_OPTIONS = {
    "Applications": "--applications",
    "Configurations": "--configurations",
    "ManagedScalingPolicy": "--managed-scaling-policy",
    "AutoTerminationPolicy": "--auto-termination-policy",
}
# RunJobFlow members passed as a plain value.
_VALUE_OPTIONS = {
    "Name": "--name",
    "ReleaseLabel": "--release-label",
    "LogUri": "--log-uri",
    "LogEncryptionKmsKeyId": "--log-encryption-kms-key-id",
    "ServiceRole": "--service-role",
    "SecurityConfiguration": "--security-configuration",
    "StepConcurrencyLevel": "--step-concurrency-level",
    "EbsRootVolumeSize": "--ebs-root-volume-size",
}


def cli_steps(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """API steps (HadoopJarStep) -> the ``--steps`` JSON of ``aws emr create-cluster`` / ``add-steps``."""
    converted = []
    for step in steps:
        jar_step = step["HadoopJarStep"]
        unknown = set(jar_step) - {"Jar", "Args"}
        if unknown:
            raise ValueError(f"step {step['Name']}: cannot express {sorted(unknown)} as an `aws emr` step")
        converted.append(
            {
                "Type": "CUSTOM_JAR",
                "Name": step["Name"],
                "ActionOnFailure": step["ActionOnFailure"],
                "Jar": jar_step["Jar"],
                "Args": list(jar_step["Args"]),
            }
        )
    return converted


def create_cluster_command(
    request: Mapping[str, Any], region: str, file_stem: str
) -> tuple[list[str], dict[str, Any]]:
    """(``aws emr create-cluster`` argv, {file name: JSON content}) equivalent to a RunJobFlow request.

    ``file_stem`` prefixes the JSON files the argv refers to as ``file://<file_stem>-<part>.json``.
    """
    remaining = dict(request)
    argv = ["aws", "emr", "create-cluster", "--region", region]
    files: dict[str, Any] = {}

    def as_file(part: str, content: Any) -> str:
        name = f"{file_stem}-{part}.json"
        files[name] = content
        return f"file://{name}"

    for key, option in _VALUE_OPTIONS.items():
        if key in remaining:
            argv += [option, str(remaining.pop(key))]
    for key, option in _JSON_OPTIONS.items():
        if key in remaining:
            argv += [option, as_file(option.lstrip("-"), remaining.pop(key))]

    instances = dict(remaining.pop("Instances"))
    ec2_attributes = {cli: instances.pop(api) for api, cli in _EC2_ATTRIBUTES.items() if api in instances}
    if "JobFlowRole" in remaining:
        ec2_attributes["InstanceProfile"] = remaining.pop("JobFlowRole")
    argv += ["--ec2-attributes", as_file("ec2-attributes", ec2_attributes)]
    argv += ["--instance-fleets", as_file("instance-fleets", instances.pop("InstanceFleets"))]
    argv.append(
        "--no-auto-terminate" if instances.pop("KeepJobFlowAliveWhenNoSteps", True) else "--auto-terminate"
    )
    argv.append(
        "--termination-protected"
        if instances.pop("TerminationProtected", False)
        else "--no-termination-protected"
    )
    if instances:
        raise ValueError(
            f"RunJobFlow Instances members without an `aws emr create-cluster` option: {sorted(instances)}"
        )

    if "BootstrapActions" in remaining:
        actions = [
            {
                "Name": a["Name"],
                "Path": a["ScriptBootstrapAction"]["Path"],
                "Args": list(a["ScriptBootstrapAction"].get("Args", [])),
            }
            for a in remaining.pop("BootstrapActions")
        ]
        argv += ["--bootstrap-actions", as_file("bootstrap-actions", actions)]
    if "Steps" in remaining:
        argv += ["--steps", as_file("steps", cli_steps(remaining.pop("Steps")))]
    if remaining.pop("VisibleToAllUsers", True):
        argv.append("--visible-to-all-users")
    if "Tags" in remaining:
        argv += ["--tags", *(f"{t['Key']}={t['Value']}" for t in remaining.pop("Tags"))]
    if remaining:
        raise ValueError(
            f"RunJobFlow members without an `aws emr create-cluster` option: {sorted(remaining)}"
        )
    return argv, files


def shell_script(argv: Sequence[str], comment: str) -> str:
    """A bash script running ``argv`` from its own folder (``file://`` paths are relative to it).

    Extra arguments are passed on to the command (e.g. ``--profile``, ``--endpoint-url``).
    """
    lines: list[list[str]] = [[]]
    for arg in argv:  # one line per option and its values
        if arg.startswith("--"):
            lines.append([])
        lines[-1].append(shlex.quote(arg))
    command = " \\\n  ".join(" ".join(line) for line in lines)
    header = [
        "#!/usr/bin/env bash",
        f"# {comment}",
        "# Generated by `marketsignals emr render`: edit conf/emr/deploy.yaml, not this file.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
    ]
    return "\n".join([*header, f'{command} \\\n  "$@"', ""])


def json_text(content: Any) -> str:
    return json.dumps(content, indent=2, sort_keys=False) + "\n"
