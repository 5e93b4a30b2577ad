"""A path or URI the settings name, as a local path for what the project reads and writes in Python
(stop requests, backtest reports, a history's existence check): the same file Hadoop would open."""

from __future__ import annotations

import pytest
from pyspark.errors import IllegalArgumentException

from marketsignals.backtest.job import publish
from marketsignals.local_paths import local_path

LOCAL_FORMS = ("{p}", "file://{p}", "file:{p}", "FILE:{p}", "FILE://{p}")


@pytest.mark.parametrize("form", LOCAL_FORMS)
def test_every_form_of_a_local_path_is_the_file_hadoop_opens(spark, tmp_path, form):
    target = tmp_path / "cp dir" / "a%20b?[x]"
    uri = form.format(p=target)
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    assert local_path(uri) == target
    assert fs.getUri().getScheme() == "file" and str(fs.pathToFile(hadoop_path).getPath()) == str(target)


def test_a_relative_path_stays_relative_and_other_file_systems_are_not_local(spark):
    assert str(local_path(".local/checkpoints/stream")) == ".local/checkpoints/stream"
    for uri in ("s3://bucket/cp", "s3a://bucket/cp", "hdfs:///cp", "hdfs://nn:8020/cp", "file://localhost/cp"):
        assert local_path(uri) is None, uri
    jvm = spark.sparkContext._jvm
    with_host = jvm.org.apache.hadoop.fs.Path("file://localhost/cp")
    with pytest.raises(IllegalArgumentException, match="Wrong FS"):  # not a local path to Hadoop either
        with_host.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).pathToFile(with_host)


def test_reports_are_published_to_a_local_folder_named_as_hadoop_prints_it(tmp_path):
    report = tmp_path / "summary.json"
    report.write_text("{}")
    publish(None, [report], f"file:{tmp_path}/out")  # a local destination needs no session
    assert (tmp_path / "out" / "summary.json").read_text() == "{}"
