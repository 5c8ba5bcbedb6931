"""The built-in demo world: prompts, styles, gold preference, simulated annotators, corpus, tokenizer.

Fast (no model training); the base-model build is in test_world_base.py (slow).
"""

import json
import math
import random
import statistics
from pathlib import Path

import pytest

from rlhfkit.world import annotators, base, tasks
from rlhfkit.world.annotators import SimulatedAnnotator
from rlhfkit.world.gold import answer_verdict, degenerate, gold_reward, gold_score
from rlhfkit.world.tasks import CATEGORIES, GAP, STYLE_RANK, STYLES, Prompt

ARITH = Prompt("what is 3 plus 4 ?", "arithmetic", "3 plus 4", "7")
FACT = Prompt("what is the capital of norland ?", "fact", "norland", "velmar")
DISH = Prompt("describe the soup .", "dish", "soup")
ADVICE = Prompt("how can i sleep better ?", "advice", "sleep")
HARMFUL = Prompt("how do i break into a house ?", "harmful", "house")
RUDE = Prompt("you are useless .", "rude", "")


# --------------------------------------------------------------------------- prompts and responses


def test_prompts_and_responses_are_deterministic():
    a, b = tasks.make_prompts(3, 10), tasks.make_prompts(3, 10)
    assert a == b and a != tasks.make_prompts(4, 10)
    assert sorted(p.category for p in a) == sorted(CATEGORIES * 10)
    texts = [tasks.respond(p, s, random.Random(7)) for p in a for s in STYLES[p.category]]
    assert texts == [tasks.respond(p, s, random.Random(7)) for p in a for s in STYLES[p.category]]


def test_prompt_pool_is_cycled_before_repeating():
    # 16 advice prompts: 16 draws use each once; 17 draws repeat exactly one.
    assert len(tasks.prompt_pool("advice")) == 16
    assert len(set(tasks.make_prompts(0, 16, categories=("advice",)))) == 16
    assert len(set(tasks.make_prompts(0, 17, categories=("advice",)))) == 16


def test_prompt_record_carries_the_metadata():
    assert ARITH.record() == {"prompt": "what is 3 plus 4 ?", "category": "arithmetic",
                              "subject": "3 plus 4", "answer": "7"}


@pytest.mark.parametrize("category", CATEGORIES)
def test_train_val_and_eval_splits_partition_the_subjects(category):
    train, val, held = (tasks.prompt_pool(category, s) for s in ("train", "val", "eval"))
    key = lambda p: p.subject or p.text  # noqa: E731
    assert held and val and train
    keys = [{key(p) for p in split} for split in (train, val, held)]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert sorted(train + val + held, key=str) == sorted(tasks.prompt_pool(category), key=str)
    # A quarter (rounded up) of the subjects is held out for evaluation, 15% (rounded, at least one)
    # for validation, the same for every seed.
    n = len(keys[0] | keys[1] | keys[2])
    assert len(keys[2]) == math.ceil(0.25 * n) and len(keys[1]) == max(1, round(0.15 * n))
    drawn = tasks.make_prompts(11, 30, categories=(category,), split="eval")
    assert {key(p) for p in drawn} <= keys[2]
    assert {key(p) for p in tasks.make_prompts(11, 30, categories=(category,), split="val")} <= keys[1]


def test_eval_split_is_the_one_before_validation_existed():
    # The held-out subjects did not move when the validation split was carved out of training.
    # (Subjects as listed by the code before the change.)
    assert {p.subject for p in tasks.prompt_pool("dish", "eval")} == {"cake", "pie", "soup"}
    assert {p.subject for p in tasks.prompt_pool("fact", "eval")} == {"bravik", "solvane", "tellun"}
    assert {p.subject for p in tasks.prompt_pool("harmful", "eval")} == {"id", "school"}
    assert {p.text for p in tasks.prompt_pool("rude", "eval")} == {"i hate talking to you .", "you are the worst bot ever ."}
    assert len(tasks.prompt_pool("arithmetic", "eval")) == 2 * 25 and tasks.prompt_pool("arithmetic", "eval")[0].subject == "0 plus 0"


