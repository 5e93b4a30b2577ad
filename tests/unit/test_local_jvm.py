"""The local profile's JVM flags (conf/local.yaml, spark.driver.extraJavaOptions), on the running JVM."""


def test_c1_only_with_a_code_cache_that_holds_the_job(spark):
    jvm = spark.sparkContext._jvm
    bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
    assert bean.getVMOption("TieredStopAtLevel").getValue() == "1"
    # C1 only defaults to a 48 MB code cache; the job's compiled code needs ~55 MB (README, eighth round)
    assert int(bean.getVMOption("ReservedCodeCacheSize").getValue()) >= 200 * 2**20


def test_the_heap_is_all_committed_and_touched_from_the_start(spark):
    jvm = spark.sparkContext._jvm
    bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
    # G1 grows a smaller initial heap in steps at unforeseeable times (README, eleventh round)
    assert bean.getVMOption("InitialHeapSize").getValue() == bean.getVMOption("MaxHeapSize").getValue()
    assert bean.getVMOption("AlwaysPreTouch").getValue() == "true"
