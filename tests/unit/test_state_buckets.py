"""The stateful key is a bucket of symbols (stream/state.py): the handler must make, for every symbol,
the kernel calls Spark would make if the symbol were the key -- on new ticks, and when the symbol's own
timer is passed by the watermark -- and keep its timer, so the output is the same batch by batch.

Spark's GroupState is used as is (no session needed); the driver loop below plays Spark's part:
a key is called when it has data, or when its timer is below the watermark (EventTimeTimeout)."""

from __future__ import annotations

import copyreg
import dataclasses
import io
import itertools
import pickle

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import Row
from pyspark.sql.streaming.state import GroupState, GroupStateTimeout

from marketsignals import indicators, kernel
from marketsignals.kernel import KernelConfig, SymbolState
from marketsignals.settings import StrategySettings
from marketsignals.stream import state
from support import output_rows, state_fields

BUCKETS = 4
T0 = 1_767_312_000_000


def _state(blob: tuple | None, watermark: int, timeout: int, timed_out: bool) -> GroupState:
    return GroupState(Row(*blob) if blob else None, 0, watermark, GroupStateTimeout.EventTimeTimeout, timed_out,
                      True, blob is not None, False, False, timeout, b"", state.STATE_SCHEMA)


def _tick(symbol: str, ts: int, i: int) -> dict:
    return {"symbol": symbol, "ts_ms": ts, "price": 100.0 + (i * 7 % 11) * 0.5, "volume": 1000 + i, "bid": 99.5,
            "ask": 100.5, "exchange": "NYSE", "topic": "t", "partition": 0, "offset": i, "reason": None, "raw": None}


def _frames(ticks: list[dict]) -> list[pd.DataFrame]:
    """The handler's input as Spark hands it over: typed columns, in frames of at most 5 ticks."""
    frame = pd.DataFrame(ticks, columns=list(state.TICK_COLUMNS)).astype({"partition": "int32"})
    return [frame.iloc[i:i + 5].reset_index(drop=True) for i in range(0, len(frame), 5)]


class Spark:
    """Keys, their state rows and timers across batches, called as Spark calls them."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.rows: dict[str, tuple] = {}
        self.timers: dict[str, int] = {}

    def batch(self, watermark: int, ticks: dict[str, list[dict]]) -> list[tuple]:
        out = []
        for key in sorted(set(ticks) | set(self.rows)):
            timer = self.timers.get(key, GroupState.NO_TIMESTAMP)
            timed_out = key not in ticks and timer != GroupState.NO_TIMESTAMP and timer < watermark
            if key not in ticks and not timed_out:
                continue
            gs = _state(self.rows.get(key), watermark, timer, timed_out)
            frames = iter(_frames(ticks[key]) if key in ticks else [])
            for frame in self.handler((key,), frames, gs):
                assert tuple(frame.columns) == kernel.OUTPUT_COLUMNS
                out += output_rows(frame)
            if gs.exists:
                # what Spark's serializer reads back from the GroupState (no public getter)
                self.rows[key], self.timers[key] = gs.get, gs._timeout_timestamp
            else:
                self.rows.pop(key, None)
                self.timers.pop(key, None)
        return sorted(out)


def per_symbol_handler(cfg: KernelConfig):
    """The handler as it was with the symbol as the key: one symbol's state, its own timer."""

    def handle(key, frames, gs):
        watermark = max(gs.getCurrentWatermarkMs(), 0)
        before = pickle.loads(gs.get[1]) if gs.exists else SymbolState()
        symbols, cols, _ = state.by_symbol(frames)
        assert symbols in ([], [key[0]])
        result = kernel.process(key[0], cols, before, cfg, watermark)
        (timeout,), (kept,) = state._timeouts(kernel.States.of([result.state]), watermark, cfg)
        if not kept:
            if gs.exists:
                gs.remove()
        else:
            gs.update((0, pickle.dumps(result.state)))
            gs.setTimeoutTimestamp(int(timeout))
        yield result.output

    return handle


