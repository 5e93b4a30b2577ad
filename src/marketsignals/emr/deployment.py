"""The deployment profile (``conf/emr/deploy.yaml``): where and on what the product runs on AWS.

It holds what the app config does not: regions, buckets, network, IAM role names, instance types
and capacities, release labels. One file serves every region: top-level values apply everywhere and
``region_overrides.<region>`` replaces the regional ones (buckets, subnets, keys are per region).
Strings may use ``{name}``, ``{region}``, ``{artifact_bucket}`` and ``{data_bucket}`` so a value is
written once and derived everywhere else.

Unfilled placeholders (``<SUBNET_ID>``, ``REPLACE_ME``, the ``example`` hosts and buckets of
conf/emr.yaml) are refused by :func:`require_filled` with the key that holds them, before any AWS call.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from marketsignals.settings import load_yaml

DEFAULT_PROFILE = Path("conf/emr/deploy.yaml")

# Values a person still has to fill in: <UPPER_CASE> markers, REPLACE_ME / CHANGE_ME, and "example"
# as a host label or bucket name part (conf/emr.yaml's b-1.example.kafka..., s3://example-bucket/...).
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>|REPLACE_ME|CHANGE_ME|(?:^|[/.:@])example(?:[-.]|$)")
# Maps whose keys are dotted names themselves (app settings, Spark properties).
_DOTTED_KEY_MAPS = {"app_settings", "spark_defaults", "spark_conf"}
_TEMPLATE = re.compile(r"\{([a-z_]+)\}")
# Graviton families (m7g, r6gd, c7gn, ...): the artifact's Python wheels are built for x86_64.
_ARM_INSTANCE = re.compile(r"^[a-z]+\d+g[a-z]*\.")


class PlaceholderError(ValueError):
    """The deployment (or the app settings it renders) still has values to fill in."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Settings(_Model):
    """Buckets and prefixes; the artifact goes to ``s3://artifact_bucket/artifact_prefix/<version>/<build>/``."""

    artifact_bucket: str
    artifact_prefix: str = "marketsignals/artifacts"
    data_bucket: str
    log_uri: str

    @field_validator("log_uri")
    @classmethod
    def _s3_uri(cls, value: str) -> str:
        if not value.startswith("s3://"):
            raise ValueError("expected an s3:// URI")
        return value if value.endswith("/") else value + "/"


class JobSettings(_Model):
    """One spark-submit job of the product (an entry point in the artifact's jobs/)."""

    entry_point: str
    streaming: bool = False
    action_on_failure: Literal["CONTINUE", "CANCEL_AND_WAIT", "TERMINATE_CLUSTER"] = "CONTINUE"
    spark_conf: dict[str, str] = Field(default_factory=dict)
    # Restarts after failures: streaming runs count failures per hour, batch runs count attempts.
    max_attempts: int = Field(1, ge=1, le=10)
    max_failed_attempts_per_hour: int = Field(5, ge=1, le=10)
    execution_timeout_minutes: int | None = Field(None, ge=1)


class SecuritySettings(_Model):
    """At-rest (S3, local disks, EBS) and in-transit (TLS) encryption of the EC2 clusters."""

    configuration_name: str
    kms_key_arn: str
    tls_certificates_zip: str  # s3:// URI of the PEM zip EMR installs on every node


class EbsSettings(_Model):
    volume_type: Literal["gp3", "gp2", "io1", "io2"] = "gp3"
    size_gb: int = Field(128, ge=1)
    iops: int | None = Field(3000, ge=100)
    throughput_mibps: int | None = Field(125, ge=125)
    volumes_per_instance: int = Field(1, ge=1)


class FleetSettings(_Model):
    """One instance fleet: several interchangeable types so EC2 can find capacity (Spot above all)."""

    instance_types: list[str] = Field(min_length=1, max_length=30)
    on_demand: int = Field(0, ge=0)
    spot: int = Field(0, ge=0)


class SpotSettings(_Model):
    allocation_strategy: Literal[
        "price-capacity-optimized",
        "capacity-optimized",
        "lowest-price",
        "diversified",
        "capacity-optimized-prioritized",
    ] = "price-capacity-optimized"
    timeout_minutes: int = Field(10, ge=5, le=1440)
    timeout_action: Literal["SWITCH_TO_ON_DEMAND", "TERMINATE_CLUSTER"] = "SWITCH_TO_ON_DEMAND"


