"""The SparkSession at the edge: local jars, Delta, RocksDB state store, UTC, quiet logs.

On EMR spark-submit already configured master, jars and cluster settings; this only adds what the
job itself needs and leaves spark-submit's choices alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import SparkSession

from marketsignals.emr.artifact import jar_version
from marketsignals.schema import PLAIN_ENCODED_COLUMNS
from marketsignals.settings import SparkSettings

# The artifacts ``make jars`` fetches, by name: for Scala 2.13 (Spark 4.0), or 2.12 (Spark 3.5, emr-7.x; README).
REQUIRED_JARS = ("spark-sql-kafka-0-10", "spark-token-provider-kafka-0-10", "kafka-clients", "commons-pool2",
                 "delta-spark", "delta-storage")


BASE_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # Arrow batches for the pandas state handler: bigger batches, fewer Python round trips.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "20000",
    "spark.sql.streaming.metricsEnabled": "true",
    # Delta's OPTIMIZE rewrites the files smaller than this (1 GB by default): the sink compacts the audit
    # table every stream.audit_compact_interval commits, and a compacted file of 64 MB or more is left
    # as it is, not rewritten with every compaction until it reaches 1 GB (stream/sinks.py, AuditMaintenance).
    "spark.databricks.delta.optimize.minFileSize": str(64 * 1024 * 1024),
    # ... and one output file (bin, of up to 1 GB: one task) at a time, not Delta's 15 in parallel: at 20,000
    # ticks/s a compaction had two bins, whose tasks held both cores and stalled a batch for ~20 s. One at a
    # time, it holds one core and the stream keeps the rest (bench/ROUNDS.md, fortieth round).
    "spark.databricks.delta.optimize.maxThreads": "1",
    # Parquet writes these columns plain, without first building a dictionary it would drop (schema.py):
    # spark.hadoop.* reaches Delta's and Spark's Parquet writers through their Hadoop conf. (Without the
    # prefix the settings reached them too, as session options, but spark-submit, which starts a local
    # session's JVM, printed "Warning: Ignoring non-Spark config property" for each of them.)
    **{f"spark.hadoop.parquet.enable.dictionary#{column}": "false" for column in PLAIN_ENCODED_COLUMNS},
    # Secrets never reach the UI, event logs or metrics (sasl.jaas.config carries a password).
    "spark.redaction.regex": "(?i)secret|password|token|access[.]key|jaas|credential",
    "spark.sql.redaction.options.regex": "(?i)url|secret|password|token|jaas|credential|key[.]password",
}


DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
DRIVER_CLASS_PATH = "spark.driver.extraClassPath"
LOCAL_MALLOC_ARENA_MAX = "2"


class MissingJarsError(RuntimeError):
    pass


def _jars_in(folder: Path) -> list[str]:
    """The absolute paths of the jars in ``folder`` (none if it does not exist), sorted."""
    return sorted(str(p.resolve()) for p in folder.glob("*.jar")) if folder.is_dir() else []


def local_jars(jars_dir: str) -> list[str]:
    """The connector and Delta jars from ``make jars``; a clear error if any is missing."""
    folder = Path(jars_dir)
    jars = _jars_in(folder)
    missing = [artifact for artifact in REQUIRED_JARS if not any(jar_version(j, artifact) for j in jars)]
    if missing:
        raise MissingJarsError(f"Spark jars missing in {folder} ({', '.join(missing)}): "
                               "run `make jars`")
    return jars


def classpath_jars(classpath_dir: str) -> list[str]:
    """The jars of ``spark.classpath_dir`` (``make jars`` builds them); a clear error if there are none."""
    folder = Path(classpath_dir)
    jars = _jars_in(folder)
    if not jars:
        raise MissingJarsError(f"no jars in {folder} (spark.classpath_dir): run `make jars`")
    return jars


def with_profile_jars(jars: list[str], configured: str) -> str:
    """``spark.jars`` for the session: the profile's jars (``spark.jars_dir``), then those a ``spark.conf``
    (or ``extra_conf``) ``spark.jars`` names, which add to them rather than replace them."""
    more = [j.strip() for j in configured.split(",") if j.strip()]
    return ",".join([*jars, *(j for j in more if j not in jars)])


def missing_from_class_path(jars: list[str], class_path: str) -> list[str]:
    """The ``jars`` that a JVM's class path (its ``java.class.path``) does not hold."""
    entries = {str(Path(entry).resolve()) for entry in class_path.split(os.pathsep) if entry}
    return [jar for jar in jars if str(Path(jar).resolve()) not in entries]


