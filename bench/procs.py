"""Process-tree accounting from /proc (Linux): resident memory and CPU time of the benchmark's own
processes -- the Spark JVM, its Python workers, the driver -- split by kind, sampled in a thread.

CPU seconds are reported next to wall-clock rates because this 2-core box is shared: ticks per CPU
second says what the job costs even when other processes steal the cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out += [int(c) for c in text]
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    seen, stack = [], [pid]
    while stack:
        p = stack.pop()
        seen.append(p)
        stack += _children(p)
    return seen


def kind(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "Feeder.java" in cmd:
        return "feeder"
    if "java" in cmd.split(" ")[0]:
        return "jvm"
    if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
        return "python_workers"
    if "python" in cmd:
        return "driver"
    return "other"


def _stat_file(path: Path) -> tuple[float, int]:
    """(cpu seconds, rss bytes) from a /proc stat file, of a process or of one of its threads."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0
    return (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE


def _stat(pid: int) -> tuple[float, int]:
    return _stat_file(Path(f"/proc/{pid}/stat"))


def cpu_seconds(pid: int) -> float:
    """The CPU seconds (user and system) process ``pid`` has used so far."""
    return _stat(pid)[0]


# JVM thread names (/proc/<pid>/task/<tid>/comm, cut at 15 characters) -> what the CPU went to
_JVM_THREADS = (("C2 Compiler", "jit"), ("C1 Compiler", "jit"), ("GC Thread", "gc"), ("G1 ", "gc"),
                ("Executor task", "tasks"), ("stream executio", "stream_driver"), ("Thread-", "py4j"))


def jvm_threads(pid: int) -> dict[str, float]:
    """CPU seconds of one JVM by thread group: JIT compilers, garbage collector, Spark task threads,
    the stream execution thread (planning, commits), and the rest."""
    out: dict[str, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        group = next((g for prefix, g in _JVM_THREADS if name.startswith(prefix)), "other")
        out[group] = out.get(group, 0.0) + _stat_file(task / "stat")[0]
    return out


NMT_OPTION = "-XX:NativeMemoryTracking=summary"  # the soak's --nmt: the JVM tracks its native memory
_NMT_LINE = re.compile(r"^-\s+(?P<name>.+?) \(reserved=\d+KB, committed=(?P<kb>\d+)KB")
_NMT_TOTAL = re.compile(r"^Total: reserved=\d+KB, committed=(?P<kb>\d+)KB")


def parse_nmt(text: str) -> dict[str, int]:
    """Committed bytes by category of ``jcmd <pid> VM.native_memory summary`` (plus ``Total``)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if m := _NMT_TOTAL.match(line):
            out["Total"] = int(m["kb"]) * 1024
        elif m := _NMT_LINE.match(line):
            out[m["name"]] = int(m["kb"]) * 1024
    return out


def nmt_summary(pid: int) -> dict[str, int]:
    """A running JVM's native memory by category; empty if it does not track it (or is gone)."""
    try:
        done = subprocess.run(["jcmd", str(pid), "VM.native_memory", "summary"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_nmt(done.stdout)


@dataclass
class Sampler:
    """Samples a process tree every ``interval`` seconds: peak RSS by kind, CPU seconds by kind
    (a finished process keeps the CPU it was last seen with), and an RSS time series; every
    ``nmt_every`` seconds (0: never) also the JVM's native memory by category, with its RSS then."""

    root: int
    interval: float = 1.0
    nmt_every: float = 0.0
    nmt_series: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    _nmt_next: float = 0.0
    peak_rss: dict[str, int] = field(default_factory=dict)
    series: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    _cpu: dict[int, tuple[str, float]] = field(default_factory=dict)
    _base: dict[int, float] = field(default_factory=dict)
    _jvm: dict[int, dict[str, float]] = field(default_factory=dict)  # live threads only: a lower bound
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def start(self) -> Sampler:
        self._t0 = time.monotonic()
        for pid in tree(self.root):  # CPU already spent before the start is not counted
            self._base[pid] = _stat(pid)[0]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    @property
    def started(self) -> float:
        """time.monotonic() at start(): the zero of ``series``."""
        return self._t0

    def sample(self) -> dict[str, int]:
        rss: dict[str, int] = {}
        for pid in tree(self.root):
            k = kind(pid)
            if k == "gone":
                continue
            cpu, mem = _stat(pid)
            self._cpu[pid] = (k, cpu - self._base.get(pid, 0.0))
            if k == "jvm":
                self._jvm[pid] = jvm_threads(pid)
                if self.nmt_every and time.monotonic() >= self._nmt_next:
                    self._nmt_next = time.monotonic() + self.nmt_every
                    if nmt := nmt_summary(pid):
                        self.nmt_series.append((round(time.monotonic() - self._t0, 1), {**nmt, "rss": mem}))
            rss[k] = rss.get(k, 0) + mem
        for k, v in rss.items():
            self.peak_rss[k] = max(self.peak_rss.get(k, 0), v)
        self.series.append((round(time.monotonic() - self._t0, 1), rss))
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()
        cpu: dict[str, float] = {}
        for k, c in self._cpu.values():
            cpu[k] = cpu.get(k, 0.0) + c
        threads: dict[str, float] = {}
        for groups in self._jvm.values():
            for g, v in groups.items():
                threads[g] = threads.get(g, 0.0) + v
        return {"peak_rss_mb": {k: round(v / 2**20, 1) for k, v in self.peak_rss.items()},
                "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
                "jvm_cpu_s_by_thread": {k: round(v, 1) for k, v in sorted(threads.items())},
                "cpu_s_total": round(sum(cpu.values()), 2)}
