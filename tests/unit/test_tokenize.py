"""Tokenisation with loss masks, truncation and collation, on the word-level test tokenizer.

The word tokenizer maps each whitespace-separated word to one id, so every expected id list
below is written out word by word and looked up in its vocabulary (specials: <pad>=0, <unk>=1,
<bos>=2, <eos>=3). Its chat template renders ``<|role|> content <eos> `` per turn, with no BOS.
"""

import pytest
import torch
from real_layouts import trained_runs

from rlhfkit.data.formats import parse_preference, parse_sft
from rlhfkit.data.tokenize import (Tokenized, TokenizedPair, collate_pairs, collate_sft, pack_bins, tokenize_preference,
                                   tokenize_sft)
from rlhfkit.tiny_models import build_word_tokenizer

WORDS = ("how is the soup ? it good . fine and warm hot very cold bad be nice ok thanks "
         "one two three four five six seven eight nine ten")


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer([WORDS])


def ids_of(tok, words: str) -> list[int]:
    """Expected ids, word by word, straight from the vocabulary (no tokenisation logic)."""
    out = tok.convert_tokens_to_ids(words.split())
    assert tok.unk_token_id not in out, f"test words missing from the vocabulary: {words}"
    return out


def test_special_token_ids(tok):
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)


# --------------------------------------------------------------------------- SFT formats


def test_string_prompt_completion_masks_prompt_trains_completion_and_eos(tok):
    """BOS + prompt (5 words, masked 0) + completion (4 words) + EOS (masked 1)."""
    ex = parse_sft({"prompt": "how is the soup ?", "completion": "it is good ."})
    (got,), n_cut = tokenize_sft([ex], tok, max_length=64)
    assert got.input_ids == ids_of(tok, "<bos> how is the soup ? it is good . <eos>")
    assert got.input_ids[0] == tok.bos_token_id and got.input_ids[-1] == tok.eos_token_id
    assert got.loss_mask == [0] * 6 + [1] * 5
    assert n_cut == 0


def test_string_prompt_completion_completion_only_false_trains_everything(tok):
    ex = parse_sft({"prompt": "how is the soup ?", "completion": "it is good ."})
    (got,), _ = tokenize_sft([ex], tok, max_length=64, completion_only=False)
    assert got.input_ids == ids_of(tok, "<bos> how is the soup ? it is good . <eos>")
    assert got.loss_mask == [1] * 11


MESSAGES = [
    {"role": "system", "content": "be nice"},
    {"role": "user", "content": "how is the soup ?"},
    {"role": "assistant", "content": "it is good ."},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "ok"},
]




def test_messages_masks_exactly_the_assistant_turns_and_their_eos(tok):
    """Rendering: <|system|> be nice <eos> <|user|> how is the soup ? <eos> <|assistant|> it is
    good . <eos> <|user|> thanks <eos> <|assistant|> ok <eos>. Trained: 'it is good . <eos>' and
    'ok <eos>'; the role markers, system and user text and their <eos> are not."""
    (got,), n_cut = tokenize_sft([parse_sft({"messages": MESSAGES})], tok, max_length=64)
    assert got.input_ids == ids_of(
        tok, "<|system|> be nice <eos> <|user|> how is the soup ? <eos> <|assistant|> it is good . "
             "<eos> <|user|> thanks <eos> <|assistant|> ok <eos>")
    decoded = [tok.convert_ids_to_tokens(run) for run in trained_runs(got.input_ids, got.loss_mask)]
    assert decoded == [["it", "is", "good", ".", "<eos>"], ["ok", "<eos>"]]
    assert sum(got.loss_mask) == 7 and len(got.loss_mask) == len(got.input_ids)
    assert n_cut == 0


def test_text_trains_every_token(tok):
    (got,), _ = tokenize_sft([parse_sft({"text": "the soup is hot ."})], tok, max_length=64)
    assert got.input_ids == ids_of(tok, "<bos> the soup is hot . <eos>")
    assert got.loss_mask == [1] * 7


