"""Every loss against numbers worked out by hand in the docstring (tolerance 1e-6)."""

import math

import pytest
import torch

from rlhfkit import losses

TOL = dict(rtol=0, atol=1e-6)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_masked_mean_ignores_masked_nan():
    """x = [1, 3, nan], mask = [1, 1, 0] -> mean (1 + 3) / 2 = 2; the NaN is never summed."""
    x = t([1.0, 3.0, float("nan")])
    assert losses.masked_mean(x, t([1, 1, 0])).item() == pytest.approx(2.0, abs=1e-7)


def test_token_logprobs():
    """logits [0, ln 3] -> softmax [1/4, 3/4]; target 1 -> ln 0.75 = -0.2876821, target 0 -> ln 0.25."""
    logits = t([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    got = losses.token_logprobs(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(got, t([[-0.2876821, -1.3862944]]), **TOL)


@pytest.mark.parametrize("row_chunk", [2**17, 20])
def test_token_logprobs_gradient_equals_autograd_of_the_formula(monkeypatch, row_chunk):
    """With gradients, token_logprobs runs its own backward (-g softmax(x), g added at the
    target); its values and gradient equal autograd's through gather - logsumexp, bit for bit,
    for (N, V) and (B, T, V) logits, repeated targets included, in one block of rows and in
    several (``row_chunk`` 20: 1-2 rows a block)."""
    monkeypatch.setattr(losses, "ROW_CHUNK", row_chunk)
    g = torch.Generator().manual_seed(0)
    for shape in [(7, 13), (2, 5, 11)]:
        x = (torch.randn(*shape, generator=g) * 3).requires_grad_()
        targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
        weights = torch.randn(shape[:-1], generator=g)
        got = losses.token_logprobs(x, targets)
        (got * weights).sum().backward()
        got_grad, x.grad = x.grad, None
        want = x.gather(-1, targets[..., None]).squeeze(-1) - x.logsumexp(-1)
        (want * weights).sum().backward()
        assert torch.equal(got, want) and torch.equal(got_grad, x.grad)
        assert got.grad_fn is not None and want.grad_fn is not None
        with torch.no_grad():
            assert torch.equal(losses.token_logprobs(x, targets), want)


def test_sequence_logprobs_sums_by_sequence_id():
    """Per-token log-probs [-0.5, -1, -2, -4] of sequences [0, 0, 2, 0] (3 sequences): sequence 0
    sums -0.5 - 1 - 4 = -5.5, sequence 1 has no token -> 0, sequence 2 -> -2."""
    got = losses.sequence_logprobs(t([-0.5, -1.0, -2.0, -4.0]), torch.tensor([0, 0, 2, 0]), 3)
    torch.testing.assert_close(got, t([-5.5, 0.0, -2.0]), **TOL)


def test_sft_nll_token_mean_and_global_normaliser():
    """logps [[-1, -2, -3], [-0.5, -4, 0]], mask [[1, 1, 0], [1, 0, 0]]: masked sum -3.5 over
    3 tokens -> 3.5 / 3 = 1.1666667. With the optimiser step's token count 7 -> 3.5 / 7 = 0.5."""
    logps = t([[-1.0, -2.0, -3.0], [-0.5, -4.0, 0.0]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    assert losses.sft_nll(logps, mask).item() == pytest.approx(1.1666667, abs=1e-6)
    assert losses.sft_nll(logps, mask, num_tokens=7).item() == pytest.approx(0.5, abs=1e-7)


def test_sft_nll_without_mask_counts_every_value():
    """The (N,) log-probs of trained tokens alone, [-1, -2, -0.5]: sum -3.5 over 3 tokens -> 1.1666667;
    with the step's token count 7 -> 0.5; with normaliser 1 -> the summed NLL 3.5."""
    logps = t([-1.0, -2.0, -0.5])
    assert losses.sft_nll(logps).item() == pytest.approx(1.1666667, abs=1e-6)
    assert losses.sft_nll(logps, num_tokens=7).item() == pytest.approx(0.5, abs=1e-7)
    assert losses.sft_nll(logps, num_tokens=1).item() == pytest.approx(3.5, abs=1e-7)


def test_sft_nll_accumulation_equals_one_batch():
    """Two micro-batches normalised by the step's total tokens sum to the full-batch loss."""
    logps = t([[-1.0, -2.0, -3.0], [-0.5, -4.0, 0.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    full = losses.sft_nll(logps, mask)
    parts = losses.sft_nll(logps[:1], mask[:1], 4) + losses.sft_nll(logps[1:], mask[1:], 4)
    torch.testing.assert_close(parts, full, **TOL)
    assert full.item() == pytest.approx(6.5 / 4, abs=1e-7)


def test_bradley_terry():
    """r_c = [2, 0], r_r = [1, 0]: differences [1, 0].
    -log s(1) = ln(1 + e^-1) = 0.3132617, -log s(0) = ln 2 = 0.6931472; mean 0.5032044."""
    assert losses.bradley_terry(t([2.0, 0.0]), t([1.0, 0.0])).item() == pytest.approx(0.5032044, abs=1e-6)


def test_bradley_terry_margin():
    """margin [0.5, 0]: differences [0.5, 0]; -log s(0.5) = ln(1 + e^-0.5) = 0.4740770;
    mean (0.4740770 + 0.6931472) / 2 = 0.5836121."""
    got = losses.bradley_terry(t([2.0, 0.0]), t([1.0, 0.0]), margin_B=t([0.5, 0.0]))
    assert got.item() == pytest.approx(0.5836121, abs=1e-6)


def test_bradley_terry_centering():
    """(r_c + r_r)^2 = [9, 0], mean 4.5; coef 0.01 adds 0.045: 0.5032044 + 0.045 = 0.5482044."""
    got = losses.bradley_terry(t([2.0, 0.0]), t([1.0, 0.0]), center_coef=0.01)
    assert got.item() == pytest.approx(0.5482044, abs=1e-6)


# DPO: pi(y_c) = -1, pi(y_r) = -3, ref(y_c) = ref(y_r) = -2 -> log-ratios +1 and -1, h = 2.
PC, PR, RC, RR = t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0])


@pytest.mark.parametrize("loss_type,beta,eps,expected", [
    # beta h = 1: -log s(1) = 0.3132617
    ("sigmoid", 0.5, 0.0, 0.3132617),
    # cDPO: 0.9 * 0.3132617 + 0.1 * (-log s(-1) = 1.3132617) = 0.2819355 + 0.1313262
    ("sigmoid", 0.5, 0.1, 0.4132617),
    # rDPO: (0.9 * 0.3132617 - 0.1 * 1.3132617) / 0.8 = 0.1506094 / 0.8
    ("robust", 0.5, 0.1, 0.1882617),
    # IPO: (h - 1/(2 beta))^2 = (2 - 1)^2 = 1 at beta 0.5; (2 - 2)^2 = 0 at beta 0.25
    ("ipo", 0.5, 0.0, 1.0),
    ("ipo", 0.25, 0.0, 0.0),
    # hinge: max(0, 1 - beta h) = 1 - 0.5 = 0.5 at beta 0.25; 0 at beta 0.5
    ("hinge", 0.25, 0.0, 0.5),
    ("hinge", 0.5, 0.0, 0.0),
])
def test_dpo_losses(loss_type, beta, eps, expected):
    loss, rc, rr = losses.dpo_loss(PC, PR, RC, RR, beta, loss_type, eps)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # implicit rewards: beta * log-ratio = +beta and -beta
    assert rc.item() == pytest.approx(beta, abs=1e-7)
    assert rr.item() == pytest.approx(-beta, abs=1e-7)


def test_ipo_length_normalised():
    """Chosen response 2 tokens, rejected 4: log-ratios +1 / 2 = 0.5 and -1 / 4 = -0.25, so the
    per-token h = 0.75; at beta 0.5 the loss is (0.75 - 1/(2*0.5))^2 = (-0.25)^2 = 0.0625 (the summed
    form gives (2 - 1)^2 = 1). Implicit rewards stay beta * summed log-ratio: +0.5 and -0.5."""
    loss, rc, rr = losses.dpo_loss(PC, PR, RC, RR, 0.5, "ipo", chosen_len_B=t([2.0]), rejected_len_B=t([4.0]))
    assert loss.item() == pytest.approx(0.0625, abs=1e-7)
    assert (rc.item(), rr.item()) == pytest.approx((0.5, -0.5), abs=1e-7)


def test_ipo_first_step_gradient_summed_vs_normalised():
    """At the first step policy == reference, so h = 0 either way. d/d log pi(y_c) of (h - 1/(2b))^2
    is 2 (h - 1/(2b)) * dh/dlog pi(y_c): summed, dh/d = 1 -> 2 * (0 - 5) = -10 at beta 0.1;
    length-normalised, dh/d = 1/12 for a 12-token response -> -10/12 = -0.8333333 (12x smaller)."""
    grads = []
    for lens in ((None, None), (t([12.0]), t([12.0]))):
        pc = t([-2.0]).requires_grad_()
        losses.dpo_loss(pc, t([-2.0]), t([-2.0]), t([-2.0]), 0.1, "ipo", chosen_len_B=lens[0],
                        rejected_len_B=lens[1])[0].sum().backward()
        grads.append(pc.grad.item())
    assert grads == pytest.approx([-10.0, -0.8333333], abs=1e-6)


def test_ipo_length_normalised_equals_trl_formula():
    """TRL 1.16 ``DPOTrainer._compute_loss`` (loss_type ipo) is not callable without a model, so its
    formula is written out here from its source: with completion masks M_c, M_r (B, T) and
    scores s = logp - ref_logp summed over the completion,
        delta = s_c / clamp(M_c.sum(1), min=1) - s_r / clamp(M_r.sum(1), min=1)
        loss  = (delta - 1 / (2 beta))^2
    Random per-token log-probs and ragged masks; rlhfkit gets only the summed log-probs and counts."""
    g = torch.Generator().manual_seed(0)
    B, T, beta = 5, 7, 0.1
    mask_c = (torch.arange(T) < torch.tensor([[1], [3], [7], [5], [2]])).float()
    mask_r = (torch.arange(T) < torch.tensor([[6], [2], [4], [7], [1]])).float()
    lp = {k: -torch.rand(B, T, generator=g) * 3 for k in ("pc", "pr", "rc", "rr")}
    s_c = ((lp["pc"] - lp["rc"]) * mask_c).sum(1)
    s_r = ((lp["pr"] - lp["rr"]) * mask_r).sum(1)
    trl = (s_c / mask_c.sum(1).clamp(min=1.0) - s_r / mask_r.sum(1).clamp(min=1.0) - 1 / (2 * beta)) ** 2
    ours = losses.dpo_loss((lp["pc"] * mask_c).sum(1), (lp["pr"] * mask_r).sum(1), (lp["rc"] * mask_c).sum(1),
                           (lp["rr"] * mask_r).sum(1), beta, "ipo", chosen_len_B=mask_c.sum(1),
                           rejected_len_B=mask_r.sum(1))[0]
    torch.testing.assert_close(ours, trl, rtol=1e-6, atol=1e-5)
    summed = losses.dpo_loss(s_c, s_r, torch.zeros(B), torch.zeros(B), beta, "ipo")[0]
    assert not torch.allclose(summed, trl, rtol=1e-3)  # the two forms really differ on this data


def test_robust_dpo_zero_noise_is_dpo():
    a = losses.dpo_loss(PC, PR, RC, RR, 0.1, "robust", 0.0)[0]
    b = losses.dpo_loss(PC, PR, RC, RR, 0.1, "sigmoid", 0.0)[0]
    torch.testing.assert_close(a, b, **TOL)


def test_dpo_gradient_direction():
    """The DPO gradient raises the chosen log-prob and lowers the rejected one."""
    pc, pr = t([-1.0]).requires_grad_(), t([-3.0]).requires_grad_()
    losses.dpo_loss(pc, pr, RC, RR, 0.5)[0].sum().backward()
    # d/dpc of -log s(beta h) = -beta (1 - s(beta h)) = -0.5 * (1 - 0.7310586) = -0.1344707
    assert pc.grad.item() == pytest.approx(-0.1344707, abs=1e-6)
    assert pr.grad.item() == pytest.approx(0.1344707, abs=1e-6)


def test_dpo_rejects_unknown_type():
    with pytest.raises(ValueError, match="loss_type"):
        losses.dpo_loss(PC, PR, RC, RR, 0.1, "nope")


@pytest.mark.parametrize("estimator,expected", [
    # log r = ref - pi: token 1 has log r = -2 - (-1) = -1, token 2 has log r = +1
    ("k1", [1.0, -1.0]),                       # -log r: negative for the second token
    ("k2", [0.5, 0.5]),                        # (log r)^2 / 2
    ("k3", [0.3678794, 0.7182818]),            # (e^-1 - 1) + 1 = e^-1;  (e - 1) - 1 = e - 2
])
def test_kl_estimators(estimator, expected):
    got = losses.kl_estimate(t([-1.0, -2.0]), t([-2.0, -1.0]), estimator)
    torch.testing.assert_close(got, t(expected), **TOL)
