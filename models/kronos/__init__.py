"""Kronos: K-line tokenizer (BSQ) and autoregressive predictor, checkpoint-compatible upstream.

Import from the modules: `models.kronos.model.Kronos`, `models.kronos.tokenizer.KronosTokenizer`,
`models.kronos.predictor.KronosPredictor`; `models.kronos.configs` (model sizes) imports no torch.
"""