def test_conversational_prompt_completion_equals_whole_chat_rendering(tok):
    """{prompt: [system, user], completion: [assistant]} tokenises to the same ids as rendering
    the whole conversation with the chat template; only the assistant turn is trained."""
    prompt, completion = MESSAGES[:2], MESSAGES[2:3]
    (got,), _ = tokenize_sft([parse_sft({"prompt": prompt, "completion": completion})], tok, max_length=64)
    whole = tok.apply_chat_template(prompt + completion, tokenize=False)
    assert got.input_ids == tok(whole, add_special_tokens=False)["input_ids"]
    assert got.input_ids == ids_of(
        tok, "<|system|> be nice <eos> <|user|> how is the soup ? <eos> <|assistant|> it is good . <eos>")
    assert got.loss_mask == [0] * 12 + [1] * 5


# --------------------------------------------------------------------------- truncation


def test_sft_max_length_cuts_and_counts(tok):
    """Lengths before cutting: 11 (prompt/completion), 7 (text), 5 (text). max_length 6 cuts the
    first two, keeping their first 6 ids and mask entries; the count is 2."""
    examples = [parse_sft({"prompt": "how is the soup ?", "completion": "it is good ."}),
                parse_sft({"text": "the soup is hot ."}),
                parse_sft({"text": "ok ok ok"})]
    full, n_full = tokenize_sft(examples, tok, max_length=64)
    assert [len(t.input_ids) for t in full] == [11, 7, 5] and n_full == 0
    cut, n_cut = tokenize_sft(examples, tok, max_length=6)
    assert n_cut == 2
    assert cut[0].input_ids == ids_of(tok, "<bos> how is the soup ?")
    assert cut[0].loss_mask == [0] * 6
    assert cut[1].input_ids == ids_of(tok, "<bos> the soup is hot .")
    assert cut[1].loss_mask == [1] * 6
    assert (cut[2].input_ids, cut[2].loss_mask) == (full[2].input_ids, full[2].loss_mask)
    # Exactly at the limit is not a cut.
    _, n_at = tokenize_sft(examples[2:], tok, max_length=5)
    assert n_at == 0


def test_preference_truncation_keeps_prompt_end_and_response_start(tok):
    """max_length 8, max_prompt_length 4.
    Pair 0: prompt BOS + 10 words (11 ids) -> its last 4 ids 'seven eight nine ten'; room for
      responses 8 - 4 = 4: chosen 'one two three four five six <eos>' (7) -> 'one two three four';
      rejected 'bad . <eos>' (3) is kept whole. Cut.
    Pair 1: prompt '<bos> the soup ?' (4 ids) fits exactly; chosen 'it is very good . <eos>' (6)
      -> 'it is very good', rejected 'it is bad . <eos>' (5) -> 'it is bad .'. Cut.
    Pair 2: prompt '<bos> how is the soup ?' (6) -> 'is the soup ?'; responses (3) fit. Cut.
    Pair 3: prompt '<bos> ok ?' (3), responses 'good . <eos>' and 'bad . <eos>' (3): fits.
    Count = 3."""
    recs = [{"prompt": "one two three four five six seven eight nine ten",
             "chosen": "one two three four five six", "rejected": "bad ."},
            {"prompt": "the soup ?", "chosen": "it is very good .", "rejected": "it is bad ."},
            {"prompt": "how is the soup ?", "chosen": "good .", "rejected": "bad ."},
            {"prompt": "ok ?", "chosen": "good .", "rejected": "bad .", "margin": 1.5}]
    pairs, n_cut = tokenize_preference([parse_preference(r) for r in recs], tok,
                                       max_length=8, max_prompt_length=4)
    assert n_cut == 3
    expected = [("seven eight nine ten", "one two three four", "bad . <eos>"),
                ("<bos> the soup ?", "it is very good", "it is bad ."),
                ("is the soup ?", "good . <eos>", "bad . <eos>"),
                ("<bos> ok ?", "good . <eos>", "bad . <eos>")]
    for pair, (p, c, r) in zip(pairs, expected):
        assert (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids) == (
            ids_of(tok, p), ids_of(tok, c), ids_of(tok, r))
    assert [p.margin for p in pairs] == [0.0, 0.0, 0.0, 1.5]
    # Nothing is cut when the limits are generous.
    _, n_none = tokenize_preference([parse_preference(r) for r in recs], tok,
                                    max_length=64, max_prompt_length=32)
    assert n_none == 0


