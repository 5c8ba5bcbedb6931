"""SFT, RM, DPO and GRPO on tiny random-initialised models of real families (issue #17).

Llama 3, Qwen2, Mistral, Gemma 2, Gemma 3 (text-only), Phi-3 and GPT-2, each from its real
configuration class with its published chat template and special tokens (tests/family_support.py).
Per family: every stage runs 2 steps to a finite loss; the packing probe (``logprobs.packing_works``)
passes, so the runs pack (no fallback message), and a packed forward of the family's real data
(longer than the sliding windows) equals the padded one; the trained reward model folder loads
with ``AutoModelForSequenceClassification`` and scores like rlhfkit's own reader; the SFT loss mask
covers exactly each assistant message and what the template writes to end its turn.

GPT-2 has no chat template: its string data trains, its conversational data stops with a one-line
error that says so.
"""

import json
import math

import pytest
import torch
from family_support import CHAT_FAMILIES, FAMILIES, make_family_dir
from real_layouts import trained_runs
from transformers import AutoModelForSequenceClassification

from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.rm import RMConfig
from rlhfkit.train.sft import SFTConfig
from rlhfkit.data.formats import parse_preference, parse_sft
from rlhfkit.data.tokenize import collate_pairs, collate_sft, tokenize_preference, tokenize_sft
from rlhfkit.data.pair_tree import tree_pairs
from rlhfkit.logprobs import packing_works, response_logps, target_logprobs, tree_pairs_work
from rlhfkit.models import load_causal_lm, load_reward_model, load_tokenizer, packed_rewards, reward_forward
from rlhfkit.train.dpo import run_dpo
from rlhfkit.train.grpo import run_grpo
from rlhfkit.train.rm import run_rm
from rlhfkit.train.sft import run_sft

QUESTIONS = ["tell me about the soup", "what about cats", "why is the sun warm", "how was the rain today"]
GOOD = ["it is very hot and good", "cats are nice I think", "the sun is warm today", "the rain was cold"]
BAD = ["no", "maybe dogs", "I think it was bad", "what"]
FALLBACK = "padding_free: this model"
COMMON = dict(batch_size=4, max_steps=2, learning_rate=1e-3, max_length=96, max_prompt_length=64, seed=0,
              logging_steps=1)


def _chat(q, a=None):
    return [{"role": "user", "content": q}] + ([{"role": "assistant", "content": a}] if a else [])


def _records(chat: bool) -> dict:
    """SFT, preference and prompt records: message lists for chat families, strings for GPT-2."""
    rows = list(zip(QUESTIONS, GOOD, BAD))
    if chat:
        return {"sft": [{"messages": _chat(q, g)} for q, g, _ in rows],
                "prefs": [{"prompt": _chat(q), "chosen": [{"role": "assistant", "content": g}],
                           "rejected": [{"role": "assistant", "content": b}], "margin": 0.5} for q, g, b in rows],
                "prompts": [{"prompt": _chat(q)} for q in QUESTIONS]}
    return {"sft": [{"prompt": q + "\n", "completion": g} for q, g, _ in rows],
            "prefs": [{"prompt": q + "\n", "chosen": g, "rejected": b, "margin": 0.5} for q, g, b in rows],
            "prompts": [{"prompt": q + "\n"} for q in QUESTIONS]}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    data = {k: _write(root / f"{k}.jsonl", v) for k, v in _records(FAMILIES[name].template is not None).items()}
    return {"name": name, "model": make_family_dir(name, root / "base"), **data}


def _losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _finite_steps(out, steps=2):
    losses = _losses(out)
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    return losses


# --------------------------------------------------------------------------- fast checks


