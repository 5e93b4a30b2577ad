import base64

import pytest
from chispa import assert_column_equality
from pyspark.sql import functions as F

from marketsignals.session import conf_while
from marketsignals.validation import parse_ticks, raw_text, validate_typed_ticks, with_reject_reason

NOW = 1_767_312_000_000  # 2026-01-02T00:00:00Z
GOOD = ('{"symbol":"aapl","timestamp":"2026-01-02T00:00:00.000Z","price":10.5,"volume":100,'
        '"bid":10.4,"ask":10.6,"exchange":"XNAS","currency":"USD","extra":{"x":1}}')


def _tick(**changes) -> str:
    import json

    tick = json.loads(GOOD)
    for key, value in changes.items():
        if value is ...:
            del tick[key]
        else:
            tick[key] = value
    return json.dumps(tick)


CASES = [
    (GOOD, None),
    (_tick(timestamp=NOW - 1000), None),  # epoch millis
    (_tick(timestamp="2026-01-02T01:00:00+01:00"), None),  # offset zone
    ("not json at all", "not_json"),
    ("[1, 2, 3]", "not_json"),
    ("", "not_json"),
    ("{}", "missing_field"),
    (_tick(price=...), "missing_field"),
    (_tick(currency=None), "missing_field"),
    (_tick(price="N/A"), "wrong_type"),
    (_tick(volume=[1]), "wrong_type"),
    (_tick(bid=True), "wrong_type"),
    (_tick(volume=1.5), "wrong_type"),
    (_tick(symbol="BAD SYMBOL!"), "invalid_symbol"),
    (_tick(symbol="X" * 33), "invalid_symbol"),
    (_tick(timestamp="yesterday"), "invalid_timestamp"),
    (_tick(timestamp="2026-01-02T00:00:00"), "invalid_timestamp"),  # no zone
    (_tick(timestamp="2026-01-02 00:00:00.000Z"), None),  # a space for the T
    (_tick(timestamp="2026-01-02  00:00:00Z"), "invalid_timestamp"),
    (_tick(timestamp="12:30"), "invalid_timestamp"),  # a colon: judged as ISO only
    (_tick(timestamp=2**63 - 1), "invalid_timestamp"),  # a long, but beyond year 9999 (no ANSI overflow)
    (_tick(timestamp=-(2**63)), "invalid_timestamp"),
    (_tick(timestamp=10**30), "invalid_timestamp"),  # not even a long
    (_tick(timestamp=NOW + 6000), "future_timestamp"),
    (_tick(timestamp=NOW + 4000), None),  # within the 5 s skew
    (_tick(price=0), "invalid_price"),
    (_tick(price=-3.0), "invalid_price"),
    ('{"symbol":"A","timestamp":1,"price":NaN,"volume":1,"bid":1,"ask":2,"exchange":"X","currency":"USD"}',
     "invalid_price"),
    (_tick(price=1e400), "invalid_price"),
    (_tick(volume=-1), "invalid_volume"),
    (_tick(volume=0), None),
    (_tick(bid=0), "invalid_quote"),
    (_tick(bid=10.7), "crossed_quote"),
    (_tick(bid=10.6), None),  # bid == ask is allowed
    (_tick(exchange=" "), "invalid_exchange"),
    (_tick(currency="US"), "invalid_currency"),
    (_tick(price="10.5"), None),  # a quoted number is a number
    (_tick(volume="100"), None),
    (_tick(timestamp=str(NOW - 1000)), None),
    (_tick(price=10), None),
    (_tick(volume=10**20), "wrong_type"),  # beyond a long
    (_tick(price="Infinity"), "invalid_price"),
    (_tick(bid="1e400", ask=1e400), "invalid_quote"),
    # a line break at the end is no part of the field: Java's `$` would match before it (`\z` does not)
    (_tick(symbol="aapl\n"), "invalid_symbol"),
    (_tick(symbol="AAPL\r\n"), "invalid_symbol"),
    (_tick(currency="USD\n"), "invalid_currency"),
    (_tick(timestamp="2026-01-02T00:00:00.000Z\n"), "invalid_timestamp"),
    (_tick(timestamp=f"{NOW - 1000}\u2028"), "invalid_timestamp"),
    (_tick(price="10.5\n"), "wrong_type"),
    (_tick(volume="100\n"), "wrong_type"),
]


