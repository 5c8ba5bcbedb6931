"""Pieces of the online engine that are plain arithmetic."""

from types import SimpleNamespace

import pytest
import torch

from rlhfkit.train.rollout import Experience, RunningMoments, last_token_onehot, score, sequence_kl


def test_last_token_onehot():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0.0]])
    expected = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0.0]])
    assert torch.equal(last_token_onehot(mask), expected)


def test_running_moments_match_the_whole_sample():
    torch.manual_seed(0)
    a, b = torch.randn(7) * 3 + 1, torch.randn(5) - 2
    m = RunningMoments()
    m.update(a)
    m.update(b)
    both = torch.cat([a, b])
    assert m.mean == pytest.approx(float(both.mean()), abs=1e-6)
    assert m.std == pytest.approx(float(both.std()), abs=1e-6)  # unbiased
    restored = RunningMoments(m.state())
    assert (restored.count, restored.mean, restored.std) == (m.count, m.mean, m.std)


class _Const:
    def __call__(self, prompts, completions, **columns):
        return torch.tensor([1.0, 5.0, -4.0])


def _engine(**cfg):
    base = dict(missing_eos_penalty=0.0, reward_clip=0.0, normalize_reward=False)
    prompts = [SimpleNamespace(prompt=f"p{i}", extra={}) for i in range(3)]
    return SimpleNamespace(run=SimpleNamespace(cfg=SimpleNamespace(**{**base, **cfg})), prompts=prompts,
                           reward=_Const(), moments=RunningMoments(), heldout=None,
                           gather=lambda t: t)  # one process: the gathered scores are its own


def test_missing_eos_penalty_and_clip():
    """raw [1, 5, -4]; rows 0 and 2 hit max_new_tokens without EOS: -2 each -> [-1, 5, -6];
    clip at 3 -> [-1, 3, -3]. The raw scores are kept for logging."""
    raw, scores = score(_engine(missing_eos_penalty=2.0, reward_clip=3.0), [0, 1, 2], ["a", "b", "c"],
                         torch.tensor([False, True, False]))
    assert raw.tolist() == [1.0, 5.0, -4.0]
    assert scores.tolist() == [-1.0, 3.0, -3.0]


def test_normalize_reward():
    """[1, 5, -4]: mean 2/3, unbiased std sqrt(((1/3)^2 + (13/3)^2 + (14/3)^2) / 2) = 4.5092498."""
    _, scores = score(_engine(normalize_reward=True), [0, 1, 2], ["a", "b", "c"], torch.tensor([True] * 3))
    expected = (torch.tensor([1.0, 5.0, -4.0]) - 2 / 3) / 4.5092498
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)


def test_sequence_kl_sums_response_tokens():
    kl = torch.tensor([[0.5, 1.0, 9.0], [0.25, 0.25, 0.25]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1.0]])
    exp = Experience(*(torch.zeros(2, 3),) * 2, mask, *(torch.zeros(2, 3),) * 2, kl, *(torch.zeros(2),) * 3, ["a", "b"])
    assert sequence_kl(exp).tolist() == [1.5, 0.75]


def test_heldout_reward_is_scored_on_the_same_samples_and_never_enters_the_scores():
    """A held-out source sees the same prompts and texts; its mean is kept for logging and the
    training scores are the training source's alone."""
    seen = {}

    def heldout(prompts, texts, **columns):
        seen["args"] = (list(prompts), list(texts))
        return torch.tensor([10.0, 20.0, 30.0])

    eng = _engine()
    eng.heldout, eng.heldout_reward = heldout, 0.0
    raw, scores = score(eng, [0, 1, 2], ["a", "b", "c"], torch.tensor([True] * 3))
    assert seen["args"] == (["p0", "p1", "p2"], ["a", "b", "c"])
    assert eng.heldout_reward == 20.0
    torch.testing.assert_close(scores, _engine().reward(["p0", "p1", "p2"], ["a", "b", "c"]).float())