def test_packing_equals_padding_on_the_family_data(family):
    """The probe (rows of at most 6 tokens) cannot see a sliding window of 8; this compares packed
    with padded log-probs on the family's own data, rows of 10-120 tokens."""
    tok = load_tokenizer(family["model"])
    model = load_causal_lm(family["model"]).eval()
    # the probe the recipes run: it passes for every family here (no fallback to padding)
    assert packing_works(model) and packing_works(load_reward_model(family["model"], tok), reward=True)
    examples = [parse_sft(json.loads(x)) for x in open(family["sft"])]
    long = parse_sft(json.loads(open(family["sft"]).readline().replace(GOOD[0], " and ".join(GOOD * 4))))
    rows, _ = tokenize_sft(examples + [long], tok, 256)  # the long row sets the bin width: the rest pack
    assert min(len(r.input_ids) for r in rows) > 8
    padded, packed = collate_sft(rows, tok.pad_token_id, pack=False), collate_sft(rows, tok.pad_token_id, pack=True)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    with torch.no_grad():
        want = target_logprobs(model, padded["input_ids"], padded["loss_mask"], padded["attention_mask"])
        got = target_logprobs(model, packed["input_ids"], packed["loss_mask"], position_ids_BT=packed["position_ids"])
    # packed rows are sequence-ordered differently: compare per sequence, summed
    seq_want = padded["seq_id"][:, 1:][padded["loss_mask"][:, 1:].bool()]
    seq_got = packed["seq_id"][:, 1:][packed["loss_mask"][:, 1:].bool()]
    by_seq = lambda v, s: torch.zeros(len(rows)).index_add(0, s, v)  # noqa: E731
    torch.testing.assert_close(by_seq(got, seq_got), by_seq(want, seq_want), atol=1e-4, rtol=0)


def test_shared_prompt_rewards_equal_padded_on_the_family_data(family):
    """Where the reward model takes the shared-prompt layout (``data.pair_tree``; not with a sliding
    window, which the explicit mask would replace), it scores the family's pairs (10-120 tokens,
    longer than the windows) as the padded rows do."""
    tok = load_tokenizer(family["model"])
    rm = load_reward_model(family["model"], tok).eval()
    window = getattr(rm.config, "sliding_window", None) and getattr(rm.config, "use_sliding_window", True)
    assert tree_pairs_work(rm) == (not window) and tree_pairs_work(load_causal_lm(family["model"]), reward=False) == (not window)
    if window:
        return
    pairs, _ = tokenize_preference([parse_preference(json.loads(x)) for x in open(family["prefs"])], tok, 256, 128)
    assert max(len(p.prompt_ids) + len(p.chosen_ids) for p in pairs) > 8
    padded, tree = collate_pairs(pairs, tok.pad_token_id), tree_pairs(pairs, tok.pad_token_id)
    with torch.no_grad():
        want = reward_forward(rm, padded["input_ids"], padded["attention_mask"])
        got = packed_rewards(rm, tree["input_ids"], tree["position_ids"], tree["last_index"], tree["tree_mask"])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    lm = load_causal_lm(family["model"]).eval()  # DPO's response log-probs, the same way
    assert tree_pairs_work(lm, reward=False)
    padded = collate_pairs(pairs, tok.pad_token_id, pack=False)
    with torch.no_grad():
        torch.testing.assert_close(response_logps(lm, tree), response_logps(lm, padded), atol=1e-4, rtol=0)




@pytest.mark.parametrize("name", CHAT_FAMILIES)
def test_sft_mask_is_each_assistant_message_and_its_turn_end(name, tmp_path):
    """Trained text == the assistant content + what the template writes to close the turn
    (``Family.turn_end``, the newline after the marker included, as TRL's training templates also
    train it); Phi-3's template also ends a conversation with EOS, trained with the last turn."""
    fam = FAMILIES[name]
    tok = load_tokenizer(make_family_dir(name, tmp_path / name))
    (got,), _ = tokenize_sft([parse_sft({"messages": _chat(QUESTIONS[0], GOOD[0])})], tok, 256)
    want = GOOD[0] + fam.turn_end + ("<|endoftext|>" if name == "phi3" else "")
    assert [tok.decode(r) for r in trained_runs(got.input_ids, got.loss_mask)] == [want]
    # the rendering is the template's, token for token
    whole = tok.apply_chat_template(_chat(QUESTIONS[0], GOOD[0]), tokenize=False)
    assert tok.decode(got.input_ids) == whole


MULTI = _chat(QUESTIONS[0], GOOD[0]) + _chat(QUESTIONS[1], GOOD[1])


@pytest.mark.parametrize("name", [n for n in CHAT_FAMILIES if n != "phi3"])
def test_sft_mask_two_turns(name, tmp_path):
    fam = FAMILIES[name]
    tok = load_tokenizer(make_family_dir(name, tmp_path / name))
    (got,), _ = tokenize_sft([parse_sft({"messages": MULTI})], tok, 256)
    runs = [tok.decode(r) for r in trained_runs(got.input_ids, got.loss_mask)]
    assert runs == [GOOD[0] + fam.turn_end, GOOD[1] + fam.turn_end]


