"""Trained baselines (LightGBM on Qlib's Alpha158 features)."""
