"""from_pretrained: sources, dtypes, memory sharing, and every way a checkpoint can be wrong."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import assert_close, rope_kwargs, save_tiny, tiny_tokenizer
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, LlamaConfig

from hooked import HookedTransformer
from hooked.loading import CheckpointMismatchError, UnsupportedArchitectureError, UnsupportedConfigError

LLAMA = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=64,
)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    hf = save_tiny(LlamaConfig(**LLAMA), folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder, hf


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    hf = save_tiny(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=32), folder)
    return folder, hf


def logits_of(model, tokens):
    with torch.no_grad():
        return model(tokens) if isinstance(model, HookedTransformer) else model(tokens).logits


def test_sharded_checkpoint(tmp_path):
    hf = save_tiny(LlamaConfig(**LLAMA), tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    tokens = torch.randint(0, 128, (2, 9))
    assert_close(logits_of(HookedTransformer.from_pretrained(tmp_path), tokens), logits_of(hf, tokens), "logits")


def _as_pytorch_bin(folder, legacy=False):
    """Rewrite a safetensors checkpoint as transformers 4's `safe_serialization=False` did (transformers 5
    writes safetensors only): pytorch_model.bin, or shards listed by pytorch_model.bin.index.json."""
    index = folder / "model.safetensors.index.json"
    renamed = {}
    for file in sorted(folder.glob("*.safetensors")):
        target = file.name.replace("model", "pytorch_model", 1).replace(".safetensors", ".bin")
        torch.save(load_file(file), folder / target, _use_new_zipfile_serialization=not legacy)
        renamed[file.name] = target
        file.unlink()
    if index.exists():
        content = json.loads(index.read_text())
        content["weight_map"] = {name: renamed[file] for name, file in content["weight_map"].items()}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(content))
        index.unlink()


@pytest.mark.parametrize("form", ["single", "sharded", "pre-1.6 format"])
def test_pytorch_model_bin_loads_like_safetensors(tmp_path, form):
    shard = {"max_shard_size": "40KB"} if form == "sharded" else {}
    save_tiny(LlamaConfig(**LLAMA), tmp_path / "st", **shard)
    save_tiny(LlamaConfig(**LLAMA), tmp_path / "bin", **shard)
    _as_pytorch_bin(tmp_path / "bin", legacy=form == "pre-1.6 format")
    assert not list((tmp_path / "bin").glob("*.safetensors"))
    assert (tmp_path / "bin" / "pytorch_model.bin.index.json").exists() == (form == "sharded")
    tokens = torch.randint(0, 128, (2, 9))
    expected = logits_of(HookedTransformer.from_pretrained(tmp_path / "st"), tokens)
    assert torch.equal(logits_of(HookedTransformer.from_pretrained(tmp_path / "bin"), tokens), expected)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious pickle does: call a function of the attacker's choosing on load
        return (os.system, (f"touch {self.marker}",))


def test_a_pytorch_model_bin_that_would_run_code_is_refused_unrun(tmp_path):
    import pickle

    from hooked.loading.checkpoint import UnsafeCheckpointError

    save_tiny(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16), tmp_path)
    _as_pytorch_bin(tmp_path)
    marker = tmp_path / "code-ran"
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "payload": _RunsCode(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match=r"pytorch_model\.bin holds objects other than tensors") as error:
        HookedTransformer.from_pretrained(tmp_path)
    assert isinstance(error.value.__cause__, pickle.UnpicklingError)
    assert "system" in str(error.value)  # torch names the global it refused
    assert not marker.exists()


def test_a_folder_without_weights_names_what_it_holds(tmp_path):
    save_tiny(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16), tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError, match=r"neither \.safetensors files nor pytorch_model\.bin .*weights\.pt"):
        HookedTransformer.from_pretrained(tmp_path)


def test_in_memory_hf_model_is_copied_not_shared(llama_dir):
    _, hf = llama_dir
    model = HookedTransformer.from_pretrained(hf_model=hf)
    tokens = torch.randint(0, 128, (2, 9))
    assert_close(logits_of(model, tokens), logits_of(hf, tokens), "logits")
    with torch.no_grad():
        model.blocks[0].attn.W_Q.zero_()
    assert hf.model.layers[0].self_attn.q_proj.weight.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_reference_in_that_dtype(llama_dir, dtype):
    folder, hf = llama_dir
    model = HookedTransformer.from_pretrained(folder, dtype=dtype)
    assert model.dtype == dtype and all(p.dtype == dtype for p in model.parameters())
    tokens = torch.randint(0, 128, (2, 9))
    reference = logits_of(hf.to(dtype), tokens)
    hf.float()
    assert_close(logits_of(model, tokens), reference, "logits", dtype)


def test_weights_are_one_copy(gpt2_dir, llama_dir):
    """Tied unembedding and GPT-2's fused qkv are views of one tensor, not copies."""
    gpt2 = HookedTransformer.from_pretrained(gpt2_dir[0])
    assert gpt2.unembed.W_U.untyped_storage().data_ptr() == gpt2.embed.W_E.untyped_storage().data_ptr()
    attn = gpt2.blocks[1].attn
    storages = {w.untyped_storage().data_ptr() for w in (attn.W_Q, attn.W_K, attn.W_V)}
    assert len(storages) == 1
    llama = HookedTransformer.from_pretrained(llama_dir[0])
    n_params = sum(p.numel() for p in llama.parameters())
    n_stored = sum(t.numel() for t in load_file(llama_dir[0] / "model.safetensors").values())
    assert n_params == n_stored