def test_sft_mask_two_turns_phi3(tmp_path):
    tok = load_tokenizer(make_family_dir("phi3", tmp_path / "phi3"))
    (got,), _ = tokenize_sft([parse_sft({"messages": MULTI})], tok, 256)
    runs = [tok.decode(r) for r in trained_runs(got.input_ids, got.loss_mask)]
    assert runs == [GOOD[0] + "<|end|>\n", GOOD[1] + "<|end|>\n<|endoftext|>"]


# --------------------------------------------------------------------------- the four stages, 2 steps each


@pytest.mark.slow
def test_sft(family, tmp_path, capsys):
    out = tmp_path / "sft"
    run_sft(SFTConfig(model=family["model"], data=family["sft"], output_dir=str(out), **COMMON))
    _finite_steps(out)
    assert FALLBACK not in capsys.readouterr().out  # packing_works passed: the run packed


@pytest.mark.slow
def test_dpo(family, tmp_path, capsys):
    out = tmp_path / "dpo"
    run_dpo(DPOConfig(model=family["model"], data=family["prefs"], output_dir=str(out), beta=0.1, **COMMON))
    losses = _finite_steps(out)
    assert abs(losses[0] - math.log(2)) < 1e-5  # step 1: policy == reference, every pair at log 2
    assert FALLBACK not in capsys.readouterr().out


@pytest.mark.slow
def test_grpo(family, tmp_path, capsys):
    out = tmp_path / "grpo"
    run_grpo(GRPOConfig(model=family["model"], data=family["prompts"], output_dir=str(out), batch_size=2,
                        num_generations=2, max_new_tokens=6, max_steps=2, learning_rate=1e-4, max_length=96,
                        max_prompt_length=64, seed=0, logging_steps=1, reward_fn=["family_support:length_reward"]))
    _finite_steps(out)
    assert FALLBACK not in capsys.readouterr().out


@pytest.mark.slow
def test_reward_model_loads_back_with_auto_class(family, tmp_path, capsys):
    """The RM folder read by ``AutoModelForSequenceClassification`` alone gives rlhfkit's rewards
    (one unpadded input at a time, as transformers reads any row it cannot tell pad from EOS in)."""
    out = tmp_path / "rm"
    run_rm(RMConfig(model=family["model"], data=family["prefs"], output_dir=str(out), **COMMON))
    _finite_steps(out)
    assert FALLBACK not in capsys.readouterr().out
    tok = load_tokenizer(str(out))
    pairs, _ = tokenize_preference([parse_preference(json.loads(x)) for x in open(family["prefs"])][:1], tok, 96, 64)
    batch = collate_pairs(pairs, tok.pad_token_id)  # 2 rows: chosen, rejected (different lengths)
    ours = load_reward_model(str(out), tok).eval()
    theirs = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        want = reward_forward(ours, batch["input_ids"], batch["attention_mask"])
        got = torch.stack([theirs(input_ids=row[mask.bool()][None]).logits[0, 0]
                           for row, mask in zip(batch["input_ids"], batch["attention_mask"])])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # where pad is EOS, config.json has no pad id (transformers would read the token before EOS);
    # elsewhere padded batches read the same rewards too
    if tok.pad_token_id == tok.eos_token_id:
        assert theirs.config.pad_token_id is None and ours.config.pad_token_id == tok.pad_token_id
    else:
        assert theirs.config.pad_token_id == tok.pad_token_id
        with torch.no_grad():
            padded = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        torch.testing.assert_close(padded, want, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- GPT-2: no chat template


def test_gpt2_conversational_data_gives_a_one_line_error(tmp_path):
    model = make_family_dir("gpt2", tmp_path / "gpt2")
    data = _write(tmp_path / "chat.jsonl", _records(chat=True)["sft"])
    with pytest.raises(ValueError) as e:
        run_sft(SFTConfig(model=model, data=data, output_dir=str(tmp_path / "out"), **COMMON))
    msg = str(e.value)
    assert "\n" not in msg and "chat template" in msg, msg
