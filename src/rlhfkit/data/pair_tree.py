"""Preference pairs with each prompt computed once: [prompt | chosen | rejected] in one segment.

A pair's prompt is the same tokens before both responses, and a causal model's hidden states at
the prompt do not depend on what follows, so chosen and rejected can share one prompt computation:
the segment is laid out as prompt, chosen, rejected; ``position_ids`` run 0..P-1 over the prompt
and restart at P for each response; and an explicit attention mask lets every token attend, in
causal order within its segment, to the prompt and to its own response only (rejected tokens never
see chosen ones). Each response token then has exactly the keys, values and positions it has in
the plain prompt + response sequence, so its hidden state, and a reward read at its last token,
are the same; a pair costs P + C + R tokens instead of 2P + C + R. Segments are packed into rows
as wide as the longest (first fit decreasing, ``tokenize.pack_bins``).
"""

from __future__ import annotations

import torch

from .tokenize import TokenizedPair, pack_bins


def tree_pairs(batch: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """(R, W) ``input_ids`` and ``position_ids``, a (R, 1, W, W) boolean ``tree_mask`` (True:
    attend), ``last_index`` (2B,) flat indices of the chosen (0..B-1) then rejected (B..2B-1)
    last tokens, as ``collate_pairs`` orders them, and ``margin`` / ``weight`` (B,). Padding at a
    row's end attends to itself only (no row of the mask is empty)."""
    lengths = [len(b.prompt_ids) + len(b.chosen_ids) + len(b.rejected_ids) for b in batch]
    order = pack_bins(lengths, max(lengths))
    R, W, B = len(order), max(sum(lengths[i] for i in b) for b in order), len(batch)
    ids = torch.full((R, W), pad_id, dtype=torch.long)
    pos = torch.zeros((R, W), dtype=torch.long)
    seg = torch.full((R, W), -1, dtype=torch.long)
    branch = torch.zeros((R, W), dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected
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
            last[i] = r * W + at + len(p) + len(c) - 1
            last[B + i] = r * W + at + n - 1
            at += n
    causal = torch.ones(W, W, dtype=torch.bool).tril()
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)  # (R, Wq, Wk)
    visible = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    mask = (same & visible & causal) | torch.eye(W, dtype=torch.bool)
    return {"input_ids": ids, "position_ids": pos, "tree_mask": mask[:, None], "last_index": last,
            "num_tokens": torch.tensor(sum(lengths)),
            "margin": torch.tensor([b.margin for b in batch], dtype=torch.float32),
            "weight": torch.tensor([b.weight for b in batch], dtype=torch.float32)}
