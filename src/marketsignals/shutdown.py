"""SIGTERM and Ctrl-C for a process that stops in two steps (the streaming job's driver, ``live``): the
first signal asks for a clean stop, a second one, while that stop runs, for a quick one."""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """Installs handlers for SIGTERM and SIGINT until :meth:`restore`: the first signal sets ``stop``,
    every later one ``again`` as well."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.stop, self.again = threading.Event(), threading.Event()
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}

    def _on_signal(self, *_) -> None:
        if self.stop.is_set():
            self.again.set()
        self.stop.set()

    def restore(self) -> None:
        """The handlers from before (once the stop no longer listens for a second signal)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
