"""Pipeline stages of the built-in world: its base model, its data, simulated annotators, and
evaluation against the hidden gold preference. Each is a config dataclass + a function, registered
in ``rlhfkit.stages`` like the trainers, so a pipeline file mixes them freely with sft/rm/dpo/ppo.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import GenerationConfig, option
from ..evaluate.common import finish, write_jsonl
from ..evaluate.policy import kl_to_reference, sample_policy
from ..stats import win_rate
from .annotators import SimulatedAnnotator
from .base import cached_base, prompt_file, sft_records
from .gold import DEGENERATE_KINDS, answer_verdict, degenerate, gold_score, words
from .tasks import Prompt, gap_prompts, make_prompts, respond


@dataclass
class WorldBaseConfig:
    """The world's pretrained base model (built once, cached, copied into output_dir)."""

    output_dir: str = option("", "Where the base model folder goes.")
    seed: int = option(0, "World and initialisation seed.")
    steps: int = option(2000, "Pretraining steps on the mixed-quality corpus.")
    hidden_size: int = option(128, "Model width.")
    num_layers: int = option(2, "Transformer layers.")
    num_texts: int = option(20000, "Texts in the pretraining corpus (steps x 32 / num_texts passes over it).")
    fact_share: float = option(0.2, "Share of the corpus that states sums and (non-gap) capitals correctly.")
    cache_dir: str = option("", "Cache folder; empty means $RLHFKIT_CACHE or ~/.cache/rlhfkit.")


def run_world_base(cfg: WorldBaseConfig) -> dict:
    cached = cached_base(cfg.seed, cfg.cache_dir or None, steps=cfg.steps, hidden_size=cfg.hidden_size,
                         num_layers=cfg.num_layers, num_texts=cfg.num_texts, fact_share=cfg.fact_share)
    shutil.copytree(cached, cfg.output_dir, dirs_exist_ok=True)
    base = json.loads((Path(cached) / "summary.json").read_text()) if (Path(cached) / "summary.json").exists() else {}
    return finish(cfg, {"cached": cached, "pretrain_loss": base.get("train", {}).get("loss")})


@dataclass
class WorldDataConfig:
    """Demonstrations, training prompts, validation and held-out prompts, knowledge-gap probes."""

    output_dir: str = option("", "Where the JSONL files go.")
    seed: int = option(0, "World seed.")
    n_sft: int = option(2000, "SFT demonstrations.")
    n_sft_val: int = option(400, "Validation demonstrations (sft_val.jsonl: validation prompts, the same mixed "
                                 "quality), for the SFT stage's eval loss.")
    good_fraction: float = option(0.4, "Share of demonstrations in the good style; the rest are mixed-quality.")
    train_prompts_per_category: int = option(60, "Training prompts per category (pairs and RL).")
    eval_prompts_per_category: int = option(20, "Held-out prompts per category (subjects unseen in training).")
    val_prompts_per_category: int = option(20, "Validation prompts per category, for choosing hyperparameters "
                                                "(subjects in neither training nor the held-out prompts).")
    categories: list[str] = option([], "Categories to keep in the training prompts (empty: all); eval keeps all.")


def run_world_data(cfg: WorldDataConfig) -> dict:
    from .tasks import CATEGORIES

    out = Path(cfg.output_dir)
    keep = tuple(cfg.categories) or CATEGORIES
    sft = sft_records(cfg.seed, cfg.n_sft, cfg.good_fraction)
    sft_val = sft_records(cfg.seed + 2, cfg.n_sft_val, cfg.good_fraction, split="val")
    train = make_prompts(cfg.seed, cfg.train_prompts_per_category, categories=keep, split="train")
    held_out = make_prompts(cfg.seed + 1, cfg.eval_prompts_per_category, split="eval")
    val = make_prompts(cfg.seed + 2, cfg.val_prompts_per_category, split="val")
    write_jsonl(out / "sft.jsonl", sft)
    write_jsonl(out / "sft_val.jsonl", sft_val)
    prompt_file(out / "prompts_train.jsonl", train)
    prompt_file(out / "prompts_eval.jsonl", held_out)
    prompt_file(out / "prompts_val.jsonl", val)
    prompt_file(out / "prompts_gap.jsonl", gap_prompts())
    return finish(cfg, {"sft": len(sft), "sft_val": len(sft_val), "prompts_train": len(train), "prompts_eval": len(held_out),
                         "prompts_val": len(val), "prompts_gap": len(gap_prompts()), "categories": list(keep)})


