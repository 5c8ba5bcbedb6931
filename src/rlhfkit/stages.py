"""The registry of runnable stages: name -> (config dataclass, function(config) -> summary dict).

One place, used by the command line (``rlhfkit NAME``) and by ``rlhfkit pipeline``. Imports are
lazy so that ``rlhfkit --help`` stays fast.
"""

from __future__ import annotations

from typing import Callable


def registry() -> dict[str, tuple[type, Callable]]:
    from .best_of_n import run_best_of_n
    from .config import (BestOfNConfig, DPOConfig, GRPOConfig, JudgeConfig, MergeLoraConfig, PPOConfig, RLOOConfig,
                         RMConfig, SamplePairsConfig, SFTConfig)
    from .judge.run import run_judge
    from .merge_lora import run_merge_lora
    from .sample_pairs import run_sample_pairs
    from .train.dpo import run_dpo
    from .train.grpo import run_grpo
    from .train.ppo import run_ppo
    from .train.rloo import run_rloo
    from .train.rm import run_rm
    from .train.sft import run_sft
    from .evaluate import EVAL_STAGES
    from .world.stages import WORLD_STAGES

    return {"sft": (SFTConfig, run_sft), "rm": (RMConfig, run_rm), "dpo": (DPOConfig, run_dpo),
            "ppo": (PPOConfig, run_ppo), "rloo": (RLOOConfig, run_rloo), "grpo": (GRPOConfig, run_grpo),
            "best-of-n": (BestOfNConfig, run_best_of_n), "sample-pairs": (SamplePairsConfig, run_sample_pairs),
            "judge": (JudgeConfig, run_judge), "merge-lora": (MergeLoraConfig, run_merge_lora),
            **WORLD_STAGES, **EVAL_STAGES}
