"""(c) The afternoon alternative: one Python process, kafka-python + orjson, SPEC §2-3 per symbol,
incrementally, written plainly (it does not import the product's kernel).

    python -m bench.simple_consumer BOOTSTRAP TOPICS SIGNALS_TOPIC [--emission on_change|every]

Reads the topics from the beginning to the end offsets it sees at start, produces the signals to
SIGNALS_TOPIC and prints one JSON line: ticks, seconds, ticks/s, signals.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from collections import deque
from datetime import datetime

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

# SPEC §3 defaults (the product reads them from conf/; an afternoon script hard-codes them)
VOL_HIGH, VOL_LOW = 2.0, 0.5
LIQ_HIGH, LIQ_MEDIUM = 1_000_000, 100_000
PENALTY = {"low": 3.0, "medium": 1.0, "high": 0.0}


class Symbol:
    """One symbol's running windows."""

    def __init__(self) -> None:
        self.prices: deque[float] = deque(maxlen=50)
        self.pv: deque[float] = deque(maxlen=11)
        self.vols: deque[float] = deque(maxlen=11)
        self.pct: deque[float] = deque(maxlen=20)  # price_change_pct, None excluded below
        self.last_ts: int | None = None
        self.recent: deque[tuple] = deque(maxlen=49)
        self.last_action = "HOLD"


def parse_ts(value) -> int | None:
    if isinstance(value, int):
        return value
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except (AttributeError, ValueError):
        return None


def run(bootstrap: str, topics: list[str], signals_topic: str, emission: str) -> dict:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=8 * 2**20, fetch_max_bytes=64 * 2**20)
    parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    wanted = sum(end.values())
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    symbols: dict[str, Symbol] = {}
    ticks = signals = rejected = 0
    started = time.monotonic()
    while ticks + rejected < wanted:
        for records in consumer.poll(timeout_ms=1000, max_records=50_000).values():
            for msg in records:
                try:
                    t = orjson.loads(msg.value)
                    sym, price, volume = t["symbol"].upper(), float(t["price"]), int(t["volume"])
                    bid, ask, exchange = float(t["bid"]), float(t["ask"]), t["exchange"]
                    ts = parse_ts(t["timestamp"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                    rejected += 1
                    continue
                if ts is None or not (price > 0 and bid > 0 and ask > 0 and bid <= ask and volume >= 0):
                    rejected += 1
                    continue
                s = symbols.get(sym)
                if s is None:
                    s = symbols[sym] = Symbol()
                key = (ts, exchange, price, volume)
                if key in s.recent or (s.last_ts is not None and ts < s.last_ts):
                    rejected += 1  # duplicate or out of order
                    continue
                s.recent.append(key)
                s.last_ts = ts
                ticks += 1
                prev = s.prices[-1] if s.prices else None
                change = price - prev if prev is not None else None
                change_pct = change / prev * 100.0 if prev else None
                s.prices.append(price)
                s.pv.append(price * volume)
                s.vols.append(volume)
                s.pct.append(change_pct)
                vsum = sum(s.vols)
                vwap = sum(s.pv) / vsum if vsum else None
                p20 = list(s.prices)[-20:]
                sma_20 = sum(p20) / len(p20)
                sma_50 = sum(s.prices) / len(s.prices)
                vals = [x for x in s.pct if x is not None]
                if len(vals) >= 2:
                    mean = sum(vals) / len(vals)
                    volatility = math.sqrt(sum((x - mean) ** 2 for x in vals) / (len(vals) - 1))
                else:
                    volatility = None
                spread = ask - bid
                spread_pct = spread / price * 100.0
                momentum = 1 if price > sma_20 else -1 if price < sma_20 else 0
                liquidity = "high" if volume > LIQ_HIGH else "medium" if volume > LIQ_MEDIUM else "low"
                if volatility is None:
                    risk = None
                    action = "HOLD"
                else:
                    risk = volatility * 0.4 + spread_pct * 0.3 + PENALTY[liquidity] * 0.3
                    direction = "BUY" if momentum == 1 else "SELL" if momentum == -1 else "HOLD"
                    action = direction if risk < 2.0 else "HOLD"
                actionable = action != "HOLD" and risk < 2.5 and liquidity != "low"
                current = action if actionable else "HOLD"
                emit = actionable and (emission == "every" or current != s.last_action)
                s.last_action = current
                if emit:
                    regime = "high" if volatility > VOL_HIGH else "low" if volatility < VOL_LOW else "normal"
                    signal_id = hashlib.sha256(f"{sym}|{ts}|{exchange}|{price!r}|{volume}|v1".encode()).hexdigest()[:32]
                    record = {"signal_id": signal_id, "symbol": sym, "action": action, "price": price,
                              "confidence": max(0.0, min(100.0, 100 - risk * 20)), "risk_score": risk,
                              "volatility": volatility, "momentum": momentum, "event_time": ts,
                              "recommended_position_size": int(100000 * max(0.1, 1 - risk * 0.2)
                                                               * max(0.1, 1 - volatility * 0.1)),
                              "volume": volume, "bid": bid, "ask": ask, "exchange": exchange,
                              "price_change": change, "price_change_pct": change_pct, "bid_ask_spread": spread,
                              "spread_pct": spread_pct, "vwap": vwap, "sma_20": sma_20, "sma_50": sma_50,
                              "volatility_20": volatility, "volatility_regime": regime,
                              "liquidity_score": liquidity, "strategy_version": "v1",
                              "emitted_at": int(time.time() * 1000)}
                    producer.send(signals_topic, key=sym.encode(), value=orjson.dumps(record))
                    signals += 1
    producer.flush()
    seconds = time.monotonic() - started
    consumer.close()
    producer.close()
    return {"ticks": ticks, "rejected": rejected, "seconds": round(seconds, 2),
            "ticks_per_s": round((ticks + rejected) / seconds, 1), "signals": signals, "symbols": len(symbols)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bootstrap")
    parser.add_argument("topics")
    parser.add_argument("signals_topic")
    parser.add_argument("--emission", choices=["on_change", "every"], default="on_change")
    args = parser.parse_args(argv)
    result = run(args.bootstrap, args.topics.split(","), args.signals_topic, args.emission)
    print("BENCH-RESULT " + orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
