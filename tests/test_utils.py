"""hooked.utils: hook-name shorthand, losses, sampling, slicing, test_prompt and dataset tokenization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, tiny_llama, tiny_tokenizer

from hooked import FactoredMatrix, HookedTransformer, HookedTransformerConfig, utils
from hooked.utils import Slice, get_act_name

GPT2_LIKE = HookedTransformerConfig(d_model=32, n_layers=2, n_heads=4, d_vocab=128, n_ctx=40)
LLAMA_LIKE = tiny_llama(n_layers=2, d_vocab=128, n_ctx=40)

# ---- get_act_name -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("k", 6, "a"), "blocks.6.attn.hook_k"),
        (("k6a",), "blocks.6.attn.hook_k"),
        (("pre5",), "blocks.5.mlp.hook_pre"),
        (("pre", 5), "blocks.5.mlp.hook_pre"),
        (("post", 0, "m"), "blocks.0.mlp.hook_post"),
        (("scale4ln1",), "blocks.4.ln1.hook_scale"),
        (("scale", 4, "ln1"), "blocks.4.ln1.hook_scale"),
        (("normalized", 1, "ln2"), "blocks.1.ln2.hook_normalized"),
        (("scale",), "ln_final.hook_scale"),
        (("normalized",), "ln_final.hook_normalized"),
        (("attn", 3), "blocks.3.attn.hook_pattern"),
        (("pattern", 3), "blocks.3.attn.hook_pattern"),
        (("attn_logits", 3), "blocks.3.attn.hook_attn_scores"),
        (("query", 2), "blocks.2.attn.hook_q"),
        (("mlp_post", 2), "blocks.2.mlp.hook_post"),
        (("resid_pre", 10), "blocks.10.hook_resid_pre"),
        (("resid_pre10",), "blocks.10.hook_resid_pre"),
        (("resid_mid", 0, "b"), "blocks.0.hook_resid_mid"),
        (("attn_out", 1), "blocks.1.hook_attn_out"),
        (("q_input", 1), "blocks.1.hook_q_input"),
        (("embed",), "hook_embed"),
        (("pos_embed",), "hook_pos_embed"),
        (("tokens",), "hook_tokens"),
        (("blocks.0.attn.hook_z",), "blocks.0.attn.hook_z"),
        (("hook_embed",), "hook_embed"),
    ],
)
def test_get_act_name_shorthand(args, expected):
    assert get_act_name(*args) == expected


def test_get_act_name_errors_name_the_missing_part():
    with pytest.raises(ValueError, match="give a layer"):
        get_act_name("resid_pre")
    with pytest.raises(ValueError, match="ln1"):
        get_act_name("scale", 2)


def _layer_0_shorthands(cfg: HookedTransformerConfig) -> list[tuple]:
    attn = ["q", "k", "v", "z", "result", "pattern", "attn_scores"]
    attn += ["rot_q", "rot_k"] if cfg.positional_embedding_type == "rotary" else []
    mlp = ["pre", "post"] + (["pre_linear"] if cfg.gated_mlp else [])  # "mid" is SoLU's, absent here
    block = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in"]
    block += ["attn_in", "q_input", "k_input", "v_input"]
    top = ["embed", "tokens"] + (["pos_embed"] if cfg.positional_embedding_type == "standard" else [])
    forms = [(name, 0) for name in attn + mlp + block] + [(f"{name}0",) for name in attn + mlp + block]
    forms += [(name, 0, norm) for name in ("scale", "normalized") for norm in ("ln1", "ln2")]
    forms += [(f"{name}0{norm}",) for name in ("scale", "normalized") for norm in ("ln1", "ln2")]
    return forms + [(name,) for name in top] + [("scale",), ("normalized",)]


@pytest.mark.parametrize("cfg", [GPT2_LIKE, LLAMA_LIKE], ids=["gpt2", "llama"])
def test_every_shorthand_names_a_hook_point_and_covers_them_all(cfg):
    model = HookedTransformer(cfg)
    produced = {get_act_name(*form) for form in _layer_0_shorthands(cfg)}
    assert produced <= set(model.hook_dict), produced - set(model.hook_dict)
    reachable = {name for name in model.hook_dict if not name.startswith(("blocks.1.", "unembed."))}
    assert produced == reachable


# ---- losses -------------------------------------------------------------------------------------


def test_lm_cross_entropy_loss_matches_torch():
    logits, tokens = torch.randn(3, 7, 50), torch.randint(0, 50, (3, 7))
    flat_logits, flat_targets = logits[:, :-1].reshape(-1, 50), tokens[:, 1:].reshape(-1)
    assert_close(utils.lm_cross_entropy_loss(logits, tokens), F.cross_entropy(flat_logits, flat_targets), "logits")
    per_token = utils.lm_cross_entropy_loss(logits, tokens, per_token=True)
    expected = F.cross_entropy(flat_logits, flat_targets, reduction="none").reshape(3, 6)
    assert_close(per_token, expected, "logits")
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, :2] = 0  # left padding: the pairs (0,1) and (1,2) of row 0 are not real
    mask[2, 5:] = 0  # right padding: the pairs (4,5) and (5,6) of row 2 are not real
    targets = tokens[:, 1:].clone()
    targets[0, :2] = -100
    targets[2, 4:] = -100
    masked = F.cross_entropy(flat_logits, targets.reshape(-1), ignore_index=-100)
    assert_close(utils.lm_cross_entropy_loss(logits, tokens, attention_mask=mask), masked, "logits")


def test_lm_accuracy_by_hand():
    tokens = torch.tensor([[1, 2, 3, 4]])
    logits = torch.zeros(1, 4, 5)
    logits[0, 0, 2] = 1.0  # predicts 2: right
    logits[0, 1, 0] = 1.0  # predicts 0, next is 3: wrong
    logits[0, 2, 4] = 1.0  # predicts 4: right
    assert utils.lm_accuracy(logits, tokens).item() == pytest.approx(2 / 3)
    assert utils.lm_accuracy(logits, tokens, per_token=True).tolist() == [[True, False, True]]


# ---- sample_logits ------------------------------------------------------------------------------


def _frequencies(samples: torch.Tensor, d_vocab: int) -> torch.Tensor:
    return torch.bincount(samples, minlength=d_vocab).float() / samples.numel()


def test_sample_logits_greedy_is_argmax():
    logits = torch.randn(6, 30)
    assert torch.equal(utils.sample_logits(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(utils.sample_logits(logits, top_k=1), logits.argmax(-1))


def test_sample_logits_top_k_never_leaves_the_top_k():
    logits = torch.randn(4, 40)
    allowed = logits.topk(5, dim=-1).indices
    for seed in range(200):
        torch.manual_seed(seed)
        samples = utils.sample_logits(logits, top_k=5, temperature=2.0)
        assert (allowed == samples[:, None]).any(-1).all(), seed


def test_sample_logits_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().expand(5000, 4)
    for top_p, kept in [(0.4, {1}), (0.75, {1, 3}), (0.9, {1, 2, 3}), (1.0, {0, 1, 2, 3})]:
        samples = utils.sample_logits(logits, top_p=top_p)
        assert set(samples.unique().tolist()) == kept, top_p
    samples = utils.sample_logits(logits, top_p=0.75)
    assert _frequencies(samples, 4)[1].item() == pytest.approx(0.5 / 0.8, abs=0.03)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_sample_logits_temperature_scales_the_distribution(temperature):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    samples = utils.sample_logits(logits.expand(20000, 4), temperature=temperature)
    expected = (logits / temperature).softmax(-1)
    assert torch.allclose(_frequencies(samples, 4), expected, atol=0.02)


def test_freq_penalty_lowers_repeated_tokens():
    logits = torch.zeros(20000, 4)
    tokens = torch.tensor([[2, 2, 2, 1]]).expand(20000, 4)
    samples = utils.sample_logits(logits, freq_penalty=0.5, tokens=tokens)
    expected = torch.tensor([0.0, -0.5, -1.5, 0.0]).softmax(-1)  # minus penalty x count
    assert torch.allclose(_frequencies(samples, 4), expected, atol=0.02)
    greedy = utils.sample_logits(
        torch.tensor([[1.0, 0.9]]), temperature=0.0, freq_penalty=0.2, tokens=torch.tensor([[0]])
    )
    assert greedy.item() == 1
    with pytest.raises(ValueError, match="tokens"):
        utils.sample_logits(logits, freq_penalty=1.0)


# ---- Slice, to_numpy, get_corner, remove_batch_dim ----------------------------------------------


def test_slice_semantics():
    x = torch.arange(24).reshape(2, 6, 2)
    assert torch.equal(Slice().apply(x, dim=1), x)
    assert torch.equal(Slice(-1).apply(x, dim=1), x[:, -1])  # an int drops the axis
    assert torch.equal(Slice((1, 5, 2)).apply(x, dim=1), x[:, 1:5:2])
    assert torch.equal(Slice(slice(2, None)).apply(x, dim=1), x[:, 2:])
    assert torch.equal(Slice([0, 3]).apply(x, dim=1), x[:, [0, 3]])
    assert torch.equal(Slice(np.array([4, 1])).apply(x, dim=1), x[:, [4, 1]])
    assert torch.equal(Slice(Slice(1)).apply(x), x[1])  # a Slice of a Slice is the same slice
    assert Slice(3).indices().tolist() == [3]
    assert Slice((1, 5, 2)).indices(6).tolist() == [1, 3]
    assert Slice().indices(3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="max_ctx"):
        Slice((0, 2)).indices()


def test_to_numpy_get_corner_remove_batch_dim():
    assert np.array_equal(utils.to_numpy(torch.tensor([1.5, 2.0])), np.array([1.5, 2.0]))
    assert utils.to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert np.array_equal(utils.to_numpy([1, 2]), np.array([1, 2]))
    grad = torch.ones(2, requires_grad=True) * 2
    assert np.array_equal(utils.to_numpy(grad), np.array([2.0, 2.0]))
    x = torch.arange(125).reshape(5, 5, 5)
    assert torch.equal(utils.get_corner(x, 2), x[:2, :2, :2])
    A, B = torch.randn(6, 3), torch.randn(3, 6)
    assert torch.allclose(utils.get_corner(FactoredMatrix(A, B), 2), (A @ B)[:2, :2])
    assert utils.remove_batch_dim(torch.zeros(1, 3, 4)).shape == (3, 4)
    assert utils.remove_batch_dim(torch.zeros(2, 3)).shape == (2, 3)


# ---- test_prompt --------------------------------------------------------------------------------


@pytest.fixture
def model():
    return HookedTransformer(GPT2_LIKE.replace(initializer_range=0.5), tokenizer=tiny_tokenizer()).eval()


def test_test_prompt_prints_rank_logit_and_probability(model, capsys):
    prompt = "When Mary and John went to the store, John gave a drink to"
    tokens = torch.cat([model.to_tokens(prompt), model.to_tokens(" Mary", prepend_bos=False)], dim=1)
    with torch.no_grad():
        logits = model(tokens)[0, -2]
    answer = model.to_single_token(" Mary")
    rank = int((logits > logits[answer]).sum())
    prob = logits.softmax(-1)[answer].item()

    utils.test_prompt(prompt, "Mary", model, top_k=4)
    out = capsys.readouterr().out
    assert "Tokenized answer: [' Mary']" in out
    assert f"Rank: {rank:<8} Logit: {logits[answer].item():6.2f} Prob: {prob:6.2%} Token: | Mary|" in out
    assert "Top 4 tokens:" in out and out.count("Logit:") == 5
    assert f"Ranks of the answer tokens: [(' Mary', {rank})]" in out


def test_test_prompt_without_details_and_with_several_answers(model, capsys):
    utils.test_prompt("the cat sat on the", ["mat", " hello world"], model, print_details=False)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Ranks of the answer tokens: [(' mat', ")
    assert lines[1].startswith("Ranks of the answer tokens: [(' hello', ") and "(' world', " in lines[1]
    utils.test_prompt("the cat sat on the", " mat", model, prepend_space_to_answer=False, prepend_bos=False)
    out = capsys.readouterr().out
    assert "Tokenized prompt: ['the', ' cat'" in out


# ---- tokenize_and_concatenate -------------------------------------------------------------------

TEXTS = ["the cat sat on the mat.", "hello world", "When Mary and John went to the store"] * 4


def _stream(tokenizer) -> list[int]:
    stream: list[int] = []
    for i, text in enumerate(TEXTS):
        stream += ([tokenizer.eos_token_id] if i else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
    return stream


def test_tokenize_and_concatenate_rows_of_the_joined_stream():
    tokenizer = tiny_tokenizer()
    stream = _stream(tokenizer)
    result = utils.tokenize_and_concatenate(TEXTS, tokenizer, max_length=8)
    n_rows = len(stream) // 7
    assert result["tokens"].shape == (n_rows, 8) and result["tokens"].dtype == torch.long
    assert (result["tokens"][:, 0] == tokenizer.bos_token_id).all()
    assert result["tokens"][:, 1:].flatten().tolist() == stream[: n_rows * 7]
    assert len(result) == n_rows and torch.equal(result[1]["tokens"], result["tokens"][1])
    batch = next(iter(torch.utils.data.DataLoader(result, batch_size=3)))
    assert torch.equal(batch["tokens"], result["tokens"][:3])

    no_bos = utils.tokenize_and_concatenate(TEXTS, tokenizer, max_length=8, add_bos_token=False)
    assert no_bos["tokens"].flatten().tolist() == stream[: len(stream) // 8 * 8]


def test_tokenize_and_concatenate_accepts_datasets_without_the_package():
    tokenizer = tiny_tokenizer()
    expected = utils.tokenize_and_concatenate(TEXTS, tokenizer, max_length=8)["tokens"]
    column_dataset = {"content": TEXTS}  # indexable by column, as a datasets.Dataset is
    by_column = utils.tokenize_and_concatenate(column_dataset, tokenizer, max_length=8, column_name="content")
    assert torch.equal(by_column["tokens"], expected)
    rows = ({"text": text, "id": i} for i, text in enumerate(TEXTS))  # a streaming dataset: rows one by one
    streamed = utils.tokenize_and_concatenate(rows, tokenizer, streaming=True, max_length=8)
    assert torch.equal(streamed["tokens"], expected)
    with pytest.raises(ValueError, match="fewer than one row"):
        utils.tokenize_and_concatenate(["hello"], tokenizer, max_length=64)


def test_gelu_new_and_gelu_fast_are_transformers_activations():
    """TransformerLens notebooks call utils.gelu_new; it is GPT-2's activation, as transformers computes it."""
    from transformers.activations import FastGELUActivation, NewGELUActivation

    x = torch.linspace(-6, 6, 1001)
    assert torch.equal(utils.gelu_new(x), NewGELUActivation()(x))
    assert torch.allclose(utils.gelu_fast(x), FastGELUActivation()(x), atol=1e-6)