class ManagedScalingSettings(_Model):
    minimum_units: int = Field(ge=1)
    maximum_units: int = Field(ge=1)
    maximum_on_demand_units: int = Field(ge=1)
    maximum_core_units: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ManagedScalingSettings:
        if not self.minimum_units <= self.maximum_units:
            raise ValueError("minimum_units must not exceed maximum_units")
        if self.maximum_on_demand_units > self.maximum_units or self.maximum_core_units > self.maximum_units:
            raise ValueError("maximum_on_demand_units and maximum_core_units must not exceed maximum_units")
        return self


class Ec2Settings(_Model):
    """EMR on EC2: the cluster (RunJobFlow) and its steps."""

    release_label: str = "emr-spark-8.0.0"
    applications: list[str] = Field(default_factory=lambda: ["Spark"])
    service_role: str
    instance_profile: str
    ec2_key_name: str | None = None
    subnet_ids: list[str] = Field(min_length=1)
    emr_managed_master_security_group: str | None = None
    emr_managed_slave_security_group: str | None = None
    service_access_security_group: str | None = None
    install_dir: str = "/opt/marketsignals"
    root_volume_size_gb: int = Field(30, ge=15)
    ebs: EbsSettings = Field(default_factory=EbsSettings)
    master: FleetSettings
    core: FleetSettings
    task: FleetSettings | None = None
    spot: SpotSettings = Field(default_factory=SpotSettings)
    managed_scaling: ManagedScalingSettings | None = None
    step_concurrency_level: int = Field(2, ge=1, le=256)
    transient_idle_timeout_s: int = Field(3600, ge=60, le=604800)
    termination_protected: bool = True
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fleets(self) -> Ec2Settings:
        if self.master.on_demand + self.master.spot != 1:
            raise ValueError("master: exactly one on-demand (or spot) instance")
        if self.master.spot or self.core.spot:
            raise ValueError("master and core run on-demand: HDFS and the driver must not be reclaimed")
        fleets = [self.master, self.core, *([self.task] if self.task else [])]
        arm = [t for fleet in fleets for t in fleet.instance_types if _ARM_INSTANCE.match(t)]
        if arm:
            raise ValueError(f"{', '.join(arm)}: Graviton (arm64) types cannot run the x86_64 artifact")
        return self


class WorkerSettings(_Model):
    workers: int = Field(ge=1)
    cpu: str
    memory: str
    disk: str = "20GB"


class ServerlessSettings(_Model):
    """EMR Serverless: the application (pre-initialised capacity, limits, auto start/stop) and job runs."""

    release_label: str = "emr-spark-8.0.0"
    execution_role_arn: str
    architecture: Literal["X86_64"] = "X86_64"  # the artifact's wheels are x86_64
    subnet_ids: list[str] = Field(default_factory=list)
    security_group_ids: list[str] = Field(default_factory=list)
    driver: WorkerSettings
    executor: WorkerSettings
    maximum_cpu: str
    maximum_memory: str
    maximum_disk: str = "1000GB"
    auto_stop_idle_minutes: int = Field(15, ge=1, le=10080)
    image_uri: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class EksSettings(_Model):
    """EMR on EKS: the virtual cluster (an EKS namespace registered with EMR) and job runs."""

    cluster_name: str
    namespace: str
    virtual_cluster_name: str
    release_label: str = "emr-spark-8.0.0-latest"
    execution_role_arn: str
    tags: dict[str, str] = Field(default_factory=dict)


class Deployment(_Model):
    """The deployment profile resolved for one region: every value a request is rendered from."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    region: str
    app_profile: str = "emr"
    s3: S3Settings
    app_settings: dict[str, str] = Field(default_factory=dict)
    spark_defaults: dict[str, str] = Field(default_factory=dict)
    jobs: dict[str, JobSettings] = Field(min_length=1)
    security: SecuritySettings | None = None
    ec2: Ec2Settings | None = None
    serverless: ServerlessSettings | None = None
    eks: EksSettings | None = None

    @model_validator(mode="after")
    def _concurrent_steps_continue(self) -> Deployment:
        # EMR refuses CANCEL_AND_WAIT / TERMINATE_CLUSTER steps on a cluster that runs steps in parallel.
        if self.ec2 and self.ec2.step_concurrency_level > 1:
            bad = [n for n, j in self.jobs.items() if j.action_on_failure != "CONTINUE"]
            if bad:
                raise ValueError(
                    f"jobs {', '.join(bad)}: action_on_failure must be CONTINUE when "
                    "ec2.step_concurrency_level > 1"
                )
        return self

    def job(self, name: str) -> JobSettings:
        if name not in self.jobs:
            raise ValueError(f"no job {name!r} in the deployment profile (jobs: {', '.join(self.jobs)})")
        return self.jobs[name]

    def section(self, name: Literal["ec2", "serverless", "eks", "security"]) -> Any:
        """A platform section, or an error saying it is not configured (deleted from deploy.yaml)."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"the deployment profile has no {name} section: add it to {DEFAULT_PROFILE}")
        return value


