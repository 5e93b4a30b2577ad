"""The applyInPandasWithState handler: Spark's state store around the per-symbol kernel.

Why this API: ``applyInPandasWithState`` runs on Spark 3.4+ (emr-7.x, Spark 3.5) and 4.0
(emr-spark-8.0.0), while ``transformWithStateInPandas`` exists only from 4.0 and, in Spark 4.0, pays
a larger per-call overhead in Python. Row-based windows (``lag``, ``rowsBetween``) are rejected on
streams, so the windows' history is kept by hand: at most HISTORY ticks per symbol, plus the ticks
waiting for the watermark in ``event_time`` mode.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming.state import GroupState

from marketsignals import kernel, layout, pyworker
from marketsignals.kernel import Columns, KernelConfig, SymbolState
from marketsignals.schema import EXCHANGE, RAW, REASON, SYMBOL, TOPIC
from marketsignals.stream.checkpoint import RECORD

# A Spark Python worker imports this module to run the handler: from then on its tasks no longer
# re-read every zip archive on its path, and its garbage collections skip what the imports made
# (pyworker; a no-op in the driver).
pyworker.prepare()

# Spark's per-group cost: applyInPandasWithState hands every group its own pandas frames, state row
# and GroupState, and turns every group's output into Arrow on its own -- at 10,000 symbols that
# plumbing was half of the Python workers' time (py-spy), the kernel a third. So the stateful key is
# a bucket of symbols (xxhash64 of the symbol modulo stream.state_buckets), not the symbol: a bucket's
# state holds its symbols' states and timers, and the handler makes the kernel's call for each symbol,
# with the same inputs and in the same batch as a per-symbol key would (see make_handler): all of a
# bucket's calls at once (kernel.process_bucket), their ticks and states as columns.
BUCKET = "bucket"


def bucket_of(symbol: Column, buckets: int, partitions: int | None = None) -> Column:
    """The stateful key of a symbol; the same in every batch and run. Without ``partitions``, its bucket
    (an int in [0, buckets)); with them, its bucket's key in :func:`bucket_keys`."""
    bucket = F.pmod(F.xxhash64(symbol), F.lit(buckets)).cast("int")
    if partitions:
        bucket = F.element_at(F.lit(list(bucket_keys(buckets, partitions))), bucket + 1)
    return bucket.alias(BUCKET)


# Spark's stateful operator puts a key in the shuffle partition pmod(Murmur3Hash(key, seed 42), partitions),
# and the stateful stage ends with its fullest partition. With the buckets' own numbers as keys that spread
# is uneven: 32 buckets over 2 partitions fall 12 and 20, 256 over 48 from 1 to 12 a partition (5.3 even).
# So a checkpoint started since the thirty-fourth round keys bucket b with an int that lands in partition
# b % partitions (bench/ROUNDS.md); its record keeps the partition count those keys were made for
# (stream/checkpoint.py), as the bucket count: the keys name the state, so they never change for it.
SPARK_HASH_SEED = 42


def spark_partition_of(key: int, partitions: int) -> int:
    """The shuffle partition Spark's hash partitioning gives an int key: Murmur3_x86_32.hashInt(key, 42),
    as a signed int, pmod ``partitions``."""
    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF

    k = rotl((key & 0xFFFFFFFF) * 0xCC9E2D51 & 0xFFFFFFFF, 15) * 0x1B873593 & 0xFFFFFFFF
    h = (rotl(SPARK_HASH_SEED ^ k, 13) * 5 + 0xE6546B64) & 0xFFFFFFFF
    h ^= 4  # the input's length in bytes
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return (h - (1 << 32) if h >= 1 << 31 else h) % partitions  # Python's % of a negative is pmod's


