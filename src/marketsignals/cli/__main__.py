import sys

from marketsignals.cli import main

sys.exit(main())
