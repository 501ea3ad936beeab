"""What code written for TransformerLens (SAELens, circuit-tracer, notebooks) finds on hooked: the
`transformer_lens` import path after `hooked.compat.install()`, hook points replaced by other modules or
hooked with plain PyTorch hooks, TransformerLens's methods and attributes, its writable run-time config,
and its helpers. The clients themselves run in tests/clients/."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import save_tiny, tiny_llama, tiny_tokenizer
from torch import nn
from transformers import GPT2Config

from hooked import HookedTransformer, HookedTransformerConfig, HookPoint, utils
from hooked.analysis.head_detection import HEAD_NAMES
from hooked.compat import convert_hf_model_config, get_official_model_name, get_pretrained_model_config


def run_python(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300, check=False
    )


def test_transformer_lens_resolves_to_hooked_only_after_install():
    result = run_python(
        """
        import importlib.util, sys
        import hooked
        assert importlib.util.find_spec("transformer_lens") is None or "hooked" not in str(
            importlib.util.find_spec("transformer_lens").origin), "without install(), nothing is redirected"
        assert "transformer_lens" not in sys.modules
        import hooked.compat
        hooked.compat.install()
        hooked.compat.install()  # a second call is harmless
        import transformer_lens
        from transformer_lens import ActivationCache, FactoredMatrix, HookedTransformer, HookedTransformerConfig
        from transformer_lens.HookedTransformer import HookedRootModule, Loss, Output
        from transformer_lens.hook_points import HookPoint
        from transformer_lens.utils import USE_DEFAULT_VALUE, get_tokens_with_bos_removed, lm_cross_entropy_loss
        from transformer_lens.components.mlps.can_be_used_as_mlp import CanBeUsedAsMLP
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config
        from transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache
        from transformer_lens import patching, head_detector, utils
        assert HookedTransformer is hooked.HookedTransformer and transformer_lens.HookedTransformer is HookedTransformer
        assert HookPoint is hooked.HookPoint and HookedRootModule is hooked.HookedRootModule
        assert ActivationCache is hooked.ActivationCache and FactoredMatrix is hooked.FactoredMatrix
        assert utils is hooked.utils and patching is hooked.patching and USE_DEFAULT_VALUE is None
        assert head_detector.HEAD_NAMES == ["previous_token_head", "duplicate_token_head", "induction_head"]
        assert Output(1, 2).loss == 2
        try:
            import transformer_lens.model_bridge
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("an unemulated submodule must not import")
        hooked.compat.uninstall()
        assert "transformer_lens" not in sys.modules
        print("ok")
        """
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_install_after_the_real_package_was_imported_says_what_to_do():
    result = run_python(
        """
        import sys, types
        sys.modules["transformer_lens"] = types.ModuleType("transformer_lens")  # as if the real one were loaded
        import hooked.compat
        try:
            hooked.compat.install()
        except RuntimeError as error:
            assert "before importing transformer_lens" in str(error), error
            print("ok")
        """
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return HookedTransformer(tiny_llama(n_layers=2, d_vocab=40, n_ctx=32))


@pytest.fixture
def tokens():
    return torch.randint(0, 40, (2, 7))


def test_a_plain_pytorch_hook_on_a_lazily_computed_point_fires_and_edits(model, tokens):
    """attn.hook_result is computed only when something listens; a torch forward hook counts."""
    seen = []

    def zero_head_1(module, inputs, output):
        seen.append(output.shape)
        output = output.clone()
        output[:, :, 1] = 0
        return output

    handle = model.blocks[0].attn.hook_result.register_forward_hook(zero_head_1)
    try:
        with torch.no_grad():
            edited = model(tokens)
    finally:
        handle.remove()

    def zero_head_1_hook(result, hook):
        result[:, :, 1] = 0

    with torch.no_grad():
        expected = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_result", zero_head_1_hook)])
    assert seen == [(2, 7, 4, 32)]
    torch.testing.assert_close(edited, expected, atol=0, rtol=0)
    assert not torch.equal(edited, model(tokens))


class Doubler(nn.Module):
    """A module put in a hook point's place (as SAELens puts its SAE wrapper)."""

    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("name", ["blocks.0.attn.hook_result", "blocks.1.attn.hook_pattern", "blocks.0.hook_q_input"])
