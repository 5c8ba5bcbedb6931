"""The KV-cache sampler against references: HF ``generate`` (greedy), a full forward pass
(log-probs), and hand-written rules for EOS, stop strings, seeds and truncation.

Two tiny random models: the Llama from ``make_tiny_model_dir`` (rotary positions, so a constant
position shift per row changes nothing) and a GPT-2 (absolute positions: a left-padded row whose
positions are not counted from the mask generates different tokens, so position bugs show).
Default initialisation (std 0.02) gives near-uniform logits on which greedy decoding just repeats
the last prompt token; ``_spread`` redraws the weight matrices with std 0.1 so outputs vary.
"""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlhfkit.config import GenerationConfig
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.sampling import Rollout, eos_ids, generate, sample
from rlhfkit.tiny_models import build_word_tokenizer, make_tiny_model_dir

TEXTS = ["the quick brown fox jumps over the lazy dog", "a cat sat on a mat and then ran home",
         "red green blue yellow purple orange"]
PROMPTS = ["the quick brown fox", "a", "red green blue yellow purple orange cat", "then ran"]


def _spread(model, std: float = 0.1, seed: int = 1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    return model.eval()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = make_tiny_model_dir(tmp_path_factory.mktemp("llama"), TEXTS)
    return load_tokenizer(path), _spread(load_causal_lm(path))


@pytest.fixture(scope="module")
def gpt2(llama):
    tok = llama[0]
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return tok, _spread(GPT2LMHeadModel(config))


@pytest.fixture(params=["llama", "gpt2"])
def lm(request):
    return request.getfixturevalue(request.param)


def _prompt_rows(tok, prompts=PROMPTS):
    return [tok(p)["input_ids"] for p in prompts]


def _left_pad(rows, pad):
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _responses(rollout: Rollout) -> list[list[int]]:
    return [r[m.bool()].tolist() for r, m in zip(rollout.response_ids, rollout.mask)]


def _reference_logprobs(model, rollout: Rollout, temperature: float, side: str) -> torch.Tensor:
    """log softmax(logits / T) of each response token from one plain forward over prompt + response."""
    rows = [p + r for p, r in zip(rollout.prompt_ids, _responses(rollout))]
    width = max(map(len, rows))
    pads = [[0] * (width - len(r)) for r in rows]
    ids = torch.tensor([p + r if side == "left" else r + p for p, r in zip(pads, rows)])
    mask = torch.tensor([[0] * len(p) + [1] * len(r) if side == "left" else [1] * len(r) + [0] * len(p)
                         for p, r in zip(pads, rows)])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    out = torch.zeros_like(rollout.logprobs)
    for i, (prompt, response) in enumerate(zip(rollout.prompt_ids, _responses(rollout))):
        start = (width - len(rows[i]) if side == "left" else 0) + len(prompt) - 1  # logits that predict token 0
        at = torch.arange(len(response)) + start
        out[i, :len(response)] = logp[i, at, torch.tensor(response, dtype=torch.long)]
    return out


# --------------------------------------------------------------------------- 1. greedy == HF generate


def test_greedy_equals_hf_generate_with_left_padding(lm):
    tok, model = lm
    rows = _prompt_rows(tok)
    assert len({len(r) for r in rows}) == len(rows), "prompts must differ in length to exercise left padding"
    ends = eos_ids(tok, model)
    ours = generate(model, tok, rows, GenerationConfig(max_new_tokens=16, temperature=0.0))
    ids, mask = _left_pad(rows, tok.pad_token_id)
    hf = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                        pad_token_id=tok.pad_token_id, eos_token_id=ends)[:, ids.shape[1]:]
    assert ours.response_ids.shape == hf.shape
    assert torch.equal(ours.response_ids, hf)
    assert len({tuple(r) for r in _responses(ours)}) > 1, "degenerate model: every row generated the same"


