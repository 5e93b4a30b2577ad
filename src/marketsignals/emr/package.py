"""Build the deployable artifact in ``dist/`` (``make package``).

    python -m marketsignals.emr.package [--dist dist] [--python-prefix /usr] [--platform TAG ...]

``dist/`` then holds: the wheel; ``marketsignals-env.tar.gz``, a venv-pack archive of the runtime
dependencies for ``spark.archives=...#environment``; ``jobs/*.py`` (the spark-submit entry points);
``jars/*.jar`` (Kafka connector, Delta, MSK IAM auth: clusters in private subnets fetch nothing from
Maven); ``conf/emr.yaml`` (the app settings the jobs load); ``bootstrap/*.sh``; ``manifest.json`` with
versions and the sha256 of every file.

The environment holds the runtime dependencies of pyproject.toml except pyspark, which EMR provides
(delta-spark is installed without its pyspark dependency, at the version of the Delta jars shipped:
pyproject's for emr-spark-8.0.0, 3.3.x for an emr-7.x build with Delta 3 jars). Wheels are chosen
for the *target* (``--platform`` / Python 3.11, binary wheels only), not for the build machine, so a build on Debian,
Ubuntu or a Mac still gives Linux x86_64 wheels. A venv does not contain its interpreter, only a
link to it: the archive's ``bin/python`` is pointed at ``<python-prefix>/bin/python3.11`` (``/usr`` on
Amazon Linux 2023, where EMR nodes have it), and the bootstrap action makes sure it exists.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from marketsignals.emr.artifact import (
    BOOTSTRAP_DIR,
    CONF_DIR,
    ENV_ARCHIVE,
    JARS_DIR,
    JOBS_DIR,
    MANIFEST,
    build_id,
    jar_scala_version,
    jar_version,
    sha256_file,
)
from marketsignals.emr.deployment import DEFAULT_PROFILE
from marketsignals.settings import load_yaml

# Linux x86_64 wheels up to glibc 2.28 (Amazon Linux 2023 has 2.34); some current wheels (pandas
# 2.3) are only tagged manylinux_2_28, older ones only manylinux2014 (= manylinux_2_17).
TARGET_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TARGET_PYTHON = "3.11"
TARGET_PYTHON_PREFIX = "/usr"
# EMR brings its own PySpark; anything that only pulls PySpark in is installed without dependencies.
PROVIDED_BY_EMR = {"pyspark"}
INSTALL_WITHOUT_DEPS = {"delta-spark"}
DEFAULT_JAR_DIRS = (".jars/spark", ".jars/spark-aws")


def runtime_requirements(pyproject: dict[str, Any], jars: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(requirements installed with their dependencies, requirements installed without). Given the
    artifact's ``jars``, delta-spark (the Python side of Delta's JVM API) is pinned to their Delta."""
    delta = [v for jar in jars if (v := jar_version(jar, "delta-spark"))]
    with_deps, without_deps = [], []
    for line in pyproject["project"]["dependencies"]:
        name = Requirement(line).name.lower()
        if name in PROVIDED_BY_EMR:
            continue
        if name == "delta-spark" and delta:
            line = f"delta-spark=={delta[0]}"
        (without_deps if name in INSTALL_WITHOUT_DEPS else with_deps).append(line)
    return with_deps, without_deps


def _run(cmd: list[str], what: str) -> None:
    print(f"package: {what}", flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed ({' '.join(cmd[:6])} ...):\n{tail}")


def build_wheel(root: Path, dist: Path) -> Path:
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(root)],
        "building the wheel",
    )
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel in {dist}, found {[w.name for w in wheels]}")
    return wheels[0]


