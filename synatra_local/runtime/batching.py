"""Continuous batching: one thread owns the llama.cpp context and runs every sequence in one batch per step.

Each step puts the next token of every generating sequence and chunks of the prompts still being read into one
batch (as llama-server's slot scheduler does), calls `llama_decode` once, and samples each sequence from its own
logits row with its own sampler chain. A new request takes the free sequence whose cached tokens share the
longest prefix with its prompt, so a conversation's next turn evaluates only its new tokens. Requests wait in
arrival order while every sequence is busy. Everything a request sees (tokens, text, stats) is its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from synatra_local.core.llama_backend import BatchEntry, LlamaModel

if TYPE_CHECKING:
    from .engine import Job


ARRIVAL_QUIET = 0.005  # seconds without a new request after which an idle engine starts (see _gather_arrivals)
ARRIVAL_MAX = 0.02
TAIL_DELAY = 0.5  # seconds an engine with nothing but finished turns' ends waits for a request first (see _run)
TOP_WINDOW = 16.0  # nats below the best logit where token_logprob looks for the top alternatives first
# FLOPs a machine does in the time it copies a byte of KV cache: compute over memory bandwidth, some tens on CPUs
# (measured here: a 7B reads ~11 prompt tokens/s, ~160 GFLOP/s, and copies GB/s) and on GPUs alike
COPY_FLOPS_PER_BYTE = 32


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability under the model's own distribution before sampling, and the
    `top` most likely alternatives at that position (token id, bytes, logprob)."""

    id: int
    bytes: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()


def token_logprob(model: LlamaModel, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """Log-softmax of one logits row, vectorised; only the chosen token and the top `top` are looked up.

    One float32 pass (exp and a pairwise sum: errors near 1e-6, far below what a logprob is read for); the best
    `top` are looked for among the logits within TOP_WINDOW of the best first (a few dozen of tens of thousands),
    then in the whole row when fewer lie there."""
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak).sum()))
    best: tuple[tuple[int, bytes, float], ...] = ()
    if top:
        ids = np.flatnonzero(logits >= peak - TOP_WINDOW)
        if len(ids) < top:
            ids = np.arange(len(logits))
        if top < len(ids):
            ids = ids[np.argpartition(logits[ids], -top)[-top:]]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        best = tuple((int(i), model.token_bytes(int(i)), float(logits[i]) - log_total) for i in ids)
    return TokenLogprob(token, model.token_bytes(token), float(logits[token]) - log_total, best)


@dataclass
class _Slot:
    """One llama.cpp sequence: the tokens its KV cache holds, and what it is doing."""

    seq: int
    cached: list[int] = field(default_factory=list)
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # tokens still to evaluate (prompt, or a finished turn's end)
    next_token: int | None = None  # sampled, to be evaluated in the next step
    last_used: int = 0  # when its last job started, counted in jobs (the least recently used is taken first)

    @property
    def free(self) -> bool:
        return self.job is None and not self.pending


