"""Per-micro-batch metrics as JSON lines, from a StreamingQueryListener.

Each line joins Spark's progress (input rows, duration, watermark, state rows, Kafka lag) with the
sink's counts for the same batch (processed, signals, rejects by reason). Lines go to a file
(stream.metrics_path) or, when none is set (EMR), to stdout, i.e. the driver log.

PySpark's own listener plumbing turns each progress into Python objects field by field over Py4J before
the listener sees it. Every Java map it reads (durationMs, eventTime, each operator's and source's
metrics) ends in a Java exception, which is how Py4J's iterators stop, and PySpark inspects each
exception with class lookups that search the whole classpath: ~340 ms per micro-batch here (60 ms of
it Python CPU in the driver, most of the rest the listener thread's JVM), against ~2 ms for the progress's
JSON text. So :class:`MetricsListener` registers :class:`ProgressAsJson` as its Py4J listener, which
hands it that text (bench/ROUNDS.md, eighth round).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.streaming.listener import QueryStartedEvent, QueryTerminatedEvent


def progress_metrics(progress: dict[str, Any]) -> dict[str, Any]:
    """The fields we report from a StreamingQueryProgress (as its JSON dict)."""
    state_ops = progress.get("stateOperators") or []
    lag: dict[str, Any] = {}
    for source in progress.get("sources") or []:
        for key, value in (source.get("metrics") or {}).items():
            if "OffsetsBehindLatest" in key:
                lag[key] = float(value)
    return {
        "batch_id": progress.get("batchId"),
        "timestamp": progress.get("timestamp"),
        "input_rows": progress.get("numInputRows", 0),
        "input_rows_per_s": progress.get("inputRowsPerSecond"),
        "processed_rows_per_s": progress.get("processedRowsPerSecond"),
        "batch_duration_ms": (progress.get("durationMs") or {}).get("triggerExecution"),
        "duration_ms": progress.get("durationMs") or {},
        "watermark": (progress.get("eventTime") or {}).get("watermark"),
        "state_rows": sum(op.get("numRowsTotal", 0) for op in state_ops),
        "state_memory_bytes": sum(op.get("memoryUsedBytes", 0) for op in state_ops),
        "kafka_lag": lag,
    }


class MetricsListener(StreamingQueryListener):
    """Writes one JSON line per micro-batch; ``record_counts`` is the sink's callback."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._counts: dict[int, dict] = {}
        self._lock = threading.Lock()
        self.last: dict[str, Any] | None = None
        self.terminated = threading.Event()  # set once the listener bus delivered the end

    def record_counts(self, batch_id: int, counts: dict) -> None:
        with self._lock:
            self._counts[batch_id] = counts

    def onQueryStarted(self, event) -> None:
        self._write({"event": "started", "id": str(event.id), "run_id": str(event.runId), "name": event.name})

    def onQueryProgress(self, event) -> None:
        self.record_progress(json.loads(event.progress.json))

    def record_progress(self, progress: dict[str, Any]) -> None:
        """One progress line: Spark's progress (as its JSON dict) and the sink's counts of that batch."""
        line = {"event": "progress", **progress_metrics(progress)}
        with self._lock:
            line.update(self._counts.pop(line["batch_id"], {}))
            # forget counts of batches whose progress never came (e.g. no-data batches)
            for old in [b for b in self._counts if b < (line["batch_id"] or 0) - 100]:
                self._counts.pop(old)
        self.last = line
        self._write(line)

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        self._write({"event": "terminated", "id": str(event.id), "exception": event.exception})
        self.terminated.set()

    @property
    def _jlistener(self):
        """What PySpark's ``addListener`` registers with the JVM (its default converts every event's
        fields over Py4J; see the module's docstring)."""
        if not hasattr(self, "_jlistenerobj"):
            from pyspark import SparkContext

            self._jlistenerobj = SparkContext._jvm.PythonStreamingQueryListenerWrapper(ProgressAsJson(self))
        return self._jlistenerobj

    def _write(self, line: dict) -> None:
        text = json.dumps(line, default=str)
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(text + "\n")
        else:
            print(f"marketsignals-metrics {text}", file=sys.stdout, flush=True)


class ProgressAsJson:
    """Spark's Py4J listener interface for a :class:`MetricsListener`: a progress reaches it as the
    progress's JSON text, one Py4J call; the rare start and end events go through PySpark's own
    conversion; idle events are not needed."""

    def __init__(self, listener: MetricsListener) -> None:
        self.listener = listener

    def onQueryStarted(self, jevent) -> None:
        self.listener.onQueryStarted(QueryStartedEvent.fromJObject(jevent))

    def onQueryProgress(self, jevent) -> None:
        self.listener.record_progress(json.loads(jevent.progress().json()))

    def onQueryIdle(self, jevent) -> None:
        pass

    def onQueryTerminated(self, jevent) -> None:
        self.listener.onQueryTerminated(QueryTerminatedEvent.fromJObject(jevent))

    class Java:
        implements = ("org.apache.spark.sql.streaming.PythonStreamingQueryListener",)