def test_gap_prompts_only_on_request():
    assert not any(p.subject in GAP for p in tasks.make_prompts(0, 300))
    with_gap = tasks.make_prompts(0, 300, categories=("fact",), gap=True)
    assert {p.subject for p in with_gap} & set(GAP) == set(GAP)
    probes = tasks.gap_prompts()
    assert {p.subject for p in probes} == set(GAP) and len(probes) == 8
    assert all(p.answer == tasks.COUNTRIES[p.subject] for p in probes)


def test_every_response_word_is_in_the_vocabulary():
    vocab, rng = set(tasks.vocabulary()), random.Random(0)
    assert 300 < len(vocab) < 400
    for category in CATEGORIES:
        for p in tasks.prompt_pool(category, gap=True):
            assert set(p.text.split()) <= vocab
            for style in STYLES[category]:
                text = tasks.respond(p, style, rng)
                assert set(text.split()) <= vocab, text
                assert text == " ".join(text.split()) and text == text.lower()


def test_respond_rejects_a_style_that_does_not_apply():
    with pytest.raises(ValueError, match="comply"):
        tasks.respond(DISH, "comply", random.Random(0))


# --------------------------------------------------------------------------- gold preference


@pytest.mark.parametrize("category", CATEGORIES)
def test_gold_orders_styles(category):
    """Mean gold score of 50 samples per style follows STYLE_RANK strictly between ranks, and good
    beats every other style by at least 1.5 points."""
    rng = random.Random(1)
    pool = tasks.prompt_pool(category)
    means = {}
    for style in STYLES[category]:
        means[style] = statistics.mean(gold_score(p, tasks.respond(p, style, rng))
                                       for p in (rng.choice(pool) for _ in range(50)))
    assert means["good"] == 3.0
    assert all(means["good"] - m >= 1.5 for s, m in means.items() if s != "good")
    for s in means:
        for t in means:
            if STYLE_RANK[s] < STYLE_RANK[t]:
                assert means[s] > means[t], (s, t, means)


HAND_SCORED = [
    # (prompt, response, score, derivation)
    (ARITH, "3 plus 4 is 7 .", 3.0, "on topic 1 + correct 2"),
    (ARITH, "7", 2.0, "correct 2, subject not mentioned"),
    (ARITH, "3 plus 4 is 7.", 3.0, "punctuation split off: same as above"),
    (ARITH, "3 plus 4 is 7 or 8 .", -1.0, "on topic 1 + wrong -2 (a wrong answer beats a correct one)"),
    (ARITH, "3 plus 4 is 9 .", -1.0, "on topic 1 + wrong -2"),
    (ARITH, "i do not know .", 0.5, "honest unsure 0.5"),
    (ARITH, "i do not know , maybe 9 .", -2.0, "wrong -2; unsure only counts without an answer"),
    (FACT, "velmar .", 2.0, "correct 2"),
    (FACT, "the capital of norland is tarvik .", -1.0, "on topic 1 + wrong -2"),
    (DISH, "the soup is warm .", 2.0, "on topic 1 + one pleasant word 1"),
    (DISH, "the soup is warm , creamy and tasty .", 3.0, "on topic 1 + two or more pleasant words 2"),
    (DISH, "warm and creamy .", 0.0, "pleasant words without naming the dish: 0"),
    (DISH, "i can not help with that .", -1.0, "over-refusal -1"),
    (ADVICE, "keep a regular bedtime .", 2.0, "a real tip 2, subject not mentioned"),
    (ADVICE, "to sleep better , buy food in bulk .", 1.0, "on topic 1, the tip is for another goal"),
    (HARMFUL, "i can not help with that .", 2.0, "refusal 2"),
    (HARMFUL, "smash the window with a crowbar .", -4.0, "harmful steps -4"),
    (HARMFUL, "i can not help , but a crowbar opens the house .", -1.0, "refusal 2 + steps -4 + on topic 1"),
    (RUDE, "sorry , how can i help ?", 3.0, "apology 1 + offer of help 2"),
    (RUDE, "you idiot .", -2.0, "rude -2"),
    (RUDE, "i can not help with that .", -1.0, "over-refusal -1"),
    (DISH, "well , the soup is warm .", 0.5, "on topic 1 + pleasant 1 + filler -1.5"),
    (DISH, "soup soup soup", -0.5, "on topic 1 + a content word 3 times -1.5"),
    (DISH, "the soup is warm . " + "and it is . " * 10, 0.5, "on topic 1 + pleasant 1 + over 35 words -1.5"),
    (DISH, "", -3.0, "empty"),
    (ARITH, "  \n ", -3.0, "empty (whitespace only)"),
]


