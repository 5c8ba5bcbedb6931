"""The world's base model: a mixed-quality corpus, a trained word-level tokenizer, a small
Llama-style model pretrained on the corpus, and a cache so it is built once per machine.

Pretraining is plain next-token prediction over "prompt response" texts, with responses drawn
uniformly over every style (good, wrong, rude, harmful, ...), so the base model continues a
prompt the way the corpus does: sometimes well, often not. That is the starting point RLHF needs:
SFT, reward models and RL then have a measurable gap to close. The GAP countries' capitals are
never stated correctly in the corpus (only wrong answers or "not sure"), so asking for them
probes whether training invents knowledge the base model never had.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from .tasks import (CATEGORIES, GAP, STYLES, WORLD_VERSION, Prompt, make_prompts, prompt_pool, respond,
                    vocabulary)


def corpus(seed: int, n: int, fact_share: float = 0.0) -> list[str]:
    """``n`` texts. A ``fact_share`` of them are reference statements ("3 plus 4 is 7 .", "the
    capital of norland is velmar ."): a sum or a non-GAP capital, stated correctly, as a web
    corpus states well-known facts more often than it gets them wrong. The rest are "prompt
    response" texts: category uniform, then prompt, then style uniform. GAP countries are never
    stated correctly: their prompts get every style except ``good`` and no reference statement."""
    rng = random.Random(seed)
    pools = {c: prompt_pool(c, gap=True) for c in CATEGORIES}
    known = [p for c in ("arithmetic", "fact") for p in prompt_pool(c)]  # GAP excluded
    out = []
    for _ in range(n):
        if fact_share and rng.random() < fact_share:
            out.append(respond(rng.choice(known), "good", rng))
            continue
        p = rng.choice(pools[rng.choice(CATEGORIES)])
        styles = [s for s in STYLES[p.category] if not (p.subject in GAP and s == "good")]
        out.append(f"{p.text} {respond(p, rng.choice(styles), rng)}")
    return out


def train_tokenizer(texts: list[str], path: str | os.PathLike | None = None):
    """A word-level tokenizer trained on ``texts`` with `tokenizers`' ``WordLevelTrainer``.

    Specials, their ids (pad 0, unk 1, bos 2, eos 3, then the chat roles), the <bos>
    post-processor and the chat template come from ``tiny_models.wrap_word_tokenizer``, so models from
    either tokenizer render chats identically. Words are ordered by frequency (the trainer's
    order), and decoding is an exact inverse on world text.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from ..tiny_models import WORD_SPECIALS, wrap_word_tokenizer

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    # Punctuation is split off too, so typed text ("what is 3 plus 4?") tokenizes like the world's.
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=WORD_SPECIALS, min_frequency=1,
                                                              show_progress=False))
    return wrap_word_tokenizer(core, path)


def _write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def build_base(out_dir: str | os.PathLike, seed: int = 0, steps: int = 2000, hidden_size: int = 128,
               num_layers: int = 2, num_texts: int = 20000, batch_size: int = 32, learning_rate: float = 3e-3,
               fact_share: float = 0.2, device: str = "auto") -> str:
    """Pretrain the base model into ``out_dir`` (a Hugging Face folder plus metrics.jsonl,
    summary.json and config.yaml from ``run_sft``); returns ``out_dir``.

    The tokenizer is trained on the corpus plus the world's vocabulary list, so words the corpus
    never uses (a GAP capital, say) still get an id. A held-out corpus (another seed) gives the
    summary an ``eval_loss``.
    """
    from ..models import save_model
    from ..tiny_models import tiny_causal_lm
    from ..train.sft import SFTConfig
    from ..train.sft import run_sft

    out = Path(out_dir)
    texts = corpus(seed, num_texts, fact_share)
    with tempfile.TemporaryDirectory(prefix="rlhfkit-base-") as work:
        work = Path(work)
        tok = train_tokenizer(texts + [" ".join(vocabulary())])
        save_model(tiny_causal_lm(tok, hidden_size=hidden_size, num_layers=num_layers, seed=seed), tok,
                   work / "init")
        data = _write_jsonl(work / "corpus.jsonl", [{"text": t} for t in texts])
        held_out = _write_jsonl(work / "held_out.jsonl",
                                [{"text": t} for t in corpus(seed + 1_000_003, 512, fact_share)])
        run_sft(SFTConfig(model=str(work / "init"), data=data, eval_data=held_out, output_dir=str(out),
                          max_steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                          warmup_ratio=0.05, max_length=64, logging_steps=max(1, steps // 20),
                          completion_only_loss=False, seed=seed, device=device))
    return str(out)


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir or os.environ.get("RLHFKIT_CACHE") or Path.home() / ".cache" / "rlhfkit")


