"""A judge as a reward source for PPO / RLOO / GRPO and best-of-N.

Spec, in a config's ``reward_fn`` list (``rewards.make_reward`` parses it)::

    judge:TARGET[;key=value...]

TARGET is what ``rlhfkit judge`` takes as ``judge`` (an ``http(s)://.../v1`` URL, a reward-model
folder or a causal-LM folder). Keys: ``model`` (served model name), ``reference`` (which
comparison), ``constitution`` (a YAML file), ``concurrency``, ``cache``, ``logprobs``, ``batch_size``.

A pairwise judge needs something to compare with. ``reference=COLUMN`` (default: the prompt
file's ``reference`` column, else ``chosen``) compares each completion with that column's
response; ``reference=siblings`` compares it with the other completions sampled for the same
prompt (RLOO / GRPO groups). The reward is the order-balanced probability that the completion
wins, P(win) in [0, 1] (averaged over its siblings for ``siblings``), so a position-biased judge
gives no advantage to either slot.
"""

from __future__ import annotations

import torch

from .base import compare


def parse_judge_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``judge:TARGET;k=v;...`` -> (TARGET, {k: v})."""
    body = spec[len("judge:"):]
    target, *opts = body.split(";")
    options = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"reward_fn {spec!r}: option {opt!r} is not key=value")
        options[key.strip()] = value.strip()
    if not target:
        raise ValueError(f"reward_fn {spec!r}: expected 'judge:URL_OR_FOLDER[;key=value...]'")
    return target, options


class JudgeReward:
    KEYS = ("model", "reference", "constitution", "concurrency", "cache", "logprobs", "batch_size", "timeout")

    def __init__(self, spec: str, device="cpu", trust_remote_code: bool = False, judge=None):
        from . import make_judge

        target, options = parse_judge_spec(spec)
        unknown = set(options) - set(self.KEYS)
        if unknown:
            raise ValueError(f"reward_fn {spec!r}: unknown option {sorted(unknown)[0]!r} ({', '.join(self.KEYS)})")
        self.name, self.reference = spec, options.get("reference", "")
        typed = {k: int(v) for k, v in options.items() if k in ("concurrency", "batch_size")}
        typed.update({k: float(v) for k, v in options.items() if k == "timeout"})
        if "logprobs" in options:
            typed["logprobs"] = options["logprobs"].lower() in ("1", "true", "yes")
        if "cache" in options:
            typed["cache"] = options["cache"]
        self.judge = judge or make_judge(target, options.get("constitution"), options.get("model", ""), str(device),
                                         trust_remote_code=trust_remote_code, **typed)

    def _references(self, n: int, columns: dict) -> list:
        name = self.reference or next((c for c in ("reference", "chosen") if c in columns), None)
        if name is None or name not in columns:
            raise ValueError(f"reward_fn {self.name}: no reference column "
                             f"{'(' + repr(name) + ') ' if name else ''}in the prompt data; add a 'reference' or "
                             "'chosen' column, name one with ';reference=COLUMN', or use ';reference=siblings'")
        refs = columns[name]
        if len(refs) != n:
            raise ValueError(f"reward_fn {self.name}: column {name!r} has {len(refs)} values for {n} completions")
        return refs

    def __call__(self, prompts: list, completions: list[str], **columns) -> torch.Tensor:
        if self.reference == "siblings":
            return self._siblings(prompts, completions)
        refs = self._references(len(completions), columns)
        return torch.tensor([v.p_a for v in compare(self.judge, prompts, completions, refs)], dtype=torch.float32)

    def _siblings(self, prompts: list, completions: list[str]) -> torch.Tensor:
        """Mean P(win) against the other completions of the same (consecutive, equal) prompt."""
        groups: list[list[int]] = []
        for i, p in enumerate(prompts):
            if groups and prompts[groups[-1][0]] == p:
                groups[-1].append(i)
            else:
                groups.append([i])
        pairs = [(i, j) for g in groups for k, i in enumerate(g) for j in g[k + 1:]]
        if not pairs:
            raise ValueError(f"reward_fn {self.name}: reference=siblings needs >= 2 completions per prompt")
        vs = compare(self.judge, [prompts[i] for i, _ in pairs], [completions[i] for i, _ in pairs],
                     [completions[j] for _, j in pairs])
        total, count = [0.0] * len(completions), [0] * len(completions)
        for (i, j), v in zip(pairs, vs):
            total[i], total[j] = total[i] + v.p_a, total[j] + 1 - v.p_a
            count[i], count[j] = count[i] + 1, count[j] + 1
        return torch.tensor([t / c if c else 0.5 for t, c in zip(total, count)], dtype=torch.float32)