def test_entropy_at_response_positions_equals_full_masked_mean(monkeypatch):
    """The fast entropy (log-softmax of the response positions' logits only, in blocks of rows)
    against the reference path (log-softmax over every position, then a masked mean)."""
    from rlhfkit.losses import masked_mean
    from rlhfkit.train.rollout import entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 17, generator=g) * 3
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.float32)
    logp = torch.log_softmax(logits, -1)
    want = float(masked_mean(-(logp.exp() * logp).sum(-1), mask))
    assert abs(entropy(logits[mask.bool()]) - want) < 1e-6
    import rlhfkit.losses

    monkeypatch.setattr(rlhfkit.losses, "ROW_CHUNK", 40)  # 2 rows a block: 5 blocks
    assert abs(entropy(logits[mask.bool()]) - want) < 1e-6
    assert want > 0.5  # 17-way distributions from N(0, 9) logits are far from one-hot


def test_rollout_rows_places_prompt_response_and_logprobs_by_hand():
    """Prompts of 2, 1 and 3 tokens with responses of 3, 1 and 0 tokens (pad 99; response ids past
    a row's mask are junk, 77): rows are prompt + response, right-padded to 5; the response mask and
    the sampler log-probs sit in the shifted layout (position t concerns token t + 1)."""
    from rlhfkit.sampling import Rollout, rollout_rows

    prompts = [[5, 6], [7], [8, 9, 10]]
    resp = torch.tensor([[11, 12, 13], [14, 77, 77], [77, 77, 77]])
    rmask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    logp = torch.tensor([[-0.1, -0.2, -0.3], [-0.4, -9.0, -9.0], [-9.0, -9.0, -9.0]])
    ids, attn, mask, old = rollout_rows(prompts, Rollout(prompts, resp, logp, rmask, torch.ones(3, dtype=torch.bool),
                                                         [""] * 3), pad_id=99)
    assert ids.tolist() == [[5, 6, 11, 12, 13], [7, 14, 99, 99, 99], [8, 9, 10, 99, 99]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]
    assert mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    torch.testing.assert_close(old, torch.tensor([[0, -0.1, -0.2, -0.3], [-0.4, 0, 0, 0], [0, 0, 0, 0]]),
                               rtol=0, atol=0)


def test_response_logprobs_packed_equals_policy_logprobs():
    """Packed rows, LM head at response positions (fast path) == full logits on padded rows
    (reference path), values and gradients, at a temperature != 1."""
    from rlhfkit.logprobs import policy_logprobs, response_logprobs
    from rlhfkit.sampling import Rollout, rollout_rows
    from rlhfkit.tiny_models import build_word_tokenizer, tiny_causal_lm

    tok = build_word_tokenizer(["a b c d e f g h i j k l m n o p"])
    model = tiny_causal_lm(tok, seed=7)
    prompts = [[2, 7, 8, 9], [2, 10], [2, 11, 12, 13, 14, 15], [2, 9, 9]]
    resp = torch.tensor([[16, 17, 3, 0], [18, 19, 20, 21], [7, 3, 0, 0], [8, 8, 8, 3]])
    rmask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    rollout = Rollout(prompts, resp, torch.zeros(4, 4), rmask, torch.ones(4, dtype=torch.bool), [""] * 4)
    ids, attn, mask, _ = rollout_rows(prompts, rollout, tok.pad_token_id)
    want, logits = policy_logprobs(model, ids, attn, temperature=0.7)
    (want * mask).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for pack in (True, False):
        got, got_logits = response_logprobs(model, ids, attn, mask, temperature=0.7, pack=pack)
        assert got_logits.shape == (int(mask.sum()), len(tok))
        torch.testing.assert_close(got * mask, want.detach() * mask, rtol=0, atol=1e-5)
        assert bool((got[mask == 0] == 0).all())
    got, _ = response_logprobs(model, ids, attn, mask, temperature=0.7, pack=True)
    got.sum().backward()
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


