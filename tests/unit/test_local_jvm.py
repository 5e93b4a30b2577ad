"""The local profile's JVM flags (conf/local.yaml, spark.driver.extraJavaOptions), on the running JVM (a
bounded run's are the same); the state store's RocksDB memory, as Spark reads it."""

import os
import subprocess
import sys

from marketsignals.settings import load_settings

ORIGINAL_ENV = dict(os.environ)  # at import, before the session fixture starts the JVM


def vm_option(spark, name: str) -> str:
    """The value of a HotSpot flag in the session's running JVM."""
    jvm = spark.sparkContext._jvm
    bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
    return bean.getVMOption(name).getValue()


def test_c2_at_ten_times_its_tier4_thresholds_with_a_code_cache_that_holds_the_job(spark):
    # the per-row code gets C2, the planning code each batch runs anew mostly does not (bench/ROUNDS.md,
    # thirteenth and twenty-third rounds)
    assert vm_option(spark, "TieredStopAtLevel") == "4" and vm_option(spark, "TieredCompilation") == "true"
    assert float(vm_option(spark, "CompileThresholdScaling")) == 1  # it would scale the thresholds below
    tier4 = {"Invocation": "50000", "Compile": "150000", "BackEdge": "400000", "MinInvocation": "6000"}
    assert {name: vm_option(spark, f"Tier4{name}Threshold") for name in tier4} == tier4
    # C1 only would default to a 48 MB code cache; the job's compiled code needs ~55 MB (bench/ROUNDS.md, eighth round)
    assert int(vm_option(spark, "ReservedCodeCacheSize")) >= 200 * 2**20


def test_freed_native_memory_goes_back(spark):
    # glibc keeps what the JVM frees unless asked to give it back (malloc_trim; bench/ROUNDS.md, eighteenth round)
    assert vm_option(spark, "TrimNativeHeapInterval") == "60000"


def test_the_heap_is_all_committed_and_touched_from_the_start(spark):
    # G1 grows a smaller initial heap in steps at unforeseeable times (bench/ROUNDS.md, eleventh round)
    assert vm_option(spark, "InitialHeapSize") == vm_option(spark, "MaxHeapSize")
    assert vm_option(spark, "AlwaysPreTouch") == "true"


def test_bounded_runs_get_the_live_runs_jvm_flags():
    from marketsignals.session import DRIVER_JAVA_OPTIONS, session_conf

    spark = load_settings("local", env={}).spark
    assert session_conf(spark, bounded=True)[DRIVER_JAVA_OPTIONS] == session_conf(spark)[DRIVER_JAVA_OPTIONS]


def test_the_local_jvm_runs_with_few_malloc_arenas(spark):
    from marketsignals.session import LOCAL_MALLOC_ARENA_MAX

    # set before the JVM started unless the environment already chose (bench/ROUNDS.md, fifteenth round)
    chosen = os.environ.get("MALLOC_ARENA_MAX")
    assert chosen is not None
    assert spark.sparkContext._jvm.java.lang.System.getenv("MALLOC_ARENA_MAX") == chosen
    if "MALLOC_ARENA_MAX" not in ORIGINAL_ENV:
        assert chosen == LOCAL_MALLOC_ARENA_MAX


def test_system_gc_is_a_concurrent_cycle_run_every_minute(spark):
    # each batch's watermark predicate is a class of its own; only a concurrent mark (or a full GC)
    # unloads them, and Spark's ContextCleaner asks for one every periodicGC.interval (bench/ROUNDS.md, sixteenth round)
    assert spark.sparkContext.getConf().get("spark.cleaner.periodicGC.interval") == "1min"
    jvm = spark.sparkContext._jvm
    full = next(bean for bean in jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
                if bean.getName() == "G1 Old Generation")  # JDK 17: counts full GCs only
    before = full.getCollectionCount()
    jvm.java.lang.System.gc()
    assert full.getCollectionCount() == before  # a full GC would stop the whole JVM, tasks included


def test_the_state_stores_rocksdb_block_cache_is_one_megabyte(spark):
    # 8 MB by default per state store, filled over ~15 minutes by blocks of files compactions replaced: the
    # JVM's native growth after its JIT's (bench/ROUNDS.md, nineteenth round). Read as Spark's state store
    # reads the session's conf, so a misspelt key fails here too.
    state = spark.sparkContext._jvm.org.apache.spark.sql.execution.streaming.state
    store_conf = state.StateStoreConf.apply(spark._jsparkSession.sessionState().conf())
    assert state.RocksDBConf.apply(store_conf).blockCacheSizeMB() == 1


def test_the_log_level_setting_shows_what_it_names():
    # Spark's own setLogLevel("INFO") left a Python-started driver's console at WARN (session.set_log_level)
    code = """if True:
        from marketsignals.session import build_session, set_log_level
        from marketsignals.settings import load_settings
        session = build_session(load_settings("local", ["spark.log_level=INFO"], env={}).spark)
        log = session.sparkContext._jvm.org.apache.logging.log4j.LogManager.getLogger("marketsignals.test")
        log.info("record-1 at INFO")
        log.debug("record-2 at DEBUG")
        set_log_level(session.sparkContext, "WARN")
        log.info("record-3 at INFO")
        log.warn("record-4 at WARN")
        session.stop()
    """
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    shown = [n for n in (1, 2, 3, 4) if f"record-{n} at" in run.stderr]
    assert shown == [1, 4], run.stderr[-2000:]
