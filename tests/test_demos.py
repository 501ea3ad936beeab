"""The demos run end to end on the embedded default model and show what they claim (slow), and their
cores keep exact invariants on tiny random models with the tiny tokenizer (fast)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer

from hooked import HookedTransformer, HookedTransformerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))


@pytest.mark.slow
def test_quickstart(tmp_path, capsys):
    import quickstart

    result = quickstart.main(out_dir=tmp_path)
    assert result["top"][0][0] == " Paris"
    best_layer, best_head = result["induction_heads"][0]
    assert result["induction_scores"][best_layer, best_head] > 0.5  # a real induction head, not noise
    assert result["ablated_loss"] > result["clean_loss"] + 1.0
    assert result["plot"].read_bytes().startswith(b"\x89PNG")
    printed = capsys.readouterr().out
    assert "Paris" in printed and "induction" in printed and "zero-ablated" in printed


# ---- each demo's core on a tiny random model, where its invariants hold exactly ------------------

TINY_CONFIGS = {
    "llama": tiny_llama(n_layers=3, d_vocab=128, n_ctx=64, initializer_range=0.3),
    "gpt2": HookedTransformerConfig(d_model=32, n_layers=3, n_heads=4, d_vocab=128, n_ctx=64, initializer_range=0.3),
}
# The tiny tokenizer knows these words; the prompts differ at one position (the second name).
TINY_CLEAN = "When Mary and John went to the store, John gave a drink to"
TINY_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(params=list(TINY_CONFIGS))
def tiny_model(request):
    return HookedTransformer(TINY_CONFIGS[request.param], tokenizer=tiny_tokenizer()).eval()


def test_ioi_patching_invariants(tiny_model):
    import ioi_patching

    result = ioi_patching.run_patching(tiny_model, TINY_CLEAN, TINY_CORRUPTED, " Mary", " John", patches_per_forward=1)
    resid, heads = result["resid"], result["heads"]
    n_layers, n_pos = tiny_model.cfg.n_layers, len(result["str_tokens"])
    assert resid.shape == (n_layers + 1, n_pos) and heads.shape == (n_layers, tiny_model.cfg.n_heads)
    assert result["clean_logit_diff"] != result["corrupted_logit_diff"]
    (differ,) = result["differing_positions"]
    # The clean final residual at the last position is everything the logits see.
    assert resid[n_layers, n_pos - 1].item() == 1.0
    # At layer 0 the prompts differ only at one position: patching it makes the run clean; the rest change nothing.
    assert resid[0, differ].item() == 1.0
    others = [pos for pos in range(n_pos) if pos != differ]
    assert (resid[0, others] == 0.0).all()
    # Causal attention: before the differing position the two runs are identical at every layer.
    assert (resid[:, :differ] == 0.0).all()
    # Several patches per forward pass change the results by float rounding only.
    batched = ioi_patching.run_patching(tiny_model, TINY_CLEAN, TINY_CORRUPTED, " Mary", " John")
    torch.testing.assert_close(batched["resid"], resid, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched["heads"], heads, atol=1e-5, rtol=0)


def test_ioi_patching_nothing_or_identical_values_recovers_nothing(tiny_model):
    import ioi_patching

    setup = ioi_patching.prepare(tiny_model, TINY_CLEAN, TINY_CORRUPTED, " Mary", " John")
    metric, clean_cache, corrupted_cache = setup["metric"], setup["clean_cache"], setup["corrupted_cache"]
    clean, corrupted = setup["clean_tokens"], setup["corrupted_tokens"]
    with torch.no_grad():
        assert metric(tiny_model(corrupted)) == 0.0
        assert metric(tiny_model(clean)) == 1.0
        one_at_a_time = {"patches_per_forward": 1}
        resid = ioi_patching.patch_residual(tiny_model, corrupted, corrupted_cache, metric, **one_at_a_time)
        assert (resid == 0.0).all()
        heads = ioi_patching.patch_head_outputs(tiny_model, corrupted, corrupted_cache, metric, **one_at_a_time)
        assert (heads == 0.0).all()
        heads = ioi_patching.patch_head_outputs(tiny_model, clean, clean_cache, metric, **one_at_a_time)
        assert (heads == 1.0).all()


def ioi_patching_setup(model: HookedTransformer) -> dict:
    import ioi_patching

    return ioi_patching.prepare(model, TINY_CLEAN, TINY_CORRUPTED, " Mary", " John")


def silence_head(model: HookedTransformer, layer: int, head: int) -> None:
    """Zero one head's W_O: it then writes nothing, so ablating it must change nothing."""
    with torch.no_grad():
        model.blocks[layer].attn.W_O[head] = 0.0


