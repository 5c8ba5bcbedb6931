"""k-means and the per-cluster coverage count, on hand-made embeddings."""

import numpy as np

from rlhfkit.evaluate.coverage import cluster_coverage, kmeans


def _unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_kmeans_finds_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    x = np.concatenate([c + rng.normal(0, 0.3, size=(20, 2)) for c in centres])
    c, labels = kmeans(x, 3, seed=1)
    truth = np.repeat([0, 1, 2], 20)
    for t in range(3):   # each true blob maps to exactly one cluster, and different blobs to different ones
        assert len(set(labels[truth == t])) == 1
    assert len(set(labels)) == 3
    assert np.abs(np.sort(c[:, 0]) - np.sort(centres[:, 0])).max() < 0.5
    assert kmeans(np.ones((5, 2)), 3)[0].shape == (1, 2)   # k capped at the distinct rows


def test_cluster_coverage_counts_pairs_near_each_cluster():
    """Eval prompts in two directions (x and y axes); preference prompts only along x (3 prompts with
    4, 1, 2 pairs, cosine ~0.999 to the x prompts) plus one along -x (cosine < 0 to everything: near
    nothing, though some cluster is its nearest). The x cluster has 7 pairs near it, the y cluster none."""
    eval_x = _unit([[1, 0.05, 0], [1, -0.05, 0], [0.05, 1, 0], [-0.05, 1, 0]])
    train_x = _unit([[1, 0.01, 0], [1, -0.02, 0], [1, 0.0, 0.01], [-1, 0, 0]])
    rows, labels, nn = cluster_coverage(eval_x, train_x, [4, 1, 2, 9], k=2, min_pairs=5)
    by = {tuple(sorted(np.flatnonzero(labels == r["cluster"]).tolist())): r for r in rows}
    x_cl, y_cl = by[(0, 1)], by[(2, 3)]
    assert x_cl["pairs_near"] == 7 and x_cl["covered"]
    assert y_cl["pairs_near"] == 0 and not y_cl["covered"]
    assert y_cl["nearest_pair_similarity"] < 0.2 < 0.99 < x_cl["nearest_pair_similarity"]
    assert [round(float(v), 4) for v in nn] == [round(float(v), 4) for v in (eval_x @ train_x.T).max(1)]
    assert x_cl["pairs_nearest"] + y_cl["pairs_nearest"] == 16         # the -x prompt's 9 pairs go somewhere
    strict, _, _ = cluster_coverage(eval_x, train_x, [4, 1, 2, 9], k=2, min_pairs=5, near=0.99999)
    assert sum(r["pairs_near"] for r in strict) < 7                   # a stricter threshold counts fewer
