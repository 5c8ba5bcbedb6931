"""The reward-vs-KL frontier of best-of-N: how much reward a policy buys per nat of KL.

Best-of-N from a base policy (draw N samples, keep the one a proxy reward scores highest) is the
simplest optimiser against a reward model, and its KL to the base policy has a closed form,
log N - (N - 1)/N nats (Stiennon et al. 2020; an upper bound, Beirami et al. 2024). Plotting the
proxy and a true ("gold") reward of the picks against that KL for N = 1, 2, 4, ... draws the
frontier RL policies are compared with, and shows over-optimisation when the proxy keeps rising
while the gold reward bends down (Gao et al. 2023).
"""

from __future__ import annotations

from ..kl import kl_bound


def best_of_n_curve(proxy: list[list[float]], gold: list[list[float]], ns: list[int]) -> list[dict]:
    """Per N: mean proxy and gold reward of the proxy's pick among each prompt's first N samples.

    ``proxy[i][j]`` and ``gold[i][j]`` score sample j of prompt i; every prompt needs max(ns)
    samples. Ties in the proxy go to the earlier sample.
    """
    if len(proxy) != len(gold) or not proxy:
        raise ValueError("best_of_n_curve: proxy and gold need the same, non-zero number of prompts")
    need = max(ns)
    if any(len(p) < need or len(g) < need for p, g in zip(proxy, gold)):
        raise ValueError(f"best_of_n_curve: every prompt needs {need} scored samples")
    rows = []
    for n in sorted(ns):
        picks = [max(range(n), key=lambda j: (p[j], -j)) for p in proxy]
        rows.append({"n": n, "kl": kl_bound(n),
                     "proxy_reward": sum(p[j] for p, j in zip(proxy, picks)) / len(proxy),
                     "gold_reward": sum(g[j] for g, j in zip(gold, picks)) / len(gold)})
    return rows


def fit_gao(kl: list[float], reward: list[float], form: str = "bon") -> dict:
    """Least-squares fit of Gao et al.'s (2023, eqs. 1-2) functional forms to reward gains vs KL.

    With d = sqrt(KL): best-of-N R(d) = d (alpha - beta d); RL R(d) = d (alpha - beta log d).
    ``reward`` is the gain over the starting policy (R(0) = 0). Both forms are linear in (alpha,
    beta), so ordinary least squares on the features (d, -d^2) or (d, -d log d) solves them.
    Points at KL <= 0 carry no information for the fit (both forms are 0 there) and are skipped.
    """
    import numpy as np

    if form not in ("bon", "rl"):
        raise ValueError(f"fit_gao: form must be 'bon' or 'rl', got {form!r}")
    k, r = np.asarray(kl, dtype=np.float64), np.asarray(reward, dtype=np.float64)
    keep = k > 0
    if keep.sum() < 2:
        raise ValueError(f"fit_gao needs at least 2 points with KL > 0, got {int(keep.sum())}")
    d, r = np.sqrt(k[keep]), r[keep]
    second = d * d if form == "bon" else d * np.log(d)
    (alpha, beta), *_ = np.linalg.lstsq(np.stack([d, -second], 1), r, rcond=None)
    return {"form": form, "alpha": float(alpha), "beta": float(beta)}


def gao_curve(fit: dict, kl):
    """The fitted reward gain at the given KL values (nats)."""
    import numpy as np

    d = np.sqrt(np.maximum(np.asarray(kl, dtype=np.float64), 0.0))
    if fit["form"] == "bon":
        return d * (fit["alpha"] - fit["beta"] * d)
    return d * (fit["alpha"] - fit["beta"] * np.log(np.where(d > 0, d, 1.0)))
