"""Stage bodies with their declarations (`STAGES` in each module), one module per family:
data (ingest, split), kronos, timellm, chronos, lgbm, backtest. pipeline/graph.py collects them."""
