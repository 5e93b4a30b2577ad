"""The batch backtest: historical ticks through the live kernel, then a strategy simulation."""