class _Recorder:
    """A reward source that records its keywords and scores [1, None, 3] (None -> NaN)."""

    def __call__(self, prompts, completions, **kwargs):
        self.kwargs = kwargs
        return torch.tensor([1.0, float("nan"), 3.0])


def test_score_passes_completion_ids_and_trainer_state_and_keeps_unscored_nan():
    """normalize_reward's moments come from the scored completions only: [1, 3] -> mean 2, unbiased
    std sqrt(2) = 1.4142136: scores [-0.7071068, NaN, 0.7071068]; raw keeps the NaN for logging."""
    from transformers import TrainerState

    eng = _engine(normalize_reward=True)
    eng.reward = _Recorder()
    state = TrainerState(global_step=4, max_steps=9)
    raw, scores = score(eng, [0, 1, 2], ["a", "b", "c"], torch.tensor([True] * 3),
                         completion_ids=[[5], [6, 7], [8]], trainer_state=state)
    assert eng.reward.kwargs["completion_ids"] == [[5], [6, 7], [8]]
    assert eng.reward.kwargs["trainer_state"].global_step == 4
    assert torch.isnan(raw[1]) and torch.isnan(scores[1])
    torch.testing.assert_close(scores[[0, 2]], torch.tensor([-0.7071068, 0.7071068]), rtol=0, atol=1e-6)
    assert eng.moments.count == 2


def test_a_failing_reward_function_names_the_prompt_record(tmp_path):
    """The source's one-line error plus where the prompt the example answered came from."""
    from rlhfkit.rewards import make_reward
    from rlhfkit.train.distributed import TrainingError

    path = tmp_path / "r.py"
    path.write_text("def f(prompts, completions, **kw):\n    return [1.0 / (c != 'x') for c in completions]\n")
    eng = _engine()
    eng.reward = make_reward("", [f"{path}:f"], [], torch.device("cpu"))
    eng.prompts = [SimpleNamespace(prompt=f"p{i}", extra={}, where=f"prompts.jsonl:{i + 1}") for i in range(3)]
    with pytest.raises(TrainingError) as err:
        score(eng, [2, 0, 1], ["a", "x", "c"], torch.tensor([True] * 3))
    msg = str(err.value)
    assert "\n" not in msg and f"{path}:f" in msg and "ZeroDivisionError" in msg and "example 1 of 3" in msg
    assert "prompts.jsonl:1" in msg, msg


def test_models_to_check_skips_a_reference_of_the_policys_own_architecture(tmp_path):
    """A reference loaded from the policy's folder (same class, config, dtype, device) or the policy
    itself is not checked again; another config, dtype or class is; and such a reference does pass
    the checks exactly when the policy does (both pass here)."""
    from rlhfkit.logprobs import packing_works, prompt_sharing_works
    from rlhfkit.models import load_causal_lm
    from rlhfkit.tiny_models import build_word_tokenizer, make_tiny_model_dir, tiny_causal_lm
    from rlhfkit.train.online import models_to_check

    texts = ["a b c d e f g h"]
    path = make_tiny_model_dir(tmp_path / "m", texts, hidden_size=32, num_layers=2)
    policy, ref = load_causal_lm(path), load_causal_lm(path)
    assert models_to_check(policy, None) == [policy]
    assert models_to_check(policy, policy) == [policy]
    assert models_to_check(policy, ref) == [policy]
    assert all(packing_works(m) and prompt_sharing_works(m) for m in (policy, ref))
    wider = tiny_causal_lm(build_word_tokenizer(texts), hidden_size=48, num_layers=2)
    assert models_to_check(policy, wider) == [policy, wider]
    other = load_causal_lm(path).to(torch.float64)
    assert models_to_check(policy, other) == [policy, other]
    wrapped = torch.nn.Sequential(ref)
    assert models_to_check(policy, wrapped) == [policy, wrapped]
