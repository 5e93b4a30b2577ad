"""Parse and validate raw tick JSON (SPEC §1) as pure Spark Column logic.

A tick's fields are judged as text, so a missing field, a wrong JSON type and an out-of-range value
get different reasons. The first rule a tick breaks names its ``reason``; a valid tick has a null
reason. Nothing here reads a clock: "now" (for the future-skew rule) is a Column the caller passes.

Most ticks are well formed, and for them the text is not needed: each tick is first parsed with its
numbers typed (``FAST_TICK_SCHEMA``), and only a tick that parse does not take whole (a field that
fails to convert or is missing, NaN or an infinity) is parsed again as text and judged field by
field. Both give a tick the same columns and reason (tests/unit/test_validation.py compares them on
some 2,000 spoiled ticks). The typed parse spares the JVM rendering each number back to text and
matching it against a regular expression (bench/ROUNDS.md, twenty-second round).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from marketsignals.schema import (
    ASK,
    BID,
    CURRENCY,
    EVENT_TIME,
    EXCHANGE,
    FAST_TICK_SCHEMA,
    PRICE,
    RAW_TICK_SCHEMA,
    REASON,
    SYMBOL,
    TICK_FIELDS,
    TIMESTAMP,
    TS_MS,
    UNPARSED,
    VOLUME,
    Reason,
)

# The patterns end in \z, the end of the text: Java's $ also matches before a final line break, so with
# it "AAPL\n" was a valid symbol (and "USD\n" a currency, "10.5\n" a price; the casts trim the break).
_NUMBER = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?\z"
# from_json renders JSON NaN / Infinity / 1e400 into a string field as "NaN" / "Infinity" (with quotes)
_SPECIAL_DOUBLE = r'^"?(NaN|[+-]?Infinity|[+-]?INF)"?\z'
_INTEGER = r"^-?[0-9]+\z"
_SYMBOL = r"^[A-Z0-9._:-]{1,32}\z"
_CURRENCY = r"^[A-Za-z]{3}\z"
# ISO-8601 with an explicit zone (Z or +hh:mm / +hhmm); the date-time part is checked by the cast.
_ISO_WITH_ZONE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})\z"

PARSED = "_tick"  # the fields as text (null for a tick the typed parse took whole)
FAST = "_fast"  # the typed parse
FAST_OK = "_fast_ok"  # the typed parse took the tick whole: its columns are the tick's
_NUMBERS = (PRICE, BID, ASK)
_MIN_TS_MS, _MAX_TS_MS = -62_135_596_800_000, 253_402_300_799_999  # 0001-01-01 .. 9999-12-31T23:59:59.999Z


def _text(name: str) -> Column:
    return F.col(f"{PARSED}.{name}")


def _taken(name: str, from_text: Column) -> Column:
    """Field ``name`` from whichever parse the tick took: the typed parse's, or ``from_text`` (what the
    text rules make of the field's text)."""
    return F.when(F.col(FAST_OK), F.col(f"{FAST}.{name}")).otherwise(from_text)


def _field(name: str) -> Column:
    """A text field (symbol, timestamp, exchange, currency) from whichever parse the tick took."""
    return _taken(name, _text(name))


def _try_cast(value: Column, to: str) -> Column:
    """``value`` cast to ``to``, null where it does not convert (an integer out of a long's range): under
    Spark 4.0's ANSI mode, on by default, a plain cast would fail the batch instead. Spark 3.5 (emr-7.x)
    has no ``Column.try_cast``; its plain cast gives that null with ANSI mode off, its default."""
    return value.try_cast(to) if hasattr(Column, "try_cast") else value.cast(to)  # (an instance makes up any attribute)


def _as_double(name: str) -> Column:
    text = _text(name)
    return _taken(name, F.when(text.rlike(_NUMBER), _try_cast(text, "double")).when(
        text.rlike(_SPECIAL_DOUBLE), _try_cast(F.regexp_replace(text, '"', ""), "double")))


def _fast_ok(fast: Column) -> Column:
    """The typed parse took the tick whole: no field failed to convert (Spark then names the record in
    UNPARSED and keeps what did convert), every field is there and no number is NaN or infinite.
    JSON's number grammar is _NUMBER's and a JSON integer within a long is _INTEGER's, so for such a
    tick the text rules would accept every number, with the same value (Jackson parses the token; the
    text path parses Jackson's rendering of it back)."""
    ok = fast[UNPARSED].isNull()
    for name in TICK_FIELDS:
        ok = ok & fast[name].isNotNull()
    for name in _NUMBERS:
        ok = ok & ~F.isnan(fast[name]) & (F.abs(fast[name]) < float("inf"))
    return F.coalesce(ok, F.lit(False))


