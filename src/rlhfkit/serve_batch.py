"""Batched generation for ``rlhfkit serve``: one scheduler thread runs every concurrent request
through one KV-cache decode loop, each request with its own seed, knobs and stopping.

How a request travels (``Batcher.submit`` returns a ``Future`` of a ``Reply``):

- it waits in a queue; an idle scheduler takes the first one, then waits ``window_s`` for more
  (up to ``max_batch_size``) and prefills them together, left-padded, with ``position_ids``
  counted over real tokens (as ``sampling.generate`` does);
- between decode steps, requests that arrived meanwhile join the running batch (continuous
  batching): they are prefilled on their own, and the two caches are merged, the shorter one
  left-padded with masked columns (a key at a masked column gets zero attention weight, and rotary
  positions are already inside the cached keys, so padding moves nothing). Columns masked in every
  row are cut off at each merge. Models whose cache has layers other than the plain full-attention
  one (sliding windows, say) do not join: new requests wait for the running batch to finish;
- each step every row draws its next token with its own ``torch.Generator`` (seeded from the
  request's seed) and its own temperature / top-p, and stops on its own: an end token
  (``sampling.eos_ids`` plus any stop string that is one special token), a stop string in its
  text, or its ``max_new_tokens``. A finished row leaves the batch at once (its cache rows are
  dropped) and its future resolves, while the others run on.

Same seed, same reply, batched or alone: a row's draw is exactly ``sampling.draw``'s (one uniform
per row and step from the row's generator, inverse CDF over softmax(logits / T), nucleus-truncated
like the sampler's top-p), so a request alone here gets the tokens ``sampling.generate`` gives it
with the same seed. In a batch the logits are the alone logits up to float rounding: a batched,
padded matmul may sum in another order (~1e-6 relative in fp32). A greedy token or a drawn token
changes only where two logits tie within that noise, or the row's uniform lands within it of a
CDF step; docs/serving.md says so, and the tests check exact token identity on the test models.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .kv_cache import PreallocatedLayer, forward_params, new_cache
from .models import position_ids_from_mask, unwrap_peft
from .sampling import draw, eos_ids


@dataclass
class Reply:
    tokens: list[int]  # generated ids, up to and including the end / stop token
    ended: bool  # True: an end token or stop string ended it; False: max_new_tokens cut it


@dataclass
class Job:
    """One request in the scheduler: its prompt, knobs and progress."""

    ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    end_ids: set[int]
    text_stops: list[str]
    generator: torch.Generator
    future: Future = field(default_factory=Future)
    tokens: list[int] = field(default_factory=list)
    ended: bool = False


class _Batch:
    """The rows decoding together: their jobs, (B, S) attention mask, KV cache and the (B, V)
    logits of each row's next token."""

    def __init__(self, jobs: list[Job], attn_BS: torch.Tensor, cache, logits_BV: torch.Tensor):
        self.jobs, self.attn_BS, self.cache, self.logits_BV = jobs, attn_BS, cache, logits_BV


