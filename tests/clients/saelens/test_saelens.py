"""SAELens (the real package) on a hooked model: splicing SAEs at residual, per-head and head-result hook
points, its ActivationsStore on text and on tokens, a few training steps, and run_evals.

Each result is checked against hooked itself without the SAE: with the error term on, the logits are the
clean ones; the SAE's input is the clean activation at its hook; the store's activations are what
run_with_cache gives for the same tokens.
"""

from __future__ import annotations

import datasets
import pytest
import torch
from sae_lens import (
    ActivationsStore,
    HookedSAETransformer,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    StandardSAE,
    StandardSAEConfig,
    StandardTrainingSAEConfig,
    run_evals,
)
from sae_lens.evals import EvalConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training.activation_scaler import ActivationScaler
from transformer_lens import HookedTransformer

import hooked

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")

TEXTS = ["the cat sat on the mat.", "When Mary and John went to the store, John gave a drink to Mary!"] * 40


@pytest.fixture(scope="module")
def model(tiny_folder):
    return HookedSAETransformer.from_pretrained(tiny_folder)


@pytest.fixture(scope="module")
def tokens(model):
    return model.to_tokens(TEXTS[:2])


def test_transformer_lens_names_are_hookeds(model):
    assert HookedTransformer is hooked.HookedTransformer
    assert isinstance(model, HookedSAETransformer) and isinstance(model, hooked.HookedTransformer)
    assert "blocks.0.mlp.hook_in" in model.hook_dict  # HookedSAETransformer's own addition, wired by setup()


def sae_for(hook: str, d_in: int, prepend_bos: bool = False, **fields) -> StandardSAE:
    torch.manual_seed(0)
    metadata = SAEMetadata(hook_name=hook, prepend_bos=prepend_bos)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=48, metadata=metadata, **fields))
    with torch.no_grad():
        sae.b_enc.fill_(0.1)  # some features active on every token, so the SAE changes what it replaces
    return sae


HOOKS = {
    "blocks.0.hook_resid_post": {},
    "blocks.1.attn.hook_z": {"reshape_activations": "hook_z"},  # [batch, pos, n_heads, d_head], flattened
    "blocks.0.attn.hook_result": {},  # [batch, pos, n_heads, d_model]: computed only when something listens
}


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_a_spliced_sae_sees_the_clean_activation_and_its_error_term_restores_the_logits(model, tokens, hook):
    d_in = model.cfg.n_heads * model.cfg.d_head if hook.endswith("hook_z") else model.cfg.d_model
    sae = sae_for(hook, d_in, **HOOKS[hook])
    clean_logits, clean_cache = model.run_with_cache(tokens, names_filter=hook)

    with_error = model.run_with_saes(tokens, saes=[sae], use_error_term=True)
    torch.testing.assert_close(with_error, clean_logits, atol=1e-5, rtol=1e-5)
    without_error = model.run_with_saes(tokens, saes=[sae], use_error_term=False)
    assert (without_error - clean_logits).abs().max() > 1e-3  # the reconstruction really replaced the activation

    logits, cache = model.run_with_cache_with_saes(tokens, saes=[sae])
    torch.testing.assert_close(logits, without_error)
    sae_input = cache[f"{hook}.hook_sae_input"]
    torch.testing.assert_close(sae_input.reshape(clean_cache[hook].shape), clean_cache[hook])
    for part in ("hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_output"):
        assert f"{hook}.{part}" in cache, part
    assert (cache[f"{hook}.hook_sae_acts_post"] > 0).any()

    # Afterwards the model is its clean self, with its own hook point back in place.
    assert type(model.get_submodule(hook)) is hooked.HookPoint and hook in model.hook_dict
    torch.testing.assert_close(model(tokens), clean_logits, atol=0, rtol=0)


def test_feature_edits_through_ordinary_hooks_propagate(model, tokens):
    hook = "blocks.0.hook_resid_post"
    sae = sae_for(hook, model.cfg.d_model)
    kept = model.run_with_saes(tokens, saes=[sae], use_error_term=True)

    def zero_features(acts, hook):
        return torch.zeros_like(acts)

    with model.saes(saes=[sae], use_error_term=True):
        edited = model.run_with_hooks(tokens, fwd_hooks=[(f"{hook}.hook_sae_acts_post", zero_features)])
    assert (edited - kept).abs().max() > 1e-3


