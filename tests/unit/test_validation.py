import pytest
from chispa import assert_column_equality
from pyspark.sql import functions as F

from marketsignals.validation import parse_ticks, validate_typed_ticks, with_reject_reason

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