def test_tokenizer_comes_from_the_folder(llama_dir):
    folder, hf = llama_dir
    model = HookedTransformer.from_pretrained(folder)
    assert model.tokenizer is not None
    assert model.to_str_tokens("hello world")[0] == "<bos>"
    for text in ("the cat sat", "When Mary and John"):
        assert model.tokenizer(text)["input_ids"] == tiny_tokenizer()(text)["input_ids"]


def test_first_n_layers_and_n_ctx(llama_dir):
    folder, _ = llama_dir
    model = HookedTransformer.from_pretrained(folder, first_n_layers=2, n_ctx=16)
    assert model.cfg.n_layers == 2 and len(model.blocks) == 2 and model.cfg.n_ctx == 16
    full = HookedTransformer.from_pretrained(folder)
    tokens = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens, stop_at_layer=2), full(tokens, stop_at_layer=2))
    with pytest.raises(ValueError, match="n_ctx=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MadeUpForCausalLM"]}))
    with pytest.raises(UnsupportedArchitectureError, match="MadeUpForCausalLM.*GPTNeoForCausalLM.*LlamaForCausalLM"):
        HookedTransformer.from_pretrained(tmp_path)


def _edit_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


def test_a_model_type_saved_under_another_architecture_is_named(tmp_path, gpt2_dir):
    """Transformers saves EXAONE 3 (model_type "exaone") as LlamaForCausalLM, with EXAONE's tensor names: the
    error names the model type, not a config/weights mismatch."""
    save_tiny(LlamaConfig(**LLAMA), tmp_path / "exaone")
    _edit_config(tmp_path / "exaone", model_type="exaone")
    with pytest.raises(
        UnsupportedArchitectureError, match=r"LlamaForCausalLM but its model_type is 'exaone'.*not supported"
    ):
        HookedTransformer.from_pretrained(tmp_path / "exaone")
    (tmp_path / "gpt2").mkdir()
    for file in gpt2_dir[0].iterdir():
        (tmp_path / "gpt2" / file.name).write_bytes(file.read_bytes())
    _edit_config(tmp_path / "gpt2", architectures=["LlamaForCausalLM"])
    with pytest.raises(UnsupportedArchitectureError, match=r'It is a GPT2LMHeadModel: set "architectures"'):
        HookedTransformer.from_pretrained(tmp_path / "gpt2")
    _edit_config(tmp_path / "gpt2", architectures=["GPT2LMHeadModel"])  # as saved, it loads
    HookedTransformer.from_pretrained(tmp_path / "gpt2")


def test_config_fields_that_change_numbers_are_refused(tmp_path):
    # LongRoPE outside Phi-3: transformers' Llama generation would keep stale keys at the switch.
    longrope = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}
    save_tiny(LlamaConfig(**LLAMA, **rope_kwargs(10000.0, longrope)), tmp_path / "longrope")
    with pytest.raises(UnsupportedConfigError, match="rope_type='longrope'"):
        HookedTransformer.from_pretrained(tmp_path / "longrope")
    save_tiny(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16), tmp_path / "gpt2")
    _edit_config(tmp_path / "gpt2", activation_function="quick_gelu")
    with pytest.raises(UnsupportedConfigError, match="activation_function='quick_gelu'"):
        HookedTransformer.from_pretrained(tmp_path / "gpt2")


