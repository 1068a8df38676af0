"""Signals, backtests and their metrics."""
