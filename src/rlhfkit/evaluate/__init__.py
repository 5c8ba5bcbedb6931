"""Evaluation and audits: win rates, reward vs KL, reward-model report, coverage, bias audit, label noise.

Each stage is a config dataclass + a function in its own module, listed in ``rlhfkit.stages``. This
package imports none of them; the statistics they share live on the ground floor (``rlhfkit.stats``).
"""
