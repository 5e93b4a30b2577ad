"""Several series' values laid end to end in one array, and the gathers that take their segments: how
the kernel and the stream's state keep many symbols' histories and keys without an object a symbol."""

from __future__ import annotations

import numpy as np


def segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions of the segments of ``lengths`` values beginning at ``starts``, end to end: the index
    that gathers them from the array they are in."""
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    return np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths) + np.arange(total)


def starts(lengths: np.ndarray) -> np.ndarray:
    """Where each of consecutive segments of ``lengths`` values begins."""
    return np.cumsum(lengths) - lengths


def objects(values: list) -> np.ndarray:
    """A 1-d object array of ``values`` (np.array would make a 2-d array of equal-length tuples)."""
    return np.fromiter(values, dtype=object, count=len(values))
