"""On-policy RL pieces (whiten, GAE, PPO policy/value losses, RLOO and GRPO advantages) against
numbers worked out by hand in each docstring (tolerance 1e-6)."""

import math

import pytest
import torch

from rlhfkit import losses

TOL = dict(rtol=0, atol=1e-6)
NAN = float("nan")


def t(x):
    return torch.tensor(x, dtype=torch.float32)


# ----------------------------------------------------------------------------------- whiten

# Masked values 1, 2, 3, 4 (mean 2.5); the padded slots hold NaN and inf.
WX = t([[1.0, 2.0, 3.0], [4.0, NAN, math.inf]])
WM = t([[1, 1, 1], [1, 0, 0]])


def test_whiten_unbiased_variance():
    """Masked values 1, 2, 3, 4: mean 2.5, deviations -1.5, -0.5, 0.5, 1.5, squares sum 5.
    Unbiased variance 5 / 3 = 1.6666667, std sqrt(5/3 + 1e-8) = 1.2909944 ->
    -1.5 / 1.2909944 = -1.1618950, -0.5 / 1.2909944 = -0.3872983, and the mirror images.
    (The biased variance 5 / 4 would give -1.5 / 1.1180340 = -1.3416408 instead.)
    Padded slots are 0 and their NaN/inf never reach the mean."""
    got = losses.whiten(WX, WM)
    torch.testing.assert_close(got, t([[-1.1618950, -0.3872983, 0.3872983], [1.1618950, 0.0, 0.0]]), **TOL)


def test_whiten_keep_mean():
    """shift_mean=False adds the mean 2.5 back: -1.1618950 + 2.5 = 1.3381050,
    -0.3872983 + 2.5 = 2.1127017, 0.3872983 + 2.5 = 2.8872983, 1.1618950 + 2.5 = 3.6618950;
    padded slots stay 0."""
    got = losses.whiten(WX, WM, shift_mean=False)
    torch.testing.assert_close(got, t([[1.3381050, 2.1127017, 2.8872983], [3.6618950, 0.0, 0.0]]), **TOL)


def test_whiten_random_has_zero_mean_unit_unbiased_variance():
    """Whatever the input, the masked output has mean 0 and unbiased variance 1 (to eps)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g, dtype=torch.float64) * 3 + 5
    mask = torch.rand(4, 7, generator=g) < 0.6
    out = losses.whiten(x, mask)
    sel = out[mask]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert sel.var(unbiased=True).item() == pytest.approx(1.0, abs=1e-6)
    assert (out[~mask] == 0).all()


def test_whiten_single_element_is_zero_not_nan():
    """One masked element: the variance is taken as 0, so (x - x) / sqrt(0 + eps) = 0;
    with shift_mean=False the mean (the element itself, 7) comes back."""
    x, m = t([[7.0, NAN]]), t([[1, 0]])
    torch.testing.assert_close(losses.whiten(x, m), t([[0.0, 0.0]]), **TOL)
    torch.testing.assert_close(losses.whiten(x, m, shift_mean=False), t([[7.0, 0.0]]), **TOL)


# -------------------------------------------------------------------------------------- GAE

def gae_reference(rewards, values, length, gamma, lam):
    """A plain-Python backward recursion over one row's first ``length`` tokens."""
    T = len(rewards)
    adv = [0.0] * T
    running = 0.0
    for i in reversed(range(length)):
        next_value = values[i + 1] if i + 1 < length else 0.0
        delta = rewards[i] + gamma * next_value - values[i]
        running = delta + gamma * lam * running
        adv[i] = running
    ret = [adv[i] + values[i] if i < length else 0.0 for i in range(T)]
    return adv, ret