def _batches():
    """A and B share a bucket. B goes quiet after the first batch: its pending ticks must be released
    by its own timer in a batch where only A has data, and it must be evicted once idle."""
    a = [T0 + i * 1000 for i in range(12)]
    b = [T0 + i * 1000 for i in range(4)]
    return [
        (0, {"A": a[:6], "B": b}),
        (T0 + 4_500, {"A": a[6:9]}),
        (T0 + 8_500, {}),
        (T0 + 60_000, {"A": [T0 + 61_000, T0 + 62_000]}),
        (T0 + 200_000, {}),
    ]


@pytest.mark.parametrize("ordering", ["event_time", "arrival"])
def test_a_bucket_makes_the_calls_and_keeps_the_timers_of_its_symbols(ordering):
    cfg = KernelConfig(strategy=StrategySettings(), ordering=ordering, emission="every",
                       watermark_delay_ms=2_000, idle_timeout_ms=20_000)
    bucketed, keyed = Spark(state.make_handler(cfg, BUCKETS)), Spark(per_symbol_handler(cfg))
    offsets = iter(range(1_000))
    for n, (watermark, ticks) in enumerate(_batches()):
        rows = {s: [_tick(s, t, next(offsets)) for t in ts] for s, ts in ticks.items()}
        if n == 1:  # a validation reject: its null fields make float64 and object columns of the frame
            rows["A"].insert(1, {**dict.fromkeys(state.TICK_COLUMNS), "symbol": "A", "topic": "t", "partition": 0,
                                 "offset": next(offsets), "reason": "not_json", "raw": "{"})
        want = keyed.batch(watermark, rows)
        # the bucket's ticks interleaved across its symbols, as they come from Kafka
        mixed = [t for group in itertools.zip_longest(*rows.values()) for t in group if t is not None]
        got = bucketed.batch(watermark, {"bucket": mixed} if mixed else {})
        assert got == want, f"batch {n}"
        kind, symbol, processed = (kernel.OUTPUT_COLUMNS.index(c) for c in (kernel.KIND, "symbol", kernel.PROCESSED))
        counts = {r[symbol]: r[processed] for r in got if r[kind] == kernel.KIND_COUNT}
        if n == 1 and ordering == "event_time":  # B had no ticks: its timer released its pending ones
            assert counts.get("B", 0) > 0, counts
        if n == 3:  # B idle past the timeout: evicted by its timer, A still held
            assert set(keyed.rows) == {"A"}
            assert state._bucket(*bucketed.rows["bucket"], BUCKETS).symbols.tolist() == ["A"]
    assert not bucketed.rows and not keyed.rows  # every symbol idle: nothing left in state


def test_a_checkpoint_written_with_another_bucket_count_stops_with_a_message():
    blob = (state.STATE_FORMAT, pickle.dumps((BUCKETS * 2, None, {})))
    with pytest.raises(state.StateFormatError, match=f"stream.state_buckets={BUCKETS * 2}, not {BUCKETS}"):
        state.load_bucket(_state(blob, 0, GroupState.NO_TIMESTAMP, False), BUCKETS)


