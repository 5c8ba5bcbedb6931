"""`rlhfkit lab active`: labels needed to reach a reward-model accuracy, with and without active selection.

The pool is the demo's own sampled pairs (``pairs/pairs.jsonl``: two SFT samples per row); each is
labelled once, up front, by the demo's simulated annotators (same temperature and flip rate), and a
label is only *revealed* when an arm selects its pair, so both arms see the same label for a pair.
A held-out share of the pairs, ordered by the gold score (ties dropped), is the test set.

Reward model: a Bradley-Terry linear head on the frozen SFT model's features of prompt + response
(the last layer's hidden state, mean over response tokens and at the last token; standardised).
``rlhfkit rm`` trains the whole network; here only the head is fit (L2 logistic regression on
feature differences), so the sweep's hundreds of fits take seconds. Its accuracies are the head's,
lower than the demo's full reward model, and the comparison between arms is what the lab reads.

Both arms start from the same random ``step`` pairs. Random selection then adds pairs in a seeded
random order; active selection fits ``ensemble`` bootstrap heads to the pairs it has, and picks the
next ``step`` by their disagreement (``rlhfkit.active.select_pairs``), a ``random_fraction`` of
every batch drawn at random. Accuracy is read after every batch, each arm refit on all its pairs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from ..active import labels_to_reach, select_pairs
from .annotators import SimulatedAnnotator
from .gold import gold_score
from .tasks import Prompt


def _prompt(r: dict) -> Prompt:
    return Prompt(r["prompt"], r["category"], r.get("subject") or "", r.get("answer") or "")


def read_pairs(pairs_file: Path) -> list[dict]:
    """The sampled pairs, without rows whose two responses are identical (an annotator skips them)."""
    rows = [json.loads(x) for x in Path(pairs_file).read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if r["response_a"] != r["response_b"]]


def split_pool(rows: list[dict], temperature: float, flip_rate: float, seed: int, test_fraction: float = 0.25):
    """(pool indices, their annotator labels: 1 where a is chosen, test indices, gold labels); test
    pairs the gold score ties are dropped."""
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    n_test = int(round(test_fraction * len(idx)))
    test, pool = idx[:n_test], idx[n_test:]
    annotator = SimulatedAnnotator(temperature, flip_rate, seed=seed)
    labels = np.array([annotator.label(_prompt(rows[i]), rows[i]["response_a"], rows[i]["response_b"]) == "a"
                       for i in pool], float)
    margins = [gold_score(_prompt(rows[i]), rows[i]["response_a"]) - gold_score(_prompt(rows[i]), rows[i]["response_b"])
               for i in test]
    return pool, labels, [i for i, m in zip(test, margins) if m], np.array([float(m > 0) for m in margins if m])


def pair_features(model_dir: str, rows: list[dict], batch_size: int = 64):
    """(N, 2, D) frozen features of (prompt, response_a) and (prompt, response_b)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..data.tokenize import split_ids
    from ..models import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    seqs = []  # (ids, first response position)
    for r in rows:
        head, tails = split_ids(tok, r["prompt"], [r["response_a"], r["response_b"]])
        seqs += [(head + t, len(head)) for t in tails]
    out = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            width = max(len(s) for s, _ in chunk)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in chunk])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in chunk])
            h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]  # (B, T, D)
            for j, (s, start) in enumerate(chunk):
                resp = h[j, start:len(s)] if len(s) > start else h[j, len(s) - 1:len(s)]
                out.append(torch.cat([resp.mean(0), h[j, len(s) - 1]]).numpy())
    return np.stack(out).reshape(len(rows), 2, -1)


def fit_head(diff_X: np.ndarray, y: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Bradley-Terry head w: P(a > b) = sigmoid(w . (f_a - f_b)), L2-penalised logistic fit."""
    from sklearn.linear_model import LogisticRegression

    if len(set(y.tolist())) < 2:  # one class only: flip half (the model has no intercept, so it is the same data)
        diff_X, y = diff_X.copy(), y.copy()
        diff_X[::2], y[::2] = -diff_X[::2], 1 - y[::2]
    clf = LogisticRegression(C=1.0 / l2, fit_intercept=False, max_iter=500)
    return clf.fit(diff_X, y).coef_[0]


def _accuracy(w, test_X, gold) -> float:
    return float(((test_X @ w > 0) == (gold > 0.5)).mean())


def run_arm(X, labels, test_X, gold, budgets: list[int], active: bool, ensemble: int, random_fraction: float,
            seed: int, criterion: str = "disagreement") -> dict:
    """One arm's accuracy after each budget (labels spent), and how its labelled set was picked."""
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(X))]
    labelled, randoms = order[:budgets[0]], budgets[0]
    acc = []
    for b in budgets:
        need = b - len(labelled)
        if need > 0 and not active:
            labelled += order[len(labelled):b]
        elif need > 0:
            idx = np.array(labelled)
            margins = []
            for k in range(ensemble):  # bootstrap members
                boot = idx[rng.integers(0, len(idx), len(idx))]
                margins.append(X @ fit_head(X[boot], labels[boot]))
            chosen, drawn = select_pairs(np.stack(margins), need, labelled, random_fraction, seed=seed * 1000 + b,
                                         criterion=criterion)
            labelled += chosen + drawn
            randoms += len(drawn)
        acc.append(_accuracy(fit_head(X[labelled], labels[labelled]), test_X, gold))
    return {"accuracy": acc, "labelled": len(labelled), "random_picks": randoms if active else len(labelled),
            "unique": len(set(labelled))}