@dataclass
class SimulateAnnotatorsConfig:
    """Label sampled pairs with simulated annotators (Bradley-Terry on the gold score, plus noise)."""

    data: str = option("", "Pairs JSONL {prompt, response_a, response_b, category, subject, answer} (required).")
    output_dir: str = option("", "Where train.jsonl, eval.jsonl and eval_gold.jsonl go.")
    temperature: float = option(0.5, "Bradley-Terry temperature on the gold-score difference (0: always the better one).")
    flip_rate: float = option(0.1, "Probability that a label is flipped (annotator error).")
    length_bias: float = option(0.0, "Added to the logit per extra word of response A over B (a bias for longer answers).")
    eval_fraction: float = option(0.2, "Share of pairs held out for evaluation.")
    exclude_categories: list[str] = option([], "Prompt categories whose pairs are dropped (a coverage gap, on purpose).")
    idk_pairs: bool = option(False, "Also add, for every training response that states a wrong answer to a fact or "
                                    "arithmetic prompt, a pair preferring \"i do not know\" to it (honesty data).")
    seed: int = option(0, "Annotator and split seed.")


def run_simulate_annotators(cfg: SimulateAnnotatorsConfig) -> dict:
    rows = [json.loads(x) for x in Path(cfg.data).read_text(encoding="utf-8").splitlines() if x.strip()]
    excluded = sum(r.get("category") in cfg.exclude_categories for r in rows)
    rows = [r for r in rows if r.get("category") not in cfg.exclude_categories]
    if not rows:
        raise ValueError(f"{cfg.data}: no pairs left after excluding categories {cfg.exclude_categories}")
    random.Random(cfg.seed).shuffle(rows)
    n_eval = max(1, int(round(cfg.eval_fraction * len(rows))))
    eval_rows, train_rows = rows[:n_eval], rows[n_eval:]
    annotator = SimulatedAnnotator(cfg.temperature, cfg.flip_rate, cfg.length_bias, cfg.seed)
    labelled, skipped_train = annotator.label_pairs(train_rows)
    idk = idk_records(train_rows, cfg.seed) if cfg.idk_pairs else []
    train = labelled + idk
    held_out, skipped_eval = annotator.label_pairs(eval_rows)
    gold = []  # held-out pairs ordered by the gold score itself, ties dropped
    for r in eval_rows:
        p = Prompt(r["prompt"], r["category"], r.get("subject", ""), r.get("answer", ""))
        ga, gb = gold_score(p, r["response_a"]), gold_score(p, r["response_b"])
        if ga != gb:
            c, j = (r["response_a"], r["response_b"]) if ga > gb else (r["response_b"], r["response_a"])
            gold.append({"prompt": r["prompt"], "chosen": c, "rejected": j, "category": r["category"]})
    out = Path(cfg.output_dir)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", held_out)
    write_jsonl(out / "eval_gold.jsonl", gold)
    return finish(cfg, {"train_pairs": len(train), "eval_pairs": len(held_out), "eval_gold_pairs": len(gold),
                         "skipped_identical": skipped_train + skipped_eval, "excluded_pairs": excluded, "idk_pairs": len(idk),
                         "label_gold_agreement": _gold_agreement(labelled),
                         "ceiling_accuracy": annotator.ceiling_accuracy(held_out)})


def idk_records(rows: list[dict], seed: int) -> list[dict]:
    """Preference records {prompt, chosen: an "i do not know" answer, rejected: a wrong answer} for
    every distinct response in ``rows`` that states a wrong answer to a fact or arithmetic prompt:
    data that teaches saying "I do not know" over guessing (the gold score agrees: +0.5 vs -2)."""
    rng, seen, out = random.Random(f"idk-{seed}"), set(), []
    for r in rows:
        if r["category"] not in ("fact", "arithmetic"):
            continue
        p = Prompt(r["prompt"], r["category"], r.get("subject", ""), r.get("answer", ""))
        for text in (r["response_a"], r["response_b"]):
            if answer_verdict(p, text) == "wrong" and (p.text, text) not in seen:
                seen.add((p.text, text))
                out.append({"prompt": p.text, "chosen": respond(p, "unsure", rng), "rejected": text,
                            "category": p.category, "subject": p.subject, "answer": p.answer, "source": "idk"})
    return out


def _gold_agreement(records: list[dict]) -> float | None:
    """Share of labels that agree with the gold order, over pairs the gold score does not tie."""
    agree = total = 0
    for r in records:
        p = Prompt(r["prompt"], r["category"], r.get("subject", ""), r.get("answer", ""))
        margin = gold_score(p, r["chosen"]) - gold_score(p, r["rejected"])
        if margin:
            total += 1
            agree += margin > 0
    return agree / total if total else None


@dataclass
class GoldEvalConfig(GenerationConfig):
    """Sample each policy on held-out prompts and judge the samples with the gold preference."""

    data: str = option("", "Held-out prompt JSONL with category/subject/answer columns (required).")
    output_dir: str = option("", "Where eval.json and samples.jsonl go.")
    baseline: str = option("", "The policy every other is compared with (the SFT model) (required).")
    policies: list[str] = option([], "Policies to evaluate as name=folder.")
    gap_data: str = option("", "Knowledge-gap probe prompts; empty skips the probe.")
    samples_per_prompt: int = option(2, "Samples per prompt and policy (temperature 1).")
    reward_model: str = option("", "Reward model for the best-of-N frontier of the baseline (frontier.json); empty skips it.")
    best_of: list[int] = option([1, 2, 4, 8, 16], "N values of the best-of-N frontier.")
    max_new_tokens: int = option(32, "Longest sampled response in tokens.")
    seed: int = option(0, "Sampling seed (the same for every policy, so samples pair up).")
    device: str = option("cpu", "cpu or cuda.")