def test_chunked_equals_one_batch(llama):
    tok, model = llama
    rows = _prompt_rows(tok) + _prompt_rows(tok, ["dog", "purple orange cat sat"])
    one = generate(model, tok, rows, GenerationConfig(max_new_tokens=10, temperature=0.0), batch_size=64)
    chunked = generate(model, tok, rows, GenerationConfig(max_new_tokens=10, temperature=0.0), batch_size=2)
    assert torch.equal(one.response_ids, chunked.response_ids) and torch.equal(one.mask, chunked.mask)
    torch.testing.assert_close(one.logprobs, chunked.logprobs, atol=1e-5, rtol=0)
    assert one.prompt_ids == rows and chunked.texts == one.texts


# --------------------------------------------------------------------------- 2. log-probs == full forward


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.7, 5, 0.8)])
@pytest.mark.parametrize("side", ["right", "left"])
def test_logprobs_equal_full_forward(lm, temperature, top_k, top_p, side):
    tok, model = lm
    gen = torch.Generator().manual_seed(3)
    rollout = generate(model, tok, _prompt_rows(tok),
                       GenerationConfig(max_new_tokens=12, temperature=temperature, top_k=top_k, top_p=top_p),
                       generator=gen)
    assert rollout.logprobs.dtype == torch.float32
    assert torch.all(rollout.logprobs[rollout.mask == 0] == 0)
    assert torch.all(rollout.logprobs[rollout.mask == 1] < 0)
    reference = _reference_logprobs(model, rollout, temperature, side)
    torch.testing.assert_close(rollout.logprobs, reference, atol=1e-5, rtol=0)


def test_greedy_logprobs_are_untempered(llama):
    tok, model = llama
    rollout = generate(model, tok, _prompt_rows(tok), GenerationConfig(max_new_tokens=8, temperature=0.0))
    torch.testing.assert_close(rollout.logprobs, _reference_logprobs(model, rollout, 1.0, "right"),
                               atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- 3. EOS


def _free_run(tok, model, rows, n=12):
    """Greedy tokens with no end token at all: every row runs the full n steps."""
    rollout = generate(model, tok, rows, GenerationConfig(max_new_tokens=n, temperature=0.0), eos_token_ids=[])
    assert rollout.mask.all() and not rollout.ended.any()
    return rollout.response_ids.tolist()


def test_eos_ends_row_and_rows_without_eos_run_to_the_limit(lm):
    tok, model = lm
    rows = _prompt_rows(tok)
    free = _free_run(tok, model, rows)
    # An "EOS" that some rows emit (not at step 0) and at least one row never emits.
    eos = next(t for r in free for t in r[1:] if t not in r[0:1] and any(t not in other for other in free))
    out = generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=0.0), eos_token_ids=[eos])
    assert out.ended.any() and not out.ended.all()
    for i, tokens in enumerate(free):
        if eos in tokens:
            k = tokens.index(eos)
            assert out.ended[i]
            assert out.mask[i].tolist() == [1] * (k + 1) + [0] * (out.mask.shape[1] - k - 1)
            assert out.response_ids[i, :k + 1].tolist() == tokens[:k + 1]  # EOS itself included
            assert torch.all(out.response_ids[i, k + 1:] == tok.pad_token_id)
            assert torch.all(out.logprobs[i, k + 1:] == 0)
        else:  # cut by max_new_tokens; must be unaffected by other rows leaving the batch
            assert not out.ended[i]
            assert out.mask[i].sum() == 12 and out.response_ids[i].tolist() == tokens


def test_all_rows_ending_early_stops_the_loop(llama):
    tok, model = llama
    rows = _prompt_rows(tok)
    free = _free_run(tok, model, rows)
    ends = sorted({r[1] for r in free})  # every row's second token ends it
    out = generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=0.0), eos_token_ids=ends)
    assert out.ended.all()
    longest = max(min(r.index(e) for e in ends if e in r) + 1 for r in free)
    assert out.response_ids.shape == (len(rows), longest) and out.mask.sum(1).max() == longest