@pytest.fixture(scope="module")
def checked(spark):
    df = spark.createDataFrame([(v, r) for v, r in CASES], "value string, expected string")
    return with_reject_reason(parse_ticks(df), F.lit(NOW), 5000)


def test_each_rule_gives_its_reason(checked):
    assert_column_equality(checked, "reason", "expected")


def test_valid_ticks_are_typed_and_symbols_upper_cased(checked):
    row = checked.filter(F.col("value") == GOOD).first()
    assert row.symbol == "AAPL" and row.ts_ms == NOW and row.price == 10.5 and row.volume == 100
    assert str(row.event_time) == "2026-01-02 00:00:00"


def test_typed_history_goes_through_the_same_rules(spark):
    import datetime as dt

    ts = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    rows = [("AAPL", ts, 10.0, 5, 9.9, 10.1, "XNAS", "USD", None),
            ("AAPL", ts, 10.0, 5, 10.2, 10.1, "XNAS", "USD", "crossed_quote"),
            ("AAPL", ts, -1.0, 5, 9.9, 10.1, "XNAS", "USD", "invalid_price"),
            ("AAPL", None, 10.0, 5, 9.9, 10.1, "XNAS", "USD", "missing_field")]
    df = spark.createDataFrame(rows, "symbol string, timestamp timestamp, price double, volume long, bid double, "
                                     "ask double, exchange string, currency string, expected string")
    out = validate_typed_ticks(df, F.lit(NOW), 5000)
    assert_column_equality(out, "reason", "expected")


# --- the typed first parse against the text rules -------------------------------------------------------
# Values that a typed parse and a text parse could disagree on: JSON numbers in every form, numbers as
# strings, the names Spark gives NaN and infinity, other JSON types, and text that is not JSON.
ODD_VALUES = [
    "10", "10.0", "1.05e1", "1.05E+1", "1050e-2", "-0.0", "0", "-0", "5e-324", "1e-400", "1e400", "-1e400",
    "2e23", "9007199254740993", "123456789012345678901234567890", "9223372036854775807", "9223372036854775808",
    "-9223372036854775809", "1.5", "01", "1.", ".5", "+1", "0x10", "NaN", "Infinity", "-Infinity", "+INF",
    '"10.5"', '" 10.5"', '"1e5"', '"0x10"', '"01"', '"NaN"', '"+NaN"', '"-NaN"', '"Infinity"', '"-INF"',
    '"1.5d"', '"100"', '"-5"', '""', '" "', "true", "false", "null", "[]", "[1]", "{}", '{"a":1}',
    '"AAPL"', '"aapl "', '"2026-01-02T00:00:00Z"', "1767312000000", '"1767312000000"', '"XNAS"', '"usd"',
    '"AAPL\\n"', '"10.5\\n"', '"NaN\\n"', '"2026-01-02T00:00:00Z\\n"', '"usd\\r\\n"',
]


def _odd_ticks() -> list[str]:
    import json
    import random

    good = json.loads(GOOD)
    fields = list(good)
    values = [v for v, _ in CASES]
    for name in fields:  # each odd value in each field, written as JSON text, not through json.dumps
        for odd in ODD_VALUES:
            values.append("{" + ",".join(f'"{k}":{odd if k == name else json.dumps(v)}' for k, v in good.items()) + "}")
        values.append(_tick(**{name: ...}))
    # a key twice: the last one counts, in both parses
    values += [GOOD[:-1] + ',"price":"x"}', GOOD[:-1] + ',"volume":1.5}', '{"price":"x",' + GOOD[1:],
               '{"price":1e400,' + GOOD[1:], GOOD[:-1] + ',"price":NaN}', GOOD[:-1] + ',"currency":null}']
    rng = random.Random(7)
    for _ in range(1500):  # ticks with one to three fields spoiled, some cut short
        parts = {k: json.dumps(v) for k, v in good.items()}
        for k in rng.sample(fields, rng.randint(1, 3)):
            if rng.random() < 0.15:
                del parts[k]
            else:
                parts[k] = rng.choice(ODD_VALUES)
        text = "{" + ",".join(f'"{k}":{v}' for k, v in parts.items()) + "}"
        values.append(text[:rng.randint(0, len(text))] if rng.random() < 0.05 else text)
    values += ["", "not json", "[1,2]", "null", '"a string"', "{", '{"symbol":"AAPL"']
    return values


