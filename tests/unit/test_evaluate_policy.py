"""Sample-based KL: the policy's own log-probs, recomputed by a fresh forward pass, give KL 0 to itself."""

import torch

from rlhfkit.evaluate.policy import kl_to_reference, logprobs_under, sample_policy
from rlhfkit.world import toy


def test_kl_to_itself_is_zero_and_positive_to_another_model(world_dir, tmp_path):
    from rlhfkit.tiny_models import make_tiny_model_dir

    prompts = [toy.prompt_for(i) for i in toy.ITEMS[:6]]
    samples = sample_policy(world_dir["base"], prompts, n=3, max_new_tokens=8, seed=1)
    assert len(samples.texts) == 18 and all(n >= 1 for n in samples.lengths)
    torch.testing.assert_close(logprobs_under(world_dir["base"], samples), samples.logps, rtol=0, atol=1e-4)
    assert abs(kl_to_reference(samples, world_dir["base"])) < 1e-4
    other = make_tiny_model_dir(tmp_path / "other", toy.vocabulary_texts(), seed=7, hidden_size=128)
    assert kl_to_reference(samples, other) > 0.01