def test_a_buckets_state_keeps_how_its_key_was_made_and_another_keying_stops_with_a_message():
    """Format 7 records the shuffle partition count the bucket's key was made for (bucket_keys), formats
    before it are keyed by the buckets' own numbers: a query keying them otherwise would read another
    bucket's state as this one's, so it stops and says what to do."""
    cfg = KernelConfig(strategy=StrategySettings())
    tick = _tick("A", T0, 0)
    for keyed_for in (None, 2):
        handler, held = state.make_handler(cfg, BUCKETS, keyed_for), _state(None, 0, GroupState.NO_TIMESTAMP, False)
        list(handler((0,), iter(_frames([tick])), held))
        fmt, blob = held.get
        assert fmt == state.STATE_FORMAT == 7 and pickle.loads(blob)[:2] == (BUCKETS, keyed_for)
        row = _state((fmt, blob), 0, GroupState.NO_TIMESTAMP, False)
        assert state.load_bucket(row, BUCKETS, keyed_for).symbols.tolist() == ["A"]
        other = 3 if keyed_for is None else None
        with pytest.raises(state.StateFormatError, match=r"restore the checkpoint's marketsignals\.json"):
            state.load_bucket(row, BUCKETS, other)
    table = state.StateTable.of([("A", T0, SymbolState(high_water=T0))])
    format_6 = _state((6, pickle.dumps((BUCKETS, table))), 0, GroupState.NO_TIMESTAMP, False)
    assert state.load_bucket(format_6, BUCKETS).symbols.tolist() == ["A"]
    with pytest.raises(state.StateFormatError, match="keyed by bucket number, this query's for 2 shuffle partitions"):
        state.load_bucket(format_6, BUCKETS, 2)


def test_a_buckets_validation_rejects_keep_their_reason_and_raw_value():
    """by_symbol leaves the reason and raw columns out of a bucket without validation rejects (the
    kernel then skips looking for them symbol by symbol); a bucket with one keeps them."""
    good = [_tick("A", T0 + i * 1000, i) for i in range(4)]
    bad = {**_tick("B", T0, 4), "ts_ms": None, "price": None, "reason": "not_json", "raw": "{oops"}
    symbols, clean, counts = state.by_symbol(iter(_frames(good)))
    assert symbols == ["A"] and counts.tolist() == [4]
    assert set(clean) == set(state.TICK_COLUMNS) - {"reason", "raw"}
    symbols, mixed, counts = state.by_symbol(iter(_frames([*good[:2], bad, *good[2:]])))
    assert symbols == ["A", "B"] and counts.tolist() == [4, 1]
    assert set(mixed) == set(state.TICK_COLUMNS)
    assert mixed["symbol"].tolist() == ["A"] * 4 + ["B"] and mixed["offset"].tolist() == [0, 1, 2, 3, 4]
    handler = state.make_handler(KernelConfig(strategy=StrategySettings()), BUCKETS)
    [out] = handler((0,), iter(_frames([*good, bad])), _state(None, 0, GroupState.NO_TIMESTAMP, False))
    rejects = out[out.kind == kernel.KIND_REJECT]
    assert rejects[["symbol", "reason", "raw", "offset"]].values.tolist() == [["B", "not_json", "{oops", 4]]
    counts = out[out.kind == kernel.KIND_COUNT].set_index("symbol").processed.to_dict()
    assert counts == {"A": 4, "B": 0}


def _text_keys(recent) -> tuple[str, ...]:
    """A state's duplicate keys as formats 2 and 3 kept them: text."""
    return tuple(f"{t}|{e}|{p!r}|{v}" for t, e, p, v in kernel._keys(recent))


class _Format2Pickler(pickle.Pickler):
    """Pickles a SymbolState as format 2 did: a plain dataclass, before it had a __reduce__ of its own."""

    def reducer_override(self, obj):
        if type(obj) is SymbolState:
            return copyreg.__newobj__, (SymbolState,), {**obj.__dict__, "recent": _text_keys(obj.recent)}
        return NotImplemented


class _Format3Pickler(pickle.Pickler):
    """Pickles a SymbolState as format 3 did: format 4's layout, but the duplicate keys as text."""

    def reducer_override(self, obj):
        if type(obj) is SymbolState:
            _, (values, last_ts, high_water, _, last_action, pending) = obj.__reduce__()
            return kernel._symbol_state, (values, last_ts, high_water, _text_keys(obj.recent), last_action, pending)
        return NotImplemented


