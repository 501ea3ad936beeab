"""SAELens's folder format (cfg.json + sae_weights.safetensors) read and written, state dicts checked by name,
and evaluate_sae's measures against independent computations and their bounds."""

from __future__ import annotations

import json

import pytest
import torch
from test_dictionaries import CFG, make

from hooked import HookedTransformer
from hooked.analysis.losses import lm_cross_entropy_loss
from hooked.dictionaries import SAE, BatchTopKSAE, JumpReLUSAE, TopKSAE, evaluate_sae, load_sae, save_sae


@pytest.fixture(scope="module")
def model():
    return HookedTransformer(CFG)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, CFG.d_vocab, (3, 8), generator=torch.Generator().manual_seed(2))


ROUND_TRIPS = {
    "standard": (SAE, {}),
    "jumprelu": (JumpReLUSAE, {}),
    "topk": (TopKSAE, {"k": 4, "rescale_acts_by_decoder_norm": True}),
    "skip_transcoder": (SAE, {"hook_name_out": "blocks.0.hook_mlp_out", "skip": True}),
    "jumprelu_transcoder": (JumpReLUSAE, {"hook_name_out": "blocks.0.hook_mlp_out"}),
}


@pytest.mark.parametrize("architecture", sorted(ROUND_TRIPS))
def test_a_saved_folder_loads_back_as_the_same_sae(tmp_path, architecture):
    cls, kwargs = ROUND_TRIPS[architecture]
    sae = make(cls, 16, "blocks.0.hook_resid_mid", **kwargs)
    save_sae(sae, tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == architecture
    loaded = load_sae(tmp_path)
    assert type(loaded) is cls and loaded.hook_name_out == sae.hook_name_out
    assert loaded.state_dict().keys() == sae.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[n], t) for n, t in sae.state_dict().items())
    x = torch.randn(6, 16)
    assert torch.equal(loaded(x), sae(x))


def write_folder(folder, cfg, weights):
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, folder / "sae_weights.safetensors")


def test_loading_refuses_what_it_does_not_implement_by_name(tmp_path):
    weights = {
        "W_enc": torch.zeros(16, 8),
        "W_dec": torch.zeros(8, 16),
        "b_enc": torch.zeros(8),
        "b_dec": torch.zeros(16),
    }
    base = {"d_in": 16, "d_sae": 8, "metadata": {"hook_name": "blocks.0.hook_resid_pre"}}
    cases = {
        "gated": ({**base, "architecture": "gated"}, "architecture 'gated' is not implemented"),
        "norm": (
            {**base, "architecture": "standard", "normalize_activations": "layer_norm"},
            "normalize_activations='layer_norm'",
        ),
        "head": ({**base, "metadata": {**base["metadata"], "hook_head_index": 2}}, "hook_head_index=2"),
        "sizes": ({**base, "d_sae": 9}, "cfg.json says d_sae=9"),
        "nohook": ({"d_in": 16, "d_sae": 8}, "names no hook"),
    }
    for name, (cfg, message) in cases.items():
        write_folder(tmp_path / name, cfg, weights)
        with pytest.raises(ValueError, match=message):
            load_sae(tmp_path / name)
    write_folder(tmp_path / "jump", {**base, "architecture": "jumprelu"}, weights)
    with pytest.raises(KeyError, match=r"lacks \['threshold'\]"):
        load_sae(tmp_path / "jump")
    with pytest.raises(KeyError, match=r"unexpected \['extra'\]"):
        SAE.from_state_dict({**weights, "extra": torch.zeros(1)}, "blocks.0.hook_resid_pre")
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "cfg.json").write_text("{}")
        load_sae(tmp_path / "empty")


def test_batch_topk_keeps_k_per_token_on_average_over_the_batch():
    sae = make(BatchTopKSAE, 16, "blocks.0.hook_resid_pre", k=3)
    acts = sae.encode(torch.randn(10, 16))
    assert (acts != 0).sum() == 30 and (acts >= 0).all()
    assert len(set((acts != 0).sum(-1).tolist())) > 1  # tokens share the budget unevenly


def test_evaluation_measures_against_an_independent_computation(model, tokens):
    hook = "blocks.1.hook_resid_pre"
    sae = make(SAE, 16, hook)
    result = evaluate_sae(model, sae, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    x = cache[hook].reshape(-1, 16).double().numpy()
    acts = sae.encode(cache[hook]).detach().reshape(-1, sae.d_sae).numpy()
    recons = sae(cache[hook]).detach().reshape(-1, 16).double().numpy()
    residual = ((x - recons) ** 2).sum(1)
    # total variance as E||x||^2 - ||E x||^2 (SAELens's form), not the code's centred sum
    variance = (x**2).sum(1).mean() - (x.mean(0) ** 2).sum()
    assert result.mse == pytest.approx(residual.mean(), rel=1e-5)
    assert result.explained_variance == pytest.approx(1 - residual.mean() / variance, rel=1e-4)
    assert result.l0 == pytest.approx(sum(int(v != 0) for row in acts for v in row) / len(acts))

    def replace_by_recons(act, hook):
        return sae(act).detach()

    ce_sae = lm_cross_entropy_loss(model.run_with_hooks(tokens, fwd_hooks=[(hook, replace_by_recons)]), tokens)
    assert result.ce_loss_with_sae == pytest.approx(ce_sae.item(), rel=1e-6)
    expected = (result.ce_loss_zero_ablation - ce_sae.item()) / (result.ce_loss_zero_ablation - result.ce_loss_clean)
    assert result.ce_loss_recovered == pytest.approx(expected, rel=1e-5)


def test_a_perfect_dictionary_recovers_everything_and_an_empty_one_nothing(model, tokens):
    hook = "blocks.1.hook_resid_pre"
    eye = torch.eye(16)
    # relu(x) - relu(-x) == x exactly: features +x_i and -x_i, decoded back with +1 and -1.
    perfect = SAE.from_state_dict(
        {
            "W_enc": torch.cat([eye, -eye], 1),
            "b_enc": torch.zeros(32),
            "W_dec": torch.cat([eye, -eye]),
            "b_dec": torch.zeros(16),
        },
        hook,
        apply_b_dec_to_input=False,
    )
    result = evaluate_sae(model, perfect, tokens)
    assert result.mse == 0 and result.explained_variance == 1 and result.ce_loss_recovered == 1
    assert result.ce_loss_with_sae == result.ce_loss_clean and result.l0 == 16
    empty = make(SAE, 16, hook)
    with torch.no_grad():
        empty.W_dec.zero_()
        empty.b_dec.zero_()
    result = evaluate_sae(model, empty, tokens)
    assert result.ce_loss_recovered == 0 and result.ce_loss_with_sae == result.ce_loss_zero_ablation
    assert result.explained_variance < 0.01
