"""RLAIF: AI judges of response pairs, constitutions, and pair labelling (``rlhfkit judge``).

Three kinds of judge behind one interface (``base.Judge``: P(first-shown response is better)):
a local causal LM read at the answer token (``local.LMJudge``), any OpenAI-compatible chat
endpoint (``remote.OpenAIJudge``), and a reward model (``local.RewardModelJudge``). Every pair is
judged in both orders (``base.compare``); ``base.judge_winrate`` gives win rates for evaluation,
``reward.JudgeReward`` makes a judge a reward source for PPO / RLOO / GRPO.
This package never imports a training recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import JudgeError, JudgeItem, Verdict, compare, judge_stats, judge_winrate, verdict, with_constitution
from .constitution import Constitution, Principle, load_constitution

__all__ = ["JudgeError", "JudgeItem", "Verdict", "compare", "judge_stats", "judge_winrate", "verdict",
           "Constitution", "Principle", "load_constitution", "make_judge", "is_url"]


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def make_judge(target: str, constitution=None, model: str = "", device: str = "cpu", **options):
    """A judge from ``target``: an ``http(s)://.../v1`` URL (OpenAI-compatible endpoint; ``model``
    names the served model, default the first one listed), a sequence-classification folder (a
    reward model, from ``rlhfkit rm``) or any other causal-LM folder (read at the answer token).

    ``options`` go to the judge class: for endpoints ``api_key``, ``timeout``, ``max_retries``,
    ``concurrency``, ``cache``, ``logprobs``; for local models ``batch_size``, ``trust_remote_code``.
    """
    con = with_constitution(constitution)
    if is_url(target):
        from .remote import OpenAIJudge

        keep = ("api_key", "timeout", "max_retries", "backoff", "concurrency", "cache", "logprobs", "max_tokens")
        return OpenAIJudge(target, con, model=model, **{k: v for k, v in options.items() if k in keep})
    path = Path(target)
    config = path / "config.json"
    if not config.is_file():
        raise JudgeError(f"judge {target!r}: neither an http(s)://.../v1 URL nor a model folder with config.json")
    local = {k: v for k, v in options.items() if k in ("batch_size", "trust_remote_code")}
    architectures = json.loads(config.read_text()).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        from .local import RewardModelJudge

        return RewardModelJudge(str(path), con, device, **local)
    from .local import LMJudge

    return LMJudge(str(path), con, device, **local)
