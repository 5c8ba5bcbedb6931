"""PPO's advantage whitening across data-parallel processes: each process whitens its shard with
the statistics of the whole batch (``losses.whiten(..., all_sum=...)``), so the result is the
1-process whitening of the concatenated batch, row for row. Two threads stand in for two
processes; ``all_sum`` is an all-reduce over them (a barrier, then the sum of both deposits)."""

import threading

import torch

from rlhfkit.losses import whiten


def _all_reduce_pair():
    """all_sum callables for two 'processes' (threads) that must call them in lockstep."""
    barrier, box = threading.Barrier(2), {}

    def make(rank):
        def all_sum(t):
            box[rank] = t.clone()
            barrier.wait()
            total = box[0] + box[1]
            barrier.wait()  # both have read before either deposits again
            return total
        return all_sum
    return make(0), make(1)


def test_sharded_whitening_equals_whitening_the_whole_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g) * 3 + 1
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    x[mask == 0] = float("nan")  # masked positions never reach the statistics
    whole = whiten(x, mask)
    shards = [(x[:3], mask[:3]), (x[3:], mask[3:])]
    sums, out = _all_reduce_pair(), [None, None]

    def work(rank):
        out[rank] = whiten(*shards[rank], all_sum=sums[rank])

    threads = [threading.Thread(target=work, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    torch.testing.assert_close(torch.cat(out), whole, rtol=0, atol=1e-6)
    # and per-shard whitening (no all_sum) would differ: the shards' statistics are not the batch's
    local = torch.cat([whiten(*shards[0]), whiten(*shards[1])])
    assert (local - whole).abs().max() > 1e-2
