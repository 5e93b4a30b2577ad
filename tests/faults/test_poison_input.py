"""Poison input (issue 7): whatever bytes arrive, the job never crashes and every message is accounted
for -- processed + dead-lettered = produced, per the metrics and per the dead-letter topic.

Hypothesis generates the messages: random bytes, null and empty values and keys, JSON that is not an
object, ticks with fields deleted or replaced by huge numbers, wrong types, unicode, NaN/Infinity,
nested junk, truncated JSON. Each example runs the real job (availableNow) on fresh topics and a fresh
checkpoint, so a failure is reproducible from the example alone. Known killers are pinned as explicit
examples so they run first on every CI run.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from faults.harness import START_MS, catch_up, consume_all, env_int, produce_recorded, progress_lines
from marketsignals import feed
from marketsignals.schema import TICK_FIELDS
from marketsignals.validation import MAX_RAW_CHARS, TRUNCATED_MARK

pytestmark = pytest.mark.faults

GOOD = {"symbol": "AAPL", "timestamp": "2026-01-02T00:00:00Z", "price": 187.5, "volume": 1200, "bid": 187.49,
        "ask": 187.51, "exchange": "XNAS", "currency": "USD"}
# Values that have broken, or could break, a parser or a cast somewhere between Kafka and the sinks.
EXTREMES = [
    2**63 - 1, -(2**63), 2**63, 2**64, 10**30, -(10**30), 9_223_372_036_854_776, -9_223_372_036_854_776,
    10**16, -(10**16), 253_402_300_800_000, 0, -1, 1e308, -1e308, 5e-324, 1e-320, float("nan"),
    float("inf"), float("-inf"), "NaN", "Infinity", "-Infinity", "1e400", "-0", "0x10", "1_000", "",
    " ", "\u0000", "\ufeff", "ＡＡＰＬ", "aapl", "$", "A" * 33, "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z", "+275760-09-13T00:00:00Z", "2026-01-02T00:00:00+14:00", "2026-13-45T25:61:61Z",
    "2026-01-02T00:00:00", "1767312000000", True, False, None, [], {}, [1, 2], {"price": 1},
]
scalars = st.one_of(
    st.sampled_from(EXTREMES),
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4), max_leaves=12)


@st.composite
def tick_value(draw) -> bytes:
    """A tick, valid or spoiled: fields deleted or replaced, extra junk, truncated, odd encodings."""
    tick = dict(GOOD)
    tick["symbol"] = draw(st.sampled_from(["AAPL", "MSFT", "NVDA", "SYM00001"]))
    ts = START_MS + draw(st.integers(min_value=0, max_value=600_000))
    tick["timestamp"] = ts if draw(st.booleans()) else feed.iso_ms(ts)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        name = draw(st.sampled_from([*TICK_FIELDS, "extra"]))
        if draw(st.integers(0, 3)) == 0:
            tick.pop(name, None)
        else:
            tick[name] = draw(junk)
    text = json.dumps(tick, allow_nan=True, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    return text.encode("utf-8", "surrogatepass")


@st.composite
def clean_tick(draw) -> bytes:
    """A valid tick (so that every example also has ticks to process)."""
    ts = START_MS + draw(st.integers(min_value=0, max_value=600_000))
    return json.dumps({**GOOD, "symbol": draw(st.sampled_from(["AAPL", "MSFT", "NVDA"])),
                       "timestamp": feed.iso_ms(ts)}).encode()


values = st.one_of(
    clean_tick(), clean_tick(), tick_value(), tick_value(), tick_value(),
    st.binary(max_size=300),
    st.none(),  # a tombstone
    st.just(b""),
    junk.map(lambda j: json.dumps(j, allow_nan=True).encode()),
)
keys = st.one_of(st.none(), st.just(b""), st.binary(max_size=24),
                 st.text(max_size=12).map(lambda s: s.encode("utf-8", "surrogatepass")))
messages = st.lists(st.tuples(st.integers(0, 2), keys, values), min_size=40,
                    max_size=env_int("MARKETSIGNALS_POISON_SIZE", 150))

# Messages that are known to be hard: pinned so that every CI run tries them first.
_deep = b'{"symbol": ' + b"[" * 5000 + b"]" * 5000 + b"}"
_long_number = ('{"symbol":"AAPL","timestamp":"2026-01-02T00:00:00Z","price":1' + "0" * 5000
                + ',"volume":1,"bid":1,"ask":2,"exchange":"XNAS","currency":"USD"}').encode()
KNOWN_HARD = [(0, None, json.dumps({**GOOD, "timestamp": ts}).encode())
              for ts in (2**63 - 1, -(2**63), 9_223_372_036_854_776, -9_223_372_036_854_776, -(10**17))]
KNOWN_HARD += [(1, b"", _deep), (2, None, _long_number), (0, None, None), (1, b"\xff", b"\xff\xfe\x00"),
               (2, "ＡＡＰＬ".encode(), json.dumps({**GOOD, "symbol": "ＡＡＰＬ", "price": float("nan")},
                                                  allow_nan=True).encode()),
               (0, None, json.dumps({**GOOD, "price": 1e308, "volume": 2**63 - 1}).encode()),
               (0, None, json.dumps({**GOOD, "timestamp": START_MS + 1, "price": 5e-324}).encode()),
               (1, b"big", b"<900 KB of NUL bytes>")]
# Stands for a message too long to print in a falsifying example: not JSON, under Kafka's 1 MB limit, and
# every byte of it becomes six ("\u0000") in a JSON dead letter.
_BIG = (b"<900 KB of NUL bytes>", b"\x00" * 900_000)


def _account_for(spark, kafka_broker, batch: list[tuple[int, bytes | None, bytes | None]]) -> dict[str, int]:
    settings = kafka_broker.isolated("poison", "kafka.max_offsets_per_trigger=100000")
    topics = settings.kafka.topics
    batch = [(t, b"" if k is None and v is None else k, _BIG[1] if v == _BIG[0] else v) for t, k, v in batch]
    produced = produce_recorded(settings.kafka, (feed.Message(topics[t], k, v, "poison", "", 0) for t, k, v in batch))
    metrics = progress_lines(catch_up(spark, settings))  # raises if the query failed
    processed = sum(m.get("processed", 0) for m in metrics)
    rejected = sum(m.get("rejected", 0) for m in metrics)
    input_rows = sum(m.get("input_rows", 0) for m in metrics)
    letters = consume_all(settings.kafka, settings.kafka.dead_letter_topic)
    assert input_rows == len(produced), f"the job read {input_rows} of {len(produced)} messages"
    assert processed + rejected == len(produced), (processed, rejected, len(produced))
    assert len(letters) == rejected, f"{len(letters)} dead letters for {rejected} rejects"
    sent = {(m.topic, m.partition, m.offset): m.value for m in produced}
    for _, value in letters:
        record = json.loads(value)
        assert record["reason"] and record["topic"] in topics and record["offset"] is not None, record
        if record["reason"] in ("duplicate", "late", "out_of_order"):
            continue  # rejected after parsing: raw holds the parsed fields as JSON (README, dead letters)
        # a validation reject keeps the raw value whole: as text, or as base64 when the bytes are not UTF-8
        original = sent[(record["topic"], record["partition"], record["offset"])] or b""
        raw = record["raw"] or ""
        if raw.endswith(TRUNCATED_MARK):  # too large for a dead letter: a marked prefix
            raw = raw[:-len(TRUNCATED_MARK)]
            assert len(raw) == MAX_RAW_CHARS
        kept = base64.b64decode(raw[len("base64:"):]) if raw.startswith("base64:") else raw.encode()
        assert original.startswith(kept) and (len(kept) == len(original) or len(raw) == MAX_RAW_CHARS), \
            (record["reason"], raw[:80], original[:80])
    return {"messages": len(produced), "processed": processed, "rejected": rejected}


_totals = {"examples": 0, "messages": 0, "processed": 0, "rejected": 0}


@settings(max_examples=env_int("MARKETSIGNALS_POISON_EXAMPLES", 2), deadline=None, derandomize=False,
          phases=[Phase.explicit, Phase.generate] if env_int("MARKETSIGNALS_POISON_SHRINK", 0) == 0 else list(Phase),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(batch=messages)
@example(batch=KNOWN_HARD)
def test_any_bytes_are_processed_or_dead_lettered_never_fatal(spark, kafka_broker, batch, figures):
    counts = _account_for(spark, kafka_broker, batch)
    _totals["examples"] += 1
    for k, v in counts.items():
        _totals[k] += v
    figures.add(**_totals)
