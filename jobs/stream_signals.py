"""spark-submit entry point: the streaming signals job (Kafka ticks -> signals, SPEC §1-4).

    spark-submit [spark options] jobs/stream_signals.py [--profile emr] [--conf FILE] [--set KEY=VALUE ...]

Parses arguments, builds settings and the session, starts the query, waits. Logic: marketsignals.stream.
"""

import sys

from marketsignals.stream.job import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
