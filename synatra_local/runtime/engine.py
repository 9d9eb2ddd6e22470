"""The runtime: a loaded Synatra GGUF that renders prompts with the right template and streams replies.

`parallel` sequences share one llama.cpp context and are decoded together, one batch per step
(runtime/batching.py); more requests wait in arrival order (or are refused with `busy="error"`). A generation can
be cancelled from any thread and stops within one step, leaving its sequence ready for the next request.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from synatra_local.core import llama_backend
from synatra_local.core.errors import SynatraError
from synatra_local.core.gguf_info import ModelInfo, read_model_info
from synatra_local.core.model_meta import FormatDecision

from . import limits
from .batching import BatchScheduler, TokenLogprob
from .detokenizer import StreamingDetokenizer
from .offload import OffloadPlan, plan_offload
from .prompts import PromptBuilder, model_template
from .stops import StopScanner
from .store import resolve_model
from .structured import json_grammar
from .templates import ChatTemplateError, Message, PromptTemplate
from .text_only import check_text

StopReason = Literal["end_of_turn", "stop", "max_tokens", "context_full", "cancelled"]
KVType = Literal["f16", "q8_0", "q4_0"]


class EngineBusy(SynatraError):
    """Another generation is running and the engine was asked not to wait."""


class ContextOverflow(SynatraError):
    """The prompt does not fit the context window."""


@dataclass(frozen=True)
class GenerationOptions:
    """How one reply is sampled. `json`/`json_schema` constrain it to JSON (any object, or valid against the
    schema) through llama.cpp's grammar sampler; `grammar` takes GBNF directly. `logprobs` (0 … 20) records each
    token's log-probability and that many alternatives."""

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json: bool = False
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None
    logprobs: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty"):
            limits.check(name, getattr(self, name))
        limits.check_optional("seed", self.seed)
        limits.check_optional("logprobs", self.logprobs)
        if self.grammar is not None and (self.json or self.json_schema is not None):
            raise limits.OptionError("grammar and json/json_schema exclude each other", fix="give one of them")
        if self.json or self.json_schema is not None:
            self.constraint()  # an unsupported or invalid schema fails here, when the options are made

    def constraint(self) -> str | None:
        """The GBNF grammar the reply must follow, if any."""
        if self.grammar is not None:
            return self.grammar
        if self.json or self.json_schema is not None:
            return json_grammar(self.json_schema)
        return None


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    evaluated_prompt_tokens: int = 0
    generated_tokens: int = 0
    time_to_first_token: float = 0.0
    generation_seconds: float = 0.0
    stop_reason: StopReason | None = None
    dropped_turns: int = 0

    @property
    def tokens_per_second(self) -> float:
        decode_tokens = max(self.generated_tokens - 1, 0)
        decode_time = self.generation_seconds - self.time_to_first_token
        return decode_tokens / decode_time if decode_time > 0 and decode_tokens else 0.0


@dataclass
class Reply:
    text: str
    stats: GenerationStats
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


PieceCallback = Callable[[str, list[TokenLogprob]], None]
DoneCallback = Callable[[BaseException | None], None]


