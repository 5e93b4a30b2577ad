"""The benchmark's table and chart from its results dict."""

from __future__ import annotations

from pathlib import Path


def _rate(run: dict | None) -> float | None:
    """Steady rate: after the first batch (JVM warm-up, first Delta commit, Python workers) when
    the run had several batches; the simple consumer has no batches."""
    if not run or "error" in run:
        return None
    return run.get("ticks_per_s_after_first_batch") or run.get("ticks_per_s")


def _fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def ratios(results: dict) -> dict:
    runs = results["runs"]
    a, b, c, e = (_rate(runs.get(k)) for k in ("a_ceiling", "b_product", "c_simple", "e_scale"))
    return {"b_over_a": round(b / a, 3) if a and b else None, "b_over_c": round(b / c, 3) if b and c else None,
            "e_over_b": round(e / b, 3) if b and e else None}


def table(results: dict) -> str:
    runs = results["runs"]
    lines = ["", f"{'scenario':<28}{'ticks':>10}{'ticks/s':>10}{'steady/s':>10}{'cpu s':>8}{'ticks/cpu-s':>12}"
                 f"{'JVM MB':>8}{'Py MB':>8}  state"]
    names = {"a_ceiling": "(a) ceiling (from_json)", "b_product": "(b) product", "c_simple": "(c) simple Python",
             "e_scale": "(e) product, scale symbols"}
    for key, label in names.items():
        run = runs.get(key)
        if run is None:
            continue
        if "error" in run:
            lines.append(f"{label:<28} failed: {run['error'].splitlines()[0][:80]}")
            continue
        ticks = run.get("ticks", 0) + run.get("rejected", 0) if key == "c_simple" else run.get("ticks")
        cpu = run.get("cpu_s_total")
        peak = run.get("peak_rss_mb", {})
        py = (peak.get("python_workers", 0) + peak.get("driver", 0)) if key != "c_simple" else peak.get("driver")
        state, disk = "", f"{run.get('state_dir_mb', 0):.0f}MB"
        if run.get("state_symbols") is not None:
            state = f"{run['state_symbols']:,} symbols in {run['state_rows']:,} buckets {disk}"
        elif run.get("state_rows"):  # results of a version that kept one state row per symbol
            state = f"{run['state_rows']:,} rows {disk}"
        lines.append(f"{label:<28}{_fmt(ticks):>10}{_fmt(run.get('ticks_per_s')):>10}{_fmt(_rate(run)):>10}"
                     f"{_fmt(cpu, '.0f'):>8}{_fmt(ticks / cpu if ticks and cpu else None):>12}"
                     f"{_fmt(peak.get('jvm')):>8}{_fmt(py):>8}  {state}")
    r = ratios(results)
    lines.append("ratios on the steady rates (after the first batch)")
    lines.append(f"b/a = {_fmt(r['b_over_a'], '.2f')} (target >= 0.8)   b/c = {_fmt(r['b_over_c'], '.2f')} "
                 f"(target >= 2)   scale/b = {_fmt(r['e_over_b'], '.2f')} (target >= 0.8)")
    lat = sorted((v for k, v in runs.items() if k.startswith("d_latency_")), key=lambda v: v.get("rate", 0))
    if lat:
        lines += ["", f"{'feed rate':>10}{'achieved':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'batch ms':>10}"
                      f"{'max lag':>10}  sustained  (p50 / p99 ms over the feed's second half)"]
        for v in lat:
            if "error" in v:
                lines.append(f"{'?':>10} failed: {v['error'].splitlines()[0][:80]}")
                continue
            fed = v.get("feeder", {})
            lines.append(f"{_fmt(v['rate']):>10}{_fmt(fed.get('rate')):>10}{_fmt(v.get('p50_ms')):>9}"
                         f"{_fmt(v.get('p95_ms')):>9}{_fmt(v.get('p99_ms')):>9}{_fmt(v.get('batch_ms_median')):>10}"
                         f"{_fmt(v.get('max_lag_ticks')):>10}  {'yes' if v.get('sustained') else 'no':<9}"
                         + (f"  ({_fmt(half.get('p50_ms'))} / {_fmt(half.get('p99_ms'))})"
                            if (half := v.get("second_half")) else ""))
        for v in lat:
            if line := minute_line(v):
                lines.append(f"{_fmt(v['rate']):>10}: {line}")
        best = max((v["rate"] for v in lat if v.get("sustained")), default=None)
        triggers = sorted({v["trigger"] for v in lat if v.get("trigger")})
        lines.append(f"highest sustained rate tried: {_fmt(best)} ticks/s"
                     + (f" (trigger {', '.join(triggers)})" if triggers else ""))
    for key in sorted(k for k in runs if k.startswith("restart_")):
        lines += ["", *restart_lines(runs[key])]
    soak = runs.get("soak")
    if soak and (line := minute_line(soak)):
        lines += ["", f"the soak at {_fmt(soak.get('rate'))} ticks/s: {line}"]
    if soak and "rss_series" in soak:
        lines.append("")
        lines.append("memory over the soak: " + ", ".join(f"{k} {v:+.1f} MB/min" for k, v in rss_slopes(soak).items()))
        if peaks := feed_peaks(soak):
            lines.append("  peak RSS while the feed ran: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in peaks.items())
                         + " (the run's peaks, with the signals read back after it: "
                         + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(soak.get("peak_rss_mb", {}).items())) + ")")
    if soak and (nmt := nmt_slopes(soak)):
        top = list(nmt.items())[:7]
        lines.append("  the JVM by NMT category (MB/min): " + ", ".join(f"{k} {v:+.1f}" for k, v in top))
    if soak and (state := state_memory(soak)):
        lines.append(f"  the state store's own count (RocksDB, outside NMT): {state['end_mb']:.1f} MB at the feed's "
                     f"end, {state['mb_per_min']:+.1f} MB/min over its second half")
    load = results["host"]
    lines.append(f"(load average at start {load['load_avg_start'][0]:.1f}, at end "
                 f"{load.get('load_avg_end', [0])[0]:.1f} on {load['cpus']} CPUs: wall rates drop under contention, "
                 f"ticks per CPU second less so)")
    return "\n".join(lines)


