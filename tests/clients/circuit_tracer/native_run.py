"""hooked's own attribution graph (hooked.attribution_graph, no circuit-tracer, no TransformerLens) of the
model, transcoders and prompt tokens that attribution_run.py's transformer_lens run drew and saved in OUT_DIR:
`python native_run.py OUT_DIR IN_HOOK OUT_HOOK`, with circuit-tracer's hook names (mlp.hook_in / mlp.hook_out
are its replacement MLP's: the MLP's input, which is the second norm's output, and its output; ours are
ln2.hook_normalized, which is before the norm's weight and bias, so they are folded into the encoder,
and hook_mlp_out). Writes OUT_DIR/graph_native.pt and OUT_DIR/graph_native.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import hooked
from hooked import HookedTransformer, HookedTransformerConfig
from hooked.dictionaries import SAE

OUT, IN_HOOK, OUT_HOOK = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
CLIENTS = ("transformer_lens", "circuit_tracer")
OURS = {"mlp.hook_in": "ln2.hook_normalized", "mlp.hook_out": "hook_mlp_out"}
sys.path.insert(0, str(Path(__file__).parent))
from tiny_setup import CONFIG, N_LAYERS  # noqa: E402


def main() -> None:
    assert "transformer_lens" not in sys.modules and "circuit_tracer" not in sys.modules
    tokenizer = AutoTokenizer.from_pretrained(OUT / "tokenizer")
    model = HookedTransformer(HookedTransformerConfig(**CONFIG), tokenizer=tokenizer)
    model.load_state_dict(load_file(OUT / "model.safetensors"))  # TransformerLens's names
    transcoders = []
    for layer in range(N_LAYERS):
        weights = load_file(OUT / "transcoders" / f"layer_{layer}.safetensors")  # circuit-tracer's layout
        W_enc, b_enc = weights["W_enc"].T, weights["b_enc"]
        if IN_HOOK == "mlp.hook_in":  # ours reads the norm's output before its weight and bias: fold them in
            ln2 = model.blocks[layer].ln2
            W_enc, b_enc = ln2.w.detach()[:, None] * W_enc, b_enc + ln2.b.detach() @ W_enc
        state = {"W_enc": W_enc, "W_dec": weights["W_dec"], "b_enc": b_enc, "b_dec": weights["b_dec"]}
        read, write = (f"blocks.{layer}.{OURS.get(h, h)}" for h in (IN_HOOK, OUT_HOOK))
        transcoders.append(SAE.from_state_dict(state, read, hook_name_out=write))
    # circuit-tracer tokenizes PROMPT by its own rule (it starts with the pad token here); its run saved the tokens
    tokens = torch.load(OUT / "graph_transformer_lens.pt")["input_tokens"]
    graph = hooked.attribution_graph(model, tokens, transcoders, max_n_logits=4, batch_size=16)
    graph.to_json(OUT / "graph_native.json", slug="tiny")
    torch.save(
        {
            "adjacency_matrix": graph.adjacency,
            "active_features": graph.features,
            "activation_values": graph.activations,
            "input_tokens": graph.tokens,
            "logit_token_ids": graph.logit_tokens,
            "logit_probabilities": graph.logit_probabilities,
            "completeness_error": graph.completeness_error(),
            "hooked_modules": sorted(name for name in sys.modules if name.split(".")[0] in CLIENTS),
        },
        OUT / "graph_native.pt",
    )


if __name__ == "__main__":
    main()