def test_gae_hand_worked():
    """gamma 0.9, lam 0.8 (gamma lam = 0.72).
    Row 0, length 3: r = [0, 0, 1], V = [0.5, 0.6, 0.8], V after the end = 0.
      delta_2 = 1 + 0.9*0 - 0.8 = 0.2;  delta_1 = 0 + 0.9*0.8 - 0.6 = 0.12;
      delta_0 = 0 + 0.9*0.6 - 0.5 = 0.04.
      A_2 = 0.2;  A_1 = 0.12 + 0.72*0.2 = 0.264;  A_0 = 0.04 + 0.72*0.264 = 0.23008.
      returns = A + V = [0.73008, 0.864, 1.0].
    Row 1, length 2, padded slot holds r = NaN, V = 1e9 (must be ignored):
      delta_1 = 1 + 0.9*0 - 0.4 = 0.6;  delta_0 = 0.5 + 0.9*0.4 - 0.2 = 0.66.
      A_1 = 0.6;  A_0 = 0.66 + 0.72*0.6 = 1.092;  returns = [1.292, 1.0, 0]."""
    rewards = t([[0.0, 0.0, 1.0], [0.5, 1.0, NAN]])
    values = t([[0.5, 0.6, 0.8], [0.2, 0.4, 1e9]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = losses.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t([[0.23008, 0.264, 0.2], [1.092, 0.6, 0.0]]), **TOL)
    torch.testing.assert_close(ret, t([[0.73008, 0.864, 1.0], [1.292, 1.0, 0.0]]), **TOL)


def test_gae_limits():
    """Row r = [0, 0, 1], V = [0.5, 0.6, 0.8].
    lam = 0: A = delta (one-step TD) = [0.04, 0.12, 0.2] (deltas as in the hand-worked test).
    gamma = lam = 1: A = reward-to-go - V = [1 - 0.5, 1 - 0.6, 1 - 0.8] = [0.5, 0.4, 0.2],
    and the returns are the reward-to-go [1, 1, 1]."""
    r, v, m = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.8]]), t([[1, 1, 1]])
    adv, _ = losses.gae(r, v, m, gamma=0.9, lam=0.0)
    torch.testing.assert_close(adv, t([[0.04, 0.12, 0.2]]), **TOL)
    adv, ret = losses.gae(r, v, m, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, t([[0.5, 0.4, 0.2]]), **TOL)
    torch.testing.assert_close(ret, t([[1.0, 1.0, 1.0]]), **TOL)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_gae_matches_reference_loop(seed):
    """Random rewards and values, row lengths from 0 to T (right-padded, pads hold NaN):
    every row equals the plain-Python recursion."""
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 9
    gamma, lam = [(0.9, 0.8), (1.0, 0.95), (0.99, 0.0), (0.5, 1.0), (0.97, 0.9)][seed]
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [0, T] + torch.randint(1, T, (B - 2,), generator=g).tolist()
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    want_adv, want_ret = zip(*[gae_reference(rewards[b].tolist(), values[b].tolist(), lengths[b], gamma, lam)
                               for b in range(B)])
    rewards[mask == 0] = NAN
    values[mask == 0] = NAN
    adv, ret = losses.gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor(want_adv, dtype=torch.float64), **TOL)
    torch.testing.assert_close(ret, torch.tensor(want_ret, dtype=torch.float64), **TOL)


def test_gae_padding_invariant():
    """Appending padded columns (garbage there) leaves the real positions unchanged."""
    g = torch.Generator().manual_seed(7)
    r, v = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    m = t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    adv, ret = losses.gae(r, v, m, 0.95, 0.9)
    pad = torch.full((3, 4), 1e6)
    adv2, ret2 = losses.gae(torch.cat([r, pad], 1), torch.cat([v, pad], 1),
                            torch.cat([m, torch.zeros(3, 4)], 1), 0.95, 0.9)
    torch.testing.assert_close(adv2[:, :5], adv, **TOL)
    torch.testing.assert_close(ret2[:, :5], ret, **TOL)
    assert (adv2[:, 5:] == 0).all() and (ret2[:, 5:] == 0).all()


# -------------------------------------------------------------------------- PPO policy loss

# clip range 0.2, so the ratio is clipped to [0.8, 1.2]. old log-prob -1 everywhere.
#   token  ratio  A     -A r    -A clip(r)  max             clipped term larger?
#   a      1.5   +1    -1.5    -1.2        -1.2            yes
#   b      0.5   +1    -0.5    -0.8        -0.5            no
#   c      1.0   -2     2.0     2.0         2.0            no (tie)
#   d      0.5   -1     0.5     0.8         0.8            yes
#   e      1.5   -1     1.5     1.2         1.5            no
#   f      masked: logp NaN, A = 1e9
PPO_RATIO = [[1.5, 0.5, 1.0], [0.5, 1.5, 1.0]]
PPO_ADV = t([[1.0, 1.0, -2.0], [-1.0, -1.0, 1e9]])
PPO_MASK = t([[1, 1, 1], [1, 1, 0]])
PPO_OLD = torch.full((2, 3), -1.0)


def ppo_logp():
    logp = PPO_OLD + torch.log(t(PPO_RATIO))
    logp[1, 2] = NAN
    return logp


def test_ppo_policy_loss_values():
    """loss = (-1.2 - 0.5 + 2.0 + 0.8 + 1.5) / 5 = 2.6 / 5 = 0.52.
    clip_frac = 2 of 5 tokens (a, d) = 0.4.
    approx_kl = mean of (log r)^2 / 2: (ln 1.5)^2 = 0.1644020, (ln 0.5)^2 = 0.4804530;
    (2*0.1644020 + 2*0.4804530 + 0) / 5 = 0.2579420, halved 0.1289710.
    The masked token's NaN log-prob and huge advantage do not appear."""
    loss, clip_frac, approx_kl = losses.ppo_policy_loss(ppo_logp(), PPO_OLD, PPO_ADV, PPO_MASK, 0.2)
    assert loss.item() == pytest.approx(0.52, abs=1e-6)
    assert clip_frac.item() == pytest.approx(0.4, abs=1e-7)
    assert approx_kl.item() == pytest.approx(0.1289710, abs=1e-6)