def test_default_end_tokens_include_tokenizer_eos(llama):
    tok, model = llama
    assert tok.eos_token_id in eos_ids(tok, model)
    rows = _prompt_rows(tok)
    free = _free_run(tok, model, rows)
    out = generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=0.0))
    for i, tokens in enumerate(free):
        assert bool(out.ended[i]) == (tok.eos_token_id in tokens)


# --------------------------------------------------------------------------- 4. stop strings


def _expected_stop(tok, tokens, stop):
    """(steps kept, ended) by the rule: stop at the first token after which the decoded text contains ``stop``."""
    for t in range(len(tokens)):
        if stop in tok.decode(tokens[:t + 1], skip_special_tokens=True):
            return t + 1, True
    return len(tokens), False


@pytest.mark.parametrize("span", [1, 2])
def test_stop_strings_end_rows_and_are_cut_from_texts(llama, span):
    tok, model = llama
    rows = _prompt_rows(tok)
    free = _free_run(tok, model, rows)
    specials = set(tok.all_special_ids)  # a special-token stop string is an end id (tested below)
    at = next(j for j in range(1, 12 - span) if not specials & set(free[0][j:j + span]))
    stop = tok.decode(free[0][at:at + span])  # one word, or two words across a token boundary
    out = generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=0.0, stop_strings=[stop]),
                   eos_token_ids=[])
    assert out.ended[0]
    for i, tokens in enumerate(free):
        kept, ended = _expected_stop(tok, tokens, stop)
        assert out.mask[i].sum() == kept and bool(out.ended[i]) == ended
        assert out.response_ids[i, :kept].tolist() == tokens[:kept]
        full = tok.decode(tokens[:kept], skip_special_tokens=True)
        assert out.texts[i] == (full[:full.index(stop)] if ended else full)
        assert stop not in out.texts[i]


def test_special_token_stop_string_acts_as_end_id(llama):
    tok, model = llama
    rows = _prompt_rows(tok)
    by_id = generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=0.0),
                     eos_token_ids=[tok.eos_token_id])
    by_string = generate(model, tok, rows,
                         GenerationConfig(max_new_tokens=12, temperature=0.0, stop_strings=[tok.eos_token]),
                         eos_token_ids=[])
    assert torch.equal(by_id.response_ids, by_string.response_ids) and torch.equal(by_id.ended, by_string.ended)


# --------------------------------------------------------------------------- 5. seeds, 6. top-k


def test_seeded_generator_reproduces_and_seeds_differ(llama):
    tok, model = llama
    rows = _prompt_rows(tok) * 2

    def run(seed):
        return generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=0.95),
                        generator=torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert torch.equal(a.mask, b.mask) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)


def test_top_k_1_sampling_equals_greedy(lm):
    tok, model = lm
    rows = _prompt_rows(tok)
    greedy = generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=0.0))
    top1 = generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=1.0, top_k=1),
                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy.response_ids, top1.response_ids)
    torch.testing.assert_close(greedy.logprobs, top1.logprobs, atol=1e-6, rtol=0)  # same distribution at T=1


def test_tiny_top_p_is_greedy(llama):
    tok, model = llama
    rows = _prompt_rows(tok)
    greedy = generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=0.0))
    nucleus = generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=1e-6),
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy.response_ids, nucleus.response_ids)


# --------------------------------------------------------------------------- 7. eos_ids


def test_eos_ids_include_chat_end_of_turn_and_generation_config(llama):
    tok = build_word_tokenizer(TEXTS)
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|end|>"]})
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    end = tok.convert_tokens_to_ids("<|end|>")
    assert eos_ids(tok) == [tok.eos_token_id, end]

    _, model = llama
    model.generation_config.eos_token_id = [tok.eos_token_id, 9, 11]
    try:
        assert eos_ids(tok, model) == [tok.eos_token_id, 9, 11, end]
        model.generation_config.eos_token_id = 9
        assert eos_ids(tok, model) == [tok.eos_token_id, 9, end]
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id