def _not_inlined(value: Column) -> Column:
    """``value``, in a projection Spark does not inline into later ones. Spark pushes a filter (a user's
    ``filter(reason IS NULL)``, the backtest's) down through deterministic projections, writing each
    column it passes as the expression that made it. Every column reads the typed-parse flag, and the
    flag reads a dozen fields of the typed parse: written out, a filter on the reason became a 1 MB
    plan and took 2 s to run on ten rows, against 18 KB before. ``spark_partition_id()`` is
    nondeterministic, so the filter stops above the flag's projection: 27 KB (bench/ROUNDS.md,
    twenty-second round). The condition always holds: the value is unchanged."""
    return F.when(F.spark_partition_id() >= 0, value)


def parse_ticks(df: DataFrame, value_col: str = "value", *, typed_first: bool = True) -> DataFrame:
    """Add the tick's typed columns (symbol upper-cased, ``ts_ms``, ``event_time``, price, volume,
    bid, ask, exchange, currency) parsed from the JSON text in ``value_col``, plus the parses for
    :func:`with_reject_reason`. Unknown extra JSON fields are ignored. ``typed_first=False`` judges
    every tick as text (the reference the tests hold the typed parse to)."""
    text = F.col(value_col).cast("string")
    if typed_first:
        fast = F.from_json(text, FAST_TICK_SCHEMA, {"columnNameOfCorruptRecord": UNPARSED, "mode": "PERMISSIVE"})
        df = df.withColumn(FAST, fast).withColumn(FAST_OK, _not_inlined(_fast_ok(F.col(FAST))))
    else:
        df = df.withColumn(FAST, F.lit(None).cast(FAST_TICK_SCHEMA)).withColumn(FAST_OK, F.lit(False))
    # the text parse runs only for the ticks the typed parse did not take
    df = df.withColumn(PARSED, F.when(~F.col(FAST_OK), F.from_json(text, RAW_TICK_SCHEMA)))
    ts_text = _field(TIMESTAMP)
    iso_ms = F.unix_millis(F.try_to_timestamp(F.replace(ts_text, F.lit(" "), F.lit("T"))))
    # an ISO stamp has a colon (hh:mm) and an integer none: one regular expression a stamp, not two
    ts_ms = F.when(ts_text.contains(":"), F.when(ts_text.rlike(_ISO_WITH_ZONE), iso_ms)).when(
        ts_text.rlike(_INTEGER), _try_cast(ts_text, "long")
    )
    # outside Spark's timestamp range (years 1-9999) a stamp is invalid, not a crash: under ANSI mode
    # timestamp_millis(9223372036854775807) overflows and would fail the whole batch
    ts_ms = F.when(ts_ms.between(_MIN_TS_MS, _MAX_TS_MS), ts_ms)
    volume_text = _text(VOLUME)
    return (
        df.withColumn(SYMBOL, F.upper(F.trim(_field(SYMBOL))))
        .withColumn(TS_MS, ts_ms)
        .withColumn(EVENT_TIME, F.timestamp_millis(F.col(TS_MS)))
        .withColumn(PRICE, _as_double(PRICE))
        .withColumn(VOLUME, _taken(VOLUME, F.when(volume_text.rlike(_INTEGER), _try_cast(volume_text, "long"))))
        .withColumn(BID, _as_double(BID))
        .withColumn(ASK, _as_double(ASK))
        .withColumn(EXCHANGE, F.trim(_field(EXCHANGE)))
        .withColumn(CURRENCY, F.upper(_field(CURRENCY)))
    )


MAX_RAW_CHARS = 65_536
TRUNCATED_MARK = "...[truncated: the whole value stays at its topic, partition and offset]"


def raw_text(value: Column) -> Column:
    """A Kafka value as text for a dead letter. Bytes that are not UTF-8 would break the Arrow transfer
    to the Python workers (and JSON), so they are kept as ``base64:<base64 of the bytes>``, losslessly.
    A value longer than MAX_RAW_CHARS is cut there and marked: JSON escaping can grow text sixfold,
    and a dead letter must fit Kafka's 1 MB request limit (the source record keeps the whole value).
    Spark 3.5 (emr-7.x) has no ``is_valid_utf8``: there the bytes are UTF-8 if decoding them (which puts
    U+FFFD for what is not) and encoding the text again gives them back."""
    text, binary = value.cast("string"), value.cast("binary")
    if hasattr(F, "is_valid_utf8"):
        utf8 = F.is_valid_utf8(text)
    else:
        utf8 = F.encode(F.decode(binary, "UTF-8"), "UTF-8") == binary
    text = F.when(utf8, text).otherwise(F.concat(F.lit("base64:"), F.base64(binary)))
    return F.when(F.length(text) > MAX_RAW_CHARS,
                  F.concat(F.substring(text, 1, MAX_RAW_CHARS), F.lit(TRUNCATED_MARK))).otherwise(text)