class Job:
    """One request inside the scheduler: its prompt, sampler and the per-token rules of a reply (end of turn,
    leaked turn markers, stop strings, max tokens, a full context), turning tokens into whole characters.

    Its methods run on the decoding thread; `on_piece`/`on_done` hand text to whoever consumes it.
    """

    def __init__(
        self,
        engine: Engine,
        tokens: list[int],
        options: GenerationOptions,
        stats: GenerationStats,
        turn: tuple[list[Message], str] | None,
        *,
        prompt_logprobs: int | None = None,
        generate: bool = True,
    ) -> None:
        model = engine._model
        self.tokens = tokens
        self.options = options
        # with `prompt_logprobs` (0 … 20), each prompt token after the first is scored given those before it, with
        # that many alternatives (`prompt_scores`); `generate=False` stops once the prompt is read
        self.prompt_logprobs = prompt_logprobs
        self.prompt_scores: list[TokenLogprob] = []
        self.generate = generate
        self.stats = stats
        self.sampler = model.sampler(_sampling(options), seed=options.seed, grammar=options.constraint())
        self.logprobs: list[TokenLogprob] = []
        self.reply: list[int] = []
        self._engine = engine
        self._turn = turn
        self._is_end = model.is_end_of_generation
        self._token_bytes = model.token_bytes
        self._token_text = model.token_text
        # a chat reply starts a text of its own (sentencepiece drops its leading space); a raw completion continues
        # the prompt's text, where a leading space is part of it
        self._strips_space = turn is not None
        self._detokenizer = StreamingDetokenizer(model.token_bytes, strip_leading_space=self._strips_space)
        self._scanner = StopScanner(tuple(options.stop) + engine.template.stop_markers)
        self._markers = frozenset(engine.template.stop_markers)
        self._cancel = threading.Event()
        self._held: list[TokenLogprob] = []
        self._logprob_bytes = 0
        self._end_token: int | None = None
        self._started = 0.0
        self._first = True
        self.on_piece: PieceCallback = lambda text, logprobs: None
        self.on_done: DoneCallback = lambda error: None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def start(self, now: float, evaluated: int = 0) -> None:
        self._started = now
        self.stats.evaluated_prompt_tokens = evaluated

    def accept(self, token: int, logprob: TokenLogprob | None, cached: int) -> StopReason | None:
        """Take one sampled token; the reason to stop, or None to go on (the token is then evaluated next)."""
        stats = self.stats
        if self._first:
            self._first = False
            stats.time_to_first_token = time.perf_counter() - self._started
        if self.cancelled:
            return "cancelled"
        if self._is_end(token):
            self._end_token = token
            self._keep_scored(logprob)
            return "end_of_turn"
        piece = self._token_bytes(token)
        if not piece and self._token_text(token) in self._markers:
            self._keep_scored(logprob)
            return "stop"
        self.reply.append(token)
        stats.generated_tokens += 1
        if logprob is not None:
            if self._strips_space and piece.startswith(b" ") and not self._logprob_bytes:
                # the reply's text drops sentencepiece's dummy-prefix space: so do the token's bytes
                top = tuple((i, data[1:] if i == token else data, value) for i, data, value in logprob.top)
                logprob = replace(logprob, bytes=logprob.bytes[1:], top=top)
            self._logprob_bytes += len(logprob.bytes)
            self._held.append(logprob)
        shown, hit = self._scanner.feed(self._detokenizer.add(token))
        if shown:
            self._emit(shown)
        if hit:
            return "stop"
        if stats.generated_tokens >= self.options.max_tokens:
            return "max_tokens"
        if len(self.tokens) + len(self.reply) >= self._engine.n_ctx:
            return "context_full"
        return None

    def _keep_scored(self, logprob: TokenLogprob | None) -> None:
        """A token that ends the reply is no text, but a scored prompt's client (lm-eval's loglikelihood) counts
        on one logprob per token the model chose, as OpenAI's echo gives it (`<|endoftext|>` included)."""
        if logprob is not None and self.prompt_logprobs is not None:
            self._held.append(logprob)

    def finish(self, reason: StopReason, error: BaseException | None) -> list[int] | None:
        """End the reply; returns the conversation's tokens as its next turn starts from them, if it has one."""
        self.stats.stop_reason = reason
        self.stats.generation_seconds = time.perf_counter() - self._started
        self.sampler.close()
        turn_tokens = None
        try:
            if error is None and reason != "stop":
                shown, _ = self._scanner.feed(self._detokenizer.flush())
                tail = shown + self._scanner.flush()
                if tail or self._held:
                    self._emit(tail)
            elif error is None and self._held and self.prompt_logprobs is not None:
                self._emit("")
            if error is None and self._turn is not None and reason != "stop":
                messages, prompt_text = self._turn
                turn_tokens = self._engine._prompts.remember(
                    messages, prompt_text, self._detokenizer.text, self.tokens + self.reply, self._end_token
                )
        finally:
            self.on_done(error)
        return turn_tokens

    def finish_unstarted(self, error: BaseException) -> None:
        self.stats.stop_reason = "cancelled"
        self.sampler.close()
        self.on_done(error)

    def _emit(self, text: str) -> None:
        held, self._held = self._held, []
        self.logprobs += held
        self.on_piece(text, held)


