"""bench/handler.py, the stream's state handler timed without Spark, runs on a tiny input, and its
digest follows the rows and states it got: it is what says a faster kernel still gives the same output."""

from __future__ import annotations

import pickle
import re

import pytest

from conftest import ROOT
from marketsignals.settings import load_settings
from marketsignals.stream import state
from marketsignals.stream.job import kernel_config


def test_the_handler_bench_runs_and_its_digest_follows_rows_and_states(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import handler

    assert handler.main(["--ticks", "3000", "--symbols", "50", "--per-batch", "1000", "--buckets", "4"]) == 0
    printed = capsys.readouterr().out
    assert "3,000 ticks, 50 symbols, 4 buckets, 3 batches, arrival: handler" in printed
    rows = int(re.search(r"CPU s, ([\d,]+) rows", printed).group(1).replace(",", ""))

    cfg = kernel_config(load_settings("local"))
    work = handler.batches(3000, 50, 1000, 4)
    assert [sum(len(g) for _, g in groups) for _, groups in work] == [1000, 1000, 1000]
    outputs, states = handler.run(work, state.make_handler(cfg, 4), cfg.watermark_delay_ms)
    assert sorted(states) == [0, 1, 2, 3] and all(s.exists and s.timeout for s in states.values())
    assert sum(map(len, outputs)) == rows
    counts = [out[out.kind == "count"] for out in outputs]
    assert sum(c.processed.sum() for c in counts) == 3000 and sum(map(len, counts)) == 50 * 3  # each symbol, each batch
    again = handler.run(work, state.make_handler(cfg, 4), cfg.watermark_delay_ms)
    assert handler.digest(outputs, states) == handler.digest(*again)
    outputs[0].loc[0, "symbol"] = "OTHER"
    assert handler.digest(outputs, states) != handler.digest(*again)
    outputs, states = again
    states[0].update((state.STATE_FORMAT, pickle.dumps((4, None, {}))))
    assert handler.digest(outputs, states) != handler.digest(*handler.run(work, state.make_handler(cfg, 4),
                                                                          cfg.watermark_delay_ms))


def test_repeated_runs_start_from_empty_state_and_print_the_least_cpu(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import handler

    tiny = ["--ticks", "2000", "--symbols", "20", "--per-batch", "1000", "--buckets", "2"]
    assert handler.main(tiny) == 0
    once = capsys.readouterr().out
    assert handler.main([*tiny, "--repeat", "3"]) == 0
    thrice = capsys.readouterr().out
    assert "(least of 3, median " in thrice and "least of" not in once
    # each run from empty states: the last one's rows and states are a single run's
    result = re.compile(r"[\d,]+ rows, state [\d.]+ MB, digest \w+")
    assert result.search(thrice).group(0) == result.search(once).group(0)
    with pytest.raises(SystemExit) as stop:
        handler.main([*tiny, "--repeat", "0"])
    assert stop.value.code == 2
    assert "--repeat must be at least 1, not 0" in capsys.readouterr().err
