"""What the Spark Python workers that run the kernel set up once per process.

PySpark calls ``importlib.invalidate_caches()`` before every task. On Python 3.10 and 3.11 a zip
importer's ``invalidate_caches()`` reads its whole archive's directory again, and Spark puts
``pyspark.zip``, py4j's zip and the spark-core jar (a zip of thousands of classes) on the workers'
path, with one importer per imported pyspark package: 75-80 ms of every Python task here, about half
of the Python workers' time on 5,000-tick micro-batches (py-spy). Python 3.12 made it lazy
(CPython gh-103200); until then, :func:`keep_archive_directories` gives the worker zip importers
that keep the directory they read. Spark never rewrites an archive in place while a worker lives
(files added to a running application get new paths, which still get importers of their own).
"""

from __future__ import annotations

import sys
import zipimport


class ArchiveImporter(zipimport.zipimporter):
    """A zip importer whose archive does not change while the process lives."""

    def invalidate_caches(self) -> None:
        pass


def keep_archive_directories(on_worker: bool | None = None) -> bool:
    """In a Spark Python worker on Python < 3.12, swap the zip importers (the cached ones and the
    path hook) for :class:`ArchiveImporter`. Returns whether it did. ``on_worker``: for tests."""
    if sys.version_info >= (3, 12):
        return False
    if on_worker is None:
        from pyspark.files import SparkFiles

        on_worker = bool(SparkFiles._is_running_on_worker)
    if not on_worker:
        return False
    sys.path_hooks[:] = [ArchiveImporter if hook is zipimport.zipimporter else hook for hook in sys.path_hooks]
    for path, finder in list(sys.path_importer_cache.items()):
        if type(finder) is zipimport.zipimporter:
            # the new importer takes the directory already read from zipimport's own cache
            sys.path_importer_cache[path] = ArchiveImporter(path)
    return True