def test_eos_ids_find_chatml_end_and_ignore_missing_template():
    tok = build_word_tokenizer(TEXTS)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> "
                         "{% endfor %}")
    assert eos_ids(tok) == [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    tok.chat_template = None
    assert eos_ids(tok) == [tok.eos_token_id]


# --------------------------------------------------------------------------- sample() and housekeeping


def test_sample_strings_and_chat_prompts(llama):
    tok, model = llama
    model.train()
    prompts = ["the quick brown fox", [{"role": "user", "content": "a cat sat"}]] * 3
    texts = sample(model, tok, prompts, GenerationConfig(max_new_tokens=6, temperature=1.0), batch_size=4, seed=5)
    assert model.training, "train/eval mode must be restored"
    model.eval()
    assert len(texts) == 6 and all(isinstance(t, str) and t == t.strip() for t in texts)
    assert texts == sample(model, tok, prompts, GenerationConfig(max_new_tokens=6, temperature=1.0), batch_size=4,
                           seed=5)
    assert all(w in tok.get_vocab() for t in texts for w in t.split())
    greedy = sample(model, tok, prompts, GenerationConfig(max_new_tokens=6, temperature=0.0))
    assert greedy[0] == greedy[2] and greedy[1] == greedy[3]


def test_texts_and_edge_cases(llama):
    tok, model = llama
    rows = _prompt_rows(tok)
    out = generate(model, tok, rows, GenerationConfig(max_new_tokens=5, temperature=0.0))
    assert out.texts == tok.batch_decode(_responses(out), skip_special_tokens=True)
    assert out.response_ids.dtype == torch.long and out.mask.dtype == torch.long and out.ended.dtype == torch.bool
    empty = generate(model, tok, rows, GenerationConfig(max_new_tokens=0))
    assert empty.response_ids.shape == (4, 0) and empty.texts == [""] * 4 and not empty.ended.any()
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1)):
        with pytest.raises(ValueError):
            generate(model, tok, rows, GenerationConfig(max_new_tokens=4, **bad))
    with pytest.raises(ValueError):
        generate(model, tok, rows, GenerationConfig(max_new_tokens=4), batch_size=0)
    with pytest.raises(ValueError):
        generate(model, tok, [[]], GenerationConfig(max_new_tokens=4))


# --------------------------------------------------------------------------- 6. the fast paths


def test_draw_matches_the_probabilities_and_never_draws_a_zero():
    """Inverse-CDF sampling: 40,000 draws from p = (0.5, 0, 0.2, 0.3, 0) per row. Each count is
    binomial; 5 standard deviations is ~0.5% of n, so a sampler off by 1% of the mass fails."""
    from rlhfkit.sampling import draw

    p = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0])
    n = 40_000
    tokens = draw(p.expand(n, 5), torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=5).float()
    assert counts[1] == 0 and counts[4] == 0
    sd = (n * p * (1 - p)).sqrt()
    assert bool(((counts - n * p).abs() <= 5 * sd + 1e-9).all()), counts.tolist()
    # unnormalised rows (top-k / top-p leave the kept mass < 1 before renormalising) draw the same way
    same = draw(2.0 * p.expand(n, 5), torch.Generator().manual_seed(0))
    assert torch.equal(same, tokens)


def test_repeated_prompts_prefilled_once_equal_separate_rows(lm):
    """RLOO/GRPO-style batches (each prompt k times) take the prefill-once path; greedy tokens and
    log-probs equal those of the prompts generated one copy each."""
    tok, model = lm
    rows = _prompt_rows(tok)
    repeated = [r for r in rows for _ in range(3)]
    once = generate(model, tok, rows, GenerationConfig(max_new_tokens=12, temperature=0.0))
    many = generate(model, tok, repeated, GenerationConfig(max_new_tokens=12, temperature=0.0))
    for i in range(len(repeated)):
        j = i // 3
        assert torch.equal(many.response_ids[i][many.mask[i].bool()], once.response_ids[j][once.mask[j].bool()])
        torch.testing.assert_close(many.logprobs[i][many.mask[i].bool()], once.logprobs[j][once.mask[j].bool()],
                                   atol=1e-5, rtol=0)