def _prompts(path: str) -> list[Prompt]:
    rows = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    return [Prompt(r["prompt"], r["category"], r.get("subject", ""), r.get("answer", "")) for r in rows]


def _policy_eval(name: str, folder: str, cfg: GoldEvalConfig, prompts: list[Prompt],
                 base_scores) -> tuple[dict, list[float], list[str]]:
    """One policy's row of the table, its per-sample gold scores and its sample texts."""
    n = cfg.samples_per_prompt
    samples = sample_policy(folder, [p.text for p in prompts], n=n, seed=cfg.seed, device=cfg.device,
                            **cfg.generation_kwargs())
    flat = [p for p in prompts for _ in range(n)]
    scores = [gold_score(p, t) for p, t in zip(flat, samples.texts)]
    row = {"policy": name, "gold_reward": sum(scores) / len(scores),
           "length_words": sum(len(words(t)) for t in samples.texts) / len(samples.texts),
           "kl_to_baseline": kl_to_reference(samples, cfg.baseline, cfg.device) if folder != cfg.baseline else 0.0}
    kinds = [degenerate(t) for t in samples.texts]
    row["degenerate"] = sum(k is not None for k in kinds) / len(kinds)
    for kind in DEGENERATE_KINDS:
        row[f"degenerate/{kind}"] = kinds.count(kind) / len(kinds)
    if base_scores is not None:
        wr = win_rate(scores, base_scores, seed=cfg.seed)
        row.update(gold_winrate_vs_sft=wr["winrate"], gold_winrate_ci_low=wr["winrate_ci"][0],
                   gold_winrate_ci_high=wr["winrate_ci"][1])
    for cat in sorted({p.category for p in prompts}):
        vals = [s for p, s in zip(flat, scores) if p.category == cat]
        row[f"gold/{cat}"] = sum(vals) / len(vals)
        if cat in ("arithmetic", "fact"):  # says the right answer (and no wrong one)
            hits = [answer_verdict(p, t) == "correct" for p, t in zip(flat, samples.texts) if p.category == cat]
            row[f"correct/{cat}"] = sum(hits) / len(hits)
    if cfg.gap_data:
        gap = _prompts(cfg.gap_data)
        texts = sample_policy(folder, [p.text for p in gap], n=n, seed=cfg.seed, device=cfg.device,
                              **cfg.generation_kwargs()).texts
        gap_flat = [p for p in gap for _ in range(n)]
        verdicts = [answer_verdict(p, t) for p, t in zip(gap_flat, texts)]
        row["gap_correct"] = verdicts.count("correct") / len(texts)
        row["gap_wrong"] = verdicts.count("wrong") / len(texts)
        row["gap_unsure"] = verdicts.count("unsure") / len(texts)
        row["gap_gold_reward"] = sum(gold_score(p, t) for p, t in zip(gap_flat, texts)) / len(texts)
    return row, scores, samples.texts


def run_gold_eval(cfg: GoldEvalConfig) -> dict:
    prompts = _prompts(cfg.data)
    base_row, base_scores, base_texts = _policy_eval("sft", cfg.baseline, cfg, prompts, None)
    rows, texts = [base_row], {"sft": base_texts}
    for spec in cfg.policies:
        name, _, folder = spec.partition("=")
        row, _, texts[name] = _policy_eval(name, folder, cfg, prompts, base_scores)
        rows.append(row)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    write_jsonl(out / "samples.jsonl", [{"prompt": p.text, "category": p.category, **{k: v[i] for k, v in texts.items()}}
                                   for i, p in enumerate(flat)])
    (out / "eval.json").write_text(json.dumps(rows, indent=2))
    if cfg.reward_model:
        (out / "frontier.json").write_text(json.dumps(_frontier(cfg, prompts), indent=2))
    return finish(cfg, {r["policy"]: r for r in rows})


def _frontier(cfg: GoldEvalConfig, prompts: list[Prompt]) -> list[dict]:
    """Best-of-N from the baseline, picked by the reward model, scored by the reward model and gold."""
    from ..evaluate.frontier import best_of_n_curve
    from ..models import resolve_device
    from ..reward_model import RewardModelSource

    n = max(cfg.best_of)
    samples = sample_policy(cfg.baseline, [p.text for p in prompts], n=n, seed=cfg.seed + 1, device=cfg.device,
                            **cfg.generation_kwargs())
    flat = [p for p in prompts for _ in range(n)]
    proxy = RewardModelSource(cfg.reward_model, resolve_device(cfg.device))([p.text for p in flat], samples.texts)
    gold = [gold_score(p, t) for p, t in zip(flat, samples.texts)]
    return best_of_n_curve([proxy[i * n:(i + 1) * n].tolist() for i in range(len(prompts))],
                           [gold[i * n:(i + 1) * n] for i in range(len(prompts))], cfg.best_of)