def test_a_module_put_in_a_hook_points_place_receives_the_activation(model, tokens, name):
    with torch.no_grad():
        expected = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: 2 * x)])
        parent, _, leaf = name.rpartition(".")
        original = model.get_submodule(name)
        setattr(model.get_submodule(parent), leaf, Doubler())
        try:
            replaced = model(tokens)
        finally:
            setattr(model.get_submodule(parent), leaf, original)
        torch.testing.assert_close(replaced, expected, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(replaced, model(tokens))


class LensHookPoint(nn.Module):
    """Another library's hook point class with TransformerLens's interface (as SAELens puts back its own)."""

    def __init__(self):
        super().__init__()
        self.fns = []

    def add_hook(self, hook, dir="fwd", is_permanent=False, level=None, prepend=False):
        self.fns.append(hook)

    def remove_hooks(self, dir="fwd", including_permanent=False, level=None):
        self.fns.clear()

    def clear_context(self):
        pass

    def layer(self):
        return int(self.name.split(".")[1])

    def forward(self, x):
        for fn in self.fns:
            x = fn(x, self) if fn(x, self) is not None else x
        return x


def test_setup_keeps_a_transformerlens_style_hook_point(model, tokens):
    model.blocks[0].hook_resid_post = LensHookPoint()
    model.setup()
    assert "blocks.0.hook_resid_post" in model.hook_dict
    with torch.no_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0)])
        model.blocks[0].hook_resid_post = HookPoint()
        model.setup()
        expected = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0)])
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_has_hooks_is_a_truth_value_and_transformerlens_method(model):
    point = model.blocks[0].attn.hook_z
    assert not point.has_hooks and not point.has_hooks(dir="fwd")
    model.add_hook("blocks.0.attn.hook_z", lambda x, hook: None, is_permanent=True)
    assert point.has_hooks and point.has_hooks(dir="fwd") and not point.has_hooks(dir="bwd")
    assert not point.has_hooks(including_permanent=False)
    with model.hooks(bwd_hooks=[("blocks.0.attn.hook_z", lambda g, hook: None)]):
        level = model._last_hook_level
        assert point.has_hooks(dir="bwd", level=level) and not point.has_hooks(dir="fwd", level=level)
    model.reset_hooks(including_permanent=True)
    assert not point.has_hooks


def test_run_time_config_fields_are_writable_and_sizes_are_not(model, tokens):
    model.cfg.default_prepend_bos = False
    assert model.default_prepend_bos is False
    model.set_use_attn_result(True)
    assert model.cfg.use_attn_result is True
    with pytest.raises(AttributeError, match=r"cfg\.d_model is an architecture fact.*cfg\.replace\(d_model=\.\.\.\)"):
        model.cfg.d_model = 64
    assert model.cfg.d_model == 32

    # The logit soft cap is read at each run (circuit-tracer turns it off by writing 0).
    with torch.no_grad():
        plain = model(tokens)
        model.cfg.output_logits_soft_cap = 0.5
        capped = model(tokens)
        model.cfg.output_logits_soft_cap = 0.0
    torch.testing.assert_close(capped, 0.5 * torch.tanh(plain / 0.5))
    torch.testing.assert_close(model(tokens), plain, atol=0, rtol=0)


def test_the_config_derives_n_heads_and_takes_d_vocab_from_the_tokenizer():
    cfg = HookedTransformerConfig(d_model=32, d_head=8, n_layers=1, n_ctx=16, d_vocab=-1, act_fn="gelu")
    assert cfg.n_heads == 4
    tokenizer = tiny_tokenizer()
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    assert model.cfg.d_vocab == model.cfg.d_vocab_out == max(tokenizer.get_vocab().values()) + 1
    assert model.W_E.shape[0] == model.cfg.d_vocab
    with pytest.raises(ValueError, match="pass a tokenizer"):
        HookedTransformer(cfg)
    with pytest.raises(ValueError, match="d_head to divide d_model"):
        HookedTransformerConfig(d_model=30, d_head=8, n_layers=1, n_ctx=16, d_vocab=10)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    tokenizer = tiny_tokenizer()
    save_tiny(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=len(tokenizer)), folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_from_pretrained_takes_transformerlens_arguments(gpt2_folder):
    model = HookedTransformer.from_pretrained(model_name=str(gpt2_folder), move_to_device=False, device="meta")
    assert model.device.type == "cpu"  # move_to_device=False leaves the model on the CPU, as in TransformerLens
    same = HookedTransformer.from_pretrained_no_processing(model_name=str(gpt2_folder))
    tokens = torch.tensor([[0, 5, 6, 7]])
    assert torch.equal(model(tokens), same(tokens))
    with pytest.raises(TypeError, match="both name_or_path and model_name"):
        HookedTransformer.from_pretrained(gpt2_folder, model_name=str(gpt2_folder))
    with pytest.raises(NotImplementedError, match="n_devices=1"):
        HookedTransformer.from_pretrained(gpt2_folder, n_devices=2)
    assert get_pretrained_model_config(str(gpt2_folder)) == model.cfg
    assert convert_hf_model_config(str(gpt2_folder))["n_layers"] == 2
    assert get_official_model_name("gpt2-small") == "openai-community/gpt2"