@dataclass(frozen=True)
class DeploymentProfile:
    """The raw profile file: the regions it deploys to and how to resolve one of them."""

    data: Mapping[str, Any]
    source: str

    @property
    def regions(self) -> list[str]:
        return list(self.data.get("regions") or [])

    def for_region(self, region: str) -> Deployment:
        """Merge ``region_overrides.<region>`` over the shared values, expand templates, validate."""
        if region not in self.regions:
            raise ValueError(
                f"region {region!r} is not in {self.source} regions ({', '.join(self.regions)}): "
                "add it there (with its region_overrides)"
            )
        data = {k: copy.deepcopy(v) for k, v in self.data.items() if k not in ("regions", "region_overrides")}
        overrides = (self.data.get("region_overrides") or {}).get(region) or {}
        _deep_merge(data, overrides)
        data["region"] = region
        data = _expand_templates(data, region=region, source=self.source)
        try:
            return Deployment.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{self.source} ({region}): {problems}") from None


def load_profile(path: str | Path = DEFAULT_PROFILE, overrides: Iterable[str] = ()) -> DeploymentProfile:
    """Read the deployment profile; ``overrides`` are ``key.path=value`` (YAML value) edits on top."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"deployment profile {path} not found (pass --deploy FILE)")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        _apply_override(data, item)
    return DeploymentProfile(data=data, source=str(path))


def _apply_override(data: dict[str, Any], item: str) -> None:
    """Apply ``key.path=value``; below a map keyed by dotted names (``app_settings``, ``spark_conf``...)
    the rest of the path is one key: ``app_settings.kafka.bootstrap_servers=...``."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--deploy-set expects key.path=value, got {item!r}")
    parts = key.strip().split(".")
    node = data
    in_map = False
    while len(parts) > 1:
        part = parts.pop(0)
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--deploy-set {key}: {part} is not a section")
        if part in _DOTTED_KEY_MAPS:
            parts, in_map = [".".join(parts)], True
    # Values of those maps are strings for Spark / --set: "true" stays "true", not a YAML boolean.
    node[parts[0]] = raw if in_map else (load_yaml(raw) if raw.strip() else None)


def find_placeholders(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(key path, value) of every string under ``value`` that is still a placeholder."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from find_placeholders(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from find_placeholders(item, f"{path}[{index}]")
    elif isinstance(value, str) and PLACEHOLDER.search(value):
        yield path, value


def require_filled(
    deployment: Deployment, sections: Iterable[str], source: str = str(DEFAULT_PROFILE)
) -> None:
    """Refuse (naming every key) if a section a request is built from still holds a placeholder."""
    found = [
        (f"{s}.{k}" if k else s, v) for s in sections for k, v in find_placeholders(getattr(deployment, s))
    ]
    if found:
        listed = ", ".join(f"{key} = {value!r}" for key, value in found)
        raise PlaceholderError(
            f"{source} ({deployment.region}) has unfilled placeholders: {listed}. "
            "Fill them in (or override per region under region_overrides) first."
        )


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _expand_templates(data: dict[str, Any], region: str, source: str) -> dict[str, Any]:
    s3 = data.get("s3") or {}
    variables = {
        "name": str(data.get("name", "")),
        "region": region,
        "artifact_bucket": str(s3.get("artifact_bucket", "")),
        "data_bucket": str(s3.get("data_bucket", "")),
    }

    def expand(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: expand(v, f"{key}.{k}" if key else k) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value

        def substitute(match: re.Match[str]) -> str:
            if match.group(1) not in variables:
                raise ValueError(
                    f"{source} ({region}): {key}: unknown variable {{{match.group(1)}}} "
                    f"(known: {', '.join('{' + v + '}' for v in variables)})"
                )
            return variables[match.group(1)]

        return _TEMPLATE.sub(substitute, value)

    return expand(data, "")
