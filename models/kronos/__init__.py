"""Kronos: K-line tokenizer (BSQ) and autoregressive predictor, checkpoint-compatible upstream."""

from models.kronos.model import Kronos
from models.kronos.predictor import KronosPredictor
from models.kronos.tokenizer import KronosTokenizer

__all__ = ["Kronos", "KronosPredictor", "KronosTokenizer"]