class Batcher:
    """The scheduler thread and its queue over one model (see the module docstring)."""

    def __init__(self, model, tokenizer, max_batch_size: int = 16, window_s: float = 0.005):
        if max_batch_size < 1 or window_s < 0:
            raise ValueError(f"need max_batch_size >= 1 and window_s >= 0, got {max_batch_size}, {window_s}")
        self.model, self.tokenizer = unwrap_peft(model), tokenizer
        self.max_batch_size, self.window_s = max_batch_size, window_s
        self.device = next(self.model.parameters()).device
        self.ends = eos_ids(tokenizer, self.model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.ends or [0])[0]
        self.special = set(tokenizer.all_special_ids) | {
            i for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items() if getattr(t, "special", False)}
        params = forward_params(self.model)
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
        self.keep = next(({k: 1} for k in ("logits_to_keep", "num_logits_to_keep") if k in params), {})
        layers = getattr(new_cache(self.model, 1), "layers", None)
        self.can_join = bool(layers) and all(isinstance(x, PreallocatedLayer) for x in layers)
        self.batch_sizes: collections.Counter = collections.Counter()  # rows per decode forward -> count
        self.queue: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.start_lock = threading.Lock()

    # ------------------------------------------------------------------ requests

    def submit(self, ids: list[int], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               stop: list[str] = (), seed: int = 0) -> Future:
        """Queue one prompt; the future resolves to a ``Reply`` (or the error that stopped its batch)."""
        if not ids or max_new_tokens < 0 or temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("need a non-empty prompt, max_new_tokens >= 0, temperature >= 0 and 0 < top_p <= 1")
        token_stops = {i for s in stop if (i := self._single_special(s)) is not None}
        job = Job(list(ids), max_new_tokens, temperature, top_p, set(self.ends) | token_stops,
                  [s for s in stop if s and self._single_special(s) is None],
                  torch.Generator(device=self.device).manual_seed(seed))
        if max_new_tokens == 0:
            job.future.set_result(Reply([], False))
            return job.future
        with self.start_lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._serve_forever, name="rlhfkit-serve-batcher", daemon=True)
                self.thread.start()
        self.queue.put(job)
        return job.future

    def _single_special(self, text: str) -> int | None:
        """The id of a stop string that is exactly one special token (decoded text skips those)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 and ids[0] in self.special and ids[0] != self.tokenizer.unk_token_id else None

    def _take(self, limit: int, wait: bool) -> list[Job]:
        """Up to ``limit`` queued jobs; with ``wait``, block for the first, then ``window_s`` for more."""
        jobs: list[Job] = []
        if wait:
            jobs.append(self.queue.get())
            deadline = time.monotonic() + self.window_s
            while len(jobs) < limit and (left := deadline - time.monotonic()) > 0:
                try:
                    jobs.append(self.queue.get(timeout=left))
                except queue.Empty:
                    break
        while len(jobs) < limit:
            try:
                jobs.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return [j for j in jobs if j.future.set_running_or_notify_cancel()]

    # ------------------------------------------------------------------ the loop

    def _serve_forever(self) -> None:
        while True:
            jobs = self._take(self.max_batch_size, wait=True)
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        """Decode ``jobs`` and whoever joins them, until every row is done."""
        live = list(jobs)
        try:
            with torch.no_grad():
                batch = self._prefill(jobs)
                while batch.jobs:
                    room = self.max_batch_size - len(batch.jobs)
                    joining = self._take(room, wait=False) if self.can_join and room > 0 else []
                    if joining:
                        live += joining
                        batch = self._merge(batch, self._prefill(joining))
                    self._step(batch)
        except Exception as e:  # noqa: BLE001 - every waiting request hears about it; the thread lives on
            for job in live:
                if not job.future.done():
                    job.future.set_exception(e)

    def _forward(self, ids_BS, attn_BS, positions_BS, cache) -> torch.Tensor:
        out = self.model(input_ids=ids_BS, attention_mask=attn_BS, position_ids=positions_BS, use_cache=True,
                         **{self.cache_kw: cache}, **self.keep)
        return out.logits[:, -1].float()

    def _prefill(self, jobs: list[Job]) -> _Batch:
        width = max(len(j.ids) for j in jobs)
        ids_BS = torch.tensor([[self.pad_id] * (width - len(j.ids)) + j.ids for j in jobs], device=self.device)
        attn_BS = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in jobs], device=self.device)
        cache = new_cache(self.model, width + max(j.max_new_tokens for j in jobs))
        return _Batch(list(jobs), attn_BS, cache, self._forward(ids_BS, attn_BS, position_ids_from_mask(attn_BS), cache))

    def _merge(self, a: _Batch, b: _Batch) -> _Batch:
        """One batch of a's rows then b's: both caches left-padded to one width, then the columns
        masked in every row cut off."""
        width = max(a.attn_BS.shape[1], b.attn_BS.shape[1])

        def pad(x: torch.Tensor, dim_from_end: int) -> torch.Tensor:  # left-pad dimension -dim_from_end to width
            return F.pad(x, (0, 0) * (dim_from_end - 1) + (width - x.shape[-dim_from_end], 0))

        attn_BS = torch.cat([pad(a.attn_BS, 1), pad(b.attn_BS, 1)])
        first = int(attn_BS.any(0).int().argmax())  # the first column any row attends to
        jobs = a.jobs + b.jobs
        cache = new_cache(self.model, width - first + max(j.max_new_tokens - len(j.tokens) for j in jobs))
        for i, (la, lb) in enumerate(zip(a.cache.layers, b.cache.layers)):
            keys = torch.cat([pad(la.keys, 2), pad(lb.keys, 2)])[:, :, first:]  # (B, H, S, D)
            values = torch.cat([pad(la.values, 2), pad(lb.values, 2)])[:, :, first:]
            cache.update(keys, values, i)
        return _Batch(jobs, attn_BS[:, first:], cache, torch.cat([a.logits_BV, b.logits_BV]))

    def _step(self, batch: _Batch) -> None:
        """Draw every row's next token, settle the finished rows, and run the rest one step on."""
        tokens = self._pick(batch.logits_BV, batch.jobs)
        keep = [b for b, (job, token) in enumerate(zip(batch.jobs, tokens)) if not self._record(job, token)]
        if len(keep) < len(batch.jobs):
            keep_b = torch.tensor(keep, dtype=torch.long, device=self.device)
            if keep:
                batch.cache.batch_select_indices(keep_b)
            batch.jobs, batch.attn_BS = [batch.jobs[b] for b in keep], batch.attn_BS[keep_b]
            tokens = [tokens[b] for b in keep]
        if not batch.jobs:
            return
        self.batch_sizes[len(batch.jobs)] += 1
        batch.attn_BS = torch.cat([batch.attn_BS, batch.attn_BS.new_ones(len(keep), 1)], dim=1)
        token_B1 = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        positions_B1 = position_ids_from_mask(batch.attn_BS)[:, -1:]
        batch.logits_BV = self._forward(token_B1, batch.attn_BS, positions_B1, batch.cache)

    def _record(self, job: Job, token: int) -> bool:
        """Append ``token`` to the job; True (and the future resolved) when the job is done."""
        job.tokens.append(token)
        job.ended = token in job.end_ids or bool(job.text_stops) and self._stop_hit(job)
        if not job.ended and len(job.tokens) < job.max_new_tokens:
            return False
        job.future.set_result(Reply(list(job.tokens), job.ended))
        return True

    def _stop_hit(self, job: Job) -> bool:
        """Whether the newest tokens completed a stop string (only a window at the end is decoded:
        4 tokens per character plus slack, for byte-level tokens that split a character)."""
        window = 4 * max(map(len, job.text_stops)) + 8
        text = self.tokenizer.decode(job.tokens[-window:], skip_special_tokens=True)
        return any(s in text for s in job.text_stops)

    def _pick(self, logits_BV: torch.Tensor, jobs: list[Job]) -> list[int]:
        """Each row's next token: argmax at temperature 0, else ``sampling.draw``'s inverse-CDF draw
        over softmax(logits / T) (nucleus-truncated where top_p < 1) with the row's own generator."""
        tokens_B = logits_BV.argmax(-1)
        rows = [b for b, j in enumerate(jobs) if j.temperature > 0]
        if rows:
            rows_b = torch.tensor(rows, device=self.device)
            temps_b1 = torch.tensor([[jobs[b].temperature] for b in rows], device=self.device)
            scaled_bV = logits_BV[rows_b] / temps_b1
            probs_bV = scaled_bV.log_softmax(-1).exp()
            top_p = [jobs[b].top_p for b in rows]
            if min(top_p) < 1.0:
                cut_b1 = torch.tensor([[p if p < 1.0 else float("inf")] for p in top_p], device=self.device)
                truncated_bV = nucleus(scaled_bV, cut_b1).softmax(-1)
                probs_bV = torch.where(cut_b1 < 1.0, truncated_bV, probs_bV)
            u_b = torch.cat([torch.rand(1, generator=jobs[b].generator, device=self.device) for b in rows])
            tokens_B[rows_b] = draw(probs_bV, uniform_B1=u_b[:, None])
        return tokens_B.tolist()


def nucleus(logits_BV: torch.Tensor, top_p_B1: torch.Tensor) -> torch.Tensor:
    """Nucleus truncation (Holtzman et al. 2020) with a top_p per row: keep the most likely tokens
    whose mass reaches the row's top_p, -inf elsewhere (a row with top_p = inf keeps every token).
    The same arithmetic as the sampler's top-p, so a row's tokens match ``sampling.generate``'s."""
    sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
    probs_BV = sorted_BV.softmax(-1)
    drop_BV = probs_BV.cumsum(-1) - probs_BV >= top_p_B1  # mass before this token already reaches top_p
    return logits_BV.masked_fill(drop_BV.scatter(1, order_BV, drop_BV), float("-inf"))