_END = object()


class Generation:
    """A streamed reply: iterate for text pieces (or `start` with callbacks); `stats` is complete at the end.

    Nothing runs until it is iterated or started; `close` cancels it if it is still running and waits for its
    end (one decoding step at most), so `stats` and `text` are final afterwards.
    """

    def __init__(self, engine: Engine, job: Job) -> None:
        self._engine = engine
        self._job = job
        self._done = threading.Event()
        self._submitted = False
        self.stats = job.stats
        self.text = ""

    @property
    def options(self) -> GenerationOptions:
        return self._job.options

    @property
    def logprobs(self) -> list[TokenLogprob]:
        """Each token's log-probability so far (with `GenerationOptions(logprobs=N)`)."""
        return self._job.logprobs

    @property
    def tokens(self) -> list[int]:
        return self._job.reply

    @property
    def prompt(self) -> list[int]:
        """The prompt's tokens, as evaluated."""
        return self._job.tokens

    @property
    def scores_prompt(self) -> bool:
        """Whether the prompt's tokens are scored (`complete(prompt_logprobs=N)`)."""
        return self._job.prompt_logprobs is not None

    @property
    def prompt_logprobs(self) -> list[TokenLogprob]:
        """Each prompt token after the first, scored given those before it (with `complete(prompt_logprobs=N)`);
        complete once the first piece of text (or the end) has arrived."""
        return self._job.prompt_scores

    def start(self, on_piece: PieceCallback, on_done: DoneCallback) -> None:
        """Run it, handing each piece of text (and its tokens' logprobs) to `on_piece` and the end to `on_done`,
        both called on the decoding thread. Raises EngineBusy at once if the engine may not queue it."""
        if self._submitted:
            raise RuntimeError("a generation runs once")

        def done(error: BaseException | None) -> None:
            try:
                on_done(error)
            finally:
                self._done.set()

        self._job.on_piece, self._job.on_done = on_piece, done
        self._engine._submit(self._job)
        self._submitted = True

    def __iter__(self) -> Iterator[str]:
        pieces: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.start(lambda text, logprobs: pieces.put(text), lambda error: pieces.put((_END, error)))
        try:
            while True:
                item = pieces.get()
                if isinstance(item, tuple):
                    if item[1] is not None:
                        raise item[1]
                    return
                assert isinstance(item, str)
                if item:
                    self.text += item
                    yield item
        finally:  # a reader that stops early (break, an exception, the iterator dropped) frees the sequence
            if not self._done.is_set():
                self.cancel()

    def cancel(self) -> None:
        self._job.cancel()
        self._engine._scheduler.poke()

    def close(self) -> None:
        if self._submitted and not self._done.is_set():
            self.cancel()
            self._done.wait()
        elif not self._submitted:
            self._job.sampler.close()

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sampling(options: GenerationOptions) -> llama_backend.SamplingParams:
    return llama_backend.SamplingParams(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        min_p=options.min_p,
        repeat_penalty=options.repeat_penalty,
    )