def sweep(pairs_file: Path, model_dir: str, temperature: float, flip_rate: float, budget: int, step: int,
          ensemble: int = 5, random_fraction: float = 0.25, repeats: int = 3, seed: int = 0,
          criterion: str = "disagreement") -> dict:
    """Both arms, ``repeats`` times (different label draws, splits and orders); mean curves, the
    labels active selection needs to reach random selection's accuracy at the full budget, and
    their ratio to the budget."""
    budgets = list(range(step, budget + 1, step))
    rows = read_pairs(pairs_file)
    feats = pair_features(model_dir, rows)
    # standardised feature differences (a shift cancels in f_a - f_b)
    diff = (feats[:, 0] - feats[:, 1]) / (feats.reshape(-1, feats.shape[-1]).std(0) + 1e-6)
    curves, checks = {"random": [], "active": []}, []
    for r in range(repeats):
        pool, labels, test, gold = split_pool(rows, temperature, flip_rate, seed + r)
        if budget > len(pool):
            raise ValueError(f"{pairs_file}: the budget {budget} is larger than the pool ({len(pool)} pairs)")
        for arm in curves:
            out = run_arm(diff[pool], labels, diff[test], gold, budgets, arm == "active", ensemble, random_fraction,
                          seed + r, criterion)
            curves[arm].append(out["accuracy"])
            checks.append({"arm": arm, "repeat": r, **{k: v for k, v in out.items() if k != "accuracy"}})
    mean = {a: np.mean(c, axis=0).tolist() for a, c in curves.items()}
    half = {a: (1.96 * np.std(c, axis=0, ddof=1) / np.sqrt(len(c))).tolist() if len(c) > 1 else [0.0] * len(budgets)
            for a, c in curves.items()}
    target = mean["random"][-1]
    needed = labels_to_reach(budgets, mean["active"], target)
    return {"budgets": budgets, "accuracy": mean, "ci_half_width": half, "per_repeat": curves, "target": target,
            "active_labels_needed": needed, "ratio": needed / budget if needed else None,
            "pool_pairs": len(pool), "test_pairs": len(test), "checks": checks}


def table_rows(result: dict) -> list[dict]:
    """One row per budget: both arms' mean held-out gold accuracy and its 95% interval."""
    rows = []
    for i, b in enumerate(result["budgets"]):
        row = {"labels": b}
        for arm in ("random", "active"):
            m, h = result["accuracy"][arm][i], result["ci_half_width"][arm][i]
            row.update({f"{arm}_accuracy": m, f"{arm}_ci_low": m - h, f"{arm}_ci_high": m + h})
        rows.append(row)
    return rows


def note(result: dict, random_fraction: float, criterion: str = "disagreement") -> str:
    """One sentence: what active selection reached, in labels and as a share of the budget."""
    budget, target = result["budgets"][-1], result["target"]
    head = (f"random selection reaches {target:.3f} held-out gold accuracy with {budget} labels; active selection "
            f"({1 - random_fraction:.0%} by ensemble {criterion}, {random_fraction:.0%} random)")
    if result["active_labels_needed"] is None:
        return f"{head} does not reach it within {budget} (it ends at {result['accuracy']['active'][-1]:.3f})"
    return f"{head} reaches it with {result['active_labels_needed']} ({result['ratio']:.2f}x)"


def figure(result: dict, random_fraction: float, criterion: str = "disagreement"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    x = result["budgets"]
    for arm, label in (("random", "random selection"),
                       ("active", f"active: ensemble {criterion} + {random_fraction:.0%} random")):
        m, h = np.array(result["accuracy"][arm]), np.array(result["ci_half_width"][arm])
        ax.plot(x, m, "o-", ms=3, label=label)
        ax.fill_between(x, m - h, m + h, alpha=0.2)
    ax.axhline(result["target"], ls=":", color="grey", label="random selection at the full budget")
    if result["active_labels_needed"]:
        ax.axvline(result["active_labels_needed"], ls="--", color="tab:orange", lw=0.8,
                   label=f"active reaches it: {result['active_labels_needed']} labels ({result['ratio']:.2f}x)")
    ax.set(xlabel="labels spent (annotated pairs)", ylabel="reward-model accuracy (held-out, gold order)",
           title="Active selection of pairs to label (reward model: a Bradley-Terry head on SFT features)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    n = len(result["per_repeat"]["random"])
    fig.text(0.5, -0.06, f"mean of {n} repeats (label draws, test splits, orders); shaded: 95% interval over them",
             ha="center", fontsize=8)
    return fig
