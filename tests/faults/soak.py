"""``make soak``: the long fault-injection run -- every test in tests/faults, the ``soak`` variants
included, with the soak knobs turned up -- then a table of the figures (kills survived, messages tried,
rows compared) from this run only.

    python tests/faults/soak.py [--kills 40] [--symbols 100000] [--outage-s 150] [--poison-examples 60]
                                [--seed 2207] [-- extra pytest args]

The short CI subset is ``pytest -m "faults and not soak"`` (make faults).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40, help="kill -9 cycles of the streaming job (default 40)")
    parser.add_argument("--symbols", type=int, default=100_000, help="distinct symbols that go idle (default 100000)")
    parser.add_argument("--outage-s", type=int, default=150, help="broker outage in seconds (default 150)")
    parser.add_argument("--poison-examples", type=int, default=60, help="hypothesis examples of poison input")
    parser.add_argument("--seed", type=int, default=2207, help="seed of the kill moments and the feed")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest after --")
    args = parser.parse_args(argv)

    report = ROOT / ".local" / "faults" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    report.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ,
           "MARKETSIGNALS_SOAK_KILLS": str(args.kills), "MARKETSIGNALS_SOAK_SYMBOLS": str(args.symbols),
           "MARKETSIGNALS_SOAK_OUTAGE_S": str(args.outage_s), "MARKETSIGNALS_SOAK_SEED": str(args.seed),
           "MARKETSIGNALS_POISON_EXAMPLES": str(args.poison_examples), "MARKETSIGNALS_POISON_SHRINK": "1",
           "MARKETSIGNALS_FAULTS_FIGURES": str(report)}
    cmd = [sys.executable, "-m", "pytest", "tests/faults", "-m", "faults", "-p", "no:cacheprovider",
           "--timeout=14400", "-rA", *args.pytest_args]
    print(f"soak: {' '.join(cmd)}\nsoak: figures -> {report}", flush=True)
    started = time.monotonic()
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    print(f"\nsoak: pytest exit code {code} after {(time.monotonic() - started) / 60:.1f} min")
    if report.exists():
        print("soak: figures")
        for line in report.read_text().splitlines():
            fig = json.loads(line)
            name = fig.pop("test").split("::")[-1]
            fig.pop("time", None)
            print(f"  {name}\n    " + ", ".join(f"{k}={v}" for k, v in fig.items()))
    return code


if __name__ == "__main__":
    sys.exit(main())
