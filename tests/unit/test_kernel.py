"""The per-symbol kernel: lateness, duplicates, ordering modes, emission, idle reset, ids."""

import numpy as np
import pandas as pd
import pytest

from marketsignals import kernel
from marketsignals.kernel import KernelConfig, SymbolState
from marketsignals.settings import StrategySettings
from support import output_rows, state_fields

CFG = KernelConfig(strategy=StrategySettings(), watermark_delay_ms=30_000, idle_timeout_ms=3_600_000)
T0 = 1_767_312_000_000


def ticks(ts, price=None, offsets=None, volume=500_000, exchange="XNAS"):
    n = len(ts)
    price = price if price is not None else [100.0 + i for i in range(n)]
    return pd.DataFrame({
        "ts_ms": np.array(ts, dtype=np.int64), "exchange": [exchange] * n, "price": np.array(price, float),
        "volume": np.full(n, volume, dtype=np.int64), "bid": np.array(price) - 0.01, "ask": np.array(price) + 0.01,
        "topic": ["t"] * n, "partition": np.zeros(n, dtype=np.int32),
        "offset": np.array(offsets if offsets is not None else range(n), dtype=np.int64),
    })


def run(frame, state=None, cfg=CFG, watermark=0):
    return kernel.process("AAPL", kernel.columns_of(frame), state or SymbolState(), cfg, watermark)


def rejects(result):
    out = result.output
    return out[out.kind == "reject"].reason.tolist()


def test_in_order_ticks_are_all_processed():
    r = run(ticks([T0 + i * 1000 for i in range(30)]))
    assert r.processed == 30 and rejects(r) == []
    assert r.state.last_ts == T0 + 29_000 and len(r.state.history) == 30
    r = run(ticks([T0 + 30_000 + i * 1000 for i in range(40)], offsets=range(30, 70)), state=r.state)
    assert len(r.state.history) == 49  # bounded: what the 50-tick window needs


def test_rising_prices_emit_one_buy_on_change_and_many_with_every():
    frame = ticks([T0 + i * 1000 for i in range(30)])
    on_change = run(frame).output
    every = run(frame, cfg=KernelConfig(strategy=StrategySettings(), emission="every")).output
    assert on_change[on_change.kind == "signal"].action.tolist() == ["BUY"]
    assert len(every[every.kind == "signal"]) > 10
    assert set(every[every.kind == "signal"].action) == {"BUY"}


def test_exact_duplicates_are_rejected_once_seen_within_and_across_calls():
    frame = ticks([T0, T0 + 1000, T0 + 1000], price=[10.0, 11.0, 11.0], offsets=[0, 1, 2])
    r = run(frame)
    assert rejects(r) == ["duplicate"] and r.processed == 2
    again = run(ticks([T0 + 1000], price=[11.0], offsets=[3]), state=r.state)
    assert rejects(again) == ["duplicate"]
    # same stamp and exchange but another price: not a duplicate
    other = run(ticks([T0 + 1000], price=[11.5], offsets=[4]), state=r.state)
    assert rejects(other) == [] and other.processed == 1


def test_in_event_time_mode_a_copy_of_a_tick_still_waiting_is_a_duplicate():
    # the first tick waits for the watermark (pending in state); a copy in a later call must be caught
    # against it, not only against the processed ticks' keys
    cfg = KernelConfig(strategy=StrategySettings(), ordering="event_time")
    first = run(ticks([T0, T0 + 1000], price=[10.0, 11.0]), cfg=cfg, watermark=T0 - 1)
    assert first.processed == 0 and len(first.state.pending["ts_ms"]) == 2
    again = run(ticks([T0 + 1000, T0 + 1000, T0 + 2000], price=[11.0, 11.5, 12.0], offsets=[2, 3, 4]),
                state=first.state, cfg=cfg, watermark=T0 - 1)
    assert rejects(again) == ["duplicate"]  # the same tick; another price at the same time is not one
    assert again.output[again.output.kind == "reject"].offset.tolist() == [2]
    assert sorted(again.state.pending["price"].tolist()) == [10.0, 11.0, 11.5, 12.0]
    # a lone copy, its time unlike any processed tick's: only the waiting ticks' keys can catch it
    lone = run(ticks([T0 + 2000], price=[12.0], offsets=[5]), state=again.state, cfg=cfg, watermark=T0 - 1)
    assert rejects(lone) == ["duplicate"] and len(lone.state.pending["ts_ms"]) == 4


