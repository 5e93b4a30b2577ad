"""Where a path or URI the settings name is on this machine's file system, for what the project reads
and writes itself, in Python, beside Spark (stop requests, report files, a history's existence check).

Spark and Hadoop take a local path in three forms: ``/data/ticks``, ``file:///data/ticks``, and
``file:/data/ticks`` -- one slash, the form Hadoop prints (``Path.toString`` of a qualified local path,
Spark's logs and UI). Hadoop does not percent-decode a path, so neither does this; and its local file
system refuses a host (``file://localhost/...``: "Wrong FS"), so this does not call that local.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def local_path(uri: str) -> Path | None:
    """The local file system path ``uri`` names (a plain path or a ``file:`` URI in any of its forms);
    None for any other file system (``s3://``, ``hdfs://``, ...), whose files Python cannot open."""
    parsed = urlparse(uri)
    if parsed.scheme == "":
        return Path(uri)
    if parsed.scheme != "file" or parsed.netloc:  # file://host/... : Hadoop's local file system refuses it too
        return None
    # urlparse would split a glob's "?" and "#" off as query and fragment: keep the text after the scheme
    return Path(uri[len("file://") if uri[:7].lower() == "file://" else len("file:"):])
