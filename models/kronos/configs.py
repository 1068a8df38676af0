"""Constructor arguments of the published Kronos checkpoints, and small ones for tests and CI."""

TOKENIZER_BASE = dict(
    d_in=6,
    d_model=256,
    n_heads=4,
    ff_dim=512,
    n_enc_layers=4,
    n_dec_layers=4,
    ffn_dropout_p=0.0,
    attn_dropout_p=0.0,
    resid_dropout_p=0.0,
    s1_bits=10,
    s2_bits=10,
    beta=0.05,
    gamma0=1.0,
    gamma=1.1,
    zeta=0.05,
    group_size=4,
)

_PREDICTOR_COMMON = dict(
    s1_bits=10,
    s2_bits=10,
    ffn_dropout_p=0.0,
    attn_dropout_p=0.0,
    resid_dropout_p=0.0,
    token_dropout_p=0.0,
    learn_te=True,
)
KRONOS_MINI = dict(_PREDICTOR_COMMON, d_model=256, n_layers=4, n_heads=4, ff_dim=512)
KRONOS_SMALL = dict(_PREDICTOR_COMMON, d_model=512, n_layers=8, n_heads=8, ff_dim=1024)
KRONOS_BASE = dict(_PREDICTOR_COMMON, d_model=832, n_layers=12, n_heads=16, ff_dim=2048)

# Tiny sizes for CI and the default (smoke) run: seconds on a CPU.
TOKENIZER_SMOKE = dict(
    TOKENIZER_BASE, d_model=32, n_heads=2, ff_dim=64, n_enc_layers=2, n_dec_layers=2, s1_bits=8, s2_bits=8
)
KRONOS_SMOKE = dict(_PREDICTOR_COMMON, s1_bits=8, s2_bits=8, d_model=64, n_layers=2, n_heads=2, ff_dim=128)
