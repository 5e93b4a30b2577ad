"""A live stream's trigger with and without early batches (stream/trigger.py)."""

from __future__ import annotations

import pytest

from marketsignals.settings import load_settings
from marketsignals.stream.trigger import live_trigger


def trigger(*overrides: str):
    settings = load_settings("local", list(overrides), env={})
    return live_trigger(settings.stream, settings.kafka.max_offsets_per_trigger)  # as the job does


def test_without_early_batches_the_trigger_is_the_profile_s():
    live = trigger("stream.early_batch_ticks=0", "stream.trigger=processingTime=2 seconds")
    assert (live.interval, live.read_limits, live.early) == ("2 seconds", {}, False)


@pytest.mark.parametrize(("interval", "poll", "delay"), [
    ("1 second", "250 milliseconds", "875ms"),   # checked every 250 ms: the fourth check after a batch began
    ("10 seconds", "250 milliseconds", "9875ms"),
    ("400 milliseconds", "100 milliseconds", "350ms"),  # a quarter of a short interval
])
def test_early_batches_check_often_and_wait_at_most_the_interval(interval, poll, delay):
    live = trigger("stream.early_batch_ticks=10000", f"stream.trigger=processingTime={interval}")
    assert live.interval == poll and live.early
    assert live.read_limits == {"minOffsetsPerTrigger": "10000", "maxTriggerDelay": delay}
    assert "or as soon as 10,000 ticks wait" in live.note


def test_early_batches_are_off_where_they_cannot_help_and_the_driver_says_why():
    held = trigger("stream.early_batch_ticks=10000", "stream.ordering=event_time")
    assert (held.interval, held.early) == ("1 second", False)
    assert "event_time" in held.note
    back_to_back = trigger("stream.early_batch_ticks=10000", "stream.trigger=processingTime=0 seconds")
    assert not back_to_back.early and "leave nothing to start early" in back_to_back.note


def test_early_batches_start_once_a_whole_batch_waits_where_the_source_caps_it_lower():
    capped = trigger("stream.early_batch_ticks=10000", "kafka.max_offsets_per_trigger=700")
    assert capped.read_limits["minOffsetsPerTrigger"] == "700" and "as soon as 700 ticks wait" in capped.note
    uncapped = trigger("stream.early_batch_ticks=10000", "kafka.max_offsets_per_trigger=null")
    assert uncapped.read_limits["minOffsetsPerTrigger"] == "10000"
