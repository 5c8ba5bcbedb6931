"""Judges: both-order verdicts, bias statistics, constitutions, the three judge kinds, and a judge
as a reward source. Probabilities are worked out by hand in the docstrings."""

import json
import math

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.judge import JudgeError, compare, judge_stats, judge_winrate, load_constitution, make_judge, verdict
from rlhfkit.judge.base import JudgeItem
from rlhfkit.judge.constitution import Constitution, Principle, render
from rlhfkit.judge.remote import OpenAIJudge, parse_verdict, prob_from_top_logprobs
from rlhfkit.judge.reward import JudgeReward, parse_judge_spec

from judge_support import kind_judge_reply, make_bigram_model_dir


class FnJudge:
    """A judge from a function (first, second) -> P(first better), for testing the comparison logic."""

    def __init__(self, fn, constitution=None):
        self.name, self.fn = "fn", fn
        self.constitution = constitution or load_constitution()
        self.items: list[JudgeItem] = []

    def prob_first(self, items):
        self.items += items
        return [self.fn(it.first, it.second) for it in items]


def test_verdict_combines_both_orders():
    """p1 = 0.9 (a wins shown first), p2 = 0.7 (a wins shown second): both say a; confidence
    (0.9 + 0.7) / 2 = 0.8. p1 = 0.9, p2 = 0.4: the orders disagree -> tie, confidence 0.5, p_a 0.65.
    p1 = 0.2, p2 = 0.4: both say b; confidence 1 - 0.3 = 0.7. p1 = 0.5: no verdict in order 1 -> tie."""
    v = verdict(0.9, 0.7)
    assert (v.winner, v.confidence, v.p_a, v.raw) == ("a", pytest.approx(0.8), pytest.approx(0.8), ("a", "a"))
    v = verdict(0.9, 0.4)
    assert (v.winner, v.confidence, v.p_a, v.raw) == ("tie", 0.5, pytest.approx(0.65), ("a", "b"))
    v = verdict(0.2, 0.4)
    assert (v.winner, v.confidence) == ("b", pytest.approx(0.7))
    assert verdict(0.5, 0.9).winner == "tie"


def test_both_orders_remove_a_position_bias():
    """Responses carry a quality q; the judge's P(first better) = sigmoid(1.5 + q_first - q_second),
    a strong pull to the first slot. Quality gaps of 1 are then always won by the first slot
    (sigmoid(0.5) = 0.62 > 0.5 even for the worse one) and gaps of 2 by the better response
    (sigmoid(-0.5) = 0.38). Judged in one order with the better response first half the time, a
    wins 75% of pairs it should win 50% of; judged in both orders every verdict is the correct
    answer (gap 2) or a tie (gap 1), never a first-position win."""
    q = {"good2": 2.0, "good1": 1.0, "base": 0.0}
    judge = FnJudge(lambda f, s: 1 / (1 + math.exp(-(1.5 + q[f] - q[s]))))
    a = ["good2", "base", "good1", "base"] * 5
    b = ["base", "good2", "base", "good1"] * 5
    truth = ["a", "b", "a", "b"] * 5
    single = judge.prob_first([JudgeItem("p", x, y, ()) for x, y in zip(a, b)])
    assert sum(p > 0.5 for p in single) / len(single) == 0.75  # one order: a systematic first-slot win
    vs = compare(judge, ["p"] * len(a), a, b)
    assert all(v.winner in (t, "tie") for v, t in zip(vs, truth))
    assert [v.winner for v in vs[:4]] == ["a", "b", "tie", "tie"]
    stats = judge_stats(vs, a, b)
    # raw verdicts: gap-2 pairs give 1 first-slot win of 2, gap-1 pairs 2 of 2 -> 30 / 40 = 0.75
    assert stats["first_position_win_rate"] == 0.75 and stats["position_bias"] == 0.25
    assert stats["ties"] == 10
    # win rate of a over b counts ties half: 5 wins, 5 losses, 10 ties -> 0.5 (the truth), not 0.75
    assert judge_winrate(judge, ["p"] * len(a), a, b)["win_rate"] == 0.5


def test_judge_always_answering_a_yields_only_ties():
    judge = FnJudge(lambda f, s: 1.0)
    vs = compare(judge, ["p"] * 3, ["x", "y", "z"], ["u", "v", "w"])
    assert [v.winner for v in vs] == ["tie"] * 3 and all(v.p_a == 0.5 for v in vs)
    assert judge_stats(vs, ["x", "y", "z"], ["u", "v", "w"])["position_bias"] == 0.5


