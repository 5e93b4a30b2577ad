import json

import pandas as pd
import pytest

from marketsignals import feed

START = 1_767_312_000_000


def _opts(**kw):
    base = dict(symbols=feed.symbol_names(10), count=5000, rate=500, start_ms=START, seed=5)
    base.update(kw)
    return feed.FeedOptions(**base)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not():
    a = [(m.topic, m.key, m.value) for m in feed.generate(_opts(bad={"late": 0.01, "not_json": 0.01}))]
    b = [(m.topic, m.key, m.value) for m in feed.generate(_opts(bad={"late": 0.01, "not_json": 0.01}))]
    c = [(m.topic, m.key, m.value) for m in feed.generate(_opts(seed=6, bad={"late": 0.01, "not_json": 0.01}))]
    assert a == b
    assert a != c


def test_good_ticks_follow_the_spec_schema():
    for msg in feed.generate(_opts(count=2000)):
        tick = json.loads(msg.value)
        assert set(tick) == {"symbol", "timestamp", "price", "volume", "bid", "ask", "exchange", "currency"}
        assert msg.key.decode() == tick["symbol"]
        assert tick["price"] > 0 and tick["volume"] >= 0 and 0 < tick["bid"] <= tick["ask"]
        assert (tick["exchange"] in feed.VENUES and tick["currency"] == feed.VENUES[tick["exchange"]]) or \
            tick["exchange"] in feed.US_VENUES
        assert msg.topic == feed.topic_of(tick["symbol"], feed.FeedOptions().topics)


def test_each_symbol_sticks_to_one_topic_in_event_time_order():
    last: dict[str, int] = {}
    topics: dict[str, str] = {}
    for msg in feed.generate(_opts()):
        assert topics.setdefault(msg.symbol, msg.topic) == msg.topic
        assert msg.ts_ms >= last.get(msg.symbol, 0)
        last[msg.symbol] = msg.ts_ms


@pytest.mark.parametrize("fraction", [0.01, 0.05])
def test_each_bad_kind_is_produced_at_the_asked_fraction(fraction):
    msgs = list(feed.generate(_opts(count=4000, bad={k: fraction for k in feed.BAD_KINDS})))
    counts = pd.Series([m.kind for m in msgs]).value_counts().to_dict()
    for kind in feed.BAD_KINDS:
        assert counts[kind] == round(4000 * fraction), kind
    assert len(msgs) == 4000


def test_bad_kinds_break_exactly_their_rule():
    msgs = list(feed.generate(_opts(count=3000, bad={k: 0.02 for k in feed.BAD_KINDS})))
    last_good: dict[str, bytes] = {}
    for m in msgs:
        if m.kind == "not_json":
            with pytest.raises(ValueError):
                json.loads(m.value)
            continue
        tick = json.loads(m.value)
        if m.kind == "good":
            last_good[m.symbol] = m.value
        elif m.kind == "missing_field":
            assert len(tick) == 7
        elif m.kind == "wrong_type":
            fields = ("price", "volume", "bid")
            assert any(not isinstance(tick[f], (int, float)) or isinstance(tick[f], bool) for f in fields)
        elif m.kind == "crossed_quote":
            assert tick["bid"] > tick["ask"]
        elif m.kind == "non_positive_price":
            assert tick["price"] <= 0
        elif m.kind == "future_timestamp":
            assert m.ts_ms < START + 86_400_000  # the message's clock is normal, its stamp is not
        elif m.kind == "late":
            assert m.ts_ms <= max(x.ts_ms for x in msgs if x.symbol == m.symbol) - 300_000
        elif m.kind == "duplicate":
            assert m.value == last_good[m.symbol]


def test_options_are_validated():
    with pytest.raises(ValueError, match="unknown bad-tick kind"):
        feed.FeedOptions(bad={"gremlins": 0.1})
    with pytest.raises(ValueError, match="rate"):
        feed.FeedOptions(rate=0)


def test_parquet_history_is_partitioned_by_date(tmp_path):
    stats = feed.run_to_parquet(feed.generate(_opts(count=3000, rate=0.02)), tmp_path, progress=False)
    dates = sorted(p.name for p in tmp_path.iterdir())
    assert len(dates) >= 2 and all(d.startswith("date=") for d in dates)
    frame = pd.read_parquet(tmp_path)
    assert len(frame) == stats.produced == 3000
    assert {"symbol", "timestamp", "price", "volume", "bid", "ask", "exchange", "currency"} <= set(frame.columns)


def test_replay_reads_back_a_recorded_file_in_time_order(tmp_path):
    feed.run_to_parquet(feed.generate(_opts(count=500)), tmp_path / "h", progress=False)
    msgs = list(feed.replay_file(tmp_path / "h", ("a", "b"), speed=0))
    assert len(msgs) == 500
    assert [m.ts_ms for m in msgs] == sorted(m.ts_ms for m in msgs)
    frame = pd.read_parquet(tmp_path / "h")
    frame.to_csv(tmp_path / "h.csv", index=False)
    assert len(list(feed.replay_file(tmp_path / "h.csv", ("a",), speed=0))) == 500
