"""The benchmark harness (bench/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path


def use_checkout(code: str) -> None:
    """Import ``marketsignals`` from another checkout's src/ from now on (``--code``: a baseline to time
    side by side), dropping any of its modules already imported from this one."""
    sys.path.insert(0, str(Path(code).resolve() / "src"))
    for name in [m for m in sys.modules if m == "marketsignals" or m.startswith("marketsignals.")]:
        del sys.modules[name]