def test_ppo_policy_loss_gradient():
    """d loss / d logp_t = (1/N) d max(...)/d logp_t with N = 5, and d ratio / d logp = ratio:
      a, d: clipped term active -> 0;
      b: -A r / N = -1 * 0.5 / 5 = -0.1  (A > 0, r < 0.8: the unclipped term is the pessimistic one);
      c: -A r / N = 2 * 1.0 / 5 = 0.4;
      e: -A r / N = 1 * 1.5 / 5 = 0.3;
      f (masked, NaN): 0, not NaN.
    The diagnostics are detached."""
    logp = ppo_logp().requires_grad_()
    loss, clip_frac, approx_kl = losses.ppo_policy_loss(logp, PPO_OLD, PPO_ADV, PPO_MASK, 0.2)
    loss.backward()
    torch.testing.assert_close(logp.grad, t([[0.0, -0.1, 0.4], [0.0, 0.3, 0.0]]), **TOL)
    assert not clip_frac.requires_grad and not approx_kl.requires_grad


def test_ppo_policy_loss_on_policy_is_reinforce():
    """logp == old_logp: ratio 1, nothing clipped, KL 0, loss = -mean A = -(1 + 3 - 2) / 3 = -2/3,
    gradient -A / N = [-1/3, -1, 2/3]."""
    logp = t([[-0.3, -2.0, -1.1]]).requires_grad_()
    loss, clip_frac, approx_kl = losses.ppo_policy_loss(logp, logp.detach(), t([[1.0, 3.0, -2.0]]),
                                                        t([[1, 1, 1]]), 0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-2 / 3, abs=1e-6)
    assert clip_frac.item() == 0.0 and approx_kl.item() == 0.0
    torch.testing.assert_close(logp.grad, t([[-1 / 3, -1.0, 2 / 3]]), **TOL)


# --------------------------------------------------------------------------- PPO value loss

# clip range 0.2 for the value:
#   token  old   v     R     v_clip             (v - R)^2  (v_clip - R)^2  max   clipped larger?
#   1      1.0   1.5   2.0   1.0 + 0.2 = 1.2    0.25       0.64            0.64  yes
#   2      1.0   1.5   1.0   1.2                0.25       0.04            0.25  no
#   3      0.0   0.1   1.0   0.1 (in range)     0.81       0.81            0.81  no (tie)
#   4      0.0  -0.5   0.0   -0.2               0.25       0.04            0.25  no
#   5      masked, NaN everywhere
VAL_OLD = t([[1.0, 1.0, 0.0], [0.0, NAN, 0.0]])
VAL_V = [[1.5, 1.5, 0.1], [-0.5, NAN, 0.0]]
VAL_R = t([[2.0, 1.0, 1.0], [0.0, NAN, 0.0]])
VAL_MASK = t([[1, 1, 1], [1, 0, 0]])


def test_ppo_value_loss_values():
    """0.5 * (0.64 + 0.25 + 0.81 + 0.25) / 4 = 0.5 * 1.95 / 4 = 0.24375; clip_frac 1/4 = 0.25.
    The two masked slots (one all NaN, one all 0) are not counted."""
    loss, clip_frac = losses.ppo_value_loss(t(VAL_V), VAL_OLD, VAL_R, VAL_MASK, 0.2)
    assert loss.item() == pytest.approx(0.24375, abs=1e-6)
    assert clip_frac.item() == pytest.approx(0.25, abs=1e-7)


def test_ppo_value_loss_gradient():
    """d/dv of 0.5 (v - R)^2 / N is (v - R) / N, N = 4:
      1: clipped term active (v_clip does not move with v) -> 0;
      2: (1.5 - 1.0) / 4 = 0.125;  3: (0.1 - 1.0) / 4 = -0.225;  4: (-0.5 - 0) / 4 = -0.125;
      masked slots: 0."""
    v = t(VAL_V).requires_grad_()
    loss, clip_frac = losses.ppo_value_loss(v, VAL_OLD, VAL_R, VAL_MASK, 0.2)
    loss.backward()
    torch.testing.assert_close(v.grad, t([[0.0, 0.125, -0.225], [-0.125, 0.0, 0.0]]), **TOL)
    assert not clip_frac.requires_grad


# ------------------------------------------------------------------------- RLOO and GRPO