def test_judge_stats_by_hand():
    """Three pairs. (1) a="long answer" vs b="no": a in both orders -> a wins, the longer one.
    (2) b wins in both orders, b longer. (3) tie (orders disagree). Raw verdicts: order 1 = a, b, a
    (first-slot wins: 1 and 3 -> 2); order 2 (b first) = a, b, b (first-slot wins: pair 2 and 3 -> 2):
    4 of 6 -> position bias 4/6 - 0.5 = 0.1667. Longer response wins 2 of 2 decided pairs.
    Human labels a, a, None: judge says a, b -> agreement 1/2; kappa over [a, b] vs [a, a]:
    p_o = 1/2, p_e = (1*2 + 1*0) / 4 = 1/2 -> kappa = 0."""
    vs = [verdict(0.9, 0.8), verdict(0.1, 0.3), verdict(0.8, 0.3)]
    a, b = ["long answer", "no", "x"], ["no", "long answer", "y"]
    s = judge_stats(vs, a, b, human=["a", "a", None])
    assert s["first_position_win_rate"] == pytest.approx(4 / 6) and s["position_bias"] == pytest.approx(4 / 6 - 0.5)
    assert s["longer_win_rate"] == 1.0 and s["length_pairs"] == 2 and s["ties"] == 1
    assert s["human_labelled"] == 2 and s["human_agreement"] == 0.5 and s["human_kappa"] == pytest.approx(0.0)


def test_per_principle_verdicts_combined_by_weight():
    """Principle "x" (weight 3) prefers the first slot's response if it is "good" (P 0.9, else 0.1);
    principle "y" (weight 1) always says 0.5. Pair (good, bad): p1 = (3*0.9 + 0.5) / 4 = 0.8;
    p2 = 1 - (3*0.1 + 0.5) / 4 = 0.8 -> a, confidence 0.8. Each principle is asked in both orders."""
    con = Constitution((Principle("x", "be good", 3.0), Principle("y", "be anything", 1.0)), "t", per_principle=True)

    class PrincipleJudge(FnJudge):
        def prob_first(self, items):
            self.items += items
            return [(0.9 if it.first == "good" else 0.1) if it.principles[0].name == "x" else 0.5 for it in items]

    judge = PrincipleJudge(None, con)
    (v,) = compare(judge, ["p"], ["good"], ["bad"])
    assert v.winner == "a" and v.confidence == pytest.approx(0.8)
    assert sorted(len(it.principles) for it in judge.items) == [1, 1, 1, 1]


def test_default_constitution_and_rendering():
    con = load_constitution()
    assert [p.name for p in con.principles] == ["helpful", "honest", "harmless"] and not con.per_principle
    text = render([{"role": "user", "content": "hi"}], "first one", [{"role": "assistant", "content": "second"}],
                  con.principles)
    assert "- honest:" in text and "user: hi" in text
    assert text.index("[Response A]\nfirst one") < text.index("[Response B]\nsecond")
    assert text.endswith("Answer with a single letter: A or B.")