def _all_keys_duplicates(ticks, state):
    """The duplicate rule with every tick's key built (the kernel builds only the keys a copy could have)."""
    seen = set() if state.recent is None else set(kernel._keys(state.recent))
    if state.has_pending:
        seen.update(kernel._keys(state.pending))
    dup = np.zeros(len(ticks["ts_ms"]), dtype=bool)
    for i, key in enumerate(kernel._keys(ticks)):
        dup[i] = key in seen
        seen.add(key)
    return dup


def test_the_kernels_isin_is_numpys_for_few_times_and_many():
    """_isin compares a call's few event times by broadcasting and leaves many to np.isin: the same
    answer either way, empty sides included."""
    rng = np.random.default_rng(3)
    for n, m in ((0, 5), (5, 0), (1, 1), (20, 30), (64, 64), (65, 64), (3, 5_000), (2_000, 49)):
        values, among = (T0 + rng.integers(0, 60, size) * 1000 for size in (n, m))
        assert kernel._isin(values, among).tolist() == np.isin(values, among).tolist(), (n, m)


@pytest.mark.parametrize("ordering", ["arrival", "event_time"])
def test_duplicates_found_from_a_few_keys_are_those_found_from_all(ordering, monkeypatch):
    # copies of recent, waiting and same-call ticks, ticks sharing a time but not a price, older ticks
    calls, few_keys = [], kernel._duplicates

    def both(ticks, state):
        got = few_keys(ticks, state)
        want = _all_keys_duplicates(ticks, state)
        calls.append(int(want.sum()))
        assert (np.zeros(len(want), dtype=bool) if got is None else got).tolist() == want.tolist()
        return got

    monkeypatch.setattr(kernel, "_duplicates", both)
    cfg = KernelConfig(strategy=StrategySettings(), ordering=ordering, watermark_delay_ms=5_000)
    rng = np.random.default_rng(11)
    state, offset, seen = SymbolState(), 0, []
    for batch in range(40):
        n = int(rng.integers(1, 30))
        ts = T0 + batch * 2_000 + rng.integers(-3_000, 2_000, n) // 250 * 250  # shared times, some older
        price = rng.choice([10.0, 10.5, 11.0], n)
        rows = [(int(t), float(p)) for t, p in zip(ts, price, strict=True)]
        if seen:  # copies of earlier ticks and of the newest one (the last processed tick, in arrival mode)
            rows += [seen[int(i)] for i in rng.integers(0, len(seen), 3)] + [max(seen)] * int(rng.integers(0, 2))
        seen += rows
        ts, price = [t for t, _ in rows], [p for _, p in rows]
        frame = ticks(ts, price=price, offsets=range(offset, offset + len(rows)))
        offset += len(rows)
        state = run(frame, state=state, cfg=cfg, watermark=T0 + batch * 2_000 - 5_000).state
    # (in event_time mode a call whose times no other new or waiting tick shares, all after the last
    # processed one, cannot hold a copy and skips _prepare: the first call here)
    assert len(calls) >= (40 if ordering == "arrival" else 39) and sum(calls) > 40


def with_validation_reject(frame):
    """``frame`` as Arrow hands it to pandas when the group also has a validation reject: its null
    timestamp and volume turn those int64 columns into float64 (NaN)."""
    n = len(frame)
    out = {c: [*frame[c], None] for c in frame.columns}
    out.update(topic=[*frame.topic, "t"], partition=[*frame.partition, 0], offset=[*frame.offset, 99],
               reason=[None] * n + ["not_json"], raw=[None] * n + ["{"])
    out = pd.DataFrame(out)
    out["ts_ms"], out["volume"] = out["ts_ms"].astype(float), out["volume"].astype(float)
    return out


def test_a_duplicate_is_caught_whatever_dtypes_its_batch_arrived_with():
    # the soak's many-kills finding: the first batch had a validation reject in the symbol's frame
    # (float columns), the copy came in the next batch (int columns): the duplicate keys must agree
    first = run(with_validation_reject(ticks([T0, T0 + 1000], price=[10.0, 11.0])))
    assert rejects(first) == ["not_json"] and first.processed == 2
    again = run(ticks([T0 + 1000], price=[11.0], offsets=[3]), state=first.state)
    assert rejects(again) == ["duplicate"] and again.processed == 0
    # and the other way round
    plain = run(ticks([T0, T0 + 1000], price=[10.0, 11.0]))
    copy = run(with_validation_reject(ticks([T0 + 1000], price=[11.0], offsets=[3])), state=plain.state)
    assert sorted(rejects(copy)) == ["duplicate", "not_json"] and copy.processed == 0
    assert state_fields(first.state)[3] == state_fields(plain.state)[3]  # the duplicate keys, dtypes too


