"""marketsignals: risk-scored BUY/SELL trading signals from market-data ticks (SPEC.md)."""

__version__ = "0.1.0"