@pytest.mark.parametrize("content,match", [
    ("principles: []\n", "field 'principles'"),
    ("principles:\n  - name: x\n", r"principles\[0\]: field 'text'"),
    ("principles:\n  - {name: x, text: y, weight: -1}\n", r"principles\[0\]: field 'weight'"),
    ("principles:\n  - {name: x, text: y, colour: red}\n", "unknown field 'colour'"),
    ("per_principle: maybe\nprinciples:\n  - {name: x, text: y}\n", "field 'per_principle'"),
])
def test_bad_constitutions_name_file_and_field(tmp_path, content, match):
    path = tmp_path / "con.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as e:
        load_constitution(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("reply,letter", [
    ("A", "A"), (" B.", "B"), ("(A) because", "A"), ("[[B]]", "B"), ("The better response is B", "B"),
    ("Response A is better.", "A"), ("A better answer is Response B", "B"), ("I cannot tell", None), ("", None),
])
def test_parse_verdict(reply, letter):
    assert parse_verdict(reply) == letter


def test_prob_from_top_logprobs():
    """lp(A) = ln 0.6, lp(B) = ln 0.2 -> 0.6 / 0.8 = 0.75; only B present -> 0; neither -> None."""
    assert prob_from_top_logprobs([("A", math.log(0.6)), (" B", math.log(0.2)), ("C", -0.1)]) == pytest.approx(0.75)
    assert prob_from_top_logprobs([("B", -0.1)]) == 0.0
    assert prob_from_top_logprobs([("C", -0.1)]) is None


@pytest.mark.parametrize("chat", [True, False])
def test_local_lm_judge_reads_the_answer_token(tmp_path, chat):
    """A bigram model whose only rule is <unk> -> A with logit 0.2 * sqrt(48) and B with 0.1 * sqrt(48)
    (the judge prompt ends in a word it does not know: "B." with a chat template, "Answer:" without):
    P(A) = sigmoid(0.1 * sqrt(48)) = 0.666585. Both orders then disagree (A both times) -> tie, p_a 0.5."""
    path = make_bigram_model_dir(tmp_path / "judge", {"<unk>": {"A": 0.2, "B": 0.1}}, ["A", "B"], strength=1.0,
                                 chat=chat)
    judge = make_judge(path)
    assert type(judge).__name__ == "LMJudge" and judge.chat is chat
    p = judge.prob_first([JudgeItem("how is the soup ?", "good", "bad", judge.constitution.principles)] * 2)
    assert p == pytest.approx([0.666585] * 2, abs=1e-5)
    (v,) = compare(judge, ["q"], ["x"], ["y"])
    assert v.winner == "tie" and v.p_a == pytest.approx(0.5, abs=1e-6)


def test_local_judge_refuses_a_tokenizer_without_the_answers(world_dir):
    with pytest.raises(JudgeError, match="no token for the answer 'A'"):
        make_judge(world_dir["base"])


def test_reward_model_judge_is_bradley_terry(world_dir, tmp_path):
    """P(first better) = sigmoid(r(first) - r(second)) under the reward model."""
    from rlhfkit.models import load_reward_model, load_tokenizer, save_model

    tok = load_tokenizer(world_dir["base"])
    rm = load_reward_model(world_dir["base"], tok)
    torch.manual_seed(0)
    torch.nn.init.normal_(rm.score.weight, std=1.0)
    save_model(rm, tok, tmp_path / "rm")
    judge = make_judge(str(tmp_path / "rm"))
    prompts, first, second = ["how is the tea ?"] * 2, ["the tea is good .", "bad"], ["bad", "the tea is good ."]
    p = judge.prob_first([JudgeItem(x, f, s, ()) for x, f, s in zip(prompts, first, second)])
    r1, r2 = judge.source(prompts, first), judge.source(prompts, second)
    assert p == pytest.approx(torch.sigmoid(r1 - r2).tolist(), abs=1e-6)
    assert p[0] == pytest.approx(1 - p[1], abs=1e-6) and abs(p[0] - 0.5) > 1e-3


def test_endpoint_judge_retries_caches_and_fails_clearly(fake_judge_endpoint, tmp_path):
    """Two 503s are retried; a rerun on the same cache makes no calls; exhausted retries and a
    non-retryable 400 raise a JudgeError naming the endpoint."""
    ep = fake_judge_endpoint(kind_judge_reply, fail_first=2)
    cache = tmp_path / "cache.jsonl"
    judge = OpenAIJudge(ep.url, load_constitution(), max_retries=3, backoff=0.01, cache=cache, concurrency=1)
    assert judge.model == "fake-judge"  # the first listed model
    vs = compare(judge, ["how is the tea ?"] * 2, ["the tea is good and warm .", "the tea is bad and cold ."],
                 ["the tea is bad and cold .", "the tea is stale and bland ."])
    assert [v.winner for v in vs] == ["a", "tie"] and vs[0].confidence == 1.0
    assert judge.counters() == {"calls": 4, "cached": 0, "unparsed": 0, "retries": 2}
    assert ep.chat_requests == 6 and len(cache.read_text().splitlines()) == 4
    again = OpenAIJudge(ep.url, load_constitution(), cache=cache)
    assert [v.winner for v in compare(again, ["how is the tea ?"], ["the tea is good and warm ."],
                                      ["the tea is bad and cold ."])] == ["a"]
    assert again.counters()["calls"] == 0 and again.counters()["cached"] == 2 and ep.chat_requests == 6

    down = fake_judge_endpoint(kind_judge_reply, fail_first=100)
    with pytest.raises(JudgeError, match=f"{down.url}.*failed after 2 tries"):
        compare(OpenAIJudge(down.url, load_constitution(), max_retries=1, backoff=0.01), ["p"], ["x"], ["y"])
    bad = fake_judge_endpoint(kind_judge_reply, fail_first=100, fail_status=400)
    with pytest.raises(JudgeError, match="BadRequestError"):
        compare(OpenAIJudge(bad.url, load_constitution(), max_retries=5, backoff=0.01), ["p"], ["x"], ["y"])
    assert bad.chat_requests <= 2  # not retried (2 orders, at most one request each)


def test_judge_reward_spec_reference_and_siblings():
    """Reward = order-balanced P(completion wins). Against the reference column with a judge that
    prefers "good": good -> (1 + 1) / 2 = 1, bad vs bad -> (1 + 0) / 2 = 0.5 (a tie).
    Siblings: group ["good", "bad", "bad"] -> good beats both (1), each bad gets (0 + 0.5) / 2 = 0.25."""
    assert parse_judge_spec("judge:http://h:1/v1;model=m;reference=chosen") == (
        "http://h:1/v1", {"model": "m", "reference": "chosen"})
    with pytest.raises(ValueError, match="not key=value"):
        parse_judge_spec("judge:x;oops")
    judge = FnJudge(lambda f, s: 1.0 if f == "good" else (0.0 if s == "good" else 1.0))
    reward = JudgeReward("judge:unused", judge=judge)
    got = reward(["p", "p"], ["good", "bad"], reference=["bad", "bad"])
    assert got.tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="no reference column"):
        reward(["p"], ["good"])
    sib = JudgeReward("judge:unused;reference=siblings", judge=judge)
    assert sib(["p", "p", "p", "q", "q"], ["good", "bad", "bad", "bad", "good"]).tolist() == [1.0, 0.25, 0.25, 0.0, 1.0]