def _history_of(ordering: str) -> SymbolState:
    """A symbol's state after 60 ticks: a full history, its keys with an exchange holding "|" and a
    volume past 2**53 (so not shared with the history's floats), ticks waiting in event_time mode."""
    cfg = KernelConfig(strategy=StrategySettings(), ordering=ordering, watermark_delay_ms=5_000)
    ts = T0 + np.arange(0, 60_000, 1_000)
    frame = pd.DataFrame([_tick("A", int(t), i) for i, t in enumerate(ts)]).drop(columns=["reason", "raw"])
    frame.loc[frame.index % 3 == 1, "exchange"] = "X|Y"
    frame.loc[frame.index % 5 == 2, "volume"] = 2**60 + 1
    first = kernel.process("A", kernel.columns_of(frame[:50]), SymbolState(), cfg, 0).state
    after = kernel.process("A", kernel.columns_of(frame[50:].reset_index(drop=True)), first, cfg, int(ts[50])).state
    assert len(after.history) == 49 and len(after.recent[kernel.TS_MS]) == 49
    assert {"X|Y", "NYSE"} == set(after.recent[kernel.EXCHANGE]) and 2**60 + 1 in after.recent[kernel.VOLUME]
    assert (after.pending is not None) == (ordering == "event_time")
    return after


@pytest.mark.parametrize("ordering", ["arrival", "event_time"])
def test_a_symbols_state_pickles_exactly_and_formats_2_to_4_still_load(ordering):
    """A symbol's state has its own compact pickle (format 4's): it must come back field for field, and a
    bucket an older version wrote (format 2: dataclass pickles; format 3: the duplicate keys as text;
    format 4: that pickle) must load to the same state -- an exchange holding "|" and a volume past
    2**53 included."""
    after = _history_of(ordering)
    for symbol_state in (after, SymbolState()):
        again = pickle.loads(pickle.dumps(symbol_state, protocol=pickle.HIGHEST_PROTOCOL))
        assert state_fields(again) == state_fields(symbol_state)

    for fmt, pickler, marks in ((2, _Format2Pickler, (b"History", b"_symbol_state")),
                                (3, _Format3Pickler, (b"_symbol_state\x94", b"_symbol_state_4")),
                                (4, pickle.Pickler, (b"_symbol_state_4", b"History"))):
        out = io.BytesIO()
        pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(after)
        old = out.getvalue()
        assert marks[0] in old and marks[1] not in old  # the old layout, not another one
        blob = (fmt, pickle.dumps((BUCKETS, {"A": (T0, old), "B": (T0 + 1, pickle.dumps(SymbolState()))})))
        loaded = state.load_bucket(_state(blob, 0, GroupState.NO_TIMESTAMP, False), BUCKETS)
        assert loaded.symbols.tolist() == ["A", "B"] and loaded.timeouts.tolist() == [T0, T0 + 1]
        assert state_fields(loaded.states.state(0)) == state_fields(after), f"format {fmt}"
        assert state_fields(loaded.states.state(1)) == state_fields(SymbolState()), f"format {fmt}"
    with pytest.raises(state.StateFormatError, match="format 1, this version reads 2, 3, 4, 5, 6 and 7: start from a "):
        state.load_bucket(_state((1, blob[1]), 0, GroupState.NO_TIMESTAMP, False), BUCKETS)


def _table_rows() -> list[tuple[str, int, SymbolState]]:
    """States of every shape a bucket holds: full, short and empty histories, keys the history shares
    or not, ticks waiting or none."""
    full, waiting = _history_of("arrival"), _history_of("event_time")
    short = kernel.process("C", kernel.columns_of(pd.DataFrame([_tick("C", T0 + i, i) for i in range(3)]).drop(
        columns=["reason", "raw"])), SymbolState(), KernelConfig(strategy=StrategySettings()), 0).state
    return [("A", T0 + 5, full), ("B", T0 + 1, waiting), ("C", T0 + 9, short),
            ("D", T0 + 2, SymbolState(high_water=T0)), ("E|F", T0 + 3, waiting)]