def restart_lines(run: dict) -> list[str]:
    """The restart run: its timeline in seconds from the stop, and the latency window by window."""
    first, resume = run.get("first", {}), run.get("resume", {})
    failed = first.get("error") or resume.get("error")
    head = f"restart at {_fmt(run.get('rate'))} ticks/s"
    if failed:
        return [f"{head}: failed: {failed.splitlines()[0][:80]}"]
    lines = [f"{head} (seconds from the stop): stopped in {first['stop_s']:.1f} ({first.get('stopped', '?')}), process "
             f"{resume['process_started_at_s']}, query {resume['query_started_at_s']} (warm-up and start "
             f"{resume['warm_up_and_start_s']}), first batch "
             f"{resume['first_batch_at_s']} ({_fmt(resume['first_batch_ticks'])} ticks in "
             f"{_fmt(resume['first_batch_ms'])} ms), caught up {_fmt(resume.get('caught_up_at_s'), '.1f')}, "
             f"back at steady latency {_fmt(resume.get('recovered_at_s'), '.1f')} after {_fmt(resume['backlog_ticks'])}"
             f" ticks; worst latency {_fmt(resume['max_ms'])} ms, steady p99 {_fmt(resume['steady_p99_ms'])} ms, "
             f"{_fmt(resume['repeated_signals'])} signals sent twice"]
    windows = resume.get("windows") or []
    lines.append("  p99 ms by 10 s of emission from the stop: " + ", ".join(
        f"{w['from_s']}: {_fmt(w['p99_ms'])}" for w in windows if w["from_s"] >= -20))
    return lines


def minute_line(run: dict) -> str | None:
    """A latency run's p99 minute by minute of its feed (``by_minute``), for runs of two minutes or more."""
    minutes = run.get("by_minute") or []
    if len(minutes) < 2:
        return None
    return "p99 ms by minute of the feed " + ", ".join(_fmt(m.get("p99_ms")) for m in minutes)


