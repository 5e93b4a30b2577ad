"""``make bench``: the benchmark of issue 6, in one run on one pre-loaded topic of a local broker.

    (a) ceiling   Spark Kafka source -> from_json -> noop sink
    (b) product   the streaming job's production path, availableNow
    (c) simple    one Python process: kafka-python + orjson + SPEC §2-3 per symbol
    (d) latency   the job on its default trigger, the feed at fixed rates, emission=every
    (e) scale     (b) with --scale-symbols symbols; state size; peak RSS of the JVM and Python workers
    restart       (--restart-after) the job of (d) stopped and started again from its checkpoint while the
                  feed goes on: how long until its signals are back at their steady latency

Prints a table (with b/a and b/c), writes bench/results/<timestamp>.json and .png. A benchmark, not a
test: it reports, it never fails on a number. Every scenario runs in its own process (fresh JVM).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import jfr
from bench.env import WORK, BenchBroker
from bench.procs import NMT_OPTION, Sampler
from bench.workload import ROOT, Workload, run_feeder, start_feeder, start_measured_feed, wait_feeder, write_records

RESULTS = Path(__file__).with_name("results")
PROFILED = {"a_ceiling": "a", "b_product": "b", "e_scale": "e"}  # the runs --jfr records, by work folder


CODE: Path | None = None  # --code: measure another checkout's product (its src/ and conf/), e.g. a baseline


def _run(cmd: list[str], timeout: float, interval: float = 1.0, nmt_every: float = 0.0) -> dict:
    """Run one measurement process; its BENCH-RESULT plus CPU and peak memory of its process tree
    (``nmt_every`` > 0: its JVM tracks its native memory, sampled that often)."""
    path = [str(CODE / "src"), str(ROOT)] if CODE else [str(ROOT)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")]))
    if nmt_every:  # read by the java launcher that PySpark runs: on top of the profile's driver options
        env["JDK_JAVA_OPTIONS"] = f"{env.get('JDK_JAVA_OPTIONS', '')} {NMT_OPTION}".strip()
    proc = subprocess.Popen(cmd, cwd=CODE or ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    sampler = Sampler(proc.pid, interval=interval, nmt_every=nmt_every).start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"error": f"timed out after {timeout:.0f}s", **sampler.stop()}
    usage = sampler.stop()
    lines = [line for line in out.splitlines() if line.startswith("BENCH-RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(err.strip().splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}", **usage}
    result = json.loads(lines[-1][len("BENCH-RESULT "):])
    result.update(usage)
    said = [line for line in out.splitlines() if line.startswith("marketsignals stream: ")]
    if said:  # what the job printed as it started (its warm-up's line: how long it took)
        result["job_said"] = said
    if interval >= 2:
        result["rss_series"] = sampler.series
    if sampler.nmt_series:
        result["nmt_series"] = sampler.nmt_series
    if "feed_monotonic" in result:  # when the feed ran, in the RSS series' seconds
        result["feed_window_s"] = [round(t - sampler.started, 1) for t in result.pop("feed_monotonic")]
    if "state_memory_monotonic" in result:
        result["state_memory_series"] = [(round(t - sampler.started, 1), b)
                                         for t, b in result.pop("state_memory_monotonic")]
    return result


def spark_run(scenario: str, args: dict, timeout: float, interval: float = 1.0, nmt_every: float = 0.0) -> dict:
    return _run([sys.executable, "-m", "bench.spark_runs", scenario, json.dumps(args)], timeout, interval, nmt_every)


def preload(broker: BenchBroker, prefix: str, w: Workload, partitions: int, work: Path) -> tuple[list[str], dict]:
    settings = broker.topics(prefix, partitions)
    records = write_records(w, settings.kafka.tick_topics, work / f"{prefix}.bin")
    fed = run_feeder(broker.bootstrap, records, settings.kafka.tick_topics, "preload")
    records.unlink()
    return settings.kafka.tick_topics, fed


def tick_topics(prefix: str) -> list[str]:
    return [f"{prefix}-market", f"{prefix}-level2", f"{prefix}-trade"]  # as BenchBroker.topics names them


def topic_overrides(prefix: str, partitions: int, *extra: str) -> list[str]:
    topics = tick_topics(prefix)
    return [f"kafka.topics=[{', '.join(topics)}]", f"kafka.signals_topic={prefix}-signals",
            f"kafka.dead_letter_topic={prefix}-dead-letter", f"kafka.partitions={partitions}", *extra]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    p.add_argument("--ticks", type=int, default=1_000_000, help="ticks pre-loaded for (a)-(c), (e)")
    p.add_argument("--symbols", type=int, default=100)
    p.add_argument("--scale-symbols", type=int, default=10_000, help="(e); 0 skips it")
    p.add_argument("--partitions", type=int, default=3, help="Kafka partitions per tick topic (3 topics)")
    p.add_argument("--shuffle-partitions", type=int, default=None, help="default: conf/local.yaml")
    p.add_argument("--max-offsets", type=int, default=None, help="maxOffsetsPerTrigger; default: conf")
    p.add_argument("--rates", default="5000,20000,50000", help="(d) feed rates, ticks/s; '' skips (d)")
    p.add_argument("--rate-seconds", type=float, default=60.0)
    p.add_argument("--restart-after", type=float, default=0.0,
                   help="restart: stop the job after this many seconds of feed at --restart-rate and start it "
                        "again from its checkpoint in a new process, the feed going on (0: skip)")
    p.add_argument("--restart-rate", type=float, default=20000.0)
    p.add_argument("--restart-seconds", type=float, default=180.0,
                   help="restart: the feed's seconds after the stop (the restart, the catch-up, then steady)")
    p.add_argument("--soak-seconds", type=float, default=0.0, help="memory over time at --soak-rate (0: skip)")
    p.add_argument("--soak-rate", type=float, default=5000.0)
    p.add_argument("--nmt", action="store_true",
                   help="the soak's JVM tracks its native memory (jcmd every 30 s): its growth by category")
    p.add_argument("--jfr", action="store_true",
                   help="record a JFR CPU profile of (a), (b) and (e)'s JVM and summarise it (bench/jfr.py)")
    p.add_argument("--skip", default="", help="comma list of a,b,c,d,e")
    p.add_argument("--cold-feed", action="store_true",
                   help="(d) and the soak: the feeder starts after the job's first batch, on empty topics, so the "
                        "broker and the feeder warm up during the measured feed (by default the feed runs at its "
                        "rate while the job starts, as when a job (re)starts while ticks flow)")
    p.add_argument("--bootstrap", help="use this broker instead of starting one")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra settings for (b),(d),(e)")
    p.add_argument("--code", help="run (a),(b),(d),(e) on another checkout's src/ and conf/ (a baseline)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    global CODE
    CODE = Path(args.code).resolve() if args.code else None
    skip = set(filter(None, args.skip.split(",")))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"  # unique if two run at once
    work = WORK / stamp
    work.mkdir(parents=True, exist_ok=True)
    extra = list(args.overrides)
    if args.shuffle_partitions:
        extra.append(f"spark.shuffle_partitions={args.shuffle_partitions}")
    if args.max_offsets:
        extra.append(f"kafka.max_offsets_per_trigger={args.max_offsets}")
    results: dict = {"started": stamp, "host": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
                     "args": vars(args), "runs": {}}
    broker = BenchBroker(args.bootstrap) if args.bootstrap else BenchBroker.start()
    runs = results["runs"]
    timeout = max(900.0, args.ticks / 500)

    def log(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def recording(folder: str) -> Path:  # beside the run's work folder, which the run empties first
        return work / f"{folder}.jfr"

    def profiled(folder: str) -> dict:
        return {"jfr": str(recording(folder))} if args.jfr else {}

    try:
        base = f"b{stamp.lower()}"
        if not {"a", "b", "c"} <= skip:
            log(f"pre-loading {args.ticks:,} ticks over {args.symbols} symbols")
            _, fed = preload(broker, f"{base}-s{args.symbols}", Workload(args.ticks, args.symbols), args.partitions,
                             work)
            runs["preload"] = fed
            log(f"pre-loaded at {fed['rate']:,.0f} msgs/s")
        common = {"bootstrap": broker.bootstrap}
        main_topics = topic_overrides(f"{base}-s{args.symbols}", args.partitions)
        product_set = [*main_topics, "kafka.starting_offsets=earliest", "stream.trigger=availableNow", *extra]
        if "a" not in skip:
            log("(a) ceiling: Kafka -> from_json -> noop")
            runs["a_ceiling"] = spark_run("ceiling", {**common, "work": str(work / "a"), "overrides": product_set,
                                                       **profiled("a")}, timeout)
        if "b" not in skip:
            log("(b) product, availableNow")
            runs["b_product"] = spark_run("product", {**common, "work": str(work / "b"), "overrides": product_set,
                                                       **profiled("b")}, timeout)
        if "c" not in skip:
            log("(c) simple Python consumer")
            signals_topic = f"{base}-s{args.symbols}-simple-signals"
            broker.topics(f"{base}-s{args.symbols}-simple", 1)
            runs["c_simple"] = _run([sys.executable, "-m", "bench.simple_consumer", broker.bootstrap,
                                     ",".join(tick_topics(f"{base}-s{args.symbols}")), signals_topic], timeout)
        if "e" not in skip and args.scale_symbols:
            log(f"(e) pre-loading {args.ticks:,} ticks over {args.scale_symbols:,} symbols")
            preload(broker, f"{base}-s{args.scale_symbols}", Workload(args.ticks, args.scale_symbols), args.partitions,
                    work)
            log(f"(e) product over {args.scale_symbols:,} symbols")
            scale_set = [*topic_overrides(f"{base}-s{args.scale_symbols}", args.partitions),
                         "kafka.starting_offsets=earliest", "stream.trigger=availableNow", *extra]
            runs["e_scale"] = spark_run("product", {**common, "work": str(work / "e"), "overrides": scale_set,
                                                    **profiled("e")}, timeout)
        rates = [float(r) for r in args.rates.split(",") if r.strip()] if "d" not in skip else []
        for rate in rates:
            log(f"(d) latency at {rate:,.0f} ticks/s for {args.rate_seconds:.0f}s")
            runs[f"d_latency_{int(rate)}"] = latency_run(broker, base, rate, args.rate_seconds, args, extra, work)
        if args.restart_after > 0:
            log(f"restart at {args.restart_rate:,.0f} ticks/s after {args.restart_after:.0f}s, "
                f"then {args.restart_seconds:.0f}s of feed")
            runs[f"restart_{int(args.restart_rate)}"] = restart_run(broker, base, args, extra, work)
        if args.soak_seconds > 0:
            log(f"memory soak at {args.soak_rate:,.0f} ticks/s for {args.soak_seconds:.0f}s")
            runs["soak"] = latency_run(broker, base + "-soak", args.soak_rate, args.soak_seconds, args, extra, work,
                                       interval=5.0, nmt_every=30.0 if args.nmt else 0.0)
    finally:
        if not args.bootstrap:
            broker.stop()
    results["host"]["load_avg_end"] = os.getloadavg()
    if args.jfr:
        for name, folder in PROFILED.items():
            if name in runs and recording(folder).exists():
                runs[name]["jfr"] = jfr.summarize(recording(folder))
    from bench.report import chart, table

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(table(results))
    for name in PROFILED:
        if "jfr" in runs.get(name, {}):
            print("\n".join(jfr.lines(f"JVM profile of {name}", runs[name]["jfr"])))
    png = chart(results, out / f"{stamp}.png")
    print(f"results: {path}\nchart:   {png}")
    return 0


def latency_run(broker: BenchBroker, base: str, rate: float, seconds: float, args, extra: list[str], work: Path,
                interval: float = 1.0, nmt_every: float = 0.0) -> dict:
    prefix = f"{base}-r{int(rate)}"
    settings = broker.topics(prefix, args.partitions)
    # enough distinct ticks for ~20 s of feed; the feeder cycles through them (re-stamped with the clock)
    records = write_records(Workload(int(min(rate * seconds, max(rate * 20, 50_000))), args.symbols),
                            settings.kafka.tick_topics, work / f"{prefix}.bin")
    overrides = [*topic_overrides(prefix, args.partitions), "kafka.starting_offsets=latest",
                 "stream.emission=every", *extra]
    # its bound: the run, the job's start and drain, and the read of every signal (emission=every: ~0.4 a tick)
    # through kafka-python, a second per 5,000 ticks fed (a 20-minute soak at 20,000 ticks/s outran a fixed 900 s)
    result = spark_run("latency", {"bootstrap": broker.bootstrap, "work": str(work / prefix), "overrides": overrides,
                                   "rate": rate, "seconds": seconds, "records": str(records), "catch_up_s": 120,
                                   "cold_feed": args.cold_feed},
                       timeout=seconds + 900 + rate * seconds / 5_000, interval=interval, nmt_every=nmt_every)
    records.unlink(missing_ok=True)
    return result


def restart_run(broker: BenchBroker, base: str, args, extra: list[str], work: Path) -> dict:
    """The job of (d) at ``--restart-rate``: phase "first" starts while the feed runs and stops after
    ``--restart-after`` s; a new process (phase "resume") starts it again from the same checkpoint while
    the feed goes on for ``--restart-seconds`` (bench/spark_runs.py: restart_first, restart_resume)."""
    rate = args.restart_rate
    prefix = f"{base}-restart-r{int(rate)}"
    settings = broker.topics(prefix, args.partitions)
    records = write_records(Workload(int(max(rate * 20, 50_000)), args.symbols), settings.kafka.tick_topics,
                            work / f"{prefix}.bin")
    fed_file = work / f"{prefix}.fed.json"
    common = {"bootstrap": broker.bootstrap, "work": str(work / prefix)}
    overrides = [*topic_overrides(prefix, args.partitions), "kafka.starting_offsets=latest", "stream.emission=every",
                 *extra]
    timeout = 900 + args.restart_after + args.restart_seconds * (1 + rate / 5_000)
    # the feed at its rate from now on, through both processes; its measured seconds start at the stop
    feeder = start_feeder(broker.bootstrap, records, settings.kafka.tick_topics, rate, args.restart_seconds, lead=True)
    waiter = None
    try:
        first = spark_run("restart", {**common, "phase": "first", "run_s": args.restart_after, "overrides": [
            *overrides, f"stream.metrics_path={work / prefix}/metrics-first.jsonl"]}, timeout)
        if "error" in first:
            return {"rate": rate, "first": first}
        start_measured_feed(feeder)

        def fed() -> None:  # phase "resume" reads until this file says the feed has ended
            try:
                summary = wait_feeder(feeder)
            except RuntimeError as exc:  # killed below, after a failed resume
                summary = {"error": str(exc)}
            fed_file.write_text(json.dumps(summary))

        waiter = threading.Thread(target=fed, daemon=True)
        waiter.start()
        resume = spark_run("restart", {**common, "phase": "resume", "rate": rate, "fed_file": str(fed_file),
                                       "since_ms": first["first_batch_epoch"] * 1000,
                                       "stop_ms": first["stop_epoch"] * 1000, "overrides": [
                                           *overrides, f"stream.metrics_path={work / prefix}/metrics-resume.jsonl"]},
                           timeout)
        return {"rate": rate, "first": first, "resume": resume}
    finally:
        if feeder.poll() is None and (waiter is None or not fed_file.exists()):
            feeder.kill()
        if waiter is not None:
            waiter.join(30)
        records.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