def test_make_reward_builds_a_judge_source(fake_judge_endpoint):
    from rlhfkit.rewards import make_reward

    ep = fake_judge_endpoint(kind_judge_reply)
    reward = make_reward("", [f"judge:{ep.url};reference=reference"], [], torch.device("cpu"))
    got = reward(["how is the tea ?"] * 2, ["the tea is good and warm .", "the tea is cold and bad ."],
                 reference=["the tea is bad and stale ."] * 2)
    assert got.tolist() == [1.0, 0.5]


def test_rlhfkit_judge_writes_trl_rows_with_confidence_and_agreement(fake_judge_endpoint, tmp_path):
    from rlhfkit.judge.run import JudgeConfig
    from rlhfkit.data import load_preference
    from rlhfkit.judge.run import run_judge

    ep = fake_judge_endpoint(kind_judge_reply)
    rows = [{"id": "1", "prompt": "how is the tea ?", "response_a": "the tea is bad and cold .",
             "response_b": "the tea is good and warm .", "label": "b"},
            {"id": "2", "prompt": "how is the pie ?", "response_a": "the pie is sweet and good .",
             "response_b": "the pie is stale and burnt .", "label": "b"},
            {"id": "3", "prompt": "how is the rice ?", "response_a": "the rice is bland .",
             "response_b": "the rice is cold ."}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "judged.jsonl"
    summary = run_judge(JudgeConfig(data=str(data), judge=ep.url, output=str(out), name="kind"))
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["id"], r["chosen"], r["confidence"], r["source"]) for r in written] == [
        ("1", "the tea is good and warm .", 1.0, "judge:kind"), ("2", "the pie is sweet and good .", 1.0, "judge:kind")]
    assert len(load_preference(str(out))) == 2  # TRL rows rlhfkit rm / dpo read
    assert summary["ties"] == 1 and summary["human_labelled"] == 2 and summary["human_agreement"] == 0.5
    assert json.loads((tmp_path / "judged.jsonl.summary.json").read_text())["rows_written"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response_a": "x", "response_b": "y", "label": "c"}) + "\n")
    from rlhfkit.data import DataError

    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'label'"):
        run_judge(JudgeConfig(data=str(bad), judge=ep.url, output=str(out)))


def test_endpoint_logprobs_give_graded_confidence(fake_judge_endpoint):
    """The endpoint puts 0.8 on its letter and 0.2 on the other: P(A) = 0.8 / (0.8 + 0.2) = 0.8 when it
    answers A. A kind response beats an unkind one in both orders with 0.8 each -> confidence 0.8."""
    ep = fake_judge_endpoint(kind_judge_reply)
    judge = OpenAIJudge(ep.url, load_constitution(), logprobs=True)
    (v,) = compare(judge, ["how is the tea ?"], ["the tea is good ."], ["the tea is bad ."])
    assert v.winner == "a" and v.confidence == pytest.approx(0.8) and v.p_first == pytest.approx(0.8)


@pytest.mark.parametrize("kind", ["lm", "reward_model", "per_principle_endpoint"])
def test_rlhfkit_judge_with_each_judge_kind(kind, tmp_path, world_dir, fake_judge_endpoint):
    """Every judge kind through `run_judge`. The bigram LM answers "A" to any judge prompt -> all
    ties, position bias +0.5. The reward model (random head) decides every pair consistently: a
    Bradley-Terry judge has no position preference (bias 0). The endpoint with a two-principle,
    per-principle constitution is asked 2 principles x 2 orders x 3 pairs = 12 times."""
    from rlhfkit.judge.run import JudgeConfig
    from rlhfkit.judge.run import run_judge
    from rlhfkit.models import load_reward_model, load_tokenizer, save_model

    pairs = [{"prompt": f"how is the {x} ?", "response_a": f"the {x} is good and warm .",
              "response_b": f"the {x} is bad ."} for x in ("tea", "pie", "rice")]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    cfg = dict(data=str(data), output=str(tmp_path / "out.jsonl"), device="cpu")
    if kind == "lm":
        target = make_bigram_model_dir(tmp_path / "lm", {"<unk>": {"A": 1.0}}, ["A", "B"])
    elif kind == "reward_model":
        tok = load_tokenizer(world_dir["base"])
        rm = load_reward_model(world_dir["base"], tok)
        torch.manual_seed(1)
        torch.nn.init.normal_(rm.score.weight, std=1.0)
        save_model(rm, tok, tmp_path / "rm")
        target = str(tmp_path / "rm")
    else:
        ep = fake_judge_endpoint(kind_judge_reply)
        target = ep.url
        (tmp_path / "con.yaml").write_text("per_principle: true\nprinciples:\n  - {name: kind, text: be kind, weight: 2}\n"
                                           "  - {name: brief, text: be brief}\n")
        cfg["constitution"] = str(tmp_path / "con.yaml")
    summary = run_judge(JudgeConfig(judge=target, **cfg))
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    if kind == "lm":
        assert summary["ties"] == 3 and rows == [] and summary["position_bias"] == 0.5
    elif kind == "reward_model":
        assert summary["ties"] == 0 and len(rows) == 3 and summary["position_bias"] == 0.0
        assert all(0.5 < r["confidence"] < 1 and r["source"] == "judge:rm" for r in rows)
    else:
        # kind: a wins both orders (p = 1); brief: "the x is bad ." is shorter but the rule judge only
        # counts kind words, so it also answers a -> every pair a with confidence 1.
        assert ep.chat_requests == 12 and summary["per_principle"] and len(rows) == 3
        assert all(r["chosen"].endswith("good and warm .") and r["confidence"] == 1.0 for r in rows)


def test_cli_errors_are_one_line(tmp_path, capsys):
    """Bad input to `rlhfkit judge` / `rlhfkit serve`: exit 2 and one stderr line naming file, line and field."""
    from rlhfkit.cli import main

    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response_a": "x", "response_b": "y"}) + "\n"
                   + json.dumps({"prompt": "p", "response_a": "x", "response_b": 3}) + "\n")
    assert main(["judge", "--data", str(bad), "--judge", "http://127.0.0.1:9/v1", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rlhfkit judge: error: {bad}:2: field 'response_b': expected"), err
    assert not (tmp_path / "o").exists()
    guard = tmp_path / "guard.yaml"
    guard.write_text("output:\n  blocklist:\n    - regex: '(['\n")
    model = make_bigram_model_dir(tmp_path / "m", {}, ["A", "B"])
    assert main(["serve", "--model", model, "--guard", str(guard)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{guard}: output.blocklist[0]: field 'regex': invalid regular expression" in err[0]
    assert main(["serve", "--model", str(tmp_path / "nothing")]) == 2
    assert "no model folder" in capsys.readouterr().err