def test_preallocated_cache_equals_concatenating_cache(llama):
    """Decode steps through the in-place cache give the logits the stock concatenating cache gives,
    including after rows are dropped (batch_select_indices)."""
    from rlhfkit.kv_cache import new_cache

    import inspect

    tok, model = llama
    ids, mask = _left_pad(_prompt_rows(tok), tok.pad_token_id)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = []
    for capacity in (0, ids.shape[1] + 4):
        cache, m, step = new_cache(model, capacity), mask, ids
        logits = []
        with torch.no_grad():
            for t in range(4):
                pos = (m.cumsum(-1) - 1).clamp(min=0)[:, -step.shape[1]:]
                logits.append(model(input_ids=step, attention_mask=m, position_ids=pos, use_cache=True,
                                    **{cache_kw: cache}).logits[:, -1])
                step = logits[-1].argmax(-1, keepdim=True)
                if t == 1:  # drop row 1, as the sampler does with finished rows
                    keep = torch.tensor([0, 2, 3])
                    cache.batch_select_indices(keep)
                    m, step, logits = m[keep], step[keep], [x[keep] for x in logits]
                m = torch.cat([m, m.new_ones(len(m), 1)], 1)
        out.append(torch.stack(logits))
    assert type(new_cache(model, 8).layers[0]).__name__ == "PreallocatedLayer"
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=0)


def test_per_row_generators_draw_the_same_tokens_in_any_batch(llama):
    """One generator per row (online RL's rollouts): a row's tokens do not depend on the other rows of
    its batch, its position in it, or the chunk size, so N processes sharing a batch sample what 1
    process does. One shared generator gives the same rows other tokens once the batch changes."""
    from rlhfkit.train.rollout import row_generators

    tok, model = llama
    rows = _prompt_rows(tok)
    gen = GenerationConfig(max_new_tokens=10, temperature=1.0)
    prompt_idx = list(range(len(rows)))
    whole = generate(model, tok, rows, gen, generator=row_generators(3, 5, prompt_idx))
    half = len(rows) // 2
    parts = [generate(model, tok, rows[a:b], gen, generator=row_generators(3, 5, prompt_idx)[a:b], batch_size=2)
             for a, b in ((0, half), (half, len(rows)))]
    split = [r for part in parts for r in _responses(part)]
    assert _responses(whole) == split
    shared_split = [r for a, b in ((0, half), (half, len(rows))) for r in
                    _responses(generate(model, tok, rows[a:b], gen, generator=torch.Generator().manual_seed(3)))]
    shared_whole = _responses(generate(model, tok, rows, gen, generator=torch.Generator().manual_seed(3)))
    assert shared_split != shared_whole  # why rollouts use one stream per row
    keys = row_generators(3, 5, [7, 7, 8])  # copies of one prompt draw different streams; steps differ
    draws = [torch.rand(4, generator=g) for g in keys]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert not torch.equal(torch.rand(4, generator=row_generators(3, 6, [7])[0]), draws[0])
    assert torch.equal(torch.rand(4, generator=row_generators(3, 5, [7])[0]), draws[0])
    with pytest.raises(ValueError, match="one per prompt"):
        generate(model, tok, rows, gen, generator=row_generators(3, 5, prompt_idx[:-1]))


