"""The tiny model and prompt the circuit-tracer runs share (attribution_run.py, native_run.py)."""

N_LAYERS, D_MODEL, D_VOCAB, D_TRANSCODER = 2, 16, 64, 32
PROMPT = "w1 w2 w3 w4 w1 w2"
CONFIG = dict(
    n_layers=N_LAYERS,
    d_model=D_MODEL,
    n_ctx=32,
    d_head=4,
    n_heads=4,
    d_mlp=64,
    d_vocab=D_VOCAB,
    act_fn="gelu",
    normalization_type="LN",
    model_name="tiny-test",
)
