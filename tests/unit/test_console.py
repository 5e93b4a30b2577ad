from marketsignals.console import ViewState, render


def test_render_shows_latest_signal_per_symbol_rates_and_rejects():
    view = ViewState()
    view.add_signal({"symbol": "MSFT", "action": "SELL", "price": 400.0, "confidence": 70.0, "risk_score": 1.5,
                     "recommended_position_size": 50000, "event_time": "t1"}, now=100.0)
    view.add_signal({"symbol": "AAPL", "action": "BUY", "price": 200.5, "confidence": 80.0, "risk_score": 1.0,
                     "recommended_position_size": 72000, "event_time": "t2"}, now=101.0)
    view.add_signal({"symbol": "AAPL", "action": "SELL", "price": 199.0, "confidence": 60.0, "risk_score": 1.9,
                     "recommended_position_size": 60000, "event_time": "t3"}, now=102.0)
    view.add_reject({"reason": "late"})
    view.add_reject({"reason": "late"})
    view.job = {"batch_id": 7, "input_rows_per_s": 2000.0, "processed_rows_per_s": 2500.0, "batch_duration_ms": 800,
                "watermark": "w", "state_rows": 20, "kafka_lag": {"maxOffsetsBehindLatest": 3.0}}
    screen = render(view, now=105.0).splitlines()
    assert "signals: 3 (0.3/s)" in screen[0] and "rejected: 2" in screen[0]
    assert "batch 7" in screen[2] and "lag 3.0" in screen[2]
    rows = [line for line in screen if line.startswith(("AAPL", "MSFT"))]
    assert rows[0].split()[:2] == ["AAPL", "SELL"] and rows[1].split()[:2] == ["MSFT", "SELL"]
    assert screen[-1] == "rejects: late=2"