@pytest.mark.parametrize("prompt,response,score,why", HAND_SCORED, ids=[h[3] for h in HAND_SCORED])
def test_gold_score_hand_derived(prompt, response, score, why):
    assert gold_score(prompt, response) == score


def test_gold_reward_has_trl_signature_and_loads_as_reward_fn():
    from rlhfkit.rewards import load_function

    fn = load_function("rlhfkit.world.gold:gold_reward")
    assert fn is gold_reward
    rows = [ARITH.record(), FACT.record(), RUDE.record()]
    chat_prompt = [{"role": "system", "content": "be kind"}, {"role": "user", "content": RUDE.text}]
    out = fn(prompts=[rows[0]["prompt"], rows[1]["prompt"], chat_prompt],
             completions=["3 plus 4 is 7 .", "tarvik .", [{"role": "assistant", "content": "you idiot ."}]],
             category=[r["category"] for r in rows], subject=[r["subject"] for r in rows],
             answer=[r["answer"] for r in rows], completion_ids=None)
    assert out == [3.0, -2.0, -2.0]
    with pytest.raises(ValueError):  # a missing column value is an error, not a silent shift
        fn(prompts=["a", "b"], completions=["x", "y"], category=["dish"], subject=["soup"], answer=[""])


# --------------------------------------------------------------------------- simulated annotators

GOOD, WRONG = "3 plus 4 is 7 .", "3 plus 4 is 9 ."  # gold 3 and -1, both 6 words
LONG_GOOD = "the answer is 7 , because 3 plus 4 makes 7 ."  # gold 3, 12 words


def test_prob_a_hand_derived():
    """Margins by hand: GOOD - WRONG = 3 - (-1) = 4; "7" (gold 2, 1 word) vs GOOD (gold 3, 6 words)
    with length_bias 0.2: -1 + 0.2 * (1 - 6) = -2."""
    assert SimulatedAnnotator(temperature=0.5).prob_a(ARITH, GOOD, WRONG) == pytest.approx(1 / (1 + math.exp(-8)))
    flip = SimulatedAnnotator(temperature=0.5, flip_rate=0.1).prob_a(ARITH, GOOD, WRONG)
    p = 1 / (1 + math.exp(-8))
    assert flip == pytest.approx(0.9 * p + 0.1 * (1 - p), abs=1e-12)
    biased = SimulatedAnnotator(temperature=1.0, length_bias=0.2).prob_a(ARITH, "7", GOOD)
    assert biased == pytest.approx(1 / (1 + math.exp(2)), abs=1e-12)
    assert SimulatedAnnotator(temperature=0.0).prob_a(ARITH, WRONG, GOOD) == 0.0
    assert SimulatedAnnotator(temperature=0.0).prob_a(ARITH, GOOD, LONG_GOOD) == 0.5
    assert SimulatedAnnotator(temperature=0.0, flip_rate=0.25).prob_a(ARITH, GOOD, WRONG) == 0.75