def test_arrival_mode_rejects_ticks_older_than_the_last_processed_one():
    first = run(ticks([T0 + 10_000, T0 + 11_000]))
    older = run(ticks([T0 + 5_000, T0 + 12_000], offsets=[5, 6]), state=first.state)
    assert rejects(older) == ["out_of_order"] and older.processed == 1
    # within one call, ticks are sorted first: nothing is out of order
    sorted_in_call = run(ticks([T0 + 3_000, T0 + 1_000, T0 + 2_000]))
    assert rejects(sorted_in_call) == [] and sorted_in_call.processed == 3


def test_late_ticks_are_rejected_whatever_the_batch_cut():
    # a tick more than the watermark delay behind its symbol's newest tick at arrival
    frame = ticks([T0 + 100_000, T0 + 101_000, T0 + 50_000], offsets=[0, 1, 2])
    whole = run(frame)
    first = run(frame.iloc[:2])
    second = run(frame.iloc[2:], state=first.state)
    assert rejects(whole) == ["late"] and rejects(second) == ["late"]
    # and a tick behind the stream's watermark
    assert rejects(run(ticks([T0]), watermark=T0 + 1)) == ["late"]


def test_event_time_mode_waits_for_the_watermark_and_orders_shuffled_arrivals():
    cfg = KernelConfig(strategy=StrategySettings(), ordering="event_time")
    stamps = [T0 + i * 1000 for i in range(40)]
    ordered = ticks(stamps)
    rng = np.random.default_rng(0)
    order = np.concatenate([lo + rng.permutation(10) for lo in range(0, 40, 10)])  # 10 s blocks < 30 s delay
    shuffled = ordered.iloc[order].reset_index(drop=True)
    shuffled["offset"] = np.arange(40)
    outs = []
    for frame in (ordered, shuffled):
        r1 = run(frame.iloc[:25], cfg=cfg, watermark=T0 - 1)
        assert r1.processed == 0 and r1.state.has_pending  # nothing passed by the watermark yet
        r2 = run(frame.iloc[25:], state=r1.state, cfg=cfg, watermark=T0 + 9_001)
        assert r2.processed == 10 and rejects(r2) == []  # the first 10 s block is released, in order
        r3 = run(frame.iloc[:0], state=r2.state, cfg=cfg, watermark=T0 + 39_001)  # a timer call, no data
        assert r3.processed == 30 and not r3.state.has_pending
        out = pd.concat([r1.output, r2.output, r3.output])
        outs.append(out[out.kind == "signal"].reset_index(drop=True))
    pd.testing.assert_frame_equal(outs[0].drop(columns=["offset"]), outs[1].drop(columns=["offset"]))


def test_event_time_mode_releases_a_tick_only_once_the_watermark_is_past_it():
    # Spark fires an event-time timer when the watermark is *past* the timeout (timeout < watermark);
    # the kernel's release rule is the same, so a tick at exactly the watermark waits whether its
    # symbol gets new data in that batch or only a timer call -- the batch cut cannot change the output.
    cfg = KernelConfig(strategy=StrategySettings(), ordering="event_time")
    first = run(ticks([T0, T0 + 1000]), cfg=cfg, watermark=T0 - 1)
    assert first.processed == 0
    with_data = run(ticks([T0 + 2000], offsets=[2]), state=first.state, cfg=cfg, watermark=T0 + 1000)
    timer_only = run(ticks([])[:0], state=first.state, cfg=cfg, watermark=T0 + 1000)
    assert with_data.processed == timer_only.processed == 1  # T0 + 1000 is at the watermark: it waits
    assert sorted(with_data.state.pending["ts_ms"].tolist()) == [T0 + 1000, T0 + 2000]
    assert timer_only.state.pending["ts_ms"].tolist() == [T0 + 1000]
    assert run(ticks([])[:0], state=first.state, cfg=cfg, watermark=T0 + 1001).processed == 2