def test_transformerlens_model_helpers(gpt2_folder):
    model = HookedTransformer.from_pretrained(gpt2_folder)
    text = "the cat sat on the mat"
    tokens = model.to_tokens(text, move_to_device=False)
    assert tokens.device.type == "cpu" and tokens[0, 0] == model.tokenizer.bos_token_id
    residual, embedded_tokens, shortformer, mask = model.input_to_embed(text)
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(residual, cache["blocks.0.hook_resid_pre"], atol=0, rtol=0)
    assert torch.equal(embedded_tokens, tokens) and shortformer is None and mask is None
    assert torch.equal(model(tokens[0]), model(tokens))  # a 1-D sequence is one batch row
    assert model.n_params_total == sum(p.numel() for p in model.parameters())
    assert model.n_params_total > model.cfg.n_params  # cfg.n_params leaves embeddings, biases and norms out


def test_head_names():
    assert HEAD_NAMES == ["previous_token_head", "duplicate_token_head", "induction_head"]


def test_attention_exposes_transformerlens_buffers():
    cfg = tiny_llama(n_layers=2, d_vocab=40, n_ctx=12, sliding_window=3, attn_types=("local", "global"))
    model = HookedTransformer(cfg)
    local, full = model.blocks[0].attn, model.blocks[1].attn
    assert (local.attn_type, full.attn_type) == ("local", "global")
    q, k = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    assert torch.equal(full.mask, k <= q)
    assert torch.equal(local.mask, (k <= q) & (q - k < 3))
    # rotary tables, worked out: angle(p, j) = p * base^(-2j / rotary_dim), each angle twice (j, j + half).
    half = cfg.rotary_dim // 2
    angles = torch.arange(12.0)[:, None] * cfg.rotary_base ** (-2 * torch.arange(half) / cfg.rotary_dim)
    torch.testing.assert_close(full.rotary_cos, torch.cat([angles.cos(), angles.cos()], -1))
    torch.testing.assert_close(full.rotary_sin, torch.cat([angles.sin(), angles.sin()], -1))
    shared = torch.zeros(12, 12, dtype=torch.bool)
    full.mask = shared  # circuit-tracer writes them back to share memory
    assert full.mask is shared


def test_get_tokens_with_bos_removed():
    tokenizer = tiny_tokenizer()
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    right = torch.tensor([[bos, 7, 8, 9], [bos, 7, pad, pad]])
    tokenizer.padding_side = "right"
    assert utils.get_tokens_with_bos_removed(tokenizer, right).tolist() == [[7, 8, 9], [7, pad, pad]]
    left = torch.tensor([[bos, 7, 8, 9], [pad, pad, bos, 7]])
    tokenizer.padding_side = "left"
    assert utils.get_tokens_with_bos_removed(tokenizer, left).tolist() == [[7, 8, 9], [pad, pad, 7]]


def test_get_device_names_a_device_torch_has():
    device = utils.get_device()
    assert isinstance(device, torch.device)
    assert device.type == ("cuda" if torch.cuda.is_available() else device.type)
    assert math.isfinite(torch.ones(1, device=device).sum().item())


def test_notebook_names_and_messages(model, tokens):
    """What a TransformerLens user's first afternoon hit: loss_fn, CircuitsVis's spelling, a cache-key typo,
    and the Main Demo's hook_v head ablation on a grouped-query model."""
    with torch.no_grad():
        logits = model(tokens)
        assert torch.equal(model.loss_fn(logits, tokens), model(tokens, return_type="loss"))
        _, cache = model.run_with_cache(tokens)
    with pytest.raises(KeyError, match="Did you mean: blocks.0.attn.hook_pattern"):
        cache["blocks.0.attn.hook_patern"]

    def ablate_head_3(value, hook):
        value[:, :, 3, :] = 0.0  # head 3 of 4 query heads; hook_v has 2 kv heads here

    with pytest.raises(IndexError, match=r"2 key/value heads.*query head h reads kv head h // 2.*hook_z"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_v", ablate_head_3)])
    assert not any(hp.has_hooks for hp in model.hook_dict.values())
    assert [model.cfg.kv_head(h) for h in range(4)] == [0, 0, 1, 1]
    with pytest.raises(IndexError, match="4 heads"):
        model.cfg.kv_head(4)

    from hooked import visualization as cv

    view = cv.attention.attention_patterns(tokens=["a", "b", "c"], attention=torch.rand(2, 3, 3).softmax(-1))
    assert isinstance(view, cv.AttentionView) and '"b"' in view.html()
    heads = cv.attention.attention_heads(attention=torch.rand(2, 3, 3).softmax(-1), tokens=["x", "y", "z"])
    assert '"y"' in heads.html()