@functools.cache
def bucket_keys(buckets: int, partitions: int) -> tuple[int, ...]:
    """Each bucket's stateful key: bucket b's is the smallest non-negative int, not another bucket's, that
    Spark puts in shuffle partition b % partitions. Each partition then holds buckets // partitions or one
    more of them."""
    wanted = [len(range(p, buckets, partitions)) for p in range(partitions)]
    keys: list[list[int]] = [[] for _ in range(partitions)]
    short, key = sum(1 for n in wanted if n), 0
    while short:
        p = spark_partition_of(key, partitions)
        if len(keys[p]) < wanted[p]:
            keys[p].append(key)
            short -= len(keys[p]) == wanted[p]
        key += 1
    return tuple(keys[b % partitions][b // partitions] for b in range(buckets))


# The handler's input besides the key and the watermark marker: each tick's fields as columns, and its
# output is OUTPUT_SCHEMA's columns. (For a while both were JSON text, one per tick and one per output
# row: with the symbol as the key, Spark's Arrow-to-pandas work per column and group was most of the
# Python workers' time at 10,000 symbols. A batch now has at most stream.state_buckets groups, and the
# JVM's to_json and from_json on both sides of Python cost more than the columns; bench/ROUNDS.md, sixth round.)
TICK_COLUMNS: tuple[str, ...] = (SYMBOL, *kernel.TICK_DTYPES, EXCHANGE, TOPIC, REASON, RAW)


def by_symbol(frames: Iterator[pd.DataFrame]) -> tuple[list[str], Columns, np.ndarray]:
    """A bucket's ticks grouped by symbol as the kernel takes them: the symbols in the order they first
    come, their ticks as columns laid end to end (a symbol's in input order) and how many each has. A
    column holding a validation reject may come as float64 or object (Arrow gives a null int as NaN):
    the kernel types the valid ticks' columns once rejects are out. Without a validation reject in the
    bucket, the reason and raw columns are left out."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return [], _NO_TICKS, np.empty(0, dtype=np.int64)
    cols = {c: np.concatenate([f[c].to_numpy() for f in frames]) if len(frames) > 1 else frames[0][c].to_numpy()
            for c in TICK_COLUMNS}
    if pd.isna(cols[REASON]).all():  # no validation rejects: the kernel need not look for them per symbol
        del cols[REASON], cols[RAW]
    codes, symbols = pd.factorize(cols[SYMBOL])
    if len(symbols) > 1:
        order = np.argsort(codes, kind="stable")
        cols = {c: v[order] for c, v in cols.items()}
    return symbols.tolist(), cols, np.bincount(codes, minlength=len(symbols)).astype(np.int64)


_NO_TICKS: Columns = {c: np.empty(0, dtype=kernel.TICK_DTYPES.get(c, object)) for c in TICK_COLUMNS}


# A bucket's state, as one pickled blob: (buckets, StateTable), its symbols' states as columns. Spark
# only stores bytes, the kernel owns the layout. STATE_FORMAT is bumped when that changes shape; an
# older blob then stops the job with a message instead of being misread, and so does a blob written
# with another number of buckets (its symbols now hash elsewhere). Format 1 was keyed by symbol: Spark's
# own state schema check stops such a checkpoint before any blob is read. Formats 2 to 4 kept a
# {symbol: (timeout, pickled SymbolState)} dict: format 2 pickled the dataclass, 3 its own compact form
# (SymbolState.__reduce__), 4 that with the duplicate keys as columns rather than text. Format 5 is a
# table: no symbol's state is pickled on its own (at 10,000 symbols, ~300 a bucket and nearly all of
# them ticking every batch, that was a fifth of the handler's CPU); a bucket's states are a few numpy
# gathers and concatenations, and its quiet symbols are carried over by the same gathers, without
# being taken apart. Format 6 keeps the event-time buffer as columns too (format 5 kept each symbol's
# packed_pending tuple, unpacked and packed again for every call in event_time mode). Format 7 is
# format 6 with the shuffle partition count the buckets' keys were made for (bucket_keys; None: the
# buckets' own numbers) beside the bucket count, so a version that keys the state otherwise stops with a
# message instead of reading another bucket's state as this one's. This version reads formats 2 to 7
# (those before 7 keyed by the buckets' own numbers) and writes 7.
STATE_FORMAT = 7
READABLE_FORMATS = (2, 3, 4, 5, 6, 7)
STATE_SCHEMA = T.StructType([T.StructField("format", T.IntegerType()), T.StructField("blob", T.BinaryType())])


class StateFormatError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True, eq=False)
class StateTable:
    """A bucket's symbols, their timers and their states (kernel.States: columns, one row a symbol). The
    kernel takes the rows a batch calls as they are, and the rows a batch keeps are carried over by
    gathers (:meth:`take`); no symbol's state is an object of its own in between."""

    symbols: np.ndarray  # object: str
    timeouts: np.ndarray  # int64
    states: kernel.States

    @classmethod
    def of(cls, rows: list[tuple[str, int, SymbolState]]) -> StateTable:
        """The table of (symbol, timeout, state) rows."""
        return cls(layout.objects([symbol for symbol, _, _ in rows]),
                   np.array([timeout for _, timeout, _ in rows], dtype=np.int64),
                   kernel.States.of([s for _, _, s in rows]))

    def __len__(self) -> int:
        return len(self.symbols)

    def rows(self) -> Iterator[tuple[str, int, SymbolState]]:
        """Each row's (symbol, timeout, state), in order."""
        for row, (symbol, timeout) in enumerate(zip(self.symbols.tolist(), self.timeouts.tolist(), strict=True)):
            yield symbol, timeout, self.states.state(row)

    def take(self, rows: np.ndarray) -> StateTable:
        """The table of ``rows`` (indices, in that order)."""
        return StateTable(self.symbols[rows], self.timeouts[rows], self.states.take(rows))

    def __add__(self, other: StateTable) -> StateTable:
        """Both tables' rows, this one's first."""
        return StateTable(np.concatenate([self.symbols, other.symbols]),
                          np.concatenate([self.timeouts, other.timeouts]), self.states + other.states)

    def __reduce__(self):
        # The numbers as one bytes string, the text as lists; the keys' exchanges (a bucket's few, ~15,000
        # keys at 300 symbols) as each one's number in the list of them, a byte each (a null exchange,
        # which validation rejects, keeps them a list).
        # The keys' prices and volumes are the history's own when every row keeps the same last ticks in
        # both, as format 4 found symbol by symbol: then, checked bit for bit, they are pickled once (a
        # row's keys are then read from the history's column at the keys' own offsets).
        s = self.states
        ts, exchange, price, volume = s.recent
        codes, exchanges = pd.factorize(exchange)
        if len(codes) and codes.min() < 0:
            code_dtype, codes, exchanges = None, b"", exchange
        else:
            codes = codes.astype(np.min_scalar_type(len(exchanges)))
            code_dtype, codes = codes.dtype.str, codes.tobytes()
        shared = kernel.shared_keys(price, volume, *s.history[:2])  # the columns end to end: no row apart
        # the waiting ticks' 8-byte columns with the other numbers, their int32 partitions after all those
        waiting = dict(zip(kernel._PENDING, s.pending, strict=True))
        numbers = [self.timeouts, s.history_len, s.recent_len, s.pending_len, *s.history,
                   *(waiting[c] for c in _WAITING_NUMBERS), *kernel.packed_keys(ts, price, volume, shared),
                   waiting[kernel.PARTITION]]
        return _state_table_6, (b"".join(a.tobytes() for a in numbers), len(self), len(ts), shared,
                                self.symbols.tolist(), s.last_ts.tolist(), s.high_water.tolist(),
                                s.last_action.tolist(), exchanges.tolist(), code_dtype, codes,
                                waiting[EXCHANGE].tolist(), waiting[TOPIC].tolist())


_WAITING_NUMBERS = tuple(c for c in kernel._PENDING if kernel._PENDING_DTYPES[c] in (np.int64, np.float64))


def _state_table_6(numbers: bytes, rows: int, keys: int, shared: int, symbols: list, last_ts: list,
                   high_water: list, last_action: list, exchanges: list, code_dtype: str | None, codes: bytes,
                   waiting_exchange: list, waiting_topic: list) -> StateTable:
    """A StateTable from its pickled form (StateTable.__reduce__); its numeric columns are read-only."""
    ints, floats = np.frombuffer(numbers, dtype=np.int64, count=len(numbers) // 8), np.frombuffer(
        numbers, dtype=np.float64, count=len(numbers) // 8)
    timeouts, history_len, recent_len, pending_len = (ints[k * rows:(k + 1) * rows] for k in range(4))
    n, at = int(history_len.sum()), 4 * rows
    history = tuple(floats[at + k * n:at + (k + 1) * n] for k in range(3))
    at, w = at + 3 * n, len(waiting_topic)
    waiting = {c: (ints if kernel._PENDING_DTYPES[c] == np.int64 else floats)[at + k * w:at + (k + 1) * w]
               for k, c in enumerate(_WAITING_NUMBERS)}
    at += len(_WAITING_NUMBERS) * w
    keys_at = len(numbers) - 4 * w  # the partitions' bytes
    ts, price, volume = kernel.unpacked_keys(ints[at:keys_at // 8], keys, shared, *history[:2])
    waiting.update({kernel.PARTITION: np.frombuffer(numbers, dtype=np.int32, offset=keys_at),
                    EXCHANGE: layout.objects(waiting_exchange), TOPIC: layout.objects(waiting_topic)})
    exchange = _key_exchanges(exchanges, code_dtype, codes)
    states = kernel.States(layout.objects(last_ts), layout.objects(high_water), layout.objects(last_action),
                           history_len, history, recent_len, (ts, exchange, price, volume), pending_len,
                           tuple(waiting[c] for c in kernel._PENDING))
    return StateTable(layout.objects(symbols), timeouts, states)


def _key_exchanges(exchanges: list, code_dtype: str | None, codes: bytes) -> np.ndarray:
    """The duplicate keys' exchanges from their pickled form: each one's code in the list of them, or the
    list itself (no codes: a null exchange among them)."""
    exchange = layout.objects(exchanges)
    return exchange if code_dtype is None else exchange[np.frombuffer(codes, dtype=code_dtype)]


def _state_table(numbers: bytes, rows: int, keys: int, shared: int, symbols: list, last_ts: list, high_water: list,
                 last_action: list, pending: list, exchanges: list, code_dtype: str | None, codes: bytes) -> StateTable:
    """A format 5 StateTable's pickled form read: as format 6's, but each row's event-time buffer in
    kernel.packed_pending's form (None for none)."""
    ints, floats = np.frombuffer(numbers, dtype=np.int64), np.frombuffer(numbers, dtype=np.float64)
    timeouts, history_len, recent_len = ints[:rows], ints[rows:2 * rows], ints[2 * rows:3 * rows]
    n, at = int(history_len.sum()), 3 * rows
    history = tuple(floats[at + k * n:at + (k + 1) * n] for k in range(3))
    ts, price, volume = kernel.unpacked_keys(ints[at + 3 * n:], keys, shared, *history[:2])
    exchange = _key_exchanges(exchanges, code_dtype, codes)
    waiting = kernel.States.of([kernel.SymbolState(pending=kernel.unpacked_pending(p)) for p in pending])
    states = kernel.States(layout.objects(last_ts), layout.objects(high_water), layout.objects(last_action),
                           history_len, history, recent_len, (ts, exchange, price, volume), waiting.pending_len,
                           waiting.pending)
    return StateTable(layout.objects(symbols), timeouts, states)


_EMPTY = StateTable.of([])


def load_bucket(state: GroupState, buckets: int, key_partitions: int | None = None) -> StateTable:
    """The bucket's table; its state must have been written with ``buckets`` buckets keyed for
    ``key_partitions`` (bucket_of), else StateFormatError says what to do."""
    if not state.exists:
        return _EMPTY
    table, keyed_for = _read_bucket(*state.get, buckets)
    if keyed_for != key_partitions:
        raise StateFormatError(f"the checkpoint's state is keyed {_keyed(keyed_for)}, this query's "
                               f"{_keyed(key_partitions)}: restore the checkpoint's {RECORD} (its state "
                               f"layout), or start from a new checkpoint (stream.checkpoint)")
    return table


def _keyed(partitions: int | None) -> str:
    return "by bucket number" if partitions is None else f"for {partitions} shuffle partitions"


def _bucket(fmt: int, blob: bytes, buckets: int) -> StateTable:
    """A state row's table, however its bucket was keyed (for reading a checkpoint's every row)."""
    return _read_bucket(fmt, blob, buckets)[0]


def _read_bucket(fmt: int, blob: bytes, buckets: int) -> tuple[StateTable, int | None]:
    """A state row's table and the shuffle partition count its key was made for (None: its own number)."""
    if fmt not in READABLE_FORMATS:
        readable = f"{', '.join(map(str, READABLE_FORMATS[:-1]))} and {READABLE_FORMATS[-1]}"
        raise StateFormatError(f"the checkpoint holds symbol state format {fmt}, this version reads {readable}: "
                               "start from a new checkpoint (stream.checkpoint)")
    loaded = pickle.loads(blob)
    written, keyed_for, bucket = loaded if fmt >= 7 else (loaded[0], None, loaded[1])
    if written != buckets:
        raise StateFormatError(f"the checkpoint's state was written with stream.state_buckets={written}, not "
                               f"{buckets}: set it back, or start from a new checkpoint (stream.checkpoint)")
    if fmt < 5:  # {symbol: (timeout, pickled SymbolState)}
        bucket = StateTable.of([(symbol, timeout, pickle.loads(pickled))
                                for symbol, (timeout, pickled) in bucket.items()])
    return bucket, keyed_for


def make_handler(cfg: KernelConfig, buckets: int, key_partitions: int | None = None):
    """The function given to ``applyInPandasWithState`` (Append mode, EventTimeTimeout), keyed by
    bucket (``bucket_of(symbol, buckets, key_partitions)``). The kernel runs for each symbol with new
    ticks, and for each symbol whose own timer the watermark passed (Spark's rule: timeout < watermark)
    -- exactly the calls Spark would make with the symbol as the key. The bucket's timer is the earliest
    of its symbols' timers, so it fires whenever one of theirs would."""

    def handle(key: tuple, frames: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        watermark = max(state.getCurrentWatermarkMs(), 0)
        table = load_bucket(state, buckets, key_partitions)
        symbols, ticks, counts = by_symbol(frames)
        row_of = dict(zip(table.symbols.tolist(), range(len(table)), strict=True))
        ticking = set(symbols)
        symbols += [s for s in table.symbols[table.timeouts < watermark].tolist() if s not in ticking]  # timers due
        rows = np.array([row_of.get(symbol, -1) for symbol in symbols], dtype=np.int64)
        counts = np.concatenate([counts, np.zeros(len(symbols) - len(counts), dtype=np.int64)])
        output, after = kernel.process_bucket(symbols, ticks, counts, table.states.called(rows), cfg, watermark)
        timeouts, kept = _timeouts(after, watermark, cfg)
        kept = np.flatnonzero(kept)
        called = StateTable(layout.objects(symbols)[kept], timeouts[kept], after.take(kept))
        _save(_next_table(table, rows, kept, called), buckets, key_partitions, state)
        yield output

    return handle


def _next_table(table: StateTable, rows: np.ndarray, kept: np.ndarray, called: StateTable) -> StateTable:
    """The bucket's table after a batch: its rows in their order, a called one (``rows``: each call's
    row, -1 for a symbol new to the bucket) replaced by its symbol's new state or gone (no state kept:
    not in ``kept``, the calls whose rows ``called`` holds), then the new symbols' rows, in call order."""
    n = len(table)
    new_row = np.full(len(rows), -1, dtype=np.int64)
    new_row[kept] = n + np.arange(len(kept))
    order = np.arange(n)
    known = rows >= 0
    order[rows[known]] = new_row[known]
    order = np.concatenate([order[order >= 0], new_row[~known & (new_row >= 0)]])
    return (table + called if len(called) else table).take(order)


def _timeouts(after: kernel.States, watermark: int, cfg: KernelConfig) -> tuple[np.ndarray, np.ndarray]:
    """When each symbol's timer fires, and whether to keep its state at all."""
    # idle eviction: once the watermark is past the symbol's newest tick + the idle timeout,
    # the next tick starts a new series anyway (the kernel resets on such a gap); no state at all
    # for a symbol that never had a valid tick (e.g. only rejected input)
    seen = ~np.equal(after.high_water, None)
    timeouts = np.where(seen, after.high_water, 0).astype(np.int64) + cfg.idle_timeout_ms
    kept = seen & (timeouts > watermark)
    # wake up when the watermark passes the oldest waiting tick (Spark fires once timeout < watermark, the
    # kernel's release rule; the kernel released every tick before the watermark, so the oldest waiting
    # one is at or after it -- a valid timeout). None wait in arrival mode.
    rows, oldest = after.waiting()
    timeouts[rows], kept[rows] = oldest, True
    return timeouts, kept


def _save(table: StateTable, buckets: int, key_partitions: int | None, state: GroupState) -> None:
    if not len(table):
        if state.exists:
            state.remove()
        return
    state.update((STATE_FORMAT, pickle.dumps((buckets, key_partitions, table), protocol=pickle.HIGHEST_PROTOCOL)))
    state.setTimeoutTimestamp(int(table.timeouts.min()))


class StateReaderUnavailable(RuntimeError):
    """This Spark cannot read a checkpoint's state (no state data source before Spark 4.0)."""


def has_state_reader(spark: SparkSession) -> bool:
    """Whether this Spark has the state data source (``format("statestore")``, Spark 4.0; not 3.5)."""
    return int(spark.version.split(".")[0]) >= 4


def read_symbol_states(spark: SparkSession, checkpoint: str, buckets: int,
                       batch_id: int | None = None) -> dict[str, SymbolState]:
    """Every symbol's state in a query's checkpoint, after its last committed batch or ``batch_id``
    (Spark's state data source; for inspection, e.g. which symbols are held and since when). That data
    source is Spark 4.0's: on Spark 3.5 (emr-7.x) this raises :class:`StateReaderUnavailable`."""
    if not has_state_reader(spark):
        raise StateReaderUnavailable(f"reading a checkpoint's state needs Spark 4.0's state data source "
                                     f"(format 'statestore'); this is Spark {spark.version}")
    reader = spark.read.format("statestore")
    if batch_id is not None:
        reader = reader.option("batchId", batch_id)
    rows = reader.load(checkpoint).select("value.groupState.format", "value.groupState.blob").collect()
    states: dict[str, SymbolState] = {}
    for fmt, blob in rows:
        states.update({symbol: s for symbol, _, s in _bucket(fmt, blob, buckets).rows()})
    return states