def test_the_typed_parse_gives_every_tick_the_text_rules_columns_and_reason(spark):
    import math

    values = _odd_ticks()
    df = spark.createDataFrame(list(enumerate(values)), "id long, value string")
    columns = ["id", "symbol", "ts_ms", "event_time", "price", "volume", "bid", "ask", "exchange", "currency",
               "reason"]

    def judged(typed_first: bool) -> list[tuple]:
        out = with_reject_reason(parse_ticks(df, typed_first=typed_first), F.lit(NOW), 5000)
        return [tuple(r) for r in out.select(*columns).orderBy("id").collect()]

    def same(a, b) -> bool:
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))

    fast = parse_ticks(df).filter("_fast_ok").count()
    assert 500 < fast < len(values) - 500, fast  # both parses have work to do
    typed, text = judged(True), judged(False)
    assert len(typed) == len(text) == len(values)
    differ = [(values[t[0]], t, x) for t, x in zip(typed, text, strict=True)
              if not all(same(a, b) for a, b in zip(t, x, strict=True))]
    assert not differ, differ[:5]
    # the corpus reaches both parses: valid ticks, and each reason the text parse alone gives
    reasons = {row[-1] for row in text}
    assert None in reasons and {"not_json", "missing_field", "wrong_type", "invalid_price"} <= reasons


def test_a_filter_on_the_reason_keeps_a_plan_of_the_text_rules_size(spark):
    # Spark pushes a filter down through the projections, writing out every column it passes; with
    # the typed-parse flag written out into each column that was a 1 MB plan (bench/ROUNDS.md)
    df = spark.createDataFrame([(v,) for v, _ in CASES[:10]], "value string")

    def plan_chars(typed_first: bool) -> int:
        checked = with_reject_reason(parse_ticks(df, typed_first=typed_first), F.lit(NOW), 5000)
        valid = checked.filter(F.col("reason").isNull())
        assert valid.count() == 3
        return len(valid._jdf.queryExecution().optimizedPlan().toString())

    assert plan_chars(True) < 2 * plan_chars(False)


RAW_VALUES = [b"plain", "caf\u00e9 \u20ac \U0001f600".encode(), "\ufffd".encode(), b"", None,
              b"\xff\xfe", b"ok\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]


@pytest.mark.parametrize("utf8_check", ["spark", "decode_encode"])
def test_a_raw_value_is_its_text_when_utf8_and_base64_otherwise(spark, monkeypatch, utf8_check):
    # Spark 3.5 (emr-7.x) has no is_valid_utf8: the fallback must tell the same bytes apart, and never
    # hand Arrow bytes that are not UTF-8 (a 3.5 stream failed on them); both run here on Spark 4.0
    if utf8_check == "decode_encode":
        monkeypatch.delattr(F, "is_valid_utf8", raising=False)
    elif not hasattr(F, "is_valid_utf8"):
        pytest.skip("this Spark has no is_valid_utf8")
    df = spark.createDataFrame([(i, bytearray(v) if v is not None else None) for i, v in enumerate(RAW_VALUES)],
                               "i int, value binary")
    # Spark 4.0's decode fails on bytes that are not UTF-8; its legacy setting is 3.5's only behaviour
    with conf_while(spark, "spark.sql.legacy.codingErrorAction", "true"):
        got = {r["i"]: r["raw"] for r in df.select("i", raw_text(F.col("value")).alias("raw")).collect()}
    for i, value in enumerate(RAW_VALUES):
        if value is None:
            assert got[i] is None
            continue
        try:
            expected = value.decode("utf-8")  # Python's strict decoder: no surrogates, no overlong forms
        except UnicodeDecodeError:
            expected = "base64:" + base64.b64encode(value).decode()
        assert got[i] == expected, (value, got[i])
