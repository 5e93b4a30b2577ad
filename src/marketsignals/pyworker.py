"""What the Spark Python workers that run the kernel set up once per process (:func:`prepare`: the
stream's handler module calls it when a worker imports it, the backtest's function when it first runs).

PySpark calls ``importlib.invalidate_caches()`` before every task. On Python 3.10 and 3.11 a zip
importer's ``invalidate_caches()`` reads its whole archive's directory again, and Spark puts
``pyspark.zip``, py4j's zip and the spark-core jar (a zip of thousands of classes) on the workers'
path, with one importer per imported pyspark package: 75-80 ms of every Python task here, about half
of the Python workers' time on 5,000-tick micro-batches (py-spy). Python 3.12 made it lazy
(CPython gh-103200); until then, :func:`keep_archive_directories` gives the worker zip importers
that keep the directory they read. Spark never rewrites an archive in place while a worker lives
(files added to a running application get new paths, which still get importers of their own).

PySpark's daemon also runs a full ``gc.collect()`` after every task of a reused worker, and Python runs
full collections of its own as a task allocates. Each walked every object the worker's imports had
made (pandas, pyarrow, numpy, pyspark: ~92,000 objects), 60-85 ms of CPU here: 28 % of the Python
workers' CPU on 5,000-tick micro-batches. :func:`freeze_import_heap` moves those objects to the
collector's permanent generation once, so a collection walks only what tasks made since (~1 ms).
"""

from __future__ import annotations

import gc
import sys
import zipimport


class ArchiveImporter(zipimport.zipimporter):
    """A zip importer whose archive does not change while the process lives."""

    def invalidate_caches(self) -> None:
        pass


_prepared = False


def prepare() -> None:
    """Both set-ups below, once, in a Spark Python worker; nothing in the driver."""
    global _prepared
    if not _prepared and _on_worker(None):
        keep_archive_directories(on_worker=True)
        freeze_import_heap(on_worker=True)
        _prepared = True


def _on_worker(on_worker: bool | None) -> bool:
    if on_worker is None:
        from pyspark.files import SparkFiles

        on_worker = bool(SparkFiles._is_running_on_worker)
    return on_worker


def keep_archive_directories(on_worker: bool | None = None) -> bool:
    """In a Spark Python worker on Python < 3.12, swap the zip importers (the cached ones and the
    path hook) for :class:`ArchiveImporter`. Returns whether it did. ``on_worker``: for tests."""
    if sys.version_info >= (3, 12) or not _on_worker(on_worker):
        return False
    sys.path_hooks[:] = [ArchiveImporter if hook is zipimport.zipimporter else hook for hook in sys.path_hooks]
    for path, finder in list(sys.path_importer_cache.items()):
        if type(finder) is zipimport.zipimporter:
            # the new importer takes the directory already read from zipimport's own cache
            sys.path_importer_cache[path] = ArchiveImporter(path)
    return True


def freeze_import_heap(on_worker: bool | None = None) -> bool:
    """In a Spark Python worker, move every object the garbage collector tracks now (the imports') to
    its permanent generation, which collections skip. Objects made later, by tasks, are collected as
    before; what is frozen stays for the life of the worker, as imported modules do anyway. Returns
    whether it froze. ``on_worker``: for tests."""
    if not _on_worker(on_worker):
        return False
    gc.freeze()
    return True
