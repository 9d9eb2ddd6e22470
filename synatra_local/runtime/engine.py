"""The runtime: a loaded Synatra GGUF that renders prompts with the right template and streams replies.

One generation runs at a time (others wait, or are refused with `busy="error"`); a generation can be
cancelled from any thread and stops within one token, leaving the model ready for the next request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from synatra_local.core import llama_backend
from synatra_local.core.errors import SynatraError
from synatra_local.core.gguf_info import ModelInfo, read_model_info
from synatra_local.core.model_meta import FormatDecision

from . import limits
from .detokenizer import StreamingDetokenizer
from .offload import OffloadPlan, plan_offload
from .prompts import PromptBuilder, model_template
from .stops import StopScanner
from .store import resolve_model
from .structured import json_grammar
from .templates import ChatTemplateError, Message, PromptTemplate
from .text_only import check_text

StopReason = Literal["end_of_turn", "stop", "max_tokens", "context_full", "cancelled"]


class EngineBusy(SynatraError):
    """Another generation is running and the engine was asked not to wait."""


class ContextOverflow(SynatraError):
    """The prompt does not fit the context window."""


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json: bool = False
    json_schema: dict | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty"):
            limits.check(name, getattr(self, name))
        limits.check_optional("seed", self.seed)
        if self.json or self.json_schema is not None:
            json_grammar(self.json_schema)  # a schema that cannot be enforced fails here, not mid-request


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


class Generation:
    """A streamed reply: iterate for text pieces; `stats` is complete once iteration ends."""

    def __init__(self, pieces: Iterator[str], stats: GenerationStats, cancel: threading.Event) -> None:
        self._pieces = pieces
        self.stats = stats
        self._cancel = cancel
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Engine:
    """A Synatra model loaded once, for many conversations; thread-safe, one generation at a time."""

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
        prefill_turn_end: bool = True,
        repack: bool = True,
        verbose: bool = False,
    ) -> None:
        limits.check("n_ctx", n_ctx)
        limits.check("batch", batch)
        limits.check_optional("threads", threads)
        llama_backend.set_verbose(verbose)
        self.path = resolve_model(model)
        self.info: ModelInfo = read_model_info(self.path)
        if self.info.context_length and self.info.context_length > 0:
            n_ctx = min(n_ctx, self.info.context_length)
        n_ctx = llama_backend.allocated_context(n_ctx)
        self.offload: OffloadPlan = plan_offload(self.info, gpu_layers, n_ctx=n_ctx)
        self._model = llama_backend.LlamaModel(
            self.path, n_ctx=n_ctx, n_threads=threads, n_batch=batch, n_gpu_layers=self.offload.layers, repack=repack
        )
        try:
            choice = model_template(self.info, self._model, template)
        except ChatTemplateError as exc:  # name the file whose template it is
            self._model.close()
            raise type(exc)(f"{self.path.name}: {exc.message}", fix=exc.fix) from exc
        self.template: PromptTemplate = choice.template
        self.template_decision: FormatDecision = choice.decision  # which rule chose the format, and why
        self._prompts = PromptBuilder(self._model, self.template)
        self._lock = threading.Lock()
        self._busy = busy
        self._prefill_turn_end = prefill_turn_end
        self._current: threading.Event | None = None

    @property
    def n_ctx(self) -> int:
        return self._model.n_ctx

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._prompts.tokens(messages))

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text `messages` become, as the model will see it."""
        return self._prompts.render(messages)

    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        return self._prompts.tokens(messages)

    def chat(self, messages: Sequence[Message], options: GenerationOptions | None = None) -> Reply:
        """The whole reply to a conversation, not streamed."""
        with self.stream(messages, options) as generation:
            text = "".join(generation)
        return Reply(text, generation.stats)

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
        self._check_fits(tokens, options)
        stats.prompt_tokens = len(tokens)
        cancel = threading.Event()
        pieces = self._generate(tokens, options, stats, cancel, (messages, prompt_text))
        return Generation(pieces, stats, cancel)

    def complete(self, prompt: str, options: GenerationOptions | None = None) -> Generation:
        """Raw completion of `prompt` text with no chat template (BOS added as the model asks).

        Unlike chat messages, the prompt is raw model input: special-token strings in it (`<s>`, `<|im_start|>`)
        become those tokens, as in llama-server's /completion.
        """
        options = options or GenerationOptions()
        check_text(prompt, "the prompt")
        tokens = self._model.tokenize(prompt, add_bos=self._model.adds_bos, special=True)
        self._check_fits(tokens, options)
        stats = GenerationStats(prompt_tokens=len(tokens))
        cancel = threading.Event()
        return Generation(self._generate(tokens, options, stats, cancel, None), stats, cancel)

    def cancel(self) -> None:
        """Stop the running generation (from any thread) within one token."""
        current = self._current
        if current is not None:
            current.set()

    def close(self) -> None:
        with self._lock:
            self._model.close()

    def _fit(self, messages: list[Message], options: GenerationOptions) -> tuple[list[Message], int]:
        dropped = 0
        budget = self.n_ctx - min(options.max_tokens, self.n_ctx // 2)
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        turns = messages[len(system) :]
        while len(turns) > 1 and len(self._prompts.tokens(system + turns)) > budget:
            turns = turns[2:]
            dropped += 1
        return system + turns, dropped

    def _check_fits(self, tokens: list[int], options: GenerationOptions) -> None:
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

    def _acquire(self) -> None:
        if self._busy == "error":
            if not self._lock.acquire(blocking=False):
                raise EngineBusy("the model is busy with another reply", fix="retry when it is done")
        else:
            self._lock.acquire()

    def _generate(
        self,
        tokens: list[int],
        options: GenerationOptions,
        stats: GenerationStats,
        cancel: threading.Event,
        turn: tuple[list[Message], str] | None,
    ) -> Iterator[str]:
        self._acquire()
        try:
            self._current = cancel
            yield from self._decode(tokens, options, stats, cancel, turn)
        finally:
            self._current = None
            self._lock.release()

    def _decode(
        self,
        tokens: list[int],
        options: GenerationOptions,
        stats: GenerationStats,
        cancel: threading.Event,
        turn: tuple[list[Message], str] | None,
    ) -> Iterator[str]:
        model = self._model
        model.set_seed(options.seed)
        sampling = llama_backend.SamplingParams(
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            min_p=options.min_p,
            repeat_penalty=options.repeat_penalty,
        )
        detokenizer = StreamingDetokenizer(model.token_bytes)
        scanner = StopScanner(tuple(options.stop) + self.template.stop_markers)
        markers = set(self.template.stop_markers)
        stats.prompt_tokens = len(tokens)
        started = time.perf_counter()
        evaluated_before = model.evaluated_tokens
        reply: list[int] = []
        end_token: int | None = None
        first = True
        stream = model.generate(tokens, sampling)
        try:
            for token in stream:
                if first:
                    first = False
                    stats.time_to_first_token = time.perf_counter() - started
                    stats.evaluated_prompt_tokens = model.evaluated_tokens - evaluated_before
                if cancel.is_set():
                    stats.stop_reason = "cancelled"
                    break
                if model.is_end_of_generation(token):
                    stats.stop_reason = "end_of_turn"
                    end_token = token
                    break
                piece = model.token_bytes(token)
                if not piece and model.token_text(token) in markers:
                    stats.stop_reason = "stop"
                    break
                reply.append(token)
                stats.generated_tokens += 1
                shown, hit = scanner.feed(detokenizer.add(token))
                if shown:
                    yield shown
                if hit:
                    stats.stop_reason = "stop"
                    break
                if stats.generated_tokens >= options.max_tokens:
                    stats.stop_reason = "max_tokens"
                    break
                if len(tokens) + len(reply) >= self.n_ctx:
                    stats.stop_reason = "context_full"
                    break
        finally:
            stream.close()
            stats.generation_seconds = time.perf_counter() - started
            if stats.stop_reason is None:
                stats.stop_reason = "cancelled"
        if stats.stop_reason != "stop":
            shown, _ = scanner.feed(detokenizer.flush())
            tail = shown + scanner.flush()
            if tail:
                yield tail
        if turn is not None and stats.stop_reason != "stop":
            messages, prompt_text = turn
            turn_tokens = self._prompts.remember(messages, prompt_text, detokenizer.text, tokens + reply, end_token)
            if self._prefill_turn_end and stats.stop_reason in ("end_of_turn", "max_tokens"):
                # The last sampled token(s) are not in the KV cache yet; evaluating them now, after the reply
                # was shown, takes that work off the next turn's time to first token.
                self._model.extend(turn_tokens)