def _table_fields(table: state.StateTable) -> list[tuple]:
    return [(symbol, timeout, state_fields(s)) for symbol, timeout, s in table.rows()]


def test_a_buckets_table_keeps_every_symbols_state_through_pickle_gathers_and_concatenation():
    """Format 5: a bucket's states are one table. Each row must come back field for field from the
    table, its pickle, a gather of rows in any order and two tables end to end -- the keys' prices and
    volumes pickled once when every row's history holds them, apart when one does not."""
    rows = _table_rows()
    want = [(symbol, timeout, state_fields(s)) for symbol, timeout, s in rows]
    table = state.StateTable.of(rows)
    assert _table_fields(table) == want
    again = pickle.loads(pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL))
    assert _table_fields(again) == want
    assert _table_fields(again.take(np.array([4, 0, 2]))) == [want[4], want[0], want[2]]
    assert _table_fields(again.take(np.array([], dtype=np.int64))) == []
    assert _table_fields(again.take(np.array([3, 1])) + table.take(np.array([0]))) == [want[3], want[1], want[0]]
    # the same rows with small volumes: those, like the prices, are pickled once (the history's)
    plain = [(symbol, timeout, dataclasses.replace(
        s, history=indicators.History(s.history.price, np.full(len(s.history), 1000.0), s.history.price_change_pct),
        recent=None if s.recent is None else {**s.recent, kernel.VOLUME: np.full(len(s.history), 1000)}))
        for symbol, timeout, s in rows]
    sizes = {name: len(pickle.dumps(state.StateTable.of(r))) for name, r in (("apart", rows), ("shared", plain))}
    keys = sum(len(s.recent[kernel.TS_MS]) for _, _, s in rows if s.recent is not None)
    assert sizes["apart"] >= sizes["shared"] + 8 * keys  # the volumes
    # one row's key prices are not its history's: every row's are pickled apart
    symbol, timeout, s = plain[2]
    priced = [*plain[:2], (symbol, timeout, dataclasses.replace(s, recent={**s.recent, kernel.PRICE: s.recent[
        kernel.PRICE] + 0.5})), *plain[3:]]
    for variant in (plain, priced):
        assert _table_fields(pickle.loads(pickle.dumps(state.StateTable.of(variant)))) == [
            (symbol, timeout, state_fields(s)) for symbol, timeout, s in variant]
    assert len(pickle.dumps(state.StateTable.of(priced))) >= sizes["shared"] + 8 * keys
    # a null exchange (validation rejects one; the kernel takes what it is given)
    unnamed = [*plain[:2], (symbol, timeout, dataclasses.replace(s, recent={**s.recent, kernel.EXCHANGE: np.array(
        [None, *s.recent[kernel.EXCHANGE][1:]], dtype=object)})), *plain[3:]]
    assert _table_fields(pickle.loads(pickle.dumps(state.StateTable.of(unnamed)))) == [
        (symbol, timeout, state_fields(s)) for symbol, timeout, s in unnamed]


class _Format5:
    """A bucket's table pickled as format 5 did: as format 6, but each row's event-time buffer in
    kernel.packed_pending's form, and the duplicate keys' exchanges as a list."""

    def __init__(self, table: state.StateTable) -> None:
        self.table = table

    def __reduce__(self):
        t, s = self.table, self.table.states
        ts, exchange, price, volume = s.recent
        shared = kernel.shared_keys(price, volume, *s.history[:2])
        numbers = [t.timeouts, s.history_len, s.recent_len, *s.history, *kernel.packed_keys(ts, price, volume, shared)]
        pending = [kernel.packed_pending(t.states.state(row).pending) for row in range(len(t))]
        return state._state_table, (b"".join(a.tobytes() for a in numbers), len(t), len(ts), shared, t.symbols.tolist(),
                                    s.last_ts.tolist(), s.high_water.tolist(), s.last_action.tolist(), pending,
                                    exchange.tolist(), None, b"")


