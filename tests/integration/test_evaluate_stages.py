"""The evaluation stages end to end on the toy world's tiny models (seconds each).

Toy world: the SFT model reviews dishes kindly about half the time; `kind_reward` scores kind
words minus unkind words; the preference pairs always prefer the kind review.
"""

import json
import math
import subprocess
import sys

import pytest

from rlhfkit.config import ConfigError

pytestmark = pytest.mark.slow
KIND = "rlhfkit.world.toy:kind_reward"


def _rows(path):
    return [json.loads(x) for x in open(path, encoding="utf-8") if x.strip()]


@pytest.fixture(scope="module")
def toy_rm(world_dir, sft_dir, tmp_path_factory):
    from rlhfkit.train.rm import RMConfig
    from rlhfkit.train.rm import run_rm

    out = tmp_path_factory.mktemp("toy_rm")
    run_rm(RMConfig(model=sft_dir, data=world_dir["prefs"], output_dir=str(out), max_steps=40, batch_size=16,
                    learning_rate=1e-3, max_length=32, logging_steps=10, seed=0))
    return str(out)


FLUENT = '''
import re

def fluent(prompts, completions, **kw):
    # 1 for a well-formed review "the <dish> is <word> and <word> .", else 0
    return [float(bool(re.fullmatch(r"the \\w+ is \\w+ and \\w+ \\.", c.strip()))) for c in completions]
'''


def test_eval_against_itself_ties_and_against_the_base_wins(world_dir, sft_dir, tmp_path):
    """The same model with the same seed draws the same samples: every pair ties, win rate exactly
    0.5 with a zero-width interval, KL 0. The SFT model writes well-formed reviews, the random
    base model word salad: against it the SFT model wins clearly, with positive KL."""
    from rlhfkit.evaluate.winrate import EvalConfig, run_eval

    fn = tmp_path / "fluent.py"
    fn.write_text(FLUENT)
    common = dict(data=world_dir["prompts"], reward_fn=[f"{fn}:fluent"], samples_per_prompt=2, max_new_tokens=12,
                  n_boot=500)
    same = run_eval(EvalConfig(policy=sft_dir, baseline=sft_dir, output_dir=str(tmp_path / "same"), **common))
    assert same["winrate"] == 0.5 and same["winrate_ci"] == [0.5, 0.5] and same["lc_winrate"] == pytest.approx(0.5)
    assert abs(same["kl"]) < 1e-4 and same["reward"] == same["baseline_reward"] and same["n"] == 40
    vs_base = run_eval(EvalConfig(policy=sft_dir, baseline=world_dir["base"], output_dir=str(tmp_path / "base"), **common))
    assert vs_base["winrate_ci"][0] > 0.6 and vs_base["reward"] > vs_base["baseline_reward"] + 0.5
    assert vs_base["kl"] > 0.1
    samples = _rows(tmp_path / "base" / "samples.jsonl")
    wins = sum((r["policy_reward"] > r["baseline_reward"]) + 0.5 * (r["policy_reward"] == r["baseline_reward"])
               for r in samples)
    assert wins / len(samples) == pytest.approx(vs_base["winrate"])
    assert json.loads((tmp_path / "base" / "summary.json").read_text())["winrate"] == vs_base["winrate"]
    assert "data:image/png;base64," in (tmp_path / "base" / "report.html").read_text()


def test_eval_cli_names_a_missing_field(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlhfkit", "eval", "--output_dir", str(tmp_path), "--policy", "p",
                           "--baseline", "b"], capture_output=True, text=True)
    assert proc.returncode == 2 and "field 'data' is required" in proc.stderr, proc.stderr


