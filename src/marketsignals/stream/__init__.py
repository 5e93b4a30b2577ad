"""The streaming signals job: Kafka -> validated ticks -> stateful per-symbol kernel -> sinks."""

from __future__ import annotations


def error_text(exc: BaseException) -> str:
    """A failed Spark call's error as text: PySpark's ``desc`` (the JVM's message and trace), else ``str``."""
    return (getattr(exc, "desc", None) or str(exc)).strip()


def error_line(exc: BaseException, limit: int = 500) -> str:
    """The first line of :func:`error_text`, at most ``limit`` characters (the exception's type if none)."""
    text = error_text(exc)
    return text.splitlines()[0][:limit] if text else type(exc).__name__