def test_a_format_5_bucket_loads_with_its_waiting_ticks_as_columns():
    """Format 6 keeps the event-time buffer as columns; a bucket written as format 5 (each row's buffer
    packed on its own) must load to the same rows, and be written again as format 6."""
    rows = _table_rows()
    want = [(symbol, timeout, state_fields(s)) for symbol, timeout, s in rows]
    assert sum(s.pending is not None for _, _, s in rows) == 2  # rows with ticks waiting, and rows without
    old = pickle.dumps((BUCKETS, _Format5(state.StateTable.of(rows))), protocol=pickle.HIGHEST_PROTOCOL)
    assert b"_state_table\x94" in old and b"_state_table_6" not in old  # format 5's layout
    loaded = state.load_bucket(_state((5, old), 0, GroupState.NO_TIMESTAMP, False), BUCKETS)
    assert _table_fields(loaded) == want
    assert b"_state_table_6" in pickle.dumps(loaded) and _table_fields(pickle.loads(pickle.dumps(loaded))) == want


def test_a_batch_replaces_its_symbols_rows_in_place_drops_the_finished_and_appends_the_new():
    rows = _table_rows()
    table = state.StateTable.of(rows[:4])
    fresh = SymbolState(high_water=T0 + 7)
    # called: B (row 1, new state), D (row 3, no state kept) and E|F (new to the bucket)
    kept = state.StateTable.of([("B", T0 + 8, fresh), ("E|F", T0 + 3, rows[4][2])])
    after = state._next_table(table, np.array([1, 3, -1]), np.array([0, 2]), kept)
    assert _table_fields(after) == [(s, t, state_fields(x)) for s, t, x in
                                    [rows[0], ("B", T0 + 8, fresh), rows[2], rows[4]]]
    none, nothing = np.array([], dtype=np.int64), state.StateTable.of([])
    assert _table_fields(state._next_table(table, none, none, nothing)) == _table_fields(table)
    assert len(state._next_table(table, np.array([0, 1, 2, 3]), none, nothing)) == 0


def test_duplicate_keys_the_history_does_not_hold_are_pickled_with_their_own_values():
    """Format 4 pickles the keys' prices and volumes once when the history holds the same values; when
    it does not (another length, another price, a volume a float cannot hold), they are kept apart."""
    history = indicators.History(np.array([10.0, 10.5, 11.0]), np.array([100.0, 200.0, 300.0]), np.zeros(3))
    keys = {kernel.TS_MS: np.array([T0, T0 + 1, T0 + 2]), kernel.EXCHANGE: np.array(["A", "A", "B"], dtype=object),
            kernel.PRICE: history.price.copy(), kernel.VOLUME: np.array([100, 200, 300])}
    huge = indicators.History(history.price, np.array([100.0, 200.0, 2.0**53]), history.price_change_pct)
    variants = {"shared": (history, keys), "shorter": (history, {c: v[1:] for c, v in keys.items()}),
                "another price": (history, {**keys, kernel.PRICE: np.array([10.0, 10.5, 11.25])}),
                # the float64 2**53 equals both 2**53 and 2**53 + 1 as numpy compares them
                "a huge volume": (huge, {**keys, kernel.VOLUME: np.array([100, 200, 2**53 + 1])}),
                "a huge negative one": (indicators.History(history.price, -huge.volume, history.price_change_pct),
                                        {**keys, kernel.VOLUME: np.array([-100, -200, -2**53 - 1])})}
    sizes = {}
    for name, (tail, recent) in variants.items():
        symbol_state = SymbolState(history=tail, last_ts=T0 + 2, high_water=T0 + 2, recent=recent)
        blob = pickle.dumps(symbol_state, protocol=pickle.HIGHEST_PROTOCOL)
        assert state_fields(pickle.loads(blob)) == state_fields(symbol_state), name
        sizes[name] = len(blob)
    others = (sizes["another price"], sizes["a huge volume"], sizes["a huge negative one"])
    assert min(others) >= sizes["shared"] + 3 * 8  # three more values