class Engine:
    """A Synatra model loaded once, for many conversations; thread-safe, `parallel` replies decoded together.

    `n_ctx` is each sequence's context: the KV cache holds `parallel` of them (`kv_bytes` says how much memory
    that is; `kv_type` q8_0 or q4_0 halves or quarters it).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        n_ctx: int = 4096,
        threads: int | None = None,
        batch: int = 512,
        gpu_layers: str | int = "auto",
        template: str | None = None,
        busy: Literal["wait", "error"] = "wait",
        parallel: int = 1,
        kv_type: KVType = "f16",
        prefill_turn_end: bool = True,
        repack: bool = True,
        verbose: bool = False,
    ) -> None:
        limits.check("n_ctx", n_ctx)
        limits.check("batch", batch)
        limits.check("parallel", parallel)
        limits.check_optional("threads", threads)
        llama_backend.set_verbose(verbose)
        self.path = resolve_model(model)
        self.info: ModelInfo = read_model_info(self.path)
        if self.info.context_length and self.info.context_length > 0:
            n_ctx = min(n_ctx, self.info.context_length)
        n_ctx = llama_backend.allocated_context(n_ctx)
        self.offload: OffloadPlan = plan_offload(self.info, gpu_layers, n_ctx=n_ctx * parallel)
        self._model = llama_backend.LlamaModel(
            self.path, n_ctx=n_ctx, n_threads=threads, n_batch=batch, n_gpu_layers=self.offload.layers,
            n_seq=parallel, kv_type=kv_type, repack=repack,
        )
        try:
            choice = model_template(self.info, self._model, template)
        except ChatTemplateError as exc:  # name the file whose template it is
            self._model.close()
            raise type(exc)(f"{self.path.name}: {exc.message}", fix=exc.fix) from exc
        self.template: PromptTemplate = choice.template
        self.template_decision: FormatDecision = choice.decision  # which rule chose the format, and why
        self.parallel = parallel
        self.kv_type = kv_type
        self._prompts = PromptBuilder(self._model, self.template, remember=4 * parallel)
        self._busy = busy
        self._jobs: set[Job] = set()
        self._jobs_lock = threading.Lock()
        self._scheduler = BatchScheduler(self._model, prefill_turn_end=prefill_turn_end)

    @property
    def n_ctx(self) -> int:
        """Each sequence's context, as llama.cpp allocated it."""
        return self._model.n_ctx

    @property
    def kv_bytes(self) -> int:
        return self._model.kv_bytes

    @property
    def active(self) -> int:
        """Replies being generated (or their prompts read) now."""
        return self._scheduler.active

    @property
    def waiting(self) -> int:
        """Replies queued for a free sequence."""
        return self._scheduler.waiting

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._prompts.tokens(messages))

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text `messages` become, as the model will see it."""
        return self._prompts.render(messages)

    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        return self._prompts.tokens(messages)

    def cached_tokens(self, sequence: int = 0) -> list[int]:
        """The tokens sequence `sequence`'s KV cache holds (for tests and diagnostics)."""
        return self._scheduler.cached_tokens(sequence)

    def forget_cache(self) -> None:
        """Empty every sequence's KV cache once nothing runs (the next prompts are evaluated in full)."""
        self._scheduler.forget_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (finished turns' ends included)."""
        return self._scheduler.wait_idle(timeout)

    def chat(self, messages: Sequence[Message], options: GenerationOptions | None = None) -> Reply:
        """The whole reply to a conversation, not streamed."""
        with self.stream(messages, options) as generation:
            text = "".join(generation)
        return Reply(text, generation.stats, list(generation.tokens), list(generation.logprobs))

    def stream(
        self,
        messages: Sequence[Message],
        options: GenerationOptions | None = None,
        *,
        trim_history: bool = False,
    ) -> Generation:
        """Stream the reply to `messages`; with `trim_history`, the oldest turns are dropped to fit."""
        options = options or GenerationOptions()
        stats = GenerationStats()
        messages = list(messages)
        if trim_history:
            messages, stats.dropped_turns = self._fit(messages, options)
        prompt_text, tokens = self._prompts.build(messages)
        self._check_fits(tokens)
        stats.prompt_tokens = len(tokens)
        return Generation(self, Job(self, tokens, options, stats, (messages, prompt_text)))

    def complete(
        self,
        prompt: str | Sequence[int],
        options: GenerationOptions | None = None,
        *,
        prompt_logprobs: int | None = None,
        generate: bool = True,
    ) -> Generation:
        """Raw completion of `prompt` with no chat template: text (BOS added as the model asks) or token ids,
        evaluated exactly as given (no BOS added).

        Unlike chat messages, the prompt is raw model input: special-token strings in it (`<s>`, `<|im_start|>`)
        become those tokens, as in llama-server's /completion. `prompt_logprobs` (0 … 20) scores every prompt token
        after the first given those before it, with that many alternatives (`generation.prompt_logprobs`), as
        lm-evaluation-harness needs for its loglikelihood tasks; `generate=False` stops once the prompt is read.
        """
        options = options or GenerationOptions()
        limits.check_optional("logprobs", prompt_logprobs)
        if isinstance(prompt, str):
            check_text(prompt, "the prompt")
            tokens = self._model.tokenize(prompt, add_bos=self._model.adds_bos, special=True)
        else:
            tokens = self.check_tokens(prompt)
        self._check_fits(tokens)
        stats = GenerationStats(prompt_tokens=len(tokens))
        job = Job(self, tokens, options, stats, None, prompt_logprobs=prompt_logprobs, generate=generate)
        return Generation(self, job)

    @property
    def n_vocab(self) -> int:
        return self._model.n_vocab

    def check_tokens(self, tokens: Sequence[int]) -> list[int]:
        """Token ids given by a client, as a list; one outside the vocabulary is a SynatraError naming it."""
        n_vocab = self._model.n_vocab
        for index, token in enumerate(tokens):
            if not 0 <= token < n_vocab:
                raise SynatraError(
                    f"token {token} (at index {index}) is not in this model's vocabulary of {n_vocab} tokens",
                    fix=f"give token ids from 0 to {n_vocab - 1}",
                )
        return list(tokens)

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """`text` as model input (special-token strings become those tokens); `add_special` adds BOS as the model
        asks (llama-server's /tokenize, Hugging Face's `add_special_tokens`)."""
        check_text(text, "the text")
        return self._model.tokenize(text, add_bos=add_special and self._model.adds_bos, special=True)

    def token_input_bytes(self, token: int) -> bytes:
        """A token's bytes as model input: control tokens as their text (`</s>`), which tokenize back to them."""
        return self._model.input_bytes(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of `tokens` as model input (control tokens as their text), as llama-server's /detokenize."""
        data = b"".join(self._model.input_bytes(token) for token in self.check_tokens(tokens))
        return data.decode("utf-8", errors="replace")

    @property
    def adds_bos(self) -> bool:
        """Whether the model asks for BOS before a text prompt (a token prompt gets none added)."""
        return self._model.adds_bos

    @property
    def bos_token(self) -> str | None:
        """The BOS token's text (`<s>`), None where the vocabulary has none."""
        return self._token_string(self._model.bos_id)

    @property
    def eos_token(self) -> str | None:
        return self._token_string(self._model.eos_id)

    def _token_string(self, token: int) -> str | None:
        return self._model.token_text(token) if 0 <= token < self._model.n_vocab else None

    def cancel(self) -> None:
        """Stop every running and queued generation (from any thread) within one step."""
        with self._jobs_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        self._scheduler.poke()

    def close(self) -> None:
        self.cancel()
        self._scheduler.close()
        self._model.close()

    def _submit(self, job: Job) -> None:
        if self._busy == "error" and not self._scheduler.has_room():
            raise EngineBusy("the model is busy with other replies", fix="retry when one is done")
        done = job.on_done

        def forget(error: BaseException | None) -> None:
            with self._jobs_lock:
                self._jobs.discard(job)
            done(error)

        job.on_done = forget
        with self._jobs_lock:
            self._jobs.add(job)
        self._scheduler.submit(job)

    def _fit(self, messages: list[Message], options: GenerationOptions) -> tuple[list[Message], int]:
        dropped = 0
        budget = self.n_ctx - min(options.max_tokens, self.n_ctx // 2)
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        turns = messages[len(system) :]
        while len(turns) > 1 and len(self._prompts.tokens(system + turns)) > budget:
            turns = turns[2:]
            dropped += 1
        return system + turns, dropped

    def _check_fits(self, tokens: list[int]) -> None:
        if not tokens:
            raise SynatraError(
                "the prompt is empty: this model adds no BOS token, so there is nothing to continue from",
                fix="give some prompt text",
            )
        if len(tokens) >= self.n_ctx:
            raise ContextOverflow(
                f"the prompt is {len(tokens)} tokens; the context holds {self.n_ctx}",
                fix="shorten the input or raise --ctx",
            )