def build_environment(
    work: Path,
    wheel: Path,
    pyproject: dict[str, Any],
    platforms: tuple[str, ...],
    python_prefix: str,
    output: Path,
    jars: Sequence[str] = (),
) -> dict[str, str]:
    """Create the venv, install the target's wheels into it, retarget its python, pack it.

    Returns {distribution name: version} of what the environment holds (for the manifest).
    """
    if f"{sys.version_info.major}.{sys.version_info.minor}" != TARGET_PYTHON:
        raise RuntimeError(
            f"build with Python {TARGET_PYTHON} (the venv's stdlib layout is "
            f"lib/python{TARGET_PYTHON}); this is {sys.version.split()[0]}"
        )
    env = work / "env"
    shutil.rmtree(env, ignore_errors=True)
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)], "creating a fresh venv")
    if not (env / "lib64").exists():  # Amazon Linux's Python looks for platlib in lib64
        (env / "lib64").symlink_to("lib")
    site = env / "lib" / f"python{TARGET_PYTHON}" / "site-packages"
    target = [
        "--target",
        str(site),
        *(a for p in platforms for a in ("--platform", p)),
        "--python-version",
        TARGET_PYTHON,
        "--implementation",
        "cp",
        "--abi",
        f"cp{TARGET_PYTHON.replace('.', '')}",
        "--only-binary=:all:",
        "--no-warn-script-location",
        "--quiet",
        "--disable-pip-version-check",
    ]
    with_deps, without_deps = runtime_requirements(pyproject, jars)
    pip = [sys.executable, "-m", "pip", "install", *target]
    _run([*pip, *with_deps], f"installing {len(with_deps)} runtime requirements for {platforms[0]}")
    _run(
        [*pip, "--no-deps", *without_deps, str(wheel)], f"installing {', '.join(without_deps)} and the wheel"
    )
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with the build machine's shebang
    _retarget_interpreter(env, python_prefix)
    import venv_pack  # a build-time tool (dev extra), not a runtime dependency of the package

    output.unlink(missing_ok=True)
    print(f"package: packing {output.name}", flush=True)
    venv_pack.pack(prefix=str(env), output=str(output), compress_level=4)
    return {d.metadata["Name"]: d.version for d in metadata.distributions(path=[str(site)])}


def _retarget_interpreter(env: Path, python_prefix: str) -> None:
    """Point the venv at the target's interpreter, ``<prefix>/bin/python3.11``.

    venv-pack 0.2.0 has ``--python-prefix`` for this, but it rewrites the ``python3.X`` link to
    ``.../python3.X3.X``; the venv is only packed from here on, so it is retargeted in place instead.
    """
    interpreter = f"{python_prefix.rstrip('/')}/bin/python{TARGET_PYTHON}"
    link = env / "bin" / f"python{TARGET_PYTHON}"
    link.unlink(missing_ok=True)
    link.symlink_to(interpreter)
    for name in ("python", "python3"):
        (env / "bin" / name).unlink(missing_ok=True)
        (env / "bin" / name).symlink_to(link.name)
    cfg = env / "pyvenv.cfg"
    lines = [line for line in cfg.read_text().splitlines() if not line.startswith(("home", "executable"))]
    cfg.write_text(
        "\n".join([f"home = {python_prefix.rstrip('/')}/bin", *lines, f"executable = {interpreter}"]) + "\n"
    )