def _qwen2_gqa(tok):
    """A Qwen2 (q/k/v biases) with grouped-query attention: 4 query heads over 2 key/value heads."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return _spread(Qwen2ForCausalLM(config))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("prompts", [PROMPTS * 2, ["the quick brown fox"] * 3 + ["a cat sat on"] * 3,
                                     ["a", "then ran"] + ["red green blue yellow purple orange cat"] * 5])
@pytest.mark.parametrize("ends", [False, True])
def test_lean_decode_step_samples_as_the_forward(llama, monkeypatch, family, prompts, ends):
    """The lean decode step (kv_cache.lean_decode_step) samples the tokens the model's forward does,
    with log-probs equal to 1e-5 (on the CPU it attends in plain matmuls, and each prompt's cached
    keys/values once for all its copies: other rounding than the SDPA kernel): with left padding
    (varied prompt lengths) and without, with and without grouped-query attention, with copies of a
    prompt (a shared prefix) in equal and unequal numbers, and with rows ending at different steps
    (``ends``: some word ids end a row), so finished rows leave the batch while the prefix is shared."""
    import rlhfkit.sampling as sampling
    from rlhfkit.kv_cache import lean_decode_step

    tok, model = llama[0], llama[1] if family == "llama" else _qwen2_gqa(llama[0])
    assert lean_decode_step(model) is not None  # the step under test is the one the sampler uses
    rows, gen = _prompt_rows(tok, prompts), GenerationConfig(max_new_tokens=10, temperature=1.0)
    end_ids = tok.convert_tokens_to_ids(["the", "red", "blue"]) if ends else []
    got = {}
    for lean in (True, False):
        monkeypatch.setattr(sampling, "LEAN_DECODE", lean)
        got[lean] = generate(model, tok, rows, gen, eos_token_ids=end_ids, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got[True].response_ids, got[False].response_ids)
    assert torch.equal(got[True].mask, got[False].mask)
    torch.testing.assert_close(got[True].logprobs, got[False].logprobs, atol=1e-5, rtol=0)
    lengths = got[True].mask.sum(1)
    assert (lengths == 10).all() if not ends else 0 < int((lengths < 10).sum()) < len(rows)


def test_shared_prefix_reads_as_copied_rows(llama):
    """``PreallocatedLayer.share_rows`` keeps copies of a prompt as one shared prefix; any reader
    other than the lean step (the model's forward through ``update``) sees exactly the copied rows
    ``batch_select_indices`` gives, also after finished rows are dropped."""
    from rlhfkit.kv_cache import forward_params, new_cache
    from rlhfkit.models import position_ids_from_mask

    tok, model = llama
    ids, mask = _left_pad(_prompt_rows(tok, PROMPTS[:2]), tok.pad_token_id)
    rows, keep = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([0, 2, 4])
    cache_kw, logits = "cache" if "cache" in forward_params(model) else "past_key_values", []
    for share in (True, False):
        cache = new_cache(model, ids.shape[1] + 4)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), **{cache_kw: cache})
            for layer in cache.layers:
                (layer.share_rows if share else layer.batch_select_indices)(rows)
            assert (cache.layers[0].prefix is not None) == share
            cache.batch_select_indices(keep)
            m = torch.cat([mask[rows[keep]], mask.new_ones(3, 1)], 1)
            out = model(input_ids=torch.tensor([[5], [6], [7]]), attention_mask=m,
                        position_ids=position_ids_from_mask(m)[:, -1:], **{cache_kw: cache})
        assert cache.layers[0].prefix is None  # the forward copied the prefix out
        logits.append(out.logits)
    assert torch.equal(logits[0], logits[1])


def test_lean_decode_step_declines_other_models(gpt2, llama):
    """GPT-2 (another family) and a LoRA-wrapped Llama (its projections are not plain Linear layers)
    run through the model's forward."""
    from peft import LoraConfig, get_peft_model

    from rlhfkit.kv_cache import lean_decode_step
    from rlhfkit.models import unwrap_peft

    assert lean_decode_step(gpt2[1]) is None
    lora = get_peft_model(_qwen2_gqa(llama[0]), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert lean_decode_step(unwrap_peft(lora)) is None
