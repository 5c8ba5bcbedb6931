"""Who gets which task: the pure decisions behind ``GET /api/next``.

The database side (``store.Store.next_task``) enforces the hard rules with constraints and atomic
updates: at most K annotators per task (a conditional ``UPDATE tasks SET assigned = assigned + 1
WHERE assigned < overlap``), nobody gets the same task twice (``UNIQUE(task_id, user_id)`` on
assignments). This module decides the soft ones:

- Gold pairs come at rate R: each annotator's stream is cut into blocks of ``round(1/R)`` tasks
  and one gold pair sits in each block at a position drawn from a hash of (annotator, block), so
  the rate is exact but the position cannot be predicted.
- The left/right order of the two responses is drawn per annotator and task (and recorded).
"""

from __future__ import annotations

import hashlib
import random

_rng = random.SystemRandom()


def gold_block_size(rate: float) -> int | None:
    """Tasks per gold pair (None: no gold). rate 0.2 -> 5, rate >= 1 -> 1 (every task)."""
    if rate <= 0:
        return None
    return max(1, round(1 / rate))


def gold_due(user_id: int, served: int, gold_served: int, rate: float) -> bool:
    """Whether the next task (the annotator's ``served``-th, 0-based) should be a gold pair.

    ``served`` counts every task served to this annotator so far (gold included), ``gold_served``
    the gold ones. One gold pair per block; a block whose gold could not be served (none left)
    lets the next blocks catch up.
    """
    size = gold_block_size(rate)
    if size is None:
        return False
    block, offset = divmod(served, size)
    position = int(hashlib.sha256(f"{user_id}:{block}".encode()).hexdigest(), 16) % size
    return offset >= position and gold_served <= block


def draw_left() -> str:
    """Which imported response ("a" or "b") to show on the left."""
    return "a" if _rng.random() < 0.5 else "b"


def pick(candidates: list[int]) -> int:
    """One of several equally good task ids (spreads concurrent annotators over the queue)."""
    return _rng.choice(candidates)