def _second_half(run: dict, series: list) -> list:
    """The points of ``series`` in the second half of the feed (after warm-up, before the drain: the
    Python workers exit when the query stops); the second half of the series if the feed's window
    is not known."""
    if run.get("feed_window_s"):
        start, end = run["feed_window_s"]
        return [(t, v) for t, v in series if (start + end) / 2 <= t <= end]
    return series[len(series) // 2:]


def _slope(points: list[tuple[float, float]]) -> float | None:
    """MB per minute of a straight line through (seconds, bytes) points; None under three points."""
    import numpy as np

    if len(points) < 3:
        return None
    t, m = np.array(points, dtype=float).T
    return float(np.polyfit(t / 60.0, m / 2**20, 1)[0])


def rss_slopes(run: dict) -> dict[str, float]:
    """MB per minute of each process kind over the second half of the feed."""
    half = _second_half(run, run.get("rss_series") or [])
    out = {}
    for kind in ("jvm", "python_workers"):
        slope = _slope([(t, rss[kind]) for t, rss in half if kind in rss])
        if slope is not None:
            out[kind] = slope
    return out


def feed_peaks(run: dict) -> dict[str, float]:
    """Peak RSS in MB of each process kind while the feed ran (``feed_window_s``): the job under load,
    without what the harness does after the query stops (the soak reads every signal back in its
    driver process, a GB after ten minutes at 20k ticks/s). Empty without the window."""
    if not run.get("feed_window_s"):
        return {}
    start, end = run["feed_window_s"]
    peaks: dict[str, float] = {}
    for t, rss in run.get("rss_series") or []:
        if start <= t <= end:
            for kind, b in rss.items():
                peaks[kind] = max(peaks.get(kind, 0.0), b / 2**20)
    return {k: round(v, 1) for k, v in sorted(peaks.items())}


def nmt_slopes(run: dict) -> dict[str, float]:
    """MB per minute of the soak JVM's native memory by NMT category over the feed's second half
    (``bench.run --nmt``), the biggest movers first: ``Total`` (all NMT sees), each category, and
    ``outside NMT``, the JVM's RSS minus that total (native libraries' own allocations, such as
    RocksDB's, and malloc's arenas)."""
    half = _second_half(run, run.get("nmt_series") or [])
    out = {}
    for key in sorted({k for _, v in half for k in v} - {"rss"}):
        slope = _slope([(t, v[key]) for t, v in half if key in v])
        if slope is not None:
            out[key] = slope
    outside = _slope([(t, v["rss"] - v["Total"]) for t, v in half if "Total" in v and "rss" in v])
    if outside is not None:
        out["outside NMT"] = outside
    return dict(sorted(out.items(), key=lambda kv: -abs(kv[1])))


def state_memory(run: dict) -> dict[str, float]:
    """The state store's memory as Spark reports it (RocksDB's memtables, block cache and table readers,
    part of the JVM's memory outside NMT): MB at the feed's end and MB per minute over its second half."""
    half = _second_half(run, run.get("state_memory_series") or [])
    slope = _slope(half)
    if slope is None:
        return {}
    return {"end_mb": half[-1][1] / 2**20, "mb_per_min": slope}


def chart(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    labels, values = [], []
    for key, label in (("a_ceiling", "(a) ceiling"), ("b_product", "(b) product"), ("c_simple", "(c) simple"),
                       ("e_scale", "(e) scale")):
        if _rate(runs.get(key)) is not None:
            labels.append(label)
            values.append(_rate(runs[key]))
    ax = axes[0]
    bars = ax.bar(labels, values, color=["#888", "#1f77b4", "#ff7f0e", "#2ca02c"][: len(values)])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
    ax.set_title("throughput, ticks/s")
    ax.set_ylabel("ticks per second")
    lat = sorted((v for k, v in runs.items() if k.startswith("d_latency_") and "p50_ms" in v), key=lambda v: v["rate"])
    ax = axes[1]
    if lat:
        rates = [v["rate"] for v in lat]
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            ax.plot(rates, [v[q] / 1000 for v in lat], marker="o", label=q.split("_")[0])
        ax.axhline(1.0, color="red", linestyle=":", label="1 s target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend()
    ax.set_title("latency tick -> signal (Kafka timestamps)")
    ax.set_xlabel("feed rate, ticks/s")
    ax.set_ylabel("seconds")
    ax = axes[2]
    soak = runs.get("soak")
    if soak and soak.get("rss_series"):
        t = [p[0] / 60 for p in soak["rss_series"]]
        for kind in ("jvm", "python_workers", "driver"):
            ax.plot(t, [p[1].get(kind, 0) / 2**20 for p in soak["rss_series"]], label=kind)
        ax.set_xlabel("minutes")
        ax.set_title("RSS over the soak run, MB")
        ax.legend()
    else:
        kinds = ("jvm", "python_workers", "driver")
        keys = [k for k in ("a_ceiling", "b_product", "c_simple", "e_scale") if runs.get(k, {}).get("peak_rss_mb")]
        for i, kind in enumerate(kinds):
            ax.bar([j + i * 0.27 for j in range(len(keys))], [runs[k]["peak_rss_mb"].get(kind, 0) for k in keys],
                   width=0.27, label=kind)
        ax.set_xticks([j + 0.27 for j in range(len(keys))], [k.split("_", 1)[1] for k in keys])
        ax.set_title("peak RSS, MB")
        ax.legend()
    fig.suptitle(f"marketsignals bench {results['started']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
