"""Where a Spark run's JVM spends its CPU: a JFR recording summarised (``bench.run --jfr``).

``bench.run --jfr`` records (a), (b) and (e) with JFR's ``profile`` settings (stack samples of the running
Java threads every 10 ms, allocation samples, GC events) and adds this summary to each run's JSON
and to its printed table. By hand: ``python -m bench.jfr RECORDING.jfr``.

A Spark task thread's sample is put in a stage by what runs the task (a shuffle map task reads,
parses, validates and writes the shuffle; the writes have their own tasks; any other task is the
stateful stage, or the ceiling's whole read) and in a kind of work by the sample's innermost frame
that names one (JSON parsing, Parquet's dictionaries, regular expressions, ...; "generated code"
is Spark's whole-stage code itself). The shares are of the task threads' samples; JFR samples
Java frames, so time in native code (compression, the JIT's compilers) is not among them.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

TASK_THREAD = "Executor task launch worker"

# (stage, frames that mark it anywhere in the stack): the first that matches names the stage
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kafka write", ("KafkaWriteTask", "KafkaDataWriter")),
    ("Parquet/Delta write", ("FileFormatWriter", "FileFormatDataWriter")),
    ("shuffle map (read, parse, validate, shuffle write)", ("ShuffleMapTask",)),
    ("other tasks (the stateful stage; the ceiling's read)", ("ResultTask",)),
)
OTHER = "other"

# (kind, frames that mark it): the innermost frame that matches any of these names the kind
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("JSON parse", ("catalyst.json.JacksonParser", "JsonToStructs", "FailureSafeParser", "jackson.core.json.Reader",
                    "jackson.core.io.NumberInput", "CreateJacksonParser", "ResolveDefaultColumns")),
    ("JSON write", ("JacksonGenerator", "jackson.core.json.WriterBasedJsonGenerator", "jackson.core.io.NumberOutput")),
    ("timestamps", ("TimestampFormatter", "DateTimeUtils", "java.time.format")),
    ("regular expressions", ("java.util.regex",)),
    ("Kafka client", ("org.apache.kafka",)),
    ("Parquet dictionaries", ("parquet.column.values.dictionary", "fastutil", "parquet.io.api.Binary")),
    ("Parquet", ("org.apache.parquet", "shaded.parquet")),
    ("Arrow (Python's input and output)", ("org.apache.arrow", "execution.arrow", "ArrowColumnVector", "python.")),
    ("shuffle", ("ShuffleExternalSorter", "UnsafeShuffleWriter", "SortShuffleWriter", "ShuffleBlockFetcherIterator",
                 "UnsafeRowSerializer", "DiskBlockObjectWriter", "BypassMergeSortShuffleWriter")),
    ("sort", ("UnsafeExternalSorter", "UnsafeInMemorySorter", "RadixSort")),
    ("state store", ("StateStore", "RocksDB", "rocksdb")),
    ("the batch kept in memory", ("MemoryStore", "SizeEstimator", "SizeTracking")),
    ("ICU (case mapping)", ("com.ibm.icu",)),
    ("generated code", ("GeneratedClass",)),
)


def recorded(settings, recording: Path | str):
    """``settings`` whose bounded runs' JVM (a stream with trigger availableNow, as the bench's are) records
    itself to ``recording`` with JFR's ``profile`` settings, written when the recording stops or the JVM
    exits: the flag is appended to ``spark.bounded_java_options``."""
    flags = [settings.spark.bounded_java_options, f"-XX:StartFlightRecording=filename={recording},settings=profile"]
    return settings.with_overrides([f"spark.bounded_java_options={' '.join(f for f in flags if f)}"])


def jfr_tool() -> str | None:
    """The JDK's ``jfr`` command: on PATH, or beside the ``java`` of JAVA_HOME."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "jfr").exists():
        return str(Path(home) / "bin" / "jfr")
    return shutil.which("jfr")


def _print(recording: Path, event: str, depth: int) -> str:
    tool = jfr_tool()
    if tool is None:
        raise FileNotFoundError("the JDK's jfr command is not on PATH nor in $JAVA_HOME/bin")
    return subprocess.run([tool, "print", "--events", event, "--stack-depth", str(depth), str(recording)],
                          check=True, capture_output=True, text=True, timeout=600).stdout


def _events(text: str, name: str) -> list[str]:
    return text.split(f"{name} {{")[1:]


def _frames(event: str) -> list[str]:
    """The stack's frames, innermost first, as ``package.Class.method`` (arguments and lines dropped)."""
    if "stackTrace = [" not in event:
        return []
    body = event.split("stackTrace = [", 1)[1].split("\n  ]", 1)[0]
    frames = (line.strip().split("(", 1)[0] for line in body.splitlines())
    return [f for f in frames if f and f != "..."]


def _thread(event: str) -> str:
    match = re.search(r'sampledThread = "([^"]*)"', event)
    return match.group(1) if match else ""


def stage_of(frames: list[str]) -> str:
    return next((stage for stage, marks in STAGES if any(m in f for f in frames for m in marks)), OTHER)


