"""Stage bodies with their declarations (`STAGES` in each module), one module per family:
data (ingest, split), kronos, timellm, chronos, lgbm, backtest. pipeline/graph.py collects them.

Model and evaluation libraries (torch, transformers, Qlib, vectorbt, statsmodels, plotting) are
imported inside the functions that use them: planning the graph, `--list` and a fully cached
rerun then load only the declarations.
"""
