"""The worker-side zip importer fix (marketsignals.pyworker), in this process, on a real zip."""

from __future__ import annotations

import importlib
import sys
import zipfile
import zipimport

import pytest

from marketsignals import pyworker

pytestmark = pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12+ invalidates zip caches lazily")


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


def test_outside_a_worker_nothing_changes(zipped_package):
    import zpkg.a  # noqa: F401

    hooks = list(sys.path_hooks)
    assert not pyworker.keep_archive_directories(on_worker=False)
    assert not pyworker.keep_archive_directories()  # the driver: pyspark says it is not a worker
    assert sys.path_hooks == hooks
    assert type(sys.path_importer_cache[str(zipped_package)]) is zipimport.zipimporter
