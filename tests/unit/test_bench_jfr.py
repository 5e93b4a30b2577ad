"""bench.jfr: a JFR recording's samples put in stages and kinds of work (the text of `jfr print`)."""

from __future__ import annotations

import pytest

from conftest import ROOT


@pytest.fixture()
def jfr(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import jfr

    return jfr


def sample(thread: str, *frames: str) -> str:
    """One execution sample as `jfr print` writes it: innermost frame first."""
    stack = "\n".join(f"    {f}(Object) line: 1" for f in frames)
    return (f'jdk.ExecutionSample {{\n  startTime = 03:10:36.759\n  sampledThread = "{thread}" (javaThreadId = 7)\n'
            f'  state = "STATE_RUNNABLE"\n  stackTrace = [\n{stack}\n    ...\n  ]\n}}\n\n')


TASK = "Executor task launch worker for task 3.0 in stage 1.0 (TID 9)"
PARSE = ("org.apache.spark.sql.catalyst.json.JacksonParser.$anonfun$parse$2",
         "org.apache.spark.sql.catalyst.expressions.GeneratedClass$GeneratedIteratorForCodegenStage2.processNext",
         "org.apache.spark.sql.execution.exchange.ShuffleWriteProcessor.write",
         "org.apache.spark.scheduler.ShuffleMapTask.runTask")
GENERATED = ("org.apache.spark.unsafe.types.UTF8String.fromAddress",
             "org.apache.spark.sql.catalyst.expressions.GeneratedClass$GeneratedIteratorForCodegenStage2.processNext",
             "org.apache.spark.scheduler.ShuffleMapTask.runTask")
DICTIONARY = ("shaded.parquet.it.unimi.dsi.fastutil.doubles.Double2IntLinkedOpenHashMap.get",
              "org.apache.parquet.column.values.dictionary.DictionaryValuesWriter$PlainDoubleDictionaryValuesWriter.writeDouble",
              "org.apache.spark.sql.execution.datasources.FileFormatDataWriter.writeWithIterator",
              "org.apache.spark.scheduler.ResultTask.runTask")
NUMBER = ("jdk.internal.math.FloatingDecimal.toJavaFormatString", "com.fasterxml.jackson.core.io.NumberOutput.toString",
          "org.apache.spark.sql.catalyst.json.JacksonGenerator.$anonfun$makeWriter$8",
          "org.apache.spark.sql.kafka010.KafkaWriteTask.execute", "org.apache.spark.scheduler.ResultTask.runTask")
ARROW = ("org.apache.arrow.vector.BaseVariableWidthVector.handleSafe",
         "org.apache.spark.sql.execution.arrow.StringWriter.setValue", "org.apache.spark.scheduler.ResultTask.runTask")


def test_task_samples_go_to_their_stage_and_innermost_kind_of_work(jfr):
    text = (sample(TASK, *PARSE) * 3 + sample(TASK, *GENERATED) + sample(TASK, *DICTIONARY) * 2
            + sample(TASK, *NUMBER) + sample(TASK, *ARROW) + sample(TASK, "java.lang.Thread.run")
            + sample("Thread-12", "py4j.GatewayConnection.run") + sample("C1 CompilerThread0", "x.Y.z"))
    summary = jfr.summarize_samples(text)
    assert summary["samples"] == 11 and summary["task_samples"] == 9
    shuffle_map = "shuffle map (read, parse, validate, shuffle write)"
    assert summary["stages"] == {shuffle_map: round(4 / 9, 4), "Parquet/Delta write": round(2 / 9, 4),
                                 "Kafka write": round(1 / 9, 4),
                                 "other tasks (the stateful stage; the ceiling's read)": round(1 / 9, 4),
                                 "other": round(1 / 9, 4)}
    # the innermost frame that names a kind wins: the parse inside generated code is the parse
    assert summary["kinds"]["JSON parse"] == round(3 / 9, 4) and summary["kinds"]["generated code"] == round(1 / 9, 4)
    assert summary["kinds"]["Parquet dictionaries"] == round(2 / 9, 4)
    assert summary["kinds"]["JSON write"] == round(1 / 9, 4)
    assert summary["kinds"]["Arrow (Python's input and output)"] == round(1 / 9, 4)
    assert summary["stage_kinds"][shuffle_map] == {"JSON parse": round(3 / 9, 4), "generated code": round(1 / 9, 4)}
    assert next(iter(summary["stage_kinds"])) == shuffle_map  # the largest stage first
    assert summary["threads"] == {"Spark tasks": round(9 / 11, 4), "other JVM threads": round(1 / 11, 4),
                                  "Py4J (the sink's calls from Python)": round(1 / 11, 4)}


def test_allocation_sites_and_gc_pauses_add_up(jfr):
    def alloc(cls: str, weight: str, *frames: str) -> str:
        stack = "\n".join(f"    {f}(int) line: 2" for f in frames)
        return (f"jdk.ObjectAllocationSample {{\n  startTime = 03:10:37.001\n"
                f"  objectClass = {cls} (classLoader = bootstrap)\n  weight = {weight}\n"
                f'  eventThread = "{TASK}" (javaThreadId = 7)\n  stackTrace = [\n{stack}\n  ]\n}}\n\n')

    decoder = ("java.nio.HeapByteBuffer.<init>", "java.nio.ByteBuffer.allocate", "sun.nio.cs.StreamDecoder.<init>")
    text = (alloc("byte[]", "1.5 GB", *decoder) + alloc("byte[]", "500.0 MB", *decoder)
            + alloc("long[]", "500.0 MB", "a.B.c"))
    allocation = jfr.summarize_allocations(text)
    assert allocation["allocated_gb"] == 2.5
    site, gb, share = allocation["top"][0]
    assert "StreamDecoder.<init>" in site and site.startswith("byte[] at") and (gb, share) == (2.0, 0.8)
    gc = jfr.summarize_gc("jdk.GarbageCollection {\n  sumOfPauses = 12.5 ms\n}\njdk.GarbageCollection {\n"
                          "  sumOfPauses = 1.20 s\n}\n")
    assert gc == {"collections": 2, "pauses_ms": 1212}


def test_a_recording_that_cannot_be_read_is_reported_not_raised(jfr, tmp_path):
    broken = tmp_path / "broken.jfr"
    broken.write_bytes(b"not a recording")
    summary = jfr.summarize(broken)
    assert "error" in summary
    assert jfr.lines("(b)", summary) == [f"(b): no JVM profile ({summary['error']})"]
    assert jfr.main([str(broken)]) == 1
