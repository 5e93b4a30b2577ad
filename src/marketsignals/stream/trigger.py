"""A live stream's trigger: Spark's processingTime interval, and with ``stream.early_batch_ticks`` a batch
that starts as soon as that many ticks wait.

On a 1 s trigger a tick waits for the next second and then for its batch: p99 ≈ 1 s + a batch. At a rate
where a batch takes most of the second anyway, starting the next one as the one before ends cuts that
wait; at a low rate it would only run more batches, each with the same fixed cost (bench/ROUNDS.md,
thirty-ninth round). So the batch starts early only once enough ticks wait:

- Spark checks every ``POLL_MS`` (a trigger of that interval; a quarter of a shorter interval) and,
  after a batch longer than that, as soon as it ends;
- the Kafka source starts a batch once ``early_batch_ticks`` new ticks are there (its
  ``minOffsetsPerTrigger``), or the interval less half a check after the batch before began
  (``maxTriggerDelay``): on the checks' grid, the interval. Until then it reports no new data;
- Spark's batches without data stay on: after a batch that moved the watermark, the first check that
  finds too few ticks runs one for the stateful operator's timeouts, as the 1 s trigger would at the
  next second had no tick come. So the stream settles after its input stops, as without early batches.
  The price is at low rates: at 2,000 ticks/s nearly one such batch for each with ticks, ~20 % more CPU
  over a ten-minute soak, the same p99 and memory (bench/ROUNDS.md, forty-fifth round; the forty-fourth
  had turned them off for the query, for 1-5 % more CPU and a stream that kept its last watermark step
  and idle symbols until the next tick).

Not in event_time ordering: its ticks wait for the watermark (``stream.watermark_delay``) whatever the
trigger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from marketsignals.settings import StreamSettings, duration_ms

POLL_MS = 250  # how often Spark asks Kafka for its newest offsets while a batch waits (at most)


@dataclass(frozen=True)
class LiveTrigger:
    """What the query is started with."""

    interval: str  # Spark's processingTime
    read_limits: dict[str, str] = field(default_factory=dict)  # the Kafka source's options
    note: str = ""  # what the driver prints about early batches

    @property
    def early(self) -> bool:
        return bool(self.read_limits)


def live_trigger(stream: StreamSettings, most: int | None = None) -> LiveTrigger:
    """The trigger of a live stream (``stream.trigger`` processingTime=<interval>; ``most``: the ticks a
    batch reads at most, ``kafka.max_offsets_per_trigger``: once that many wait, the batch starts)."""
    interval = stream.trigger.partition("=")[2]
    ticks = min(stream.early_batch_ticks, most or stream.early_batch_ticks)
    if not ticks:
        return LiveTrigger(interval)
    if stream.ordering == "event_time":
        return LiveTrigger(interval, note=f"stream.early_batch_ticks ({ticks:,}) is off in event_time ordering: "
                                          "ticks wait for the watermark whatever the trigger")
    interval_ms = duration_ms(interval)
    poll_ms = min(POLL_MS, interval_ms // 4)
    if poll_ms < 10:
        return LiveTrigger(interval, note=f"stream.early_batch_ticks ({ticks:,}) is off: the trigger's "
                                          f"{interval_ms} ms leave nothing to start early")
    return LiveTrigger(
        f"{poll_ms} milliseconds",
        {"minOffsetsPerTrigger": str(ticks), "maxTriggerDelay": f"{interval_ms - poll_ms // 2}ms"},
        note=f"a batch starts every {interval_ms:,} ms, or as soon as {ticks:,} ticks wait",
    )