def test_preference_prompt_limit_above_max_length_still_fits(tok):
    """max_length 4 < max_prompt_length 10: prompt '<bos> how is the soup ?' (6 ids) passes the
    prompt limit, leaving no room, so each response keeps 1 id ('good', 'bad') and the prompt its
    last 4 - 1 = 3 ids ('the soup ?'). Counted as cut."""
    rec = {"prompt": "how is the soup ?", "chosen": "good .", "rejected": "bad ."}
    (pair,), n_cut = tokenize_preference([parse_preference(rec)], tok, max_length=4, max_prompt_length=10)
    assert n_cut == 1
    assert pair.prompt_ids == ids_of(tok, "the soup ?")
    assert (pair.chosen_ids, pair.rejected_ids) == (ids_of(tok, "good"), ids_of(tok, "bad"))


def test_conversational_preference_prompt_keeps_end(tok):
    """The chat prompt renders '<|system|> be nice <eos> <|user|> how is the soup ? <eos>
    <|assistant|>' (12 ids); max_prompt_length 5 keeps its last 5 ids, 'the soup ? <eos>
    <|assistant|>', the part next to the response. Responses ('good . <eos>', 3 ids) fit."""
    rec = {"prompt": MESSAGES[:2], "chosen": [{"role": "assistant", "content": "good ."}],
           "rejected": [{"role": "assistant", "content": "bad ."}]}
    (pair,), n_cut = tokenize_preference([parse_preference(rec)], tok, max_length=16, max_prompt_length=5)
    assert n_cut == 1
    assert pair.prompt_ids == ids_of(tok, "the soup ? <eos> <|assistant|>")
    assert pair.chosen_ids == ids_of(tok, "good . <eos>")
    assert pair.rejected_ids == ids_of(tok, "bad . <eos>")


# --------------------------------------------------------------------------- collation


def test_collate_sft_right_pads_with_pad_id():
    batch = [Tokenized([2, 10, 11], [0, 1, 1]), Tokenized([2, 12, 13, 14, 3], [0, 0, 1, 1, 1])]
    out = collate_sft(batch, pad_id=9)
    assert set(out) == {"input_ids", "attention_mask", "loss_mask", "seq_id", "last_index", "num_tokens"}
    assert out["input_ids"].dtype == torch.long
    assert out["input_ids"].tolist() == [[2, 10, 11, 9, 9], [2, 12, 13, 14, 3]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert out["loss_mask"].tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]]
    assert out["seq_id"].tolist() == [[0, 0, 0, -1, -1], [1, 1, 1, 1, 1]]
    assert out["last_index"].tolist() == [2, 9] and int(out["num_tokens"]) == 8


