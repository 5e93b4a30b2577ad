"""The Python workers' set-up (marketsignals.pyworker): the zip importer fix, in this process on a
real zip; the frozen import heap, here and in Spark's own workers."""

from __future__ import annotations

import gc
import importlib
import sys
import weakref
import zipfile
import zipimport

import pytest

from marketsignals import pyworker

zip_caches = pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12+ invalidates zip caches lazily")


@pytest.fixture
def zipped_package(tmp_path, monkeypatch):
    archive = tmp_path / "pkgs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zpkg/__init__.py", "")
        z.writestr("zpkg/a.py", "VALUE = 'a'\n")
    monkeypatch.syspath_prepend(str(archive))
    monkeypatch.setattr(sys, "path_hooks", list(sys.path_hooks))
    monkeypatch.setattr(sys, "path_importer_cache", dict(sys.path_importer_cache))
    yield archive
    for name in ("zpkg", "zpkg.a", "zpkg.b"):
        sys.modules.pop(name, None)


@zip_caches
def test_a_worker_keeps_the_directories_it_read_and_still_imports_from_the_archive(zipped_package):
    import zpkg.a

    assert zpkg.a.VALUE == "a"
    before = {p: f for p, f in sys.path_importer_cache.items() if isinstance(f, zipimport.zipimporter)}
    assert {str(zipped_package), str(zipped_package / "zpkg")} <= set(before)
    assert all(type(f) is zipimport.zipimporter for f in before.values())

    assert pyworker.keep_archive_directories(on_worker=True)
    swapped = [sys.path_importer_cache[p] for p in before]
    assert all(type(f) is pyworker.ArchiveImporter for f in swapped)
    files = [f._files for f in swapped]
    importlib.invalidate_caches()  # what PySpark does before every task
    assert all(f._files is kept for f, kept in zip(swapped, files, strict=True)), "an archive was read again"

    with zipfile.ZipFile(zipped_package, "a") as z:  # an importer made after the swap is one too
        z.writestr("zpkg/b.py", "VALUE = 'b'\n")
    zipimport._zip_directory_cache.pop(str(zipped_package), None)
    sys.path_importer_cache.pop(str(zipped_package / "zpkg"), None)
    import zpkg.b

    assert zpkg.b.VALUE == "b"
    assert type(sys.path_importer_cache[str(zipped_package / "zpkg")]) is pyworker.ArchiveImporter


@zip_caches
def test_outside_a_worker_nothing_changes(zipped_package):
    import zpkg.a  # noqa: F401

    hooks = list(sys.path_hooks)
    assert not pyworker.keep_archive_directories(on_worker=False)
    assert not pyworker.keep_archive_directories()  # the driver: pyspark says it is not a worker
    assert sys.path_hooks == hooks
    assert type(sys.path_importer_cache[str(zipped_package)]) is zipimport.zipimporter


def test_a_worker_freezes_what_its_imports_made_and_still_collects_what_comes_later():
    assert gc.get_freeze_count() == 0, "something froze the test process's heap"
    try:
        assert pyworker.freeze_import_heap(on_worker=True)
        assert gc.get_freeze_count() > 1000  # pytest, pyspark, pandas ... are all imported here

        class Cycle:
            pass

        cycle = Cycle()
        cycle.self = cycle
        ref = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert ref() is None, "a cycle made after the freeze was not collected"
    finally:
        gc.unfreeze()


def test_the_driver_freezes_nothing():
    import marketsignals.stream.state  # noqa: F401  (its import prepares a worker)

    assert not pyworker.freeze_import_heap()
    assert gc.get_freeze_count() == 0


def test_spark_workers_that_run_the_handler_are_prepared(spark):
    def report(frames):
        import gc

        import pandas as pd

        import marketsignals.stream.state  # noqa: F401  (what a worker running the handler imports)
        from marketsignals import pyworker

        for _ in frames:
            yield pd.DataFrame({"frozen": [gc.get_freeze_count()], "prepared": [pyworker._prepared]})

    rows = spark.range(2).repartition(2).mapInPandas(report, "frozen long, prepared boolean").collect()
    assert rows and all(r.prepared and r.frozen > 1000 for r in rows), rows