def test_rloo_advantages():
    """Group [1, 2, 3, 6]: r_i - mean of the other three:
      1 - (2+3+6)/3 = -8/3 = -2.6666667;  2 - 10/3 = -1.3333333;  3 - 9/3 = 0;  6 - 6/3 = 4.
    Group [0, 0, 1, 1]: 0 - 2/3 = -0.6666667 (twice), 1 - 1/3 = 0.6666667 (twice)."""
    got = losses.rloo_advantages(t([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]]))
    want = t([[-8 / 3, -4 / 3, 0.0, 4.0], [-2 / 3, -2 / 3, 2 / 3, 2 / 3]])
    torch.testing.assert_close(got, want, **TOL)


def test_rloo_two_generations_and_zero_sum():
    """G = 2: [a, b] -> [a - b, b - a] = [3 - 5, 5 - 3] = [-2, 2].
    Random groups: each row sums to 0, and A = G/(G-1) (r - mean)."""
    torch.testing.assert_close(losses.rloo_advantages(t([[3.0, 5.0]])), t([[-2.0, 2.0]]), **TOL)
    r = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    adv = losses.rloo_advantages(r)
    torch.testing.assert_close(adv.sum(1), torch.zeros(5), **TOL)
    torch.testing.assert_close(adv, 8 / 7 * (r - r.mean(1, keepdim=True)), **TOL)


def test_rloo_needs_two_generations():
    with pytest.raises(ValueError, match="at least 2"):
        losses.rloo_advantages(t([[1.0], [2.0]]))


def test_grpo_advantages():
    """Group [1, 2, 3, 6]: mean 3, deviations -2, -1, 0, 3, squares sum 14;
    unbiased std sqrt(14/3) = 2.1602469, + eps 1e-4 = 2.1603469:
      -2 / 2.1603469 = -0.9257772, -1 / 2.1603469 = -0.4628886, 0, 3 / 2.1603469 = 1.3886659.
    (The biased std sqrt(14/4) = 1.8708287 would give -1.0690 for the first.)
    scale=False (Dr. GRPO): r - mean = [-2, -1, 0, 3]."""
    r = t([[1.0, 2.0, 3.0, 6.0]])
    torch.testing.assert_close(losses.grpo_advantages(r), t([[-0.9257772, -0.4628886, 0.0, 1.3886659]]), **TOL)
    torch.testing.assert_close(losses.grpo_advantages(r, scale=False), t([[-2.0, -1.0, 0.0, 3.0]]), **TOL)


def test_grpo_equal_rewards_give_zeros():
    """All rewards equal (5, 5, 5): r - mean = 0 and std 0, so 0 / (0 + eps) = 0, no NaN."""
    r = t([[5.0, 5.0, 5.0], [0.0, 1.0, 2.0]])
    got = losses.grpo_advantages(r)
    torch.testing.assert_close(got[0], torch.zeros(3), **TOL)
    # second group: mean 1, unbiased std 1 -> [-1, 0, 1] / 1.0001
    torch.testing.assert_close(got[1], t([-1 / 1.0001, 0.0, 1 / 1.0001]), **TOL)


def test_grpo_needs_two_generations():
    with pytest.raises(ValueError, match="at least 2"):
        losses.grpo_advantages(t([[1.0], [2.0]]))


def test_unscored_completions_leave_the_baselines_and_get_zero_advantage():
    """NaN = a completion no reward source scored (TRL: nanmean/nanstd baseline, advantage 0).
    Group [1, NaN, 2, 6]: the scored rewards 1, 2, 6 have mean 3, deviations -2, -1, 3, squares 14,
    unbiased std sqrt(14/2) = 2.6457513 (+1e-4 = 2.6458513): GRPO -0.7559004, 0, -0.3779502, 1.1338506;
    scale=False: -2, 0, -1, 3.  RLOO: 1 - (2+6)/2 = -3, 0, 2 - 7/2 = -1.5, 6 - 3/2 = 4.5.
    Group [NaN, 5, NaN, NaN]: one scored completion has no baseline: all 0 (no NaN)."""
    r = t([[1.0, NAN, 2.0, 6.0], [NAN, 5.0, NAN, NAN]])
    torch.testing.assert_close(losses.grpo_advantages(r), t([[-0.7559004, 0.0, -0.3779502, 1.1338506], [0.0] * 4]),
                               **TOL)
    torch.testing.assert_close(losses.grpo_advantages(r, scale=False), t([[-2.0, 0.0, -1.0, 3.0], [0.0] * 4]), **TOL)
    torch.testing.assert_close(losses.rloo_advantages(r), t([[-3.0, 0.0, -1.5, 4.5], [0.0] * 4]), **TOL)
