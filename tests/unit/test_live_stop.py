"""`live` stops its children with SIGTERM, a second one at a second Ctrl-C (the job's stop then cuts the
batch it waits for), and SIGKILL after the grace: on a real child process that counts its SIGTERMs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from marketsignals.cli.live import _stop, exit_code_after

# exits with the number of SIGTERMs it got once it got `needed` of them (a job waiting for its batch: 2)
CHILD = """
import signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(1))
print("ready", flush=True)
while len(got) < int(sys.argv[1]):
    time.sleep(0.01)
sys.exit(10 + len(got))
"""


def child(needed: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(needed)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_one_sigterm_stops_a_child_that_stops_at_the_first():
    proc = child(1)
    _stop("feed", proc, grace_s=30)
    assert proc.returncode == 11


def test_a_second_ctrl_c_sends_a_second_sigterm():
    proc, again = child(2), threading.Event()
    threading.Timer(0.3, again.set).start()
    began = time.monotonic()
    _stop("stream", proc, grace_s=30, again=again)
    assert proc.returncode == 12 and time.monotonic() - began < 10


def test_a_child_still_running_after_the_grace_is_killed():
    proc = child(2)
    began = time.monotonic()
    _stop("stream", proc, grace_s=0.5)
    assert proc.returncode == -9 and time.monotonic() - began < 10


def test_live_ends_cleanly_when_the_job_does_and_fails_when_a_child_stops_otherwise():
    assert exit_code_after("stream", 0) == 0  # `marketsignals stop`: the job let its batch commit and exited
    assert exit_code_after("stream", 2) == 2  # a user error, said in its log
    assert exit_code_after("stream", -9) == 1  # killed
    assert exit_code_after("feed", 0) == 1  # the feed ended: no ticks any more


def test_the_first_signal_asks_for_a_stop_a_second_for_a_quick_one_and_the_handlers_come_back():
    import os
    import signal

    from marketsignals.shutdown import StopSignals

    before = signal.getsignal(signal.SIGTERM)
    signals = StopSignals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread, before the next bytecode
        assert signals.stop.is_set() and not signals.again.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.again.is_set()
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGTERM) is before