def test_a_gap_longer_than_the_idle_timeout_starts_a_new_series():
    cfg = KernelConfig(strategy=StrategySettings(), idle_timeout_ms=60_000)
    frame = ticks([T0, T0 + 1000, T0 + 200_000, T0 + 201_000], price=[10.0, 11.0, 50.0, 51.0])
    whole = run(frame, cfg=cfg)
    split = run(frame.iloc[:2], cfg=cfg)
    resumed = run(frame.iloc[2:], state=split.state, cfg=cfg)
    fresh = run(frame.iloc[2:], cfg=cfg)
    # the windows hold only the new series, exactly as for a symbol never seen (an evicted state)
    assert whole.state.history.price.tolist() == resumed.state.history.price.tolist() == [50.0, 51.0]
    assert whole.state.recent["ts_ms"].tolist() == [T0 + 200_000, T0 + 201_000]  # the new series' keys only
    assert np.isnan(whole.state.history.price_change_pct[0])
    assert fresh.state.history.price_change_pct.tolist()[1:] == resumed.state.history.price_change_pct.tolist()[1:]


def test_the_state_keeps_the_keys_of_the_last_49_processed_ticks_whatever_the_calls_sizes():
    rng = np.random.default_rng(5)
    state, done = SymbolState(), []
    for size in (3, 30, 1, 60, 5, 48, 2):
        at = len(done)
        frame = ticks([T0 + (at + i) * 1000 for i in range(size)], price=(100 + rng.integers(0, 50, size) / 4).tolist(),
                      offsets=range(at, at + size), exchange=str(rng.choice(["XNAS", "XNYS", "A|B"])))
        frame["volume"] = rng.integers(0, 2**62, size)
        state = run(frame, state=state).state
        done += list(zip(*(frame[c].tolist() for c in ("ts_ms", "exchange", "price", "volume")), strict=True))
        assert kernel._keys(state.recent) == done[-49:], f"after {len(done)} ticks"
        assert [str(a.dtype) for a in state.recent.values()] == ["int64", "object", "float64", "int64"]


def test_stateless_rejects_pass_through_with_their_raw_value():
    frame = ticks([T0]).assign(reason=["crossed_quote"], raw=['{"bad":1}'])
    r = run(frame)
    out = r.output
    assert out[out.kind == "reject"][["reason", "raw"]].values.tolist() == [["crossed_quote", '{"bad":1}']]
    assert r.processed == 0


def test_signal_id_is_deterministic_and_unique_per_tick():
    a = kernel.signal_id("AAPL", T0, "XNAS", 10.0, 5, "v1")
    assert a == kernel.signal_id("AAPL", T0, "XNAS", 10.0, 5, "v1")
    assert len({a, kernel.signal_id("AAPL", T0 + 1, "XNAS", 10.0, 5, "v1"),
                kernel.signal_id("AAPL", T0, "XNYS", 10.0, 5, "v1"),
                kernel.signal_id("MSFT", T0, "XNAS", 10.0, 5, "v1"),
                kernel.signal_id("AAPL", T0, "XNAS", 10.0, 5, "v2")}) == 5


def test_every_call_ends_with_a_count_row():
    out = run(ticks([T0, T0 + 1000])).output
    assert out.kind.tolist()[-1] == "count" and out.processed.tolist()[-1] == 2
    assert list(out.columns) == list(kernel.OUTPUT_COLUMNS)


@pytest.mark.parametrize("cut", [1, 7, 33])
def test_any_cut_gives_the_same_signals(cut):
    rng = np.random.default_rng(cut)
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, 120)))
    frame = ticks([T0 + i * 500 for i in range(120)], price=price)
    frame["volume"] = rng.integers(50_000, 3_000_000, 120)
    whole = run(frame).output
    state, parts = SymbolState(), []
    for lo in range(0, 120, cut):
        r = run(frame.iloc[lo:lo + cut], state=state)
        state = r.state
        parts.append(r.output)
    pieces = pd.concat(parts)
    a = whole[whole.kind == "signal"].reset_index(drop=True)
    b = pieces[pieces.kind == "signal"].reset_index(drop=True)
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)


def _signals_of(symbol: str, rows: list[tuple]) -> list[tuple]:
    kind, sym = kernel.OUTPUT_COLUMNS.index(kernel.KIND), kernel.OUTPUT_COLUMNS.index("symbol")
    return [r for r in rows if r[kind] == kernel.KIND_SIGNAL and r[sym] == symbol]