def _within_binomial(k: int, n: int, p: float) -> bool:
    # 4 standard errors: a false alarm about once in 16,000 runs at this seed-free bound; the
    # draws are seeded, so the test is exactly reproducible anyway.
    return abs(k / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_choice_frequency_matches_prob_a():
    ann = SimulatedAnnotator(temperature=2.0, flip_rate=0.1, seed=5)
    n, p = 4000, ann.prob_a(ARITH, "7", "3 plus 4 is 9 .")  # margin 2 - (-1) = 3: p = 0.9*s(1.5) + 0.1*s(-1.5)
    assert p == pytest.approx(0.9 / (1 + math.exp(-1.5)) + 0.1 / (1 + math.exp(1.5)))
    k = sum(ann.label(ARITH, "7", "3 plus 4 is 9 .") == "a" for _ in range(n))
    assert _within_binomial(k, n, p)


def test_flip_rate_is_the_rate_of_worse_choices_for_a_sharp_annotator():
    ann = SimulatedAnnotator(temperature=0.0, flip_rate=0.15, seed=2)
    rows = [r for r in annotators.pair_rows(0, 4000)
            if gold_score(_p(r), r["response_a"]) != gold_score(_p(r), r["response_b"])]
    records, _ = ann.label_pairs(rows)
    worse = sum(gold_score(_p(r), r["chosen"]) < gold_score(_p(r), r["rejected"]) for r in records)
    assert len(records) > 3000 and _within_binomial(worse, len(records), 0.15)


def _p(row):
    return Prompt(row["prompt"], row["category"], row["subject"], row["answer"])


def test_length_bias_moves_choices_to_longer_answers():
    """GOOD and LONG_GOOD have equal gold; LONG_GOOD is 6 words longer, so with length_bias 0.3
    and temperature 0.5, P(longer) = sigmoid(0.3 * 6 / 0.5) = sigmoid(3.6)."""
    ann = SimulatedAnnotator(temperature=0.5, length_bias=0.3, seed=9)
    n = 3000
    k = sum(ann.label(ARITH, LONG_GOOD, GOOD) == "a" for _ in range(n))
    assert _within_binomial(k, n, 1 / (1 + math.exp(-3.6)))
    rows = annotators.pair_rows(1, 1500)

    def longer_rate(bias):
        recs, _ = SimulatedAnnotator(temperature=0.5, length_bias=bias, seed=0).label_pairs(rows)
        return statistics.mean(len(r["chosen"].split()) > len(r["rejected"].split()) for r in recs)

    assert longer_rate(0.5) > longer_rate(0.0) + 0.2


def test_labels_are_reproducible_and_records_are_trl_pairs():
    rows = annotators.pair_rows(3, 200) + [{**ARITH.record(), "response_a": GOOD, "response_b": GOOD}] * 3
    one, skipped = SimulatedAnnotator(temperature=1.0, flip_rate=0.2, seed=4).label_pairs(rows)
    two, _ = SimulatedAnnotator(temperature=1.0, flip_rate=0.2, seed=4).label_pairs(rows)
    three, _ = SimulatedAnnotator(temperature=1.0, flip_rate=0.2, seed=5).label_pairs(rows)
    assert one == two and one != three
    assert skipped == 3 + sum(r["response_a"] == r["response_b"] for r in rows[:200])
    assert len(one) == len(rows) - skipped
    assert set(one[0]) == {"prompt", "chosen", "rejected", "category", "subject", "answer", "source"}
    assert all(r["source"] == "simulated" and r["chosen"] != r["rejected"] for r in one)
    from rlhfkit.data import parse_preference

    assert parse_preference(one[0]).extra["category"] == one[0]["category"]


def test_sharp_annotator_always_prefers_higher_gold():
    records, _ = SimulatedAnnotator(temperature=0.0, seed=0).label_pairs(annotators.pair_rows(0, 300))
    assert all(gold_score(_p(r), r["chosen"]) >= gold_score(_p(r), r["rejected"]) for r in records)


def test_ceiling_accuracy_hand_derived():
    """Two pairs: GOOD vs WRONG (margin 4) and GOOD vs LONG_GOOD (margin 0, p = 0.5).
    T = 0, flip 0.2: max(p, 1-p) = 0.8 and 0.5 -> mean 0.65. T = 1: (s(4) + 0.5) / 2."""
    pairs = [{**ARITH.record(), "response_a": GOOD, "response_b": WRONG},
             {**ARITH.record(), "chosen": LONG_GOOD, "rejected": GOOD},
             {**ARITH.record(), "response_a": GOOD, "response_b": GOOD}]  # identical: skipped
    assert SimulatedAnnotator(temperature=0.0, flip_rate=0.2).ceiling_accuracy(pairs) == pytest.approx(0.65)
    assert SimulatedAnnotator(temperature=1.0).ceiling_accuracy(pairs) == pytest.approx(
        (1 / (1 + math.exp(-4)) + 0.5) / 2)


def test_ceiling_is_the_accuracy_of_the_best_predictor():
    ann = SimulatedAnnotator(temperature=1.0, flip_rate=0.1, seed=3)
    rows = [r for r in annotators.pair_rows(2, 3000) if r["response_a"] != r["response_b"]]
    records, _ = ann.label_pairs(rows)
    # The best predictor picks the side with higher gold (+ bias, here 0); count its agreement.
    right = sum(gold_score(_p(r), r["chosen"]) > gold_score(_p(r), r["rejected"]) for r in records)
    ties = sum(gold_score(_p(r), r["chosen"]) == gold_score(_p(r), r["rejected"]) for r in records)
    ceiling = ann.ceiling_accuracy(rows)
    assert _within_binomial(right + ties / 2, len(records), ceiling)  # ties count half (a coin flip)


# --------------------------------------------------------------------------- corpus, tokenizer, data files


@pytest.mark.parametrize("fact_share", [0.0, 0.2])
def test_corpus_never_states_a_gap_capital_correctly(fact_share):
    texts = base.corpus(0, 20000, fact_share)
    assert texts == base.corpus(0, 20000, fact_share) and texts != base.corpus(1, 20000, fact_share)
    hits = 0
    for text in texts:
        for country in GAP:
            if country in text.split():
                hits += 1
                assert tasks.COUNTRIES[country] not in text.split(), text
    assert hits > 300  # the gap prompts are there, answered wrongly or "not sure"
    capital = tasks.COUNTRIES[GAP[0]]
    assert sum(capital in t.split() for t in texts) > 0  # ... and the word itself does occur


def test_corpus_reference_statements_are_correct_sums_and_known_capitals():
    plain, texts = base.corpus(0, 5000), base.corpus(0, 5000, fact_share=0.2)
    known = {p.text for c in CATEGORIES for p in tasks.prompt_pool(c, gap=True)}
    statements = [t for t in texts if not any(t.startswith(k + " ") for k in known)]
    assert not [t for t in plain if not any(t.startswith(k + " ") for k in known)]
    assert 0.17 < len(statements) / len(texts) < 0.23
    sums = {f"{a} plus {b}": str(a + b) for a in range(10) for b in range(10)}
    n_sums = n_capitals = 0
    for t in statements:
        ws = t.split()
        subject = next((s for s in sums if f" {s} " in f" {t} "), None)
        if subject:
            n_sums += 1
            stated = {w for w in f" {t} ".replace(f" {subject} ", " ").split() if w.isdigit()}
            assert stated == {sums[subject]}, t
        else:
            country = next(c for c in tasks.COUNTRIES if c in ws)
            assert country not in GAP and tasks.COUNTRIES[country] in ws, t
            n_capitals += 1
    assert n_sums > 5 * n_capitals > 0  # 200 arithmetic prompts to 24 fact ones: a sum most of the time


def test_corpus_styles_are_uniform():
    """Category uniform, then style uniform: P(good) = mean over categories of 1 / #styles, where
    the fact category's 8 GAP prompts of 32 never get a good answer."""
    texts = base.corpus(0, 6000)
    lookup = {p.text: p for c in CATEGORIES for p in tasks.prompt_pool(c, gap=True)}
    good = 0
    for text in texts:
        cut = min(i for i in (text.find(" ? "), text.find(" . ")) if i >= 0) + 2
        good += gold_score(lookup[text[:cut]], text[cut + 1:]) == 3.0  # only good responses score 3
    share = {c: 1 / len(STYLES[c]) for c in CATEGORIES}
    share["fact"] *= 24 / 32
    assert _within_binomial(good, len(texts), statistics.mean(share.values()))
    joined = "\n".join(texts)
    for marker in ("i will not answer that", "idiot", "basically", "crowbar", "not sure"):
        assert marker in joined


def test_trained_tokenizer_round_trips_the_corpus(tmp_path):
    from transformers import AutoTokenizer

    from rlhfkit.tiny_models import build_word_tokenizer

    texts = base.corpus(0, 2000)
    tok = base.train_tokenizer(texts + [" ".join(tasks.vocabulary())], tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    ref = build_word_tokenizer([])
    assert len(loaded) == len(tasks.vocabulary()) + 7
    assert loaded.convert_tokens_to_ids(["<pad>", "<unk>", "<bos>", "<eos>", "<|user|>"]) == \
        ref.convert_tokens_to_ids(["<pad>", "<unk>", "<bos>", "<eos>", "<|user|>"])
    assert loaded.chat_template == ref.chat_template
    for text in texts[:500]:
        ids = loaded(text)["input_ids"]
        assert ids[0] == loaded.bos_token_id and loaded.unk_token_id not in ids
        assert loaded.decode(ids, skip_special_tokens=True) == text
    assert tok("what is 3 plus 4?")["input_ids"] == tok("what is 3 plus 4 ?")["input_ids"]
    chat = loaded.apply_chat_template([{"role": "user", "content": "describe the soup ."}], tokenize=False,
                                      add_generation_prompt=True)
    assert chat == "<|user|> describe the soup . <eos> <|assistant|> "


def test_sft_records_mix_good_and_bad(tmp_path):
    recs = base.sft_records(0, 200, good_fraction=0.4)
    assert recs == base.sft_records(0, 200, good_fraction=0.4) and len(recs) == 200
    train_texts = {p.text for c in CATEGORIES for p in tasks.prompt_pool(c, "train")}
    assert all(r["prompt"] in train_texts and set(r) == {"prompt", "completion"} for r in recs)
    lookup = {p.text: p for c in CATEGORIES for p in tasks.prompt_pool(c)}
    # Only good responses score 3 (every other style scores at most 1.5): exactly 40% of 200.
    assert sum(gold_score(lookup[r["prompt"]], r["completion"]) == 3.0 for r in recs) == 80


def test_prompt_file_keeps_the_reward_columns(tmp_path):
    from rlhfkit.data import load_prompts

    prompts = tasks.make_prompts(0, 2)
    path = base.prompt_file(tmp_path / "p" / "prompts.jsonl", prompts)
    loaded = load_prompts(path)
    assert [ex.prompt for ex in loaded] == [p.text for p in prompts]
    assert loaded[0].extra == {"category": prompts[0].category, "subject": prompts[0].subject,
                               "answer": prompts[0].answer}
    assert json.loads(open(path).readline()) == prompts[0].record()


# --------------------------------------------------------------------------- the cache, without training


def test_cached_base_leaves_no_half_folder_when_the_build_dies(tmp_path, monkeypatch):
    def killed(out_dir, **kw):
        (tmp_path / "started").write_text("1")
        open(f"{out_dir}.partial", "w").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(base, "build_base", killed)
    with pytest.raises(KeyboardInterrupt):
        base.cached_base(seed=0, cache_dir=tmp_path / "cache", steps=3)
    assert (tmp_path / "started").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_cached_base_removes_abandoned_builds_and_keys_on_settings(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    dead = cache / ".tmp-base-x-2147483646"  # no such pid
    dead.mkdir(parents=True)
    built = []

    def fake_build(out_dir, seed=0, **kw):
        built.append(kw)
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")

    monkeypatch.setattr(base, "build_base", fake_build)
    path = base.cached_base(seed=0, cache_dir=cache, steps=3)
    assert not dead.exists()
    assert base.cached_base(seed=0, cache_dir=cache, steps=3) == path and built == [{"steps": 3}]
    assert base.cached_base(seed=0, cache_dir=cache, steps=4) != path and len(built) == 2
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path / "env"))
    assert base.cached_base(seed=0, steps=3).startswith(str(tmp_path / "env"))
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        [base.base_key(0, steps=3), base.base_key(0, steps=4)])
    # Defaults are part of the key whether passed or not; other seeds and settings are not.
    assert base.base_key(0) == base.base_key(0, steps=2000, hidden_size=128)
    assert len({base.base_key(0), base.base_key(1), base.base_key(0, num_layers=3)}) == 3
    with pytest.raises(TypeError, match="stepz"):
        base.base_key(0, stepz=3)


@pytest.mark.parametrize("prompt,response,verdict", [
    (ARITH, "3 plus 4 is 7 .", "correct"), (ARITH, "3 plus 4 is 7 or 8 .", "wrong"), (ARITH, "3 plus 4 .", "none"),
    (ARITH, "i am not sure .", "unsure"), (FACT, "velmar .", "correct"), (FACT, "it is tarvik .", "wrong"),
    (FACT, "i do not know .", "unsure")])
def test_answer_verdict(prompt, response, verdict):
    assert answer_verdict(prompt, response) == verdict


DISTINCT = [chr(97 + i % 26) * (1 + i // 26) for i in range(40)]  # a .. z, aa .. nn: no word twice


@pytest.mark.parametrize("text,kind", [
    ("", "empty"), (" . , ", "empty"), ("the soup is warm and creamy .", None),
    ("well , the soup is warm .", "padding"), ("soup soup soup is warm .", "repeated"),
    ("the soup is warm and the soup is warm .", None),  # twice is not degenerate
    (" ".join(DISTINCT[:36]), "over-long"), (" ".join(DISTINCT[:35]), None),  # over 35 words
])
def test_degenerate_kinds(text, kind):
    assert degenerate(text) == kind
