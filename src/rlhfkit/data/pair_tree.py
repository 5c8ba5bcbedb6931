"""Preference pairs with each prompt computed once: [prompt | chosen | rejected] in one segment.

A pair's prompt is the same tokens before both responses, and a causal model's hidden states at
the prompt do not depend on what follows, so chosen and rejected can share one prompt computation:
the segment is laid out as prompt, chosen, rejected; ``position_ids`` run 0..P-1 over the prompt
and restart at P for each response; and an explicit attention mask lets every token attend, in
causal order within its segment, to the prompt and to its own response only (rejected tokens never
see chosen ones). Each response token then has exactly the keys, values and positions it has in
the plain prompt + response sequence, so its hidden state, and a reward read at its last token,
are the same; a pair costs P + C + R tokens instead of 2P + C + R. The rejected response's first
token is predicted from the prompt's last position (``tree_src``), not from the token before it
in the row. Segments are packed into rows as wide as the longest (first fit decreasing,
``tokenize.pack_bins``). Used by ``rm`` and ``dpo`` where ``logprobs.tree_pairs_work`` passes.
"""

from __future__ import annotations

import torch

from .tokenize import TokenizedPair, pack_bins


def tree_pairs(batch: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """(R, W) ``input_ids`` and ``position_ids``, a (R, 1, W, W) boolean ``tree_mask`` (True:
    attend), ``last_index`` (2B,) flat indices of the chosen (0..B-1) then rejected (B..2B-1)
    last tokens, as ``collate_pairs`` orders them, ``margin`` / ``weight`` (B,) and, when precomputed,
    ``ref_logps`` (2B,). Padding at a
    row's end attends to itself only (no row of the mask is empty).

    For log-probs (DPO): ``loss_mask`` and ``seq_id`` (R, W) mark response tokens and their
    sequence (chosen i, rejected B + i) as in ``layout``, and ``tree_src`` (N,) gives, for each
    target selected by ``loss_mask[:, 1:]`` in row-major order, the flat index of the position
    whose hidden state predicts it: the one before, except a rejected response's first token,
    which the prompt's last position predicts."""
    lengths = [len(b.prompt_ids) + len(b.chosen_ids) + len(b.rejected_ids) for b in batch]
    order = pack_bins(lengths, max(lengths))
    R, W, B = len(order), max(sum(lengths[i] for i in b) for b in order), len(batch)
    ids = torch.full((R, W), pad_id, dtype=torch.long)
    pos = torch.zeros((R, W), dtype=torch.long)
    seg = torch.full((R, W), -1, dtype=torch.long)
    branch = torch.zeros((R, W), dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected
    loss = torch.zeros((R, W), dtype=torch.long)
    seq_id = torch.full((R, W), -1, dtype=torch.long)
    src = torch.zeros((R, W), dtype=torch.long)  # flat index of the position that predicts this token
    last = torch.zeros(2 * B, dtype=torch.long)
    for r, members in enumerate(order):
        at = 0
        for i in members:
            p, c, j = batch[i].prompt_ids, batch[i].chosen_ids, batch[i].rejected_ids
            n = lengths[i]
            ids[r, at:at + n] = torch.tensor(p + c + j, dtype=torch.long)
            pos[r, at:at + n] = torch.cat([torch.arange(len(p) + len(c)), torch.arange(len(p), len(p) + len(j))])
            seg[r, at:at + n] = i
            branch[r, at + len(p):at + len(p) + len(c)] = 1
            branch[r, at + len(p) + len(c):at + n] = 2
            for start, m, sid in ((at + len(p), len(c), i), (at + len(p) + len(c), len(j), B + i)):
                seq_id[r, start:start + m] = sid
                loss[r, start:start + m] = 1
                src[r, start:start + m] = r * W + torch.arange(start - 1, start + m - 1)
                src[r, start] = r * W + at + len(p) - 1  # a response's first token: from the prompt's last
                if not p:  # no prompt: the first response token has no prediction (as in the padded rows)
                    loss[r, start] = 0
            last[i] = r * W + at + len(p) + len(c) - 1
            last[B + i] = r * W + at + n - 1
            at += n
    causal = torch.ones(W, W, dtype=torch.bool).tril()
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)  # (R, Wq, Wk)
    visible = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    mask = (same & visible & causal) | torch.eye(W, dtype=torch.bool)
    sel = loss[:, 1:].bool()
    out = {"input_ids": ids, "position_ids": pos, "tree_mask": mask[:, None], "last_index": last,
            "loss_mask": loss, "seq_id": seq_id, "tree_src": src[:, 1:][sel],
            "num_tokens": torch.tensor(sum(lengths)),
            "margin": torch.tensor([b.margin for b in batch], dtype=torch.float32),
            "weight": torch.tensor([b.weight for b in batch], dtype=torch.float32)}
    if all(b.ref_chosen is not None and b.ref_rejected is not None for b in batch):  # precomputed (DPO)
        out["ref_logps"] = torch.tensor([b.ref_chosen for b in batch] + [b.ref_rejected for b in batch],
                                        dtype=torch.float32)
    return out