def copy_threshold(model: LlamaModel) -> int:
    """Shared prompt tokens from which copying them from another sequence beats reading them again. With a KV cache
    per sequence a copy moves that sequence's whole cache (its bytes); reading a token costs about two FLOPs per
    weight. A 7B at 512 tokens of context copies from 1 token on; SmolLM2 at 1,024 from 3."""
    per_sequence = model.kv_bytes / model.n_seq
    return max(1, math.ceil(COPY_FLOPS_PER_BYTE * per_sequence / (2 * model.n_params)))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class BatchScheduler:
    """The decoding thread and its sequences; `submit` queues a job, `cancel` of a job is seen within a step."""

    def __init__(self, model: LlamaModel, *, prefill_turn_end: bool = True) -> None:
        self._model = model
        self._prefill_turn_end = prefill_turn_end
        self._slots = [_Slot(seq) for seq in range(model.n_seq)]
        self._copy_min = copy_threshold(model)
        self._started = 0
        self._queue: deque[Job] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="synatra-decode", daemon=True)
        self._thread.start()

    # -- called from any thread --------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Sequences generating or reading a prompt now."""
        return sum(slot.job is not None for slot in self._slots)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def has_room(self) -> bool:
        """Whether a job submitted now would start at once (a sequence ending a turn counts as free)."""
        with self._wake:
            return not self._queue and any(slot.job is None for slot in self._slots)

    def submit(self, job: Job) -> None:
        with self._wake:
            if self._closing:
                raise RuntimeError("the engine is closed")
            self._queue.append(job)
            self._idle.clear()
            self._wake.notify()

    def poke(self) -> None:
        """Wake the thread (a job was cancelled)."""
        with self._wake:
            self._wake.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running and every finished turn's end is evaluated."""
        return self._idle.wait(timeout)

    def forget_all(self) -> None:
        """Empty every sequence's cache (waits until nothing runs; for benchmarks that share the context)."""
        self.wait_idle()
        with self._wake:
            for slot in self._slots:
                self._model.forget(slot.seq)
                slot.cached = []

    def cached_tokens(self, seq: int = 0) -> list[int]:
        return list(self._slots[seq].cached)

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    # -- the decoding thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    if not self._closing and not self._queue and not self.active:
                        if any(slot.pending for slot in self._slots):
                            # a finished turn's end is worth reading only while nothing else wants the engine: a
                            # request sent just after a reply would otherwise wait a whole step behind it
                            self._wake.wait(TAIL_DELAY)
                        while not self._closing and not self._queue and all(s.free for s in self._slots):
                            self._idle.set()
                            self._wake.wait()
                    if self._queue and not self.active:
                        self._gather_arrivals()
                    if self._closing:
                        break
                self._step()
        finally:
            for slot in self._slots:
                if slot.job is not None:
                    self._finish(slot, "cancelled")
            with self._wake:
                while self._queue:
                    self._queue.popleft().finish_unstarted(RuntimeError("the engine was closed"))
            self._idle.set()

    def _prefix_donor(self, slot: _Slot, job: Job, keep: int) -> tuple[_Slot, int] | None:
        """The sequence whose cache starts with the most of `job`'s prompt, and how many tokens of it, when copying
        it beats reading those tokens again (at least `_copy_min` more than `slot` keeps)."""
        if job.prompt_logprobs is not None:
            return None
        others = [other for other in self._slots if other is not slot and other.cached]
        if not others:
            return None
        shared = {other.seq: min(common_prefix(other.cached, job.tokens), len(job.tokens) - 1) for other in others}
        donor = max(others, key=lambda other: shared[other.seq])
        return (donor, shared[donor.seq]) if shared[donor.seq] - keep >= self._copy_min else None

    def _gather_arrivals(self) -> None:
        """With no request running, wait until none has come for ARRIVAL_QUIET seconds (ARRIVAL_MAX at most), so
        that requests sent together have their prompts read in the same first step instead of one step each."""
        deadline = time.monotonic() + ARRIVAL_MAX
        while not self._closing:
            seen = len(self._queue)
            self._wake.wait(min(ARRIVAL_QUIET, max(0.0, deadline - time.monotonic())))
            if len(self._queue) == seen or time.monotonic() >= deadline:
                return

    def _step(self) -> None:
        self._drop_cancelled()
        self._admit()
        entries: list[BatchEntry] = []
        sampled: list[tuple[_Slot, int]] = []  # slots to sample, with the batch index of their logits
        fed: list[tuple[_Slot, list[int]]] = []
        scored: list[tuple[_Slot, int, int]] = []  # prompts scored token by token: (slot, first position, batch index)
        # every generating sequence's next token is in; prompts share what is left of the batch
        budget = self._model.n_batch - sum(s.job is not None and s.next_token is not None for s in self._slots)
        # a finished turn's end waits while any request runs: beside other sequences it would cost llama.cpp a
        # pass over the weights of its own (ubatches take equal token counts from each sequence)
        serving = any(s.job is not None for s in self._slots)
        # in sequence order: with a KV cache per sequence, llama.cpp puts only runs of consecutive sequence ids,
        # in the order the batch lists them, into one pass over the weights (llama_batch_allocr::split_equal)
        for slot in self._slots:
            if slot.job is not None and slot.next_token is not None:
                sampled.append((slot, len(entries)))
                entries.append(BatchEntry(slot.next_token, len(slot.cached), slot.seq, True))
                continue
            if not slot.pending or budget <= 0 or (serving and slot.job is None):
                continue
            chunk, slot.pending = slot.pending[:budget], slot.pending[budget:]
            budget -= len(chunk)
            wants = slot.job is not None and not slot.pending
            # a scored prompt asks for every position's logits (llama.cpp allows an output row for each entry of a
            # batch: the context's n_outputs_max is left at 0, which means n_batch)
            every = slot.job is not None and slot.job.prompt_logprobs is not None
            start = len(slot.cached)
            if every:
                scored.append((slot, start, len(entries)))
            entries += [
                BatchEntry(token, start + i, slot.seq, every or (wants and i == len(chunk) - 1))
                for i, token in enumerate(chunk)
            ]
            fed.append((slot, chunk))
            if wants:
                sampled.append((slot, len(entries) - 1))
        if not entries:
            return
        try:
            self._model.decode(entries)
        except Exception as error:  # this batch's sequences are in an unknown state: start them afresh
            for slot in {s.seq: s for s in [s for s, _ in sampled] + [s for s, _ in fed]}.values():
                self._model.forget(slot.seq)
                slot.cached, slot.pending, slot.next_token = [], [], None
                if slot.job is not None:
                    self._finish(slot, "cancelled", error)
            return
        for slot, _ in sampled:
            if slot.next_token is not None:
                slot.cached.append(slot.next_token)
                slot.next_token = None
        for slot, chunk in fed:
            slot.cached += chunk
        for slot, start, index in scored:
            self._score_prompt(slot, start, index)
        for slot, index in sampled:
            try:
                self._sample(slot, index)
            except BaseException as error:  # noqa: BLE001 - the request's failure, raised where it is read
                if slot.job is not None:
                    self._finish(slot, "cancelled", error)

    def _score_prompt(self, slot: _Slot, start: int, index: int) -> None:
        """Each prompt token's log-probability given the tokens before it, from the rows of this chunk: the row at
        position p scores the prompt's token p + 1 (the last row scores the first generated token instead)."""
        job = slot.job
        assert job is not None and job.prompt_logprobs is not None
        for position in range(start, min(len(slot.cached), len(job.tokens) - 1)):
            row = self._model.logits_row(index + position - start)
            job.prompt_scores.append(token_logprob(self._model, row, job.tokens[position + 1], job.prompt_logprobs))

    def _sample(self, slot: _Slot, index: int) -> None:
        job = slot.job
        assert job is not None
        if not job.generate:  # the prompt only was asked for (its logprobs): nothing is sampled
            self._finish(slot, "max_tokens")
            return
        sampler = job.sampler
        logprob = None
        if job.options.logprobs is not None:  # the distribution before sampling, from the raw logits row
            logits = self._model.logits_row(index)
            token = sampler.sample(index)
            logprob = token_logprob(self._model, logits, token, job.options.logprobs)
        else:
            token = sampler.sample(index)
        reason = job.accept(token, logprob, len(slot.cached))
        if reason is None:
            slot.next_token = token
        else:
            self._finish(slot, reason)

    def _finish(self, slot: _Slot, reason: str, error: BaseException | None = None) -> None:
        job = slot.job
        assert job is not None
        slot.job, slot.next_token, slot.pending = None, None, []
        turn = job.finish(reason, error)  # the sequence's tokens as the conversation's next turn starts from them
        if (
            turn is not None
            and self._prefill_turn_end
            and reason in ("end_of_turn", "max_tokens")
            and len(turn) <= self._model.n_ctx
            and turn[: len(slot.cached)] == slot.cached
        ):
            # The last sampled token(s) are not in the KV cache yet; evaluating them now, after the reply was
            # shown, takes that work off the next turn's time to first token.
            slot.pending = turn[len(slot.cached) :]

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot, "cancelled")
        with self._wake:
            cancelled = [job for job in self._queue if job.cancelled]
            for job in cancelled:
                self._queue.remove(job)
        for job in cancelled:
            job.start(time.perf_counter())
            job.finish("cancelled", None)

    def _admit(self) -> None:
        """Queued jobs, in arrival order, each into the free sequence that serves it best (see `_choose`)."""
        while True:
            with self._wake:
                if not self._queue:
                    return
                job = self._queue[0]
                slot = self._choose(job)
                if slot is None:
                    return
                self._queue.popleft()
            self._start(slot, job)

    def _choose(self, job: Job) -> _Slot | None:
        """The free sequence whose cache this prompt continues furthest, unless that would throw away most of a
        cache the prompt shares only a header with: then a free one next to a busy one (busy sequences with
        consecutive ids are decoded in one pass over the weights, see `_step`), sharing the longest header, least
        recently used first. None while none is free. A sequence still evaluating a finished turn's end is free
        too: the job's own prompt evaluation takes over from the cached tokens, so it never waits a step."""
        candidates = [slot for slot in self._slots if slot.job is None]
        if not candidates:
            return None
        shared = {slot.seq: common_prefix(slot.cached + slot.pending, job.tokens) for slot in candidates}
        worth = [slot for slot in candidates if 2 * shared[slot.seq] >= len(slot.cached) + len(slot.pending)]
        if worth:
            return max(worth, key=lambda slot: (shared[slot.seq], -slot.last_used))
        busy = {slot.seq for slot in self._slots if slot.job is not None}
        return min(
            candidates,
            key=lambda slot: (not busy & {slot.seq - 1, slot.seq + 1}, -shared[slot.seq], slot.last_used),
        )

    def _start(self, slot: _Slot, job: Job) -> None:
        most = len(job.tokens) - 1  # at least one token is evaluated, for its logits
        keep = min(common_prefix(slot.cached, job.tokens), most)
        if job.prompt_logprobs is not None:  # every prompt position's logits are needed: nothing cached is reused
            keep = 0
        found = self._prefix_donor(slot, job, keep)
        if found is not None:  # another sequence holds more of this prompt (a shared system prompt): copy it
            donor, keep = found
            self._model.copy_prefix(donor.seq, slot.seq, keep)
            slot.cached = donor.cached[:keep]
        else:
            self._model.forget(slot.seq, keep)
            slot.cached = slot.cached[:keep]
        slot.pending = job.tokens[keep:]
        slot.next_token = None
        job.start(time.perf_counter(), evaluated=len(slot.pending))
        slot.job = job
        self._started += 1
        slot.last_used = self._started
