"""hooked's own dictionaries (hooked.dictionaries) against the real SAELens: a folder SAELens saved loads in
hooked and computes the same features and reconstruction as SAELens's module; one hooked saved loads in
SAELens; spliced into the same model, both give the same feature activations and logits."""

from __future__ import annotations

import pytest
import torch
from sae_lens import (
    SAE,
    HookedSAETransformer,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    Transcoder,
    TranscoderConfig,
)
from sae_lens.saes.sae import SAEMetadata

import hooked
from hooked import dictionaries

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")

RESID, MLP_IN, MLP_OUT = "blocks.0.hook_resid_post", "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"
TC = {"d_out": 32, "apply_b_dec_to_input": False}
KINDS = {
    "standard": (StandardSAE, StandardSAEConfig, {}, RESID),
    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}, RESID),
    "topk": (TopKSAE, TopKSAEConfig, {"k": 6}, RESID),
    "topk-rescaled": (TopKSAE, TopKSAEConfig, {"k": 6, "rescale_acts_by_decoder_norm": True}, RESID),
    "hook_z": (StandardSAE, StandardSAEConfig, {"reshape_activations": "hook_z"}, "blocks.1.attn.hook_z"),
    "transcoder": (Transcoder, TranscoderConfig, TC, (MLP_IN, MLP_OUT)),
    "jumprelu_transcoder": (JumpReLUTranscoder, JumpReLUTranscoderConfig, TC, (MLP_IN, MLP_OUT)),
    "skip_transcoder": (SkipTranscoder, SkipTranscoderConfig, TC, (MLP_IN, MLP_OUT)),
}


def saelens_sae(kind: str):
    cls, config, fields, hooks = KINDS[kind]
    hook, hook_out = hooks if isinstance(hooks, tuple) else (hooks, None)
    metadata = SAEMetadata(hook_name=hook, **({"hook_name_out": hook_out} if hook_out else {}))
    torch.manual_seed(0)
    sae = cls(config(d_in=32, d_sae=48, metadata=metadata, **fields))
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0, 0.3)
        sae.b_enc.fill_(0.05)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0.0, 0.3)
    return sae


@pytest.fixture(scope="module")
def models(tiny_folder):
    return hooked.HookedTransformer.from_pretrained(tiny_folder), HookedSAETransformer.from_pretrained(tiny_folder)


@pytest.fixture(scope="module")
def tokens(models):
    return models[0].to_tokens(["the cat sat on the mat.", "When Mary and John went to the store"])


@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"hook_z"}))  # hook_z: spliced below, heads and all
def test_a_folder_saelens_saved_computes_the_same_features_here(tmp_path, kind):
    theirs = saelens_sae(kind)
    theirs.save_model(tmp_path)
    ours = dictionaries.load_sae(tmp_path)
    assert (ours.hook_name, ours.hook_name_out) == (
        theirs.cfg.metadata.hook_name,
        theirs.cfg.metadata.hook_name_out or ours.hook_name,
    )
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        acts = theirs.encode(x)
        assert (acts > 0).any() and (acts == 0).any()
        assert torch.equal(ours.encode(x), acts)
        assert torch.equal(ours.decode(acts), theirs.decode(acts))
        if kind == "skip_transcoder":
            torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk", "skip_transcoder"])
def test_a_folder_saved_here_loads_in_saelens_as_the_same_sae(tmp_path, kind):
    ours = dictionaries.load_sae(saelens_sae(kind).save_model(tmp_path / "theirs")[0].parent)
    dictionaries.save_sae(ours, tmp_path / "ours")
    theirs = SAE.load_from_disk(tmp_path / "ours")
    x = torch.randn(7, 32)
    with torch.no_grad():
        assert torch.equal(theirs.encode(x), ours.encode(x))
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "hook_z", "transcoder"])
def test_spliced_into_the_same_model_both_give_the_same_features_and_logits(models, tokens, tmp_path, kind):
    model, sae_model = models
    theirs = saelens_sae(kind)
    theirs.save_model(tmp_path)
    ours = dictionaries.load_sae(tmp_path)
    out = ours.hook_name_out
    # SAELens caches its SAE's points under the output hook, as hooked does.
    for error in (False, True):
        their_logits, their_cache = sae_model.run_with_cache_with_saes(tokens, saes=[theirs], use_error_term=error)
        our_logits, our_cache = model.run_with_cache_with_saes(tokens, saes=[ours], use_error_term=error)
        for part in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_output"):
            torch.testing.assert_close(our_cache[f"{out}.{part}"], their_cache[f"{out}.{part}"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(our_logits, their_logits, rtol=1e-5, atol=1e-5)
    # With the error term: the clean logits, bit for bit, here (cached as well: caching every point takes the
    # explicit attention path, whose last bits differ from the fused one's).
    assert torch.equal(our_logits, model.run_with_cache(tokens)[0])
