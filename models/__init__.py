"""Forecasting models: Kronos, Time-LLM and baselines."""