def test_frontier_points_and_fits(world_dir, sft_dir, tmp_path):
    from rlhfkit.evaluate.frontier_stage import FrontierConfig, run_frontier
    from rlhfkit.tiny_models import make_tiny_model_dir
    from rlhfkit.world import toy

    other = make_tiny_model_dir(tmp_path / "other", toy.vocabulary_texts(), seed=3, hidden_size=128)
    s = run_frontier(FrontierConfig(baseline=world_dir["base"], policies=[f"sft={sft_dir}", f"other={other}"],
                                    data=world_dir["prompts"], reward_fn=[KIND], gold_reward_fn=[KIND],
                                    best_of=[1, 2, 4], samples_per_prompt=2, max_new_tokens=10,
                                    output_dir=str(tmp_path / "f")))
    pol = {p["policy"]: p for p in s["policies"]}
    assert pol["baseline"]["kl"] == 0.0 and pol["sft"]["kl"] > 0.1 and pol["other"]["kl"] > 0.1
    assert pol["sft"]["proxy_reward"] == pol["sft"]["gold_reward"]          # the same function twice
    assert [b["n"] for b in s["best_of_n"]] == [1, 2, 4]
    assert s["best_of_n"][2]["proxy_reward"] >= s["best_of_n"][0]["proxy_reward"]
    assert {"rl/proxy_reward", "rl/gold_reward", "bon/proxy_reward"} <= set(s["fits"])
    assert (tmp_path / "f" / "frontier.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="name=folder"):
        run_frontier(FrontierConfig(baseline=sft_dir, policies=[sft_dir], data=world_dir["prompts"], reward_fn=[KIND],
                                    output_dir=str(tmp_path / "g")))


def test_rm_eval_accuracy_calibration_and_categories(world_dir, toy_rm, tmp_path):
    from rlhfkit.evaluate.rm_report import RMEvalConfig, run_rm_eval

    pairs = _rows(world_dir["prefs_eval"])[:60]
    for i, r in enumerate(pairs):
        r["category"] = ["even", "odd"][i % 2]
        if i % 6 == 0:  # every sixth pair flipped: the model should disagree with those labels
            r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    s = run_rm_eval(RMEvalConfig(reward_model=toy_rm, data=str(data), output_dir=str(tmp_path / "o")))
    scores = _rows(tmp_path / "o" / "scores.jsonl")
    assert s["accuracy"] == pytest.approx(sum(r["margin"] > 0 for r in scores) / 60)
    assert 0.7 <= s["accuracy"] <= 0.9   # the model is right on the 50 true labels (>= 40 of them) and disagrees with flips
    assert sum(r["margin"] < 0 for i, r in enumerate(scores) if i % 6 == 0) >= 8
    lo, hi = s["accuracy_ci"]
    assert lo < s["accuracy"] < hi
    assert sum(b["count"] for b in s["calibration"]) == 120
    # ECE recomputed from the margins: P(chosen) = sigmoid(margin) and its mirror, 10 equal-width bins
    probs = [1 / (1 + math.exp(-r["margin"])) for r in scores]
    probs, hits = probs + [1 - p for p in probs], [1] * 60 + [0] * 60
    bins = [[(p, h) for p, h in zip(probs, hits) if min(int(p * 10), 9) == b] for b in range(10)]
    ece = sum(len(b) / 120 * abs(sum(h for _, h in b) / len(b) - sum(p for p, _ in b) / len(b)) for b in bins if b)
    assert s["ece"] == pytest.approx(ece, abs=1e-6), (s["ece"], ece)
    assert [c["group"] for c in s["per_category"]] == ["even", "odd"] and sum(c["pairs"] for c in s["per_category"]) == 60


def test_noise_finder_recovers_injected_flips(world_dir, sft_dir, tmp_path):
    """120 toy pairs (kind preferred), 20% flipped on purpose and marked: 3 cross-validated reward
    models must flag them with precision and recall >= 0.5."""
    from rlhfkit.evaluate.noise import NoiseConfig, run_noise

    pairs = _rows(world_dir["prefs"])[:120]
    for i, r in enumerate(pairs):
        r["flipped"] = i % 5 == 0
        if r["flipped"]:
            r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    s = run_noise(NoiseConfig(data=str(data), model=sft_dir, output_dir=str(tmp_path / "n"), folds=3, max_steps=30,
                              batch_size=16, learning_rate=1e-3, max_length=32, truth_field="flipped"))
    assert s["known_wrong"] == 24 and s["precision"] >= 0.5 and s["recall"] >= 0.5, s
    flagged = _rows(tmp_path / "n" / "flagged.jsonl")
    assert len(flagged) == s["flagged"] and all(pairs[f["index"]]["chosen"] == f["chosen"] for f in flagged)
    assert [f["score"] for f in flagged] == sorted((f["score"] for f in flagged), reverse=True)
    assert not list((tmp_path / "n" / "folds").glob("*/rm/*.safetensors"))   # fold weights removed by default
    pairs[3]["flipped"] = "yes"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    with pytest.raises(ConfigError, match=r"pairs.jsonl:4: field 'flipped'"):
        run_noise(NoiseConfig(data=str(data), model=sft_dir, output_dir=str(tmp_path / "m"), folds=3, truth_field="flipped"))


def test_coverage_finds_the_topic_the_preferences_never_covered(world_dir, tmp_path):
    """Preference prompts are all about food; half the evaluation prompts are about money and code.
    With the real MiniLM encoder those land in clusters of their own with no pairs inside."""
    from rlhfkit.evaluate.coverage import CoverageConfig, run_coverage

    food = ["how is the soup ?", "is the cake sweet ?", "describe the pizza .", "how was the curry ?",
            "what do you think of the sushi ?", "rate the bread ."]
    other = ["how do i file my tax return ?", "write a python function that sorts a list .",
             "what is a good way to pay off a loan ?", "how do i fix a segmentation fault in c ?",
             "should i open a savings account ?", "explain recursion in programming ."]
    ev = tmp_path / "eval.jsonl"
    ev.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in food + other))
    s = run_coverage(CoverageConfig(data=world_dir["prefs"], eval_data=[str(ev)], output_dir=str(tmp_path / "c"),
                                    clusters=3, min_pairs=5))
    assigned = _rows(tmp_path / "c" / "eval_prompts.jsonl")
    uncovered = {r["prompt"] for r in assigned if r["cluster"] in s["uncovered_clusters"]}
    assert uncovered and uncovered <= set(other)          # k-means may put an imperative food prompt with code
    assert s["uncovered_eval_prompts"] == len(uncovered)
    # per prompt: measured cosine to the nearest "how is the X ?" is >= 0.74 for food, <= 0.11 for the rest
    assert {r["prompt"] for r in assigned if r["nearest_pair_similarity"] < 0.5} == set(other)
    assert s["eval_prompts_without_near_pairs"] == 6
    assert s["preference_pairs"] == len(_rows(world_dir["prefs"]))
    assert (tmp_path / "c" / "coverage.png").exists()
    with pytest.raises(ConfigError, match="eval_data"):
        run_coverage(CoverageConfig(data=world_dir["prefs"], output_dir=str(tmp_path / "d")))