@pytest.mark.parametrize("ordering", ["arrival", "event_time"])
@pytest.mark.parametrize("emission", ["on_change", "every"])
def test_a_bucket_of_symbols_gives_each_the_rows_and_state_it_gets_alone(ordering, emission):
    """process_bucket runs the indicators of all its calls in one numpy pass: each symbol's rows and
    new state must be exactly what process gives it alone -- over batches that carry history, with
    rejects, duplicates, a symbol whose batch spans an idle gap (two series), one that only has a
    validation reject and, in event_time mode, one called with no ticks to release its pending ones."""
    cfg = KernelConfig(strategy=StrategySettings(), ordering=ordering, emission=emission,
                       watermark_delay_ms=5_000, idle_timeout_ms=60_000)
    rng = np.random.default_rng(7)
    symbols = ["A", "B", "C", "D", "E"]
    states = dict.fromkeys(symbols, SymbolState())
    offset, alone_signals, series_split = 0, 0, False
    for batch in range(6):
        clock = T0 + batch * 20_000
        calls = []
        for s in symbols:
            n = int(rng.integers(5, 40))
            ts = np.sort(clock - rng.integers(0, 15_000, n))
            if s == "B" and batch == 3:
                ts = np.concatenate([ts, ts[-1] + 61_000 + np.arange(5) * 1000])  # an idle gap: a new series
                series_split = True
            if s == "E" and batch % 2:  # no ticks: a timer call in event_time mode, skipped otherwise
                if ordering == "event_time":
                    calls.append((s, kernel.columns_of(ticks([])[:0]), states[s]))
                continue
            price = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, len(ts))))
            frame = ticks(ts.tolist(), price=price, offsets=range(offset, offset + len(ts)))
            frame["volume"] = rng.integers(50_000, 3_000_000, len(ts))
            offset += len(ts)
            if s == "C":
                frame = pd.concat([frame, frame.iloc[:3].assign(offset=frame.offset.iloc[:3] + 10_000)])  # duplicates
            if s == "D" and batch == 2:
                frame = with_validation_reject(frame.iloc[:1]).iloc[1:]  # only a validation reject
            calls.append((s, kernel.columns_of(frame.reset_index(drop=True)), states[s]))
        watermark = clock - 5_000
        output, after = kernel.process_bucket([s for s, _, _ in calls], *kernel.joined([c for _, c, _ in calls]),
                                              kernel.States.of([before for _, _, before in calls]), cfg, watermark)
        assert len(after) == len(calls)
        want_rows, want_states = [], {}
        for s, cols, before in calls:
            alone = kernel.process(s, cols, before, cfg, watermark)
            want_rows += output_rows(alone.output)
            want_states[s] = alone.state
            alone_signals += int((alone.output.kind == kernel.KIND_SIGNAL).sum())
        got_rows = output_rows(output)
        assert sorted(got_rows) == sorted(want_rows), f"batch {batch}"
        for s in symbols:  # and each symbol's signals in their order
            assert _signals_of(s, got_rows) == _signals_of(s, want_rows)
        for row, (s, _, _) in enumerate(calls):
            state = after.state(row)
            assert state_fields(state) == state_fields(want_states[s]), f"batch {batch} symbol {s}"
            states[s] = state
    assert alone_signals > 0 and series_split


def _prepared(prepared) -> tuple:
    """One call's _prepare result for comparison: its reject rows, its ready ticks (values and dtypes)
    and its new state."""
    out, ready, state = prepared
    rejects = [output_rows(pd.DataFrame(part)) for part in out.parts]
    return rejects, {k: (repr(v.tolist()), str(v.dtype)) for k, v in ready.items()}, state_fields(state)


