"""Trained baselines: LightGBM on Qlib's Alpha158 features.

from models.lgbm import fit_forecast          # the shared model interface (see models.lgbm.api)
"""

from models.lgbm.api import fit_forecast

__all__ = ["fit_forecast"]
