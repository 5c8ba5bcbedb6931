"""Evaluation and audits: win rates, reward vs KL, reward-model report, coverage, bias audit, label noise.

Each stage is a config dataclass + a function; ``EVAL_STAGES`` is merged into ``rlhfkit.stages``.
None of them imports a training recipe: the noise finder trains its fold reward models through
the stage registry, as a pipeline does.
"""

from .audit import AuditConfig, run_audit
from .coverage import CoverageConfig, run_coverage
from .frontier_stage import FrontierConfig, run_frontier
from .noise import NoiseConfig, run_noise
from .rm_report import RMEvalConfig, run_rm_eval
from .winrate import EvalConfig, run_eval

EVAL_STAGES = {
    "eval": (EvalConfig, run_eval),
    "frontier": (FrontierConfig, run_frontier),
    "rm-eval": (RMEvalConfig, run_rm_eval),
    "coverage": (CoverageConfig, run_coverage),
    "audit": (AuditConfig, run_audit),
    "noise": (NoiseConfig, run_noise),
}
