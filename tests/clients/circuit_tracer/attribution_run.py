"""One circuit-tracer attribution run on a tiny model, on real TransformerLens or on hooked (through
`hooked.compat`): `python attribution_run.py {transformer_lens|hooked} OUT_DIR IN_HOOK OUT_HOOK`.

The transformer_lens run draws the model's weights, the transcoders and the tokenizer and saves them in
OUT_DIR; the hooked run loads those same files, so the two graphs are of one model. Each writes its graph
to OUT_DIR/graph_<backend>.pt. Run in a fresh process per backend: `hooked.compat.install()` must precede
every transformer_lens import, and the real package must never be imported in the hooked run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

BACKEND, OUT, IN_HOOK, OUT_HOOK = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
if BACKEND == "hooked":
    import hooked.compat

    hooked.compat.install()

import torch.nn.functional as F  # noqa: E402
from circuit_tracer import attribute  # noqa: E402
from circuit_tracer.replacement_model.replacement_model_transformerlens import (  # noqa: E402
    TransformerLensReplacementModel,
)
from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet, load_transcoder_set  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from tiny_setup import CONFIG, D_MODEL, D_TRANSCODER, D_VOCAB, N_LAYERS, PROMPT  # noqa: E402


def config() -> HookedTransformerConfig:
    return HookedTransformerConfig(**CONFIG)


def make_reference_files() -> None:
    """Tokenizer, model weights (TransformerLens's names) and transcoders, drawn once."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2, "<unk>": 3, **{f"w{i}": i + 4 for i in range(D_VOCAB - 4)}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(OUT / "tokenizer")
    torch.manual_seed(0)
    model = HookedTransformer(config(), tokenizer=AutoTokenizer.from_pretrained(OUT / "tokenizer"))
    with torch.no_grad():  # LayerNorm weights and biases away from 1 and 0, so the frozen scales matter
        for name, param in model.named_parameters():
            if name.endswith(("ln1.w", "ln2.w", "ln_final.w")) or ".b_" in name or name.startswith("b_"):
                param.add_(0.1 * torch.randn_like(param))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / "model.safetensors")
    transcoders = {}
    for layer in range(N_LAYERS):
        transcoder = SingleLayerTranscoder(D_MODEL, D_TRANSCODER, F.relu, layer, dtype=torch.float32)
        with torch.no_grad():
            transcoder.W_enc.normal_(0, 0.3)
            transcoder.W_dec.normal_(0, 0.3)
            transcoder.b_enc.fill_(0.05)
        transcoders[layer] = transcoder
    TranscoderSet(transcoders, IN_HOOK, OUT_HOOK, scan="tiny").to_safetensors(str(OUT / "transcoders"))


def main() -> None:
    if BACKEND == "transformer_lens":
        make_reference_files()
    tokenizer = AutoTokenizer.from_pretrained(OUT / "tokenizer")
    transcoders = load_transcoder_set(
        {layer: str(OUT / "transcoders" / f"layer_{layer}.safetensors") for layer in range(N_LAYERS)},
        scan="tiny",
        feature_input_hook=IN_HOOK,
        feature_output_hook=OUT_HOOK,
        device=torch.device("cpu"),
        dtype=torch.float32,
        lazy_encoder=False,
        lazy_decoder=False,
    )
    model = TransformerLensReplacementModel.from_config(config(), transcoders, tokenizer=tokenizer)
    # The replacement model wraps each MLP and the unembedding; their weights sit one level down.
    renamed = {
        key.replace(".mlp.", ".mlp.old_mlp.").replace("unembed.", "unembed.old_unembed."): value
        for key, value in load_file(OUT / "model.safetensors").items()
    }
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    assert not unexpected and all(name.startswith("transcoders.") for name in missing), (missing, unexpected)
    graph = attribute(PROMPT, model, max_n_logits=4, batch_size=16, verbose=False)
    logits = model(graph.input_tokens)[0, -1].detach()
    if BACKEND == "transformer_lens":
        write_viewer_json(graph, tokenizer)
    torch.save(
        {
            "adjacency_matrix": graph.adjacency_matrix,
            "active_features": graph.active_features,
            "activation_values": graph.activation_values,
            "input_tokens": graph.input_tokens,
            "logit_token_ids": graph.logit_tokens if hasattr(graph, "logit_tokens") else graph.logit_token_ids,
            "logit_probabilities": graph.logit_probabilities,
            "last_logits": logits,
            "hook_point_class": f"{type(model.hook_embed).__module__}.{type(model.hook_embed).__name__}",
        },
        OUT / f"graph_{BACKEND}.pt",
    )


def write_viewer_json(graph, tokenizer) -> None:
    """circuit-tracer's own viewer file of its graph (its create_graph_files, minus the hub tokenizer lookup)."""
    from circuit_tracer.graph import prune_graph
    from circuit_tracer.utils.create_graph_files import build_model, create_nodes, create_used_nodes_and_edges

    node_mask, edge_mask, cumulative_scores = prune_graph(graph, 0.8, 0.98)
    nodes = create_nodes(graph, node_mask, tokenizer, cumulative_scores)
    used_nodes, used_edges = create_used_nodes_and_edges(graph, nodes, edge_mask)
    viewer = build_model(graph, used_nodes, used_edges, "tiny", "tiny", 0.8, tokenizer)
    (OUT / "graph_reference.json").write_text(viewer.model_dump_json(indent=1))


if __name__ == "__main__":
    main()