def _finite_positive(name: str) -> Column:
    c = F.col(name)
    return (c > 0) & ~F.isnan(c) & (c < float("inf"))


def reject_reason(now_ms: Column, max_future_skew_ms: int, value_col: str = "value") -> Column:
    """The first SPEC §1 rule the parsed tick breaks (a :class:`Reason`), or null if it is valid.

    ``now_ms`` is processing time in epoch milliseconds: a tick stamped more than
    ``max_future_skew_ms`` ahead of it is rejected before it can move the watermark.
    """
    fields_all_null = F.coalesce(*[_text(f) for f in TICK_FIELDS]).isNull()
    # from_json gives all-null fields both for non-JSON and for "{}": a second, lazily evaluated
    # parse (CASE WHEN only evaluates it for those rows) tells them apart.
    is_object = F.from_json(F.col(value_col).cast("string"), "map<string,string>").isNotNull()
    missing = F.coalesce(*[F.when(_text(f).isNull(), F.lit(True)) for f in TICK_FIELDS], F.lit(False))
    wrong_type = (
        (_text(PRICE).isNotNull() & F.col(PRICE).isNull())
        | (_text(BID).isNotNull() & F.col(BID).isNull())
        | (_text(ASK).isNotNull() & F.col(ASK).isNull())
        | (_text(VOLUME).isNotNull() & F.col(VOLUME).isNull())
    )
    # the JSON's shape, judged only on the text parse: a tick the typed parse took whole has every field
    shape = (
        F.when(F.col(PARSED).isNull(), F.lit(Reason.NOT_JSON))
        .when(fields_all_null & ~is_object, F.lit(Reason.NOT_JSON))
        .when(missing, F.lit(Reason.MISSING_FIELD))
        .when(wrong_type, F.lit(Reason.WRONG_TYPE))
    )
    symbol, currency = F.col(SYMBOL), F.col(CURRENCY)
    values = (
        F.when(~symbol.rlike(_SYMBOL), F.lit(Reason.INVALID_SYMBOL))
        .when(F.col(TS_MS).isNull(), F.lit(Reason.INVALID_TIMESTAMP))
        .when(F.col(TS_MS) > now_ms + F.lit(max_future_skew_ms), F.lit(Reason.FUTURE_TIMESTAMP))
        .when(~_finite_positive(PRICE), F.lit(Reason.INVALID_PRICE))
        .when(F.col(VOLUME) < 0, F.lit(Reason.INVALID_VOLUME))
        .when(~_finite_positive(BID) | ~_finite_positive(ASK), F.lit(Reason.INVALID_QUOTE))
        .when(F.col(BID) > F.col(ASK), F.lit(Reason.CROSSED_QUOTE))
        .when(F.length(F.col(EXCHANGE)) == 0, F.lit(Reason.INVALID_EXCHANGE))
        .when(~currency.rlike(_CURRENCY), F.lit(Reason.INVALID_CURRENCY))
    )
    return F.coalesce(F.when(~F.col(FAST_OK), shape), values)


def with_reject_reason(df: DataFrame, now_ms: Column, max_future_skew_ms: int,
                       value_col: str = "value") -> DataFrame:
    """:func:`parse_ticks` output plus a ``reason`` column (null for a valid tick); drops the parses."""
    return df.withColumn(REASON, reject_reason(now_ms, max_future_skew_ms, value_col)).drop(PARSED, FAST, FAST_OK)


def validate_typed_ticks(df: DataFrame, now_ms: Column, max_future_skew_ms: int) -> DataFrame:
    """The same rules for ticks that are already columns (a parquet/CSV history for the backtest):
    the columns are rendered to JSON text and go through exactly the live path, so live and
    backtest cannot disagree on what a valid tick is."""
    ts = F.col(TIMESTAMP)
    if dict(df.dtypes).get(TIMESTAMP) in ("timestamp", "timestamp_ntz"):
        ts = F.date_format(ts, "yyyy-MM-dd'T'HH:mm:ss.SSSXXX")
    fields = [(ts if f == TIMESTAMP else F.col(f)).alias(f) for f in TICK_FIELDS if f in df.columns]
    others = [c for c in df.columns if c not in TICK_FIELDS]
    as_json = F.to_json(F.struct(*fields)).alias("value")
    return with_reject_reason(parse_ticks(df.select(*others, as_json)), now_ms, max_future_skew_ms)