def _rewrite_weights(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    save_tiny(LlamaConfig(**LLAMA), tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointMismatchError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        HookedTransformer.from_pretrained(tmp_path)
    save_tiny(LlamaConfig(**LLAMA), tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.update({"model.layers.0.extra_gate.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensors: model\.layers\.0\.extra_gate\.weight"):
        HookedTransformer.from_pretrained(tmp_path)


def test_wrong_shapes_are_named(tmp_path):
    save_tiny(LlamaConfig(**LLAMA), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 80
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match=r"gate_proj\.weight gives blocks\.0\.mlp\.W_gate the shape"):
        HookedTransformer.from_pretrained(tmp_path)


def test_paths_that_do_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        HookedTransformer.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        HookedTransformer.from_pretrained("no-such-org/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        HookedTransformer.from_pretrained(tmp_path / "empty")


def test_hub_ids_and_transformerlens_names_load_from_the_hub_cache(tmp_path, llama_dir, monkeypatch):
    """A hub id resolves through huggingface_hub's cache (offline here, as in tests); TransformerLens's
    short names stand for hub ids ("gpt2-small" is openai-community/gpt2)."""
    import huggingface_hub.constants

    folder, _ = llama_dir
    snapshot = tmp_path / "models--openai-community--gpt2" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (tmp_path / "models--openai-community--gpt2" / "refs").mkdir()
    (tmp_path / "models--openai-community--gpt2" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    tokens = torch.randint(0, 128, (1, 6))
    expected = logits_of(HookedTransformer.from_pretrained(folder), tokens)  # (hf may have been rounded by now)
    for name in ("openai-community/gpt2", "gpt2-small", "GPT2"):
        assert torch.equal(logits_of(HookedTransformer.from_pretrained(name), tokens), expected), name
    with pytest.raises(FileNotFoundError, match="'pythia-70m' \\(hub id 'EleutherAI/pythia-70m'\\)"):
        HookedTransformer.from_pretrained("pythia-70m")
    with pytest.raises(FileNotFoundError, match="TransformerLens's own toy models"):
        HookedTransformer.from_pretrained("attn-only-2l")


def test_dtype_by_name_and_transformers_keywords(llama_dir):
    folder, hf = llama_dir
    bf16 = HookedTransformer.from_pretrained(folder, dtype="bfloat16")
    assert bf16.dtype == bf16.cfg.dtype == torch.bfloat16 and bf16.cfg.device == "cpu"
    assert HookedTransformer.from_pretrained(folder, torch_dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="dtype 'bf17' is not known"):
        HookedTransformer.from_pretrained(folder, dtype="bf17")
    model = HookedTransformer.from_pretrained(folder, default_prepend_bos=False, default_padding_side="left")
    assert model.default_prepend_bos is False and model.tokenizer.padding_side == "left"
    fresh = type(hf)(hf.config)  # built from a config, so it has no `architectures`
    fresh.config.architectures = None
    tokens = torch.randint(0, 128, (1, 6))
    ours = HookedTransformer.from_pretrained(hf_model=fresh.eval())
    assert_close(logits_of(ours, tokens), logits_of(fresh, tokens), "logits")


def test_unknown_keyword_and_unimplemented_processing_are_errors(llama_dir):
    with pytest.raises(TypeError, match="fold_layernorm"):
        HookedTransformer.from_pretrained(llama_dir[0], fold_layernorm=True)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"architectures": ["MambaForCausalLM"]},
            r"MambaForCausalLM is a state-space model \(Mamba\), not a transformer",
        ),
        ({"architectures": ["JambaForCausalLM"]}, "hybrid of attention and Mamba layers"),
        (
            {"architectures": ["LlavaForConditionalGeneration"], "text_config": {"model_type": "llama"}},
            r"multimodal wrapper \(its text model: 'llama'\).*Load the language model on its own",
        ),
    ],
)
def test_non_transformers_and_multimodal_wrappers_are_refused_with_the_reason(config, message):
    from hooked.loading.convert import adapter_for

    with pytest.raises(UnsupportedArchitectureError, match=message):
        adapter_for(config)
