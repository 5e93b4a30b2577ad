"""The local profile's Hadoop file system for file: paths (jvm/localfs, conf/local.yaml): Hadoop's own,
with java.nio where Hadoop without its native library starts a child process (bench/ROUNDS.md,
seventeenth round), and one stat for a file's status, a listing's filter before it (thirty-sixth round).
The same permissions, link answers, statuses and listings as Hadoop's, and no child process."""

import os
from pathlib import Path

import pytest
from py4j.protocol import Py4JJavaError

PERMISSIONS = (0o600, 0o640, 0o644, 0o700, 0o750, 0o755)


@pytest.fixture()
def jvm(spark):
    return spark.sparkContext._jvm


def _initialized(jvm, spark, fs):
    fs.initialize(jvm.java.net.URI("file:///"), spark.sparkContext._jsc.hadoopConfiguration())
    return fs


def hadoop_raw(jvm, spark):
    """Hadoop's own raw local file system (a child process per chmod and readlink), for comparison."""
    return _initialized(jvm, spark, jvm.org.apache.hadoop.fs.RawLocalFileSystem())


def nio_raw(jvm, spark):
    return _initialized(jvm, spark, jvm.io.marketsignals.hadoop.NioRawLocalFileSystem())


def children_faults(pid: int) -> int:
    """Minor page faults of the process's waited-for children (/proc/<pid>/stat, cminflt): every child
    process the JVM starts and reaps adds its own (tens for a chmod here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # after ")": state ppid pgrp session tty_nr tpgid flags minflt cminflt


def test_the_session_uses_it_through_both_hadoop_apis(spark, jvm, tmp_path):
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    uri = jvm.java.net.URI(tmp_path.as_uri())
    assert jvm.org.apache.hadoop.fs.FileSystem.get(uri, conf).getClass().getName() == \
        "io.marketsignals.hadoop.NioLocalFileSystem"  # data files, Delta's log reads
    assert jvm.org.apache.hadoop.fs.FileContext.getFileContext(uri, conf).getDefaultFileSystem() \
        .getClass().getName() == "io.marketsignals.hadoop.NioLocalFs"  # the checkpoint, Delta's log writes


def test_its_jar_is_on_the_drivers_class_path_or_the_session_says_what_to_run(spark, tmp_path):
    from marketsignals.session import DRIVER_CLASS_PATH, MissingJarsError, classpath_jars

    # Hadoop resolves file: paths before Spark loads spark.jars, so the JVM must start with it
    assert "marketsignals-localfs.jar" in spark.sparkContext.getConf().get(DRIVER_CLASS_PATH)
    with pytest.raises(MissingJarsError, match="run `make jars`"):
        classpath_jars(str(tmp_path))


def test_a_jvm_started_without_the_jars_is_told_apart(spark, tmp_path):
    from marketsignals.session import classpath_jars, missing_from_class_path
    from marketsignals.settings import load_settings

    jar = tmp_path / "lib.jar"
    jar.touch()
    # spark-submit starts the JVM before the settings are read: the session then says which jars to pass
    assert missing_from_class_path([str(jar)], os.pathsep.join(["/opt/spark/jars/*", "relative.jar"])) == [str(jar)]
    assert missing_from_class_path([str(jar)], os.pathsep.join(["/opt/spark/jars/*", f"{tmp_path}/./lib.jar"])) == []
    # the session's own jars, as build_session finds them (an error if there are none), are on the running JVM's
    running = spark.sparkContext._jvm.java.lang.System.getProperty("java.class.path")
    ours = classpath_jars(load_settings("local", env={}).spark.classpath_dir)
    assert [Path(p).name for p in missing_from_class_path([str(jar), *ours], running)] == ["lib.jar"]


def test_files_and_directories_get_the_permissions_hadoop_gives(spark, jvm, tmp_path):
    Path_ = jvm.org.apache.hadoop.fs.Path
    FsPermission = jvm.org.apache.hadoop.fs.permission.FsPermission
    modes = {}
    for name, fs in (("hadoop", hadoop_raw(jvm, spark)), ("nio", nio_raw(jvm, spark))):
        for perm in PERMISSIONS:
            base = tmp_path / name / f"{perm:o}"
            assert fs.mkdirs(Path_(str(base / "dir")), FsPermission(perm))
            out = fs.create(Path_(str(base / "file")), FsPermission(perm), True, 4096, 1, 2**25, None)
            out.write(bytearray(b"tick"))
            out.close()
            fs.setPermission(Path_(str(base / "file")), FsPermission(perm & 0o750))
            modes[name, perm] = [os.stat(base / part).st_mode for part in ("dir", "file")]
    assert {perm: modes["nio", perm] for perm in PERMISSIONS} == {perm: modes["hadoop", perm] for perm in PERMISSIONS}
    assert modes["nio", 0o640][1] & 0o777 == 0o640 & 0o750  # the values themselves, not only equal
    with pytest.raises(Py4JJavaError, match="FileNotFoundException"):
        nio_raw(jvm, spark).setPermission(Path_(str(tmp_path / "missing")), FsPermission(0o644))


def test_link_status_answers_as_hadoops(spark, jvm, tmp_path):
    Path_ = jvm.org.apache.hadoop.fs.Path
    (tmp_path / "file").write_text("tick")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "file")
    for name in ("file", "dir", "link"):
        for path in (str(tmp_path / name), (tmp_path / name).as_uri()):  # plain and qualified, as Spark passes
            ours, theirs = (fs.getFileLinkStatus(Path_(path)) for fs in (nio_raw(jvm, spark), hadoop_raw(jvm, spark)))
            assert (ours.isSymlink(), ours.isFile(), ours.isDirectory(), ours.getLen()) == \
                (theirs.isSymlink(), theirs.isFile(), theirs.isDirectory(), theirs.getLen()), (name, path)
    with pytest.raises(Py4JJavaError, match="FileNotFoundException"):
        nio_raw(jvm, spark).getFileLinkStatus(Path_(str(tmp_path / "missing")))


def test_checkpoint_files_start_no_child_process(spark, jvm, tmp_path):
    Path_ = jvm.org.apache.hadoop.fs.Path
    FsPermission = jvm.org.apache.hadoop.fs.permission.FsPermission
    pid = jvm.java.lang.ProcessHandle.current().pid()
    # A young session's first task fetches spark.jars, each through a `chmod a+x` child of Spark's own
    # (hundreds of page faults each, over seconds): run one first, so that it is not counted below.
    spark.range(1).count()

    before = children_faults(pid)
    hadoop = hadoop_raw(jvm, spark)
    for i in range(3):  # Hadoop's own: one chmod child per file
        out = hadoop.create(Path_(str(tmp_path / f"hadoop-{i}")), FsPermission(0o644), True, 4096, 1, 2**25, None)
        out.close()
    per_file = (children_faults(pid) - before) / 3
    assert per_file > 0  # the counter sees Hadoop's child processes

    manager = jvm.org.apache.spark.sql.execution.streaming.CheckpointFileManager.create(
        Path_(tmp_path.as_uri()), spark.sparkContext._jsc.hadoopConfiguration())
    rounds = []
    for r in range(3):  # the JVM may still reap a child of its own meanwhile
        before = children_faults(pid)
        manager.mkdirs(Path_(f"{tmp_path.as_uri()}/checkpoint-{r}"))
        for i in range(10):  # what each offset log, commit log and state store changelog entry does
            out = manager.createAtomic(Path_(f"{tmp_path.as_uri()}/checkpoint-{r}/{i}"), True)
            out.write(bytearray(b"v1\n{}"))
            out.close()
        rounds.append(children_faults(pid) - before)
    # Hadoop's file system would start 4-5 children a file here, 40-50 a round. The quietest round stays
    # under two children's faults: with one child's as the bound, the JVM reaping something else meanwhile
    # once made the quietest round 37 faults against a child's 31, and the test failed now and then
    assert min(rounds) < 2 * per_file
    assert sorted(p.name for p in (tmp_path / "checkpoint-2").iterdir() if not p.name.startswith(".")) == \
        sorted(str(i) for i in range(10))


def _answers(status) -> tuple:
    """Everything a file status answers (its owner, group and permission read when asked)."""
    return (status.getPath().toString(), status.getLen(), status.isDirectory(), status.isFile(),
            status.getModificationTime(), status.getAccessTime(), status.getBlockSize(), status.getReplication(),
            status.getPermission().toString(), status.getPermission().getStickyBit(), status.getOwner(),
            status.getGroup())


def _tree(root: Path) -> Path:
    """A directory with what a listing meets: odd names, a subdirectory, modes, a sticky bit, links."""
    root.mkdir()
    for i, name in enumerate(("00000000000000000001.json", "a:b", "with space", "per%cent", "#hash", "q?mark",
                              "ünï", ".hidden", ".00000000000000000001.json.crc")):
        (root / name).write_bytes(b"t" * (i * 7))
    (root / "a:b").chmod(0o640)
    (root / "sub").mkdir(mode=0o750)
    (root / "sticky").mkdir()
    (root / "sticky").chmod(0o1777)
    (root / "to-file").symlink_to(root / "a:b")
    (root / "to-dir").symlink_to(root / "sub")
    (root / "dangling").symlink_to(root / "missing")
    return root


def test_statuses_and_listings_answer_as_hadoops(spark, jvm, tmp_path):
    Path_ = jvm.org.apache.hadoop.fs.Path
    root = _tree(tmp_path / "log")
    ours, theirs = nio_raw(jvm, spark), hadoop_raw(jvm, spark)
    for path in (str(root), root.as_uri()):  # plain and qualified, as Spark passes
        listed = {fs: sorted((_answers(s) for s in fs.listStatus(Path_(path))), key=str) for fs in (ours, theirs)}
        assert listed[ours] == listed[theirs]
        # every entry but the dangling link (java.io finds no file behind it), with its name as Hadoop spells it
        assert sorted(a[0].rsplit("/", 1)[1] for a in listed[ours]) == \
            sorted(p.name for p in root.iterdir() if p.name != "dangling")
    modes = {a[0].rsplit("/", 1)[1]: (a[8], a[9]) for a in listed[ours]}
    assert modes["a:b"] == ("rw-r-----", False) and modes["sticky"] == ("rwxrwxrwt", True)
    assert modes["to-file"] == ("rw-r-----", False)  # the target's, as Hadoop's ls -ld of the canonical path
    for name in ("a:b", "sub", "to-file", "to-dir", "with space"):
        path = Path_(str(root / name))
        assert _answers(ours.getFileStatus(path)) == _answers(theirs.getFileStatus(path)), name
        assert [_answers(s) for s in ours.listStatus(path)] == [_answers(s) for s in theirs.listStatus(path)], name
    for call in ("getFileStatus", "listStatus"):
        for fs in (ours, theirs):
            with pytest.raises(Py4JJavaError, match="FileNotFoundException"):
                getattr(fs, call)(Path_(str(root / "dangling")))


def test_the_checksummed_listing_leaves_out_the_checksum_files_as_hadoops(spark, jvm, tmp_path):
    Path_ = jvm.org.apache.hadoop.fs.Path
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    ours = _initialized(jvm, spark, jvm.io.marketsignals.hadoop.NioLocalFileSystem())
    theirs = _initialized(jvm, spark, jvm.org.apache.hadoop.fs.LocalFileSystem())
    for i in range(3):  # each with its .crc sidecar
        out = ours.create(Path_(str(tmp_path / f"{i:020d}.json")), True)
        out.write(bytearray(b"{}"))
        out.close()
    assert len(list(tmp_path.iterdir())) == 6
    listed = {fs: sorted(_answers(s) for s in fs.listStatus(Path_(str(tmp_path)))) for fs in (ours, theirs)}
    assert listed[ours] == listed[theirs]
    assert [a[0].rsplit("/", 1)[1] for a in listed[ours]] == [f"{i:020d}.json" for i in range(3)]
    # the FileContext API (Spark's checkpoint) lists the same
    context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(jvm.java.net.URI(tmp_path.as_uri()), conf)
    assert sorted(_answers(s) for s in context.util().listStatus(Path_(tmp_path.as_uri()))) == listed[ours]


def test_a_listing_and_its_permissions_start_no_child_process(spark, jvm, tmp_path):
    Path_ = jvm.org.apache.hadoop.fs.Path
    pid = jvm.java.lang.ProcessHandle.current().pid()
    spark.range(1).count()  # see test_checkpoint_files_start_no_child_process
    for i in range(10):
        (tmp_path / f"{i:020d}.json").write_text("{}")
    directory = Path_(str(tmp_path))

    before = children_faults(pid)
    for status in hadoop_raw(jvm, spark).listStatus(directory)[:3]:
        status.getPermission()  # Hadoop's own: an `ls -ld` child per file
    per_file = (children_faults(pid) - before) / 3
    assert per_file > 0

    ours, rounds = nio_raw(jvm, spark), []
    for _ in range(3):
        before = children_faults(pid)
        permissions = [status.getPermission().toShort() for status in ours.listStatus(directory)]
        rounds.append(children_faults(pid) - before)
    assert permissions == [(tmp_path / f"{0:020d}.json").stat().st_mode & 0o777] * 10
    assert min(rounds) < 2 * per_file  # ten children's faults with Hadoop's


@pytest.mark.parametrize("scala", ["2.13", "2.12"])
def test_the_spark_lines_jars_are_found_by_artifact_for_either_scala(tmp_path, scala):
    from marketsignals.session import MissingJarsError, local_jars

    spark_line = "4.0.2" if scala == "2.13" else "3.5.3"
    names = [f"spark-sql-kafka-0-10_{scala}-{spark_line}.jar",
             f"spark-token-provider-kafka-0-10_{scala}-{spark_line}.jar",
             "kafka-clients-3.9.1.jar", "commons-pool2-2.12.0.jar", f"delta-spark_{scala}-3.3.2.jar",
             "delta-storage-s3-dynamodb-3.3.2.jar"]  # not delta-storage itself
    for name in names:
        (tmp_path / name).touch()
    with pytest.raises(MissingJarsError, match=r"\(delta-storage\): run `make jars`"):
        local_jars(str(tmp_path))
    (tmp_path / "delta-storage-3.3.2.jar").touch()
    assert len(local_jars(str(tmp_path))) == 7
