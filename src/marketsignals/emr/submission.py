"""One job's spark-submit: built once, then written the way each platform wants it.

An EMR step takes spark-submit flags (``--archives``, ``--jars``, ``--files``, ``--conf``) on a command
line; EMR Serverless and EMR on EKS take one ``sparkSubmitParameters`` string of ``--conf key=value``
pairs. Both come from the same :class:`JobSubmission`, so the three platforms run the same entry point,
archive, jars, settings file and arguments. Only the variable that points Python into the archive
differs, because each platform names the driver's environment differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from marketsignals.emr.artifact import ENV_ALIAS, ENV_ARCHIVE, ENV_PYTHON, ArtifactLocation, Runtime
from marketsignals.emr.deployment import Deployment

Platform = Literal["yarn", "serverless", "kubernetes"]

# Where each platform takes the Python of the driver and of the executors from.
# YARN cluster mode: the driver runs in the application master's container.
# EMR Serverless: its own driverEnv prefix (NOTES.md "EMR"). Kubernetes: Spark's spark.pyspark.* keys.
PYTHON_CONF: Mapping[Platform, Mapping[str, str]] = {
    "yarn": {
        "spark.yarn.appMasterEnv.PYSPARK_PYTHON": ENV_PYTHON,
        "spark.executorEnv.PYSPARK_PYTHON": ENV_PYTHON,
    },
    "serverless": {
        "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON": ENV_PYTHON,
        "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": ENV_PYTHON,
        "spark.executorEnv.PYSPARK_PYTHON": ENV_PYTHON,
    },
    "kubernetes": {
        "spark.pyspark.driver.python": ENV_PYTHON,
        "spark.pyspark.python": ENV_PYTHON,
    },
}


@dataclass(frozen=True)
class JobSubmission:
    """Everything spark-submit needs for one job, with S3 URIs (or local paths in the smoke test)."""

    job: str
    name: str
    streaming: bool
    entry_point: str
    arguments: tuple[str, ...]
    archives: tuple[str, ...]
    jars: tuple[str, ...]
    files: tuple[str, ...]
    conf: Mapping[str, str] = field(default_factory=dict)

    def spark_submit_args(self, platform: Platform = "yarn") -> list[str]:
        """spark-submit flags, entry point and job arguments (no ``spark-submit``/master/deploy-mode)."""
        args = ["--name", self.name]
        for flag, values in (("--archives", self.archives), ("--jars", self.jars), ("--files", self.files)):
            if values:
                args += [flag, ",".join(values)]
        for key, value in self._conf(platform).items():
            args += ["--conf", f"{key}={value}"]
        return [*args, self.entry_point, *self.arguments]

    def spark_submit_parameters(self, platform: Platform) -> str:
        """The ``sparkSubmitParameters`` string of EMR Serverless / EMR on EKS: ``--conf`` pairs only.

        The service splits the string on blanks, so a value with a blank cannot be passed this way:
        it is refused here rather than silently cut in two.
        """
        conf = {"spark.app.name": self.name}
        for key, values in (
            ("spark.archives", self.archives),
            ("spark.jars", self.jars),
            ("spark.files", self.files),
        ):
            if values:
                conf[key] = ",".join(values)
        conf.update(self._conf(platform))
        blank = [k for k, v in conf.items() if not v or any(c.isspace() for c in v)]
        if blank:
            raise ValueError(
                f"spark conf {', '.join(blank)}: empty or contains blanks, which "
                "sparkSubmitParameters cannot carry; set it in spark_defaults instead"
            )
        return " ".join(f"--conf {k}={v}" for k, v in conf.items())

    def _conf(self, platform: Platform) -> dict[str, str]:
        # spark.yarn.* settings (application attempts...) mean nothing on Kubernetes: left out there.
        conf = {k: v for k, v in self.conf.items() if platform == "yarn" or not k.startswith("spark.yarn.")}
        return {**PYTHON_CONF[platform], **conf}


def job_arguments(conf_file: str, app_profile: str, app_overrides: Sequence[str]) -> tuple[str, ...]:
    """The entry point's own arguments: the shipped settings file by its bare name, then overrides.

    ``--files`` puts the settings file in the driver's working directory: YARN localises it there, and
    on Kubernetes (EKS, Serverless) Spark >= 3.4 downloads ``spark.files`` into the driver pod's working
    directory too (SPARK-33782), so ``--conf emr.yaml`` resolves the same way on every platform.
    """
    args = ["--profile", app_profile, "--conf", PurePosixPath(conf_file).name]
    for item in app_overrides:
        args += ["--set", item]
    return tuple(args)


def job_submission(
    deployment: Deployment,
    location: ArtifactLocation,
    job: str,
    runtime: Runtime,
    app_overrides: Sequence[str],
) -> JobSubmission:
    """The submission of ``job`` from the deployment profile and the uploaded artifact."""
    spec = deployment.job(job)
    artifact = location.artifact
    return JobSubmission(
        job=job,
        name=f"{deployment.name}-{job}",
        streaming=spec.streaming,
        entry_point=location.uri(artifact.require(spec.entry_point)),
        arguments=job_arguments(artifact.conf_file, deployment.app_profile, app_overrides),
        archives=(f"{location.uri(ENV_ARCHIVE)}#{ENV_ALIAS}",),
        jars=tuple(location.uri(jar) for jar in artifact.jars_for(runtime)),
        files=(location.uri(artifact.conf_file),),
        conf=dict(spec.spark_conf),
    )