def kind_of(frames: list[str]) -> str:
    for frame in frames:
        for kind, marks in KINDS:
            if any(m in frame for m in marks):
                return kind
    return OTHER


def thread_group(name: str) -> str:
    if name.startswith(TASK_THREAD):
        return "Spark tasks"
    if name.startswith("stream execution thread"):
        return "the stream's driver thread (planning, commits)"
    if re.fullmatch(r"Thread-\d+", name):
        return "Py4J (the sink's calls from Python)"
    return "other JVM threads"


def _shares(counter: collections.Counter, total: int) -> dict[str, float]:
    return {k: round(v / total, 4) for k, v in counter.most_common()} if total else {}


def summarize_samples(text: str) -> dict:
    """Execution samples (``jfr print --events jdk.ExecutionSample`` text) by thread group, and the task
    threads' by stage, by kind of work and by both."""
    threads: collections.Counter = collections.Counter()
    stages: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    both: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for event in _events(text, "jdk.ExecutionSample"):
        name = _thread(event)
        threads[thread_group(name)] += 1
        if not name.startswith(TASK_THREAD):
            continue
        frames = _frames(event)
        stage, kind = stage_of(frames), kind_of(frames)
        stages[stage] += 1
        kinds[kind] += 1
        both[stage][kind] += 1
    tasks = sum(stages.values())
    return {"samples": sum(threads.values()), "task_samples": tasks,
            "threads": _shares(threads, sum(threads.values())), "stages": _shares(stages, tasks),
            "kinds": _shares(kinds, tasks),
            "stage_kinds": {s: _shares(c, tasks) for s, c in sorted(both.items(), key=lambda i: -sum(i[1].values()))}}


_UNITS = {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def summarize_allocations(text: str, top: int = 5) -> dict:
    """Allocation samples (``jdk.ObjectAllocationSample``): the estimated bytes allocated in all, and the
    sites that allocated most (the class and the innermost frames)."""
    sites: collections.Counter = collections.Counter()
    for event in _events(text, "jdk.ObjectAllocationSample"):
        weight = re.search(r"weight = ([\d.]+) (\w+)", event)
        cls = re.search(r"objectClass = (\S+)", event)
        if not weight or not cls:
            continue
        frames = [f.rsplit(".", 2)[-2] + "." + f.rsplit(".", 1)[-1] for f in _frames(event)[:3] if f.count(".") >= 1]
        sites[f"{cls.group(1)} at {' <- '.join(frames)}"] += float(weight.group(1)) * _UNITS.get(weight.group(2), 1)
    total = sum(sites.values())
    return {"allocated_gb": round(total / 1e9, 2),
            "top": [[site, round(v / 1e9, 2), round(v / total, 3)] for site, v in sites.most_common(top)]}


def summarize_gc(text: str) -> dict:
    """Garbage collections (``jdk.GarbageCollection``): how many, and their pauses in all."""
    pauses = [float(m.group(1)) * (1000 if m.group(2) == "s" else 1)
              for m in re.finditer(r"sumOfPauses = ([\d.]+) (ms|s)\b", text)]
    return {"collections": len(pauses), "pauses_ms": round(sum(pauses))}


def summarize(recording: Path, depth: int = 96) -> dict:
    """The summary of one recording (see the module's docstring); ``{"error": ...}`` if it cannot be read."""
    try:
        return {"recording": str(recording),
                **summarize_samples(_print(recording, "jdk.ExecutionSample", depth)),
                "allocation": summarize_allocations(_print(recording, "jdk.ObjectAllocationSample", 8)),
                "gc": summarize_gc(_print(recording, "jdk.GarbageCollection", 1))}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"recording": str(recording), "error": str(exc)[:500]}


def lines(name: str, summary: dict, top: int = 8) -> list[str]:
    """A run's summary as printed lines."""
    if "error" in summary:
        return [f"{name}: no JVM profile ({summary['error']})"]
    out = [f"{name}: {summary['task_samples']:,} task-thread samples of {summary['samples']:,} "
           f"(GC: {summary['gc']['collections']} collections, {summary['gc']['pauses_ms']:,} ms of pauses; "
           f"~{summary['allocation']['allocated_gb']:,} GB allocated)"]
    for stage, share in summary["stages"].items():
        kinds = summary["stage_kinds"].get(stage, {})
        detail = ", ".join(f"{k} {v:.0%}" for k, v in list(kinds.items())[:4])
        out.append(f"  {share:5.0%}  {stage}: {detail}")
    out.append("  by kind: " + ", ".join(f"{k} {v:.0%}" for k, v in list(summary["kinds"].items())[:top]))
    for site, gb, share in summary["allocation"]["top"][:3]:
        out.append(f"  allocated {gb:,} GB ({share:.0%}): {site}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.jfr", description=__doc__.splitlines()[0])
    p.add_argument("recording", type=Path)
    args = p.parse_args(argv)
    if not args.recording.is_file():
        p.error(f"no such recording: {args.recording}")
    summary = summarize(args.recording)
    print("\n".join(lines(args.recording.name, summary)))
    return 1 if "error" in summary else 0


if __name__ == "__main__":
    sys.exit(main())
