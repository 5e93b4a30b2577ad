"""Errors a person can fix end the command with one line (cli._is_user_error), and `live` repeats the
line its child command ended with, so `make run` shows why the job stopped."""

from __future__ import annotations

from marketsignals.cli import _is_user_error
from marketsignals.cli.live import last_error
from marketsignals.stream.job import IncompatibleCheckpoint, StreamFailed


def test_an_incompatible_checkpoint_is_a_user_error_a_failed_query_is_not():
    assert _is_user_error(IncompatibleCheckpoint("the checkpoint's state cannot be read by this job: ..."))
    assert not _is_user_error(StreamFailed("the streaming query failed: ... the job restarts from ..."))


def test_live_repeats_the_error_line_a_child_ended_its_log_with(tmp_path):
    log = tmp_path / "stream.log"
    log.write_text("x" * 20_000 + "\nmarketsignals stream: error: an earlier one\nbatch 3 done\n"
                   "marketsignals stream: error: the checkpoint's state cannot be read by this job: set it back\n"
                   "\t... 21 more\n")
    assert last_error(log) == ("marketsignals stream: error: the checkpoint's state cannot be read by this job: "
                               "set it back")
    earlier_run = log.stat().st_size  # the log is appended to: an earlier run's error is not this one's
    with open(log, "a") as fh:
        fh.write("Traceback (most recent call last):\nRuntimeError: boom\n")
    assert last_error(log, earlier_run) is None
    log.write_text("started\nbatch 1 done\n")
    assert last_error(log) is None
    assert last_error(tmp_path / "missing.log") is None