def test_every_symbol_has_one_bucket_in_range(spark):
    from pyspark.sql import functions as F

    symbols = [f"S{i}" for i in range(500)] + [""]
    rows = spark.createDataFrame([(s,) for s in symbols], "symbol string").select(
        "symbol", state.bucket_of(F.col("symbol"), 7)).collect()
    buckets = {r.symbol: r.bucket for r in rows}
    assert set(buckets.values()) == set(range(7))
    again = spark.createDataFrame([("S1",)], "symbol string").select(state.bucket_of(F.col("symbol"), 7)).first()
    assert again.bucket == buckets["S1"]
    keyed = spark.createDataFrame([(s,) for s in symbols], "symbol string").select(
        "symbol", state.bucket_of(F.col("symbol"), 7, 3)).collect()
    assert {r.symbol: r.bucket for r in keyed} == {s: state.bucket_keys(7, 3)[b] for s, b in buckets.items()}


def test_bucket_keys_spread_the_buckets_evenly_over_sparks_shuffle_partitions(spark):
    from pyspark.sql import functions as F

    # spark_partition_of is Spark's own hash partitioning (a stateful operator's, as repartition's)
    ints = spark.range(2000).select(F.col("id").cast("int").alias("k"))
    for partitions in (2, 5, 48):
        placed = ints.repartition(partitions, "k").select("k", F.spark_partition_id().alias("p")).collect()
        assert {r.k: r.p for r in placed} == {k: state.spark_partition_of(k, partitions) for k in range(2000)}
    for buckets, partitions in ((32, 2), (256, 48), (7, 3), (3, 8), (1, 1)):
        keys = state.bucket_keys(buckets, partitions)
        assert len(set(keys)) == buckets and min(keys) >= 0
        assert [state.spark_partition_of(k, partitions) for k in keys] == [b % partitions for b in range(buckets)]
    # what they mend: the buckets' own numbers fall unevenly (the stateful stage waits for its fullest partition)
    assert sorted(sum(state.spark_partition_of(b, 2) == p for b in range(32)) for p in range(2)) == [12, 20]


@pytest.mark.parametrize(("text", "says"), [
    ("org.apache.spark.SparkException: ... [STATE_STORE_KEY_SCHEMA_NOT_COMPATIBLE] Provided key schema does not "
     "match existing state key schema.\nExisting key_schema=StructType(StructField(symbol,StringType,false))",
     "earlier version of marketsignals"),
    ("[PYTHON_EXCEPTION] An exception was thrown from the Python worker.\nTraceback (most recent call last):\n"
     '  File "state.py", line 9, in load_bucket\nmarketsignals.stream.state.StateFormatError: the checkpoint\'s '
     "state was written with stream.state_buckets=8, not 16: set it back, or start from a new checkpoint",
     "written with stream.state_buckets=8, not 16: set it back"),
    ("[KAFKA_DATA_LOSS] Some data may have been lost", None),
])
def test_a_checkpoint_this_version_cannot_read_is_named_not_restarted(text, says):
    from marketsignals.stream.job import _incompatible_state

    found = _incompatible_state(text)
    assert (found is None) if says is None else (says in found)


def test_reading_state_on_a_spark_without_its_data_source_says_so(spark):
    """Spark 3.5 (emr-7.x) has no state data source: a clear error, not a ClassNotFoundException."""
    assert state.has_state_reader(spark) == spark.version.startswith("4.")

    class Spark35:
        version = "3.5.6"

    with pytest.raises(state.StateReaderUnavailable, match=r"Spark 4.0's state data source .* Spark 3\.5\.6"):
        state.read_symbol_states(Spark35(), "/cp", 4)