def test_collate_sft_packed_places_rows_end_to_end():
    """Lengths 3, 5, 2 into bins of width 5 (first fit decreasing): row 1 alone, rows 0 and 2
    together; positions restart per sequence; each sequence's first token is never a target
    (row 2's mask [1, 1] becomes [0, 1]); last_index is flat in the (2 x 5) layout."""
    batch = [Tokenized([2, 10, 11], [0, 1, 1]), Tokenized([2, 12, 13, 14, 3], [0, 0, 1, 1, 1]),
             Tokenized([2, 15], [1, 1])]
    out = collate_sft(batch, pad_id=9, pack=True)
    assert "attention_mask" not in out
    assert out["input_ids"].tolist() == [[2, 12, 13, 14, 3], [2, 10, 11, 2, 15]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert out["loss_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 1]]
    assert out["seq_id"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 2, 2]]
    assert out["last_index"].tolist() == [7, 4, 9] and int(out["num_tokens"]) == 10


def test_pack_bins_first_fit_decreasing():
    assert pack_bins([3, 5, 2], 5) == [[1], [0, 2]]
    assert pack_bins([4, 4, 4, 4], 8) == [[0, 1], [2, 3]]
    assert pack_bins([1, 7, 2, 6, 3], 8) == [[1, 0], [3, 2], [4]]


def _pairs(**refs):
    a = TokenizedPair([2, 10], [11, 12, 3], [13, 3], margin=0.5)
    b = TokenizedPair([2, 14, 15, 16], [17, 3], [18, 19, 20, 3], margin=2.0)
    for name, (ra, rb) in refs.items():
        setattr(a, name, ra)
        setattr(b, name, rb)
    return [a, b]


def test_collate_pairs_chosen_rows_then_rejected_rows():
    """Rows: a.prompt+a.chosen (5), b.prompt+b.chosen (6), a.prompt+a.rejected (4),
    b.prompt+b.rejected (8); right-padded with 9 to width 8; loss mask on responses only."""
    out = collate_pairs(_pairs(), pad_id=9)
    assert set(out) == {"input_ids", "attention_mask", "loss_mask", "margin", "weight", "seq_id", "last_index",
                        "num_tokens"}
    assert out["weight"].tolist() == [1.0, 1.0]  # no source_weights: every pair weighs 1
    assert out["input_ids"].tolist() == [
        [2, 10, 11, 12, 3, 9, 9, 9],
        [2, 14, 15, 16, 17, 3, 9, 9],
        [2, 10, 13, 3, 9, 9, 9, 9],
        [2, 14, 15, 16, 18, 19, 20, 3]]
    assert out["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1]]
    assert out["loss_mask"].tolist() == [
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1]]
    assert out["margin"].dtype == torch.float32 and out["margin"].tolist() == [0.5, 2.0]


def test_collate_pairs_ref_logps_only_when_every_pair_has_both():
    full = collate_pairs(_pairs(ref_chosen=(-1.5, -3.0), ref_rejected=(-2.5, -4.0)), pad_id=0)
    assert full["ref_logps"].dtype == torch.float32
    assert full["ref_logps"].tolist() == [-1.5, -3.0, -2.5, -4.0]  # chosen a, b, then rejected a, b
    one_missing = collate_pairs(_pairs(ref_chosen=(-1.5, None), ref_rejected=(-2.5, None)), pad_id=0)
    assert "ref_logps" not in one_missing
    rejected_missing = collate_pairs(_pairs(ref_chosen=(-1.5, -3.0), ref_rejected=(-2.5, None)), pad_id=0)
    assert "ref_logps" not in rejected_missing
    assert "ref_logps" not in collate_pairs(_pairs(), pad_id=0)


@pytest.mark.parametrize("packed", [False, True])
def test_dpo_response_lengths_padded_and_packed(packed):
    """IPO's length normaliser: response tokens per sequence, chosen a (11 12 3) = 3, chosen b (17 3) = 2,
    rejected a (13 3) = 2, rejected b (18 19 20 3) = 4; the same from a padded or a packed batch."""
    from rlhfkit.train.dpo import response_lengths

    assert response_lengths(collate_pairs(_pairs(), pad_id=9, pack=packed)).tolist() == [3.0, 2.0, 2.0, 4.0]


@pytest.mark.parametrize("normalize", [True, False])
def test_dpo_score_pairs_ipo_uses_lengths_when_asked(normalize):
    """``score_pairs`` with loss_type ipo: the loss equals ``losses.dpo_loss`` on the policy's summed
    log-probs with precomputed reference log-probs, with lengths [3, 2] / [2, 4] when
    ipo_normalize_length is on and without them when off."""
    from rlhfkit.logprobs import response_logps
    from rlhfkit.train.dpo import DPOConfig
    from rlhfkit.losses import dpo_loss
    from rlhfkit.tiny_models import tiny_causal_lm
    from rlhfkit.train.dpo import score_pairs

    tok = build_word_tokenizer([WORDS])
    model = tiny_causal_lm(tok, seed=0).eval()
    batch = collate_pairs(_pairs(ref_chosen=(-20.0, -15.0), ref_rejected=(-16.0, -30.0)), pad_id=0)
    cfg = DPOConfig(beta=0.1, loss_type="ipo", ipo_normalize_length=normalize)
    with torch.no_grad():
        got = score_pairs(model, None, batch, cfg)[0]
        pc, pr = response_logps(model, batch).float().chunk(2)
    lens = dict(chosen_len_B=torch.tensor([3.0, 2.0]), rejected_len_B=torch.tensor([2.0, 4.0])) if normalize else {}
    want = dpo_loss(pc, pr, torch.tensor([-20.0, -15.0]), torch.tensor([-16.0, -30.0]), 0.1, "ipo", **lens)[0]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    other = dpo_loss(pc, pr, torch.tensor([-20.0, -15.0]), torch.tensor([-16.0, -30.0]), 0.1, "ipo",
                     **({} if normalize else dict(chosen_len_B=torch.tensor([3.0, 2.0]),
                                                  rejected_len_B=torch.tensor([2.0, 4.0]))))[0]
    assert not torch.allclose(got, other, rtol=1e-3)