@pytest.mark.parametrize("ordering", ["arrival", "event_time"])
@pytest.mark.parametrize("watermark", [T0 + 10_000, None])
def test_the_calls_prepare_would_pass_through_are_found_for_a_bucket_at_once(ordering, watermark):
    """_prepare_bucket skips _prepare for a call whose ticks need none of its checks (found for all
    calls at once): every call must get exactly what _prepare gives it, and the skip must be taken
    for just those calls. In arrival mode (and without a watermark): rising times after the last
    processed tick, none late, no validation reject, nothing waiting. In event_time mode, where ticks
    wait for the watermark, any order, but none an exact copy of another new or waiting tick."""
    cfg = KernelConfig(strategy=StrategySettings(), ordering=ordering, watermark_delay_ms=30_000)
    seen = SymbolState(last_ts=T0 + 20_000, high_water=T0 + 25_000)
    rising = [T0 + 21_000, T0 + 22_000, T0 + 24_000]

    def waiting(times: list[int], exchanges: list[str] | None = None, last_ts: int = T0 + 20_000) -> SymbolState:
        frame = ticks(times, offsets=range(100, 100 + len(times)))
        if exchanges:
            frame["exchange"] = exchanges
        pending = kernel.columns_of(frame)
        return SymbolState(last_ts=last_ts, high_water=max(times), pending={c: pending[c] for c in kernel._PENDING})

    # a bucket with a validation reject: Arrow hands every symbol's times and volumes as float64
    mixed = with_validation_reject(ticks([T0 + 21_000, T0 + 23_000], offsets=[10, 11]))
    cases = {  # (ticks, state, skipped in arrival mode or without a watermark, skipped in event_time mode)
        "clean": (ticks(rising), seen, True, True),
        "clean, first ticks": (ticks(rising), SymbolState(), True, True),
        "clean, one tick": (ticks([T0 + 30_000]), seen, True, True),
        "clean, float64 columns of a bucket with a reject": (mixed.iloc[:2], seen, True, True),
        "a validation reject": (mixed, seen, False, False),
        "a validation reject with a time": (ticks(rising).assign(reason=[None, "bad_price", None],
                                                                 raw=[None, "{}", None]), seen, False, False),
        "a shared time": (ticks([T0 + 21_000, T0 + 21_000], price=[1.0, 2.0]), seen, False, True),
        "a copy": (ticks([T0 + 21_000, T0 + 22_000, T0 + 21_000], price=[1.0, 2.0, 1.0]), seen, False, False),
        "a falling time": (ticks([T0 + 22_000, T0 + 21_000]), seen, False, True),
        "at the last processed time": (ticks([T0 + 20_000, T0 + 21_000]), seen, False, False),
        "before the last processed time": (ticks([T0 + 19_000]), seen, False, False),
        "behind the watermark": (ticks([T0 + 5_000]), SymbolState(), watermark is None, False),
        "more than the delay behind the high water": (
            ticks([T0 + 21_000]), SymbolState(last_ts=T0 + 20_000, high_water=T0 + 60_000), watermark is None,
            False),
        "behind its own newest by more than the delay": (ticks([T0 + 11_000, T0 + 45_000]), SymbolState(),
                                                          watermark is None, False),
        "ticks waiting": (ticks(rising), waiting([T0 + 30_000]), False, True),
        "ticks waiting, one a copy of a new tick": (ticks(rising), waiting([T0 + 30_000, T0 + 22_000]), False, False),
        "ticks waiting, one at a new tick's time": (ticks(rising, price=[1.0, 2.0, 3.0]), waiting(
            [T0 + 30_000, T0 + 22_000]), False, True),
        "ticks waiting at one time, new ones between": (ticks([T0 + 23_000, T0 + 21_000]), waiting(
            [T0 + 8_000, T0 + 8_000, T0 + 22_000], ["NYSE", "ARCA", "BATS"], last_ts=T0 + 1_000), False, True),
        "ticks waiting, none new": (
            ticks([T0 + 30_000])[:0], waiting([T0 + 31_000, T0 + 6_000], last_ts=T0 + 1_000), False, True),
        "no ticks": (ticks([T0 + 30_000])[:0], seen, False, True),  # (its columns typed as a stream's)
    }
    released = ordering == "event_time" and watermark is not None
    want = {name: case[3] if released else case[2] for name, case in cases.items()}
    assert len(set(want.values())) == 2
    calls = [(name, kernel.columns_of(frame.reset_index(drop=True)), state)
             for name, (frame, state, _, _) in cases.items()]
    names, (columns, counts) = list(cases), kernel.joined([cols for _, cols, _ in calls])
    states = kernel.States.of([state for _, _, state in calls])
    skipped = (kernel._released(columns, counts, states, cfg, watermark)[0] if released
               else kernel._clean_calls(columns, counts, states, cfg, watermark)[0])
    assert dict(zip(names, skipped.tolist(), strict=True)) == want
    outputs, ready, ready_counts, prepared = kernel._prepare_bucket(names, columns, counts, states, cfg, watermark)
    ends = np.cumsum(ready_counts)
    for row, (name, cols, state) in enumerate(calls):
        alone = kernel._prepare(name, cols, state, cfg, watermark)
        mine = {c: v[ends[row] - ready_counts[row]:ends[row]] for c, v in ready.items()}
        assert _prepared((outputs[row], mine, prepared.state(row))) == _prepared(
            (alone[0], {c: alone[1][c] for c in kernel._PENDING}, alone[2])), name
    if released:  # the watermark released some of the waiting ticks (before it) and kept the others
        assert ready_counts.sum() and prepared.pending_len.max() > 0
