"""spark-submit entry point: the batch backtest over historical ticks (same logic as the live job).

    spark-submit [spark options] jobs/backtest.py [--profile emr] [--conf FILE] [--set KEY=VALUE ...]

Parses arguments, builds settings and the session, runs the backtest. Logic: marketsignals.backtest.
"""

import sys

from marketsignals.backtest.job import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