def session_conf(spark: SparkSettings, extra_conf: dict[str, str] | None = None,
                 bounded: bool = False) -> dict[str, str]:
    """The session's Spark conf besides its jars: the base, ``spark.conf``, ``extra_conf``; for a run over a
    bounded input in big batches, the driver's JVM flags end with ``spark.bounded_java_options`` (the
    local profile: the JIT)."""
    conf = dict(BASE_CONF)
    conf["spark.sql.shuffle.partitions"] = str(spark.shuffle_partitions)
    conf.update(spark.conf)
    conf.update(extra_conf or {})
    if bounded and spark.bounded_java_options.strip():
        flags = [conf.get(DRIVER_JAVA_OPTIONS, ""), spark.bounded_java_options]
        conf[DRIVER_JAVA_OPTIONS] = " ".join(f.strip() for f in flags if f.strip())
    return conf


def build_session(spark: SparkSettings, extra_conf: dict[str, str] | None = None,
                  bounded: bool = False) -> SparkSession:
    """Get or create the session described by ``spark`` (+ ``extra_conf``); see :func:`session_conf`."""
    builder = SparkSession.builder.appName(spark.app_name)
    if spark.master:
        builder = builder.master(spark.master)
    if spark.master and spark.master.startswith("local"):
        # Python workers run the interpreter that runs the driver (the project's venv); PySpark
        # reads PYSPARK_PYTHON when the SparkContext starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # The JVM that PySpark starts here inherits this: with glibc's default (8 malloc arenas per
        # core) the JVM's memory outside its own accounting (NMT) grew 28 MB over the second half of a
        # 10-minute soak, with 2 arenas 6 MB (bench/ROUNDS.md, fifteenth round). YARN sets its own.
        os.environ.setdefault("MALLOC_ARENA_MAX", LOCAL_MALLOC_ARENA_MAX)
    conf = session_conf(spark, extra_conf, bounded)
    jars = with_profile_jars(local_jars(spark.jars_dir) if spark.jars_dir else [], conf.get("spark.jars", ""))
    if jars:
        conf["spark.jars"] = jars
    classpath = classpath_jars(spark.classpath_dir) if spark.classpath_dir else []
    if classpath:
        paths = [conf.get(DRIVER_CLASS_PATH, ""), *classpath]
        conf[DRIVER_CLASS_PATH] = os.pathsep.join(p for p in paths if p)
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    set_log_level(session.sparkContext, spark.log_level)
    # Under spark-submit the JVM was started before these settings were read: without the jars, the
    # classes the settings name (the local profile's file system for file: paths) fail at the first file.
    if classpath:
        running = session.sparkContext._jvm.java.lang.System.getProperty("java.class.path")
        missing = missing_from_class_path(classpath, running)
        if missing:
            raise MissingJarsError(f"the driver's JVM started without {', '.join(missing)} (spark.classpath_dir) on "
                                   f"its class path: under spark-submit pass --driver-class-path "
                                   f"{os.pathsep.join(missing)}")
    return session


def set_log_level(sc, level: str) -> None:
    """The driver's log level (spark.log_level). Spark 4.0's setLogLevel does nothing when the root logger
    has the level already, as it has INFO under Spark's default profile, while the console of a JVM that
    Python started still drops what is below WARN (Spark's shell filter): so spark.log_level=INFO showed
    nothing more. Another level first makes the second call act, and clear that filter."""
    sc.setLogLevel("ERROR" if level.upper() != "ERROR" else "WARN")
    sc.setLogLevel(level)


@contextmanager
def conf_while(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """The session's ``key`` set to ``value`` for the block, then back to what it was (unset if it was)."""
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