def dataset_of_tokens(model, n_rows=64, context=16):
    torch.manual_seed(1)
    return datasets.Dataset.from_dict({"input_ids": torch.randint(4, model.cfg.d_vocab, (n_rows, context)).tolist()})


def small_store(model, sae, dataset) -> ActivationsStore:
    """SAELens's store over `dataset`, in batches of 4 prompts of 16 tokens."""
    return ActivationsStore.from_sae(
        model,
        sae,
        dataset=dataset,
        context_size=16,
        streaming=False,
        store_batch_size_prompts=4,
        n_batches_in_buffer=2,
        train_batch_size_tokens=32,
    )


@pytest.mark.parametrize("kind", ["tokens", "text"])
def test_activations_store_gives_the_models_activations(model, kind):
    hook = "blocks.1.hook_resid_pre"
    sae = sae_for(hook, model.cfg.d_model, prepend_bos=kind == "text")
    dataset = dataset_of_tokens(model) if kind == "tokens" else datasets.Dataset.from_dict({"text": TEXTS})
    store = small_store(model, sae, dataset)
    batch = store.get_batch_tokens()
    assert batch.shape == (4, 16)
    activations = store.get_activations(batch)  # [batch, context, d_in]
    _, cache = model.run_with_cache(batch, names_filter=hook)
    torch.testing.assert_close(activations.reshape(cache[hook].shape), cache[hook])


def test_training_runner_trains_an_sae_on_the_model(model, tmp_path):
    hook = "blocks.0.hook_resid_post"
    config = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=64, l1_coefficient=1e-3),
        model_name="tiny",
        hook_name=hook,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=16,
        training_tokens=4096,
        train_batch_size_tokens=128,
        store_batch_size_prompts=8,
        n_batches_in_buffer=32,
        prepend_bos=False,
        device="cpu",
        n_eval_batches=1,
        eval_batch_size_prompts=4,
        output_path=str(tmp_path),
        checkpoint_path=None,
        logger=LoggingConfig(log_to_wandb=False),
        exclude_special_tokens=False,
        n_batches_for_norm_estimate=2,
        lr=3e-3,
    )
    dataset = dataset_of_tokens(model, n_rows=256)
    runner = LanguageModelSAETrainingRunner(config, override_dataset=dataset, override_model=model)
    sae = runner.run()
    assert (tmp_path / "sae_weights.safetensors").exists() and (tmp_path / "cfg.json").exists()

    tokens = torch.tensor(dataset["input_ids"][:8])
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    x = cache[hook].reshape(-1, model.cfg.d_model)
    trained_mse = (sae.decode(sae.encode(x)) - x).pow(2).mean()
    untrained = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=64))
    untrained_mse = (untrained.decode(untrained.encode(x)) - x).pow(2).mean()
    assert trained_mse < 0.5 * untrained_mse


def test_run_evals_measures_the_model_it_is_given(model):
    hook = "blocks.0.hook_resid_post"
    sae = sae_for(hook, model.cfg.d_model)
    dataset = dataset_of_tokens(model)
    store = small_store(model, sae, dataset)
    eval_config = EvalConfig(
        n_eval_reconstruction_batches=1,
        n_eval_sparsity_variance_batches=1,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    metrics, _ = run_evals(sae, store, model, ActivationScaler(), eval_config, exclude_special_tokens=False)
    performance = metrics["model_performance_preservation"]
    # SAELens's clean loss is the model's own next-token loss on the store's first batch.
    store_again = small_store(model, sae, dataset)
    batch = store_again.get_batch_tokens(4)
    assert performance["ce_loss_without_sae"] == pytest.approx(model(batch, return_type="loss").item(), rel=1e-5)
    assert performance["ce_loss_with_sae"] > performance["ce_loss_without_sae"]  # an untrained SAE hurts
    assert metrics["model_behavior_preservation"]["kl_div_with_sae"] > 0
