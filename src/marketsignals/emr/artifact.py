"""The deployable artifact: what ``make package`` writes to ``dist/`` and where it lives in S3.

``dist/manifest.json`` is the artifact's own description (versions, interpreter, sha256 of every
file). The renderer reads it rather than the source tree, so a rendered request can only name files
that were really built, and the S3 prefix carries a build id derived from the file hashes: a
cluster bootstrapped from one build is never silently fed another build's jars.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
ENV_ARCHIVE = "marketsignals-env.tar.gz"
# The name Spark unpacks the environment archive under (``--archives ...#environment``); the
# Python of the job is then ``./environment/bin/python`` in every YARN / Kubernetes container.
ENV_ALIAS = "environment"
ENV_PYTHON = f"./{ENV_ALIAS}/bin/python"
JOBS_DIR = "jobs"
JARS_DIR = "jars"
CONF_DIR = "conf"
BOOTSTRAP_DIR = "bootstrap"
BOOTSTRAP_SCRIPT = f"{BOOTSTRAP_DIR}/install-marketsignals.sh"
# The interpreter the bootstrap action installs on every node, relative to its --install-dir
# (layout made by bootstrap/install-marketsignals.sh: <install-dir>/current -> <version>-<build_id>).
INSTALLED_PYTHON = "current/env/bin/python"


@dataclass(frozen=True)
class Runtime:
    """The Spark line an EMR release runs; it decides which connector jars a job needs."""

    spark: str
    scala: str


# EMR releases and their Spark / Scala line (EMR release guide; NOTES.md "EMR"). Scala 2.12 and 2.13
# jars are not interchangeable: a _2.13 connector on emr-7.x fails at class loading.
_RELEASE_LINES: tuple[tuple[re.Pattern[str], Runtime], ...] = (
    (re.compile(r"^emr-spark-8\.\d+\.\d+"), Runtime(spark="4.0", scala="2.13")),
    (re.compile(r"^emr-7\.\d+\.\d+"), Runtime(spark="3.5", scala="2.12")),
)
_SCALA_SUFFIX = re.compile(r"_(2\.1[0-9])-")


def runtime_for_release(release_label: str) -> Runtime:
    """The Spark/Scala line of an EMR release label (EC2, Serverless or EKS ``-latest`` form)."""
    for pattern, runtime in _RELEASE_LINES:
        if pattern.match(release_label):
            return runtime
    known = ", ".join(p.pattern.lstrip("^").split("\\")[0] + ".x" for p, _ in _RELEASE_LINES)
    raise ValueError(f"release label {release_label!r} is not a supported EMR release line ({known})")


def jar_scala_version(jar_name: str) -> str | None:
    """The Scala binary version in a jar's name, or None for a Java-only jar (any Spark line)."""
    match = _SCALA_SUFFIX.search(Path(jar_name).name)
    return match.group(1) if match else None


def jar_version(jar_name: str, artifact: str) -> str | None:
    """The version in a jar's name if it is ``artifact``'s (with a Scala suffix or none:
    ``delta-spark_2.13-4.0.0.jar``, ``kafka-clients-3.9.1.jar``), else None."""
    match = re.fullmatch(rf"{re.escape(artifact)}(?:_2\.1\d)?-(\d.*)\.jar", Path(jar_name).name)
    return match.group(1) if match else None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (the env archive is a few hundred MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_id(files: Mapping[str, Mapping[str, Any]]) -> str:
    """A short content id of a build: the same files give the same id, any change a new one."""
    lines = "".join(f"{path}\0{files[path]['sha256']}\n" for path in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Artifact:
    """A built ``dist/`` as described by its manifest (``root`` is None when only the manifest is known)."""

    manifest: Mapping[str, Any]
    root: Path | None = None

    @classmethod
    def load(cls, dist_dir: str | Path) -> Artifact:
        """Read ``dist/manifest.json``; a missing or inconsistent one is an error that says what to run."""
        root = Path(dist_dir)
        path = root / MANIFEST
        if not path.is_file():
            raise ValueError(f"{path} not found: build the artifact first with `make package`")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); rebuild with `make package`") from None
        artifact = cls(manifest=manifest, root=root)
        if build_id(artifact.files) != artifact.build_id:
            raise ValueError(f"{path}: build_id does not match the listed files; rebuild with `make package`")
        return artifact

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def build_id(self) -> str:
        return str(self.manifest["build_id"])

    @property
    def files(self) -> Mapping[str, Mapping[str, Any]]:
        """Relative path in dist/ -> {"sha256", "bytes"} for every file but the manifest itself."""
        return self.manifest["files"]

    @property
    def python_version(self) -> str:
        return str(self.manifest["python"]["version"])

    @property
    def python_prefix(self) -> str:
        return str(self.manifest["python"]["prefix"])

    @property
    def jars(self) -> list[str]:
        return sorted(p for p in self.files if p.startswith(f"{JARS_DIR}/") and p.endswith(".jar"))

    @property
    def conf_file(self) -> str:
        return str(self.manifest["conf"])

    def require(self, relpath: str) -> str:
        """``relpath`` if the artifact holds it, else an error naming what is there."""
        if relpath not in self.files:
            raise ValueError(
                f"the artifact {self.version}/{self.build_id} has no {relpath} "
                f"(it has: {', '.join(sorted(self.files))}); rebuild with `make package`"
            )
        return relpath

    def jars_for(self, runtime: Runtime) -> list[str]:
        """The jars for a job on ``runtime``, after checking they are built for its Scala line."""
        shipped = sorted({v for p in self.jars if (v := jar_scala_version(p))})
        if shipped and shipped != [runtime.scala]:
            raise ValueError(
                f"the artifact ships Scala {' and '.join(shipped)} jars, but Spark {runtime.spark} needs "
                f"Scala {runtime.scala} jars only: build an artifact with them (README: EMR 7.x) and "
                "render with its --dist"
            )
        return self.jars

    def verify(self) -> None:
        """Check every listed file on disk against its sha256 (before an upload, say)."""
        if self.root is None:
            raise ValueError("artifact has no local directory to verify")
        for relpath, info in sorted(self.files.items()):
            path = self.root / relpath
            if not path.is_file():
                raise ValueError(f"{path} is listed in the manifest but missing; rebuild with `make package`")
            if sha256_file(path) != info["sha256"]:
                raise ValueError(
                    f"{path} does not match its sha256 in the manifest; rebuild with `make package`"
                )


@dataclass(frozen=True)
class ArtifactLocation:
    """Where one build of the artifact lives in S3: ``s3://bucket/prefix/<version>/<build_id>/``."""

    bucket: str
    prefix: str
    artifact: Artifact

    @property
    def key_prefix(self) -> str:
        parts = [self.prefix.strip("/"), self.artifact.version, self.artifact.build_id]
        return "/".join(p for p in parts if p)

    @property
    def base_uri(self) -> str:
        return f"s3://{self.bucket}/{self.key_prefix}"

    def key(self, relpath: str) -> str:
        return f"{self.key_prefix}/{self.artifact.require(relpath)}"

    def uri(self, relpath: str) -> str:
        return f"s3://{self.bucket}/{self.key(relpath)}"