HELDOUT = '''
from rlhfkit.world.toy import kind_reward

def unkind(prompts, completions, **kw):
    return [-x for x in kind_reward(prompts, completions)]
'''


def test_online_rl_logs_a_heldout_reward_and_warns_when_they_part(world_dir, sft_dir, tmp_path, capsys):
    """RLOO on the kind reward with a held-out reward that is its negative: the held-out reward is
    logged as exactly -reward each step, and as the policy learns kindness the monitor fires."""
    from rlhfkit.train.rloo import RLOOConfig
    from rlhfkit.train.rloo import run_rloo

    fn = tmp_path / "heldout.py"
    fn.write_text(HELDOUT)
    out = tmp_path / "rloo"
    s = run_rloo(RLOOConfig(model=sft_dir, data=world_dir["prompts"], output_dir=str(out), reward_fn=[KIND],
                            heldout_reward_fn=[f"{fn}:unkind"], overopt_window=5, max_new_tokens=12, batch_size=8,
                            num_generations=4, learning_rate=5e-4, max_steps=20, max_length=32, max_prompt_length=16))
    rows = _rows(out / "metrics.jsonl")
    assert all(r["heldout_reward"] == pytest.approx(-r["reward"]) for r in rows)
    assert all(r["overopt_warning"] == 0 for r in rows[:9])
    assert s["overopt_warning_steps"] and any(r["overopt_warning"] for r in rows)
    assert "over-optimising" in capsys.readouterr().out


def test_eval_with_a_judge_endpoint(world_dir, sft_dir, fake_judge_endpoint, tmp_path):
    """The win rate decided by an AI judge (an OpenAI-compatible endpoint that prefers the response
    with more kind words and answers "A" on a draw). Against itself every pair is identical, so the
    judge says "A" in both orders: all ties, win rate exactly 0.5, position bias +0.5. Against the
    random base model each outcome must follow the rule: more kind words wins in both orders (1 or
    0), a draw is a first-position answer in both orders, i.e. a tie (0.5)."""
    from rlhfkit.evaluate.winrate import EvalConfig, run_eval
    from rlhfkit.world.toy import KIND

    from judge_support import kind_judge_reply

    ep = fake_judge_endpoint(kind_judge_reply)
    common = dict(data=world_dir["prompts"], judge=ep.url, samples_per_prompt=2, max_new_tokens=12, n_boot=300)
    same = run_eval(EvalConfig(policy=sft_dir, baseline=sft_dir, output_dir=str(tmp_path / "same"), **common))
    assert same["winrate"] == 0.5 and same["winrate_ci"] == [0.5, 0.5] and same["reward"] is None
    assert same["judge"]["ties"] == same["n"] == 40 and same["judge"]["position_bias"] == 0.5
    vs_base = run_eval(EvalConfig(policy=sft_dir, baseline=world_dir["base"], output_dir=str(tmp_path / "b"), **common))
    kind = lambda s: sum(w in KIND for w in s.split())  # noqa: E731
    rows = _rows(tmp_path / "b" / "samples.jsonl")
    expected = [1.0 if kind(r["policy"]) > kind(r["baseline"]) else 0.0 if kind(r["policy"]) < kind(r["baseline"])
                else 0.5 for r in rows]
    assert [r["outcome"] for r in rows] == expected and len(set(expected)) > 1
    assert vs_base["winrate"] == pytest.approx(sum(expected) / len(expected))
    assert vs_base["winrate_ci"][0] <= vs_base["winrate"] <= vs_base["winrate_ci"][1]
    assert "Judge" in (tmp_path / "b" / "report.html").read_text()
