"""The Makefile's JDK check, which every target that starts a JVM runs first (``make java``)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_java(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "java"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def without_java_home() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}


def test_the_machines_jdk_passes():
    done = make_java(dict(os.environ))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_a_jdk_without_the_local_profiles_flags_stops_with_what_to_update(tmp_path):
    # a java that refuses -XX:TrimNativeHeapInterval, as JDK 17 before 17.0.11 does
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho \"Unrecognized VM option 'TrimNativeHeapInterval=60000'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    env = without_java_home() | {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    done = make_java(env)
    assert done.returncode != 0
    assert "java is older than 17.0.11" in done.stdout
    assert "update openjdk-17-jdk-headless" in done.stdout


def test_a_java_home_without_java_says_so(tmp_path):
    done = make_java(without_java_home() | {"JAVA_HOME": str(tmp_path)})
    assert done.returncode != 0
    assert f"{tmp_path}/bin/java not found" in done.stdout
    assert "or fix JAVA_HOME" in done.stdout