def copy_payload(root: Path, dist: Path, jar_dirs: list[Path], app_profile: str) -> None:
    """Entry points, jars, the app settings file and the bootstrap scripts, as they are in the tree."""
    for script in sorted((root / JOBS_DIR).glob("*.py")):
        _copy(script, dist / JOBS_DIR / script.name)
    jars = []
    for jar_dir in jar_dirs:
        found = sorted(jar_dir.glob("*.jar")) if jar_dir.is_dir() else []
        if not found:
            raise RuntimeError(f"no jars in {jar_dir}: fetch them first (`make jars`)")
        jars += found
    lines = sorted({v for jar in jars if (v := jar_scala_version(jar.name))})
    if len(lines) > 1:
        # Java-only jars (kafka-clients, commons-pool2) differ between Spark lines too: one line each.
        raise RuntimeError(
            f"jars for Scala {' and '.join(lines)} in {', '.join(map(str, jar_dirs))}: an "
            "artifact serves one Spark line; build each line into its own --dist"
        )
    for jar in jars:
        _copy(jar, dist / JARS_DIR / jar.name)
    conf = root / CONF_DIR / f"{app_profile}.yaml"
    if not conf.is_file():
        raise RuntimeError(f"{conf} not found (app_profile {app_profile!r} in {DEFAULT_PROFILE})")
    _copy(conf, dist / CONF_DIR / conf.name)
    for script in sorted((root / BOOTSTRAP_DIR).glob("*.sh")):
        _copy(script, dist / BOOTSTRAP_DIR / script.name)
        (dist / BOOTSTRAP_DIR / script.name).chmod(0o755)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def write_manifest(
    dist: Path,
    pyproject: dict[str, Any],
    packages: dict[str, str],
    platforms: tuple[str, ...],
    python_prefix: str,
    app_profile: str,
) -> dict[str, Any]:
    files = {
        str(p.relative_to(dist)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(dist.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "name": pyproject["project"]["name"],
        "version": pyproject["project"]["version"],
        "build_id": build_id(files),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": {"version": TARGET_PYTHON, "prefix": python_prefix, "platforms": list(platforms)},
        "environment": ENV_ARCHIVE,
        "packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower())),
        "jars": {p: {"scala": jar_scala_version(p)} for p in files if p.startswith(f"{JARS_DIR}/")},
        "conf": f"{CONF_DIR}/{app_profile}.yaml",
        "files": files,
    }
    (dist / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build(
    root: Path,
    dist: Path,
    platforms: tuple[str, ...] = TARGET_PLATFORMS,
    python_prefix: str = TARGET_PYTHON_PREFIX,
    jar_dirs: list[Path] | None = None,
    deploy_profile: Path | None = None,
) -> dict[str, Any]:
    """Build dist/ from the source tree at ``root``; returns the manifest."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    profile_path = deploy_profile or root / DEFAULT_PROFILE
    app_profile = (load_yaml(profile_path.read_text()) or {}).get("app_profile", "emr")
    jar_dirs = jar_dirs if jar_dirs is not None else [root / d for d in DEFAULT_JAR_DIRS]
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    copy_payload(root, dist, jar_dirs, app_profile)  # first: fails fast on missing jars
    wheel = build_wheel(root, dist)
    work = root / "build" / "package"
    work.mkdir(parents=True, exist_ok=True)
    jars = sorted(p.name for p in (dist / JARS_DIR).glob("*.jar"))
    packages = build_environment(work, wheel, pyproject, platforms, python_prefix, dist / ENV_ARCHIVE, jars)
    manifest = write_manifest(dist, pyproject, packages, platforms, python_prefix, app_profile)
    total = sum(f["bytes"] for f in manifest["files"].values())
    print(
        f"package: {dist}/ {manifest['version']} build {manifest['build_id']}: "
        f"{len(manifest['files'])} files, {total / 1e6:.0f} MB",
        flush=True,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marketsignals.emr.package", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="source tree (default: .)")
    parser.add_argument("--dist", type=Path, help="output folder (default: <root>/dist)")
    parser.add_argument(
        "--platform",
        dest="platforms",
        action="append",
        help=f"wheel platform tag (repeatable; default {' '.join(TARGET_PLATFORMS)})",
    )
    parser.add_argument(
        "--python-prefix",
        default=TARGET_PYTHON_PREFIX,
        help=f"prefix of python{TARGET_PYTHON} on the nodes (default {TARGET_PYTHON_PREFIX})",
    )
    parser.add_argument(
        "--jars-dir",
        dest="jar_dirs",
        type=Path,
        action="append",
        help=f"a folder of jars to ship (repeatable; default {', '.join(DEFAULT_JAR_DIRS)})",
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        build(
            root,
            (args.dist or root / "dist").resolve(),
            tuple(args.platforms or TARGET_PLATFORMS),
            args.python_prefix,
            [d.resolve() for d in args.jar_dirs] if args.jar_dirs else None,
        )
    except RuntimeError as exc:
        print(f"package: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