def test_induction_scores_and_ablation_invariants(tiny_model):
    import induction_heads

    half = 6
    tokens = induction_heads.repeated_tokens(tiny_model, half)
    assert tokens.shape == (1, 2 * half + 1) and torch.equal(tokens[0, 1 : half + 1], tokens[0, half + 1 :])
    # A perfect induction pattern scores exactly 1, a previous-token pattern exactly 0.
    n = 2 * half + 1
    induction, previous = torch.zeros(n, n), torch.zeros(n, n)
    for q in range(n):
        induction[q, q - half + 1 if q > half else 0] = 1.0
        previous[q, max(q - 1, 0)] = 1.0
    scores = induction_heads.induction_scores(torch.stack([induction, previous])[None], half)
    assert scores.tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError, match="half=5"):
        induction_heads.induction_scores(torch.zeros(1, 1, n, n), 5)

    patterns = induction_heads.head_patterns(tiny_model, tokens)
    scores = induction_heads.induction_scores(patterns, half)
    assert scores.shape == (tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    assert ((scores >= 0) & (scores <= 1)).all()
    silence_head(tiny_model, 1, 2)
    with torch.no_grad():
        plain = tiny_model(tokens, return_type="loss", loss_per_token=True)[0, half + 1 :].mean().item()
    clean = induction_heads.repeated_half_loss(tiny_model, tokens, half)
    assert clean == plain
    assert induction_heads.repeated_half_loss(tiny_model, tokens, half, [(1, 2)]) == clean
    assert induction_heads.repeated_half_loss(tiny_model, tokens, half, [(1, 2), (0, 0)]) != clean


def test_head_ablation_invariants(tiny_model):
    import head_ablation

    tokens = tiny_model.to_tokens("the cat sat on the mat. hello world")
    silence_head(tiny_model, 2, 1)
    for mode in ("zero", "mean"):
        effects, clean = head_ablation.head_ablation_effects(tiny_model, tokens, mode)
        assert effects.shape == (tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
        with torch.no_grad():
            assert clean == tiny_model(tokens, return_type="loss").item()
        assert effects[2, 1].item() == 0.0  # a head that writes nothing matters not at all
        assert (effects != 0).sum() == effects.numel() - 1

    # Same numbers as ablating the head in a full run from the tokens.
    def zero_head(z, hook):
        z[:, :, 3] = 0.0

    with torch.no_grad():
        full = tiny_model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    zero_effects, clean = head_ablation.head_ablation_effects(tiny_model, tokens, "zero")
    assert zero_effects[1, 3].item() == pytest.approx(full.item() - clean, abs=1e-6)
    with pytest.raises(ValueError, match="mode"):
        head_ablation.head_ablation_effects(tiny_model, tokens, "resample")


def test_logit_lens_invariants(tiny_model):
    import logit_lens

    prompt = "When Mary and John went to the store"
    probs, labels, tokens = logit_lens.lens_probs(tiny_model, prompt)
    n_layers = tiny_model.cfg.n_layers
    assert probs.shape == (n_layers + 1, len(tokens), tiny_model.cfg.d_vocab)
    assert labels[0] == "0_pre" and labels[-1] == "final_post"
    with torch.no_grad():
        final = tiny_model(prompt)[0].softmax(-1)
    torch.testing.assert_close(probs[-1], final, atol=1e-6, rtol=1e-5)  # the last stream is the model's output
    top_probs, top_tokens = logit_lens.top_predictions(tiny_model, probs)
    assert top_probs.shape == (n_layers + 1, len(tokens)) and len(top_tokens) == n_layers + 1
    assert top_tokens[-1][-1] == tiny_model.to_single_str_token(int(final[-1].argmax()))
    target = int(final[-1].argmax())
    target_probs, ranks = logit_lens.target_trace(probs, target)
    assert ranks[-1].item() == 0 and target_probs[-1].item() == top_probs[-1, -1].item()
    assert logit_lens.emergence(torch.tensor([3, 0, 1, 0, 0])) == 3
    assert logit_lens.emergence(torch.tensor([0, 0, 0])) == 0
    assert logit_lens.emergence(torch.tensor([0, 0, 2])) is None


def test_attribution_patching_invariants(tiny_model):
    import attribution_patching

    setup = ioi_patching_setup(tiny_model)
    metric, corrupted = setup["metric"], setup["corrupted_tokens"]
    # Nothing differs, nothing is attributed.
    same = attribution_patching.attribute_heads(tiny_model, corrupted, corrupted, metric)
    assert (same == 0.0).all()
    assert all(param.grad is None for param in tiny_model.parameters())  # no gradients left on the model

    result = attribution_patching.compare(tiny_model, TINY_CLEAN, TINY_CORRUPTED, " Mary", " John")
    shape = (tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    assert result["activation"].shape == shape and result["attribution"].shape == shape
    assert result["correlation"] == attribution_patching.correlation(result["activation"], result["attribution"])
    assert attribution_patching.correlation(torch.arange(5.0), 2 * torch.arange(5.0) + 1) == pytest.approx(1.0)


# ---- each demo on the embedded default model --------------------------------------------------


@pytest.mark.slow
def test_ioi_patching_demo(tmp_path, capsys):
    import ioi_patching

    result = ioi_patching.main(out_dir=tmp_path)
    assert result["clean_logit_diff"] > 2 and result["corrupted_logit_diff"] < -2
    n_layers, last = result["resid"].shape[0] - 1, len(result["str_tokens"]) - 1
    assert result["resid"][n_layers, last].item() == pytest.approx(1.0, abs=1e-5)
    assert result["resid"][0, result["differing_positions"][0]].item() == pytest.approx(1.0, abs=1e-5)
    assert result["best_head_recovery"] > 0.2  # one head alone carries a real share of the answer
    for path in result["files"]:
        assert path.stat().st_size > 0
    assert "Heads whose clean output recovers the most" in capsys.readouterr().out


@pytest.mark.slow
def test_induction_heads_demo(tmp_path):
    import induction_heads

    result = induction_heads.main(out_dir=tmp_path)
    best_layer, best_head = result["induction_heads"][0]
    assert result["induction_scores"][best_layer, best_head] > 0.5
    assert result["ablated_loss"] > result["clean_loss"] + 2.0
    assert result["ablated_loss"] > result["control_loss"] + 2.0  # the induction heads, not any five heads
    assert result["files"][0].read_bytes().startswith(b"\x89PNG")
    assert "<script" in result["files"][1].read_text(encoding="utf-8")


@pytest.mark.slow
def test_logit_lens_demo(tmp_path):
    import logit_lens

    result = logit_lens.main(out_dir=tmp_path)
    assert result["top_tokens"][-1][-1] == " Paris"
    assert result["target_ranks"][0].item() > 100  # the embeddings alone do not know the answer
    assert result["emergence_stream"] is not None and result["emergence_stream"] > len(result["labels"]) // 2
    assert result["files"][0].read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_attribution_patching_demo(tmp_path):
    import attribution_patching

    result = attribution_patching.main(out_dir=tmp_path)
    assert result["correlation"] > 0.8
    assert result["top_overlap"] >= 5
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in result["files"])


@pytest.mark.slow
def test_head_ablation_demo(tmp_path):
    import head_ablation

    result = head_ablation.main(out_dir=tmp_path)
    layer, head = result["top_heads"][0]
    assert result["effects"][layer, head].item() > 0.05
    assert result["effects"].abs().median().item() < 0.05  # most heads matter little on their own
    assert result["files"][0].read_bytes().startswith(b"\x89PNG")


def test_quickstart_pattern_grid_has_labelled_axes_and_a_colorbar(tiny_model, tmp_path):
    import quickstart

    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (1, 12))
    fig = quickstart.plot_patterns(tiny_model, tokens, 1, tmp_path / "attention.png")
    n_heads = tiny_model.cfg.n_heads
    heads = [ax for ax in fig.axes if ax.get_title().startswith("L1H")]
    assert [ax.get_title() for ax in heads] == [f"L1H{h}" for h in range(n_heads)]
    assert all(ax.get_xlabel() == "key position" and ax.get_ylabel() == "query position" for ax in heads)
    (colorbar,) = [ax for ax in fig.axes if ax.get_ylabel() == "attention weight"]
    assert colorbar.get_ylim() == (0.0, 1.0)
    assert (tmp_path / "attention.png").read_bytes().startswith(b"\x89PNG")