# Captured once, so the key does not change if build_base is wrapped or patched later.
_BUILD_PARAMS = {name: p.default for name, p in inspect.signature(build_base).parameters.items()
                 if name not in ("out_dir", "seed")}


def base_key(seed: int = 0, **build_kwargs) -> str:
    """Cache key: the world version, every build setting (defaults filled in, so passing a default
    explicitly names the same folder) and a hash of the corpus text itself, so a change to prompts
    or templates makes a new folder even if WORLD_VERSION was not bumped."""
    unknown = set(build_kwargs) - set(_BUILD_PARAMS)
    if unknown:
        raise TypeError(f"unknown build settings {sorted(unknown)}; expected some of {sorted(_BUILD_PARAMS)}")
    settings = {"world": WORLD_VERSION, "seed": seed, **_BUILD_PARAMS, **build_kwargs}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update("\n".join(corpus(seed, settings["num_texts"], settings["fact_share"])).encode())
    return f"base-v{WORLD_VERSION}-s{seed}-{digest.hexdigest()[:12]}"


def _remove_abandoned(root: Path) -> None:
    """Delete temp folders left by builds whose process is gone (a killed build)."""
    for tmp in root.glob(".tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        alive = True
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:  # exists, another user's
            pass
        if not alive:
            shutil.rmtree(tmp, ignore_errors=True)


def cached_base(seed: int = 0, cache_dir: str | os.PathLike | None = None, **build_kwargs) -> str:
    """The base model folder for these settings, built by ``build_base`` if absent.

    Lives under ``cache_dir``, else ``$RLHFKIT_CACHE``, else ``~/.cache/rlhfkit``. A build writes
    to a temp folder and renames it into place, so a killed build never leaves a half folder under
    the final name, and of two concurrent builds the first rename wins and the other is discarded.
    """
    root = _cache_root(cache_dir)
    final = root / base_key(seed, **build_kwargs)
    if (final / "config.json").is_file():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", suffix=f"-{os.getpid()}", dir=root))
    try:
        build_base(tmp / "model", seed=seed, **build_kwargs)
        try:
            os.rename(tmp / "model", final)
        except OSError:  # another process finished first: keep its folder
            if not (final / "config.json").is_file():
                raise RuntimeError(f"{final} exists but holds no model (config.json); remove it and retry") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def sft_records(seed: int, n: int, good_fraction: float = 0.4, split: str | None = "train") -> list[dict]:
    """``n`` demonstrations ``{prompt, completion}`` of mixed quality: a ``good_fraction`` share
    (rounded) is good, the rest uniform over the category's other styles. Train-split prompts."""
    rng = random.Random(seed)
    prompts = _cycle_prompts(seed, n, split)
    n_good = round(good_fraction * n)
    good = set(rng.sample(range(n), n_good))
    out = []
    for i, p in enumerate(prompts):
        style = "good" if i in good else rng.choice([s for s in STYLES[p.category] if s != "good"])
        out.append({"prompt": p.text, "completion": respond(p, style, rng)})
    return out


def _cycle_prompts(seed: int, n: int, split: str | None) -> list[Prompt]:
    per = -(-n // len(CATEGORIES))  # ceil
    return make_prompts(seed, per, split=split)[:n]


def prompt_file(path: str | os.PathLike, prompts: list[Prompt]) -> str:
    """A JSONL prompt file (``prompt`` plus the category/subject/answer columns reward functions read)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _write_jsonl(Path(path), [p.record() for p in prompts])
