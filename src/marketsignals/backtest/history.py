"""Historical ticks for the backtest: a parquet data set, CSV or JSON-lines files, local or S3.

The reader only finds and loads the ticks; what makes a tick valid is decided downstream by the
live validation (:func:`marketsignals.backtest.signals.batch_signals`), so a malformed row becomes a
reject with a reason and never stops the run. To keep that true, the text formats are read *as
text*:

* JSON lines: each line is a ``value`` exactly like a Kafka message value, parsed by the live
  parser (``not_json``, ``missing_field``, ``wrong_type`` ... as in the stream).
* CSV: a header names the columns (any order, extra columns ignored); every field is read as a
  string, then typed by the live rules -- a typed CSV schema would turn ``"N/A"`` into a null and
  report it as ``missing_field`` instead of ``wrong_type``. ``timestamp`` may be ISO-8601 with a
  zone or epoch milliseconds, as on Kafka.
* parquet: typed columns (the feed's ``--to-parquet`` layout, partitioned by ``date=YYYY-MM-DD``;
  ``timestamp`` a timestamp, ISO text or epoch milliseconds). Partition columns are dropped.

Paths are anything Spark's readers take: a folder, a file, a glob, ``s3://`` on EMR (``s3a://``
locally when hadoop-aws is on the classpath).
"""

from __future__ import annotations

import glob

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from marketsignals.local_paths import local_path
from marketsignals.schema import TICK_FIELDS

FORMATS = ("parquet", "csv", "json")
VALUE = "value"  # the raw JSON line (the Kafka message value of the live path)


class HistoryError(ValueError):
    """The history cannot be read as ticks (no such path, missing columns): says what to fix."""


def read_history(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    """Ticks at ``path`` in format ``fmt`` (parquet, csv or json = JSON lines), untyped or typed as
    stored: the SPEC §1 columns for parquet and CSV, one ``value`` text column for JSON lines.

    Raises :class:`HistoryError` when the path does not exist or a tick column is absent from the
    data set as a whole (a missing *value* in a row is a reject, not an error)."""
    if fmt not in FORMATS:
        raise HistoryError(f"backtest.input_format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    local = local_path(path)
    if local is not None and "{" not in path and not glob.glob(str(local)):
        # checked here for local paths (Python's glob has no {a,b}: those are left to Spark's check):
        # Spark would log a Java stack trace before failing
        raise _no_history(path)
    try:
        if fmt == "json":
            return spark.read.text(path).select(F.col(VALUE))
        if fmt == "csv":
            # inferSchema off: every column is a string, typed later by the live validation.
            frame = spark.read.option("header", True).option("inferSchema", False).csv(path)
        else:
            frame = spark.read.parquet(path)
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise _no_history(path) from None
        if "UNABLE_TO_INFER_SCHEMA" in str(exc):
            raise HistoryError(f"no {fmt} files under {path} (is --format right?)") from None
        raise
    return tick_columns(frame, path)


def _no_history(path: str) -> HistoryError:
    return HistoryError(f"no history at {path}: generate one with `marketsignals feed --to-parquet {path} ...` "
                        "or pass --input PATH")


def tick_columns(frame: DataFrame, source: str = "input") -> DataFrame:
    """The SPEC §1 tick columns of ``frame`` (by name, case-insensitive), in the contract's order."""
    by_lower = {c.lower(): c for c in frame.columns}
    missing = [f for f in TICK_FIELDS if f not in by_lower]
    if missing:
        raise HistoryError(f"{source}: missing tick columns {', '.join(missing)} (SPEC §1 contract: "
                           f"{', '.join(TICK_FIELDS)}); found {', '.join(frame.columns) or 'none'}")
    return frame.select(*[F.col(by_lower[f]).alias(f) for f in TICK_FIELDS])
