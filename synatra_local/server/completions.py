"""What `/v1/completions` answers beyond one text prompt, as OpenAI's legacy API and the clients built on it use it:
prompts as text or token ids, one or many (one choice each, `index` in order), and `echo` with the prompt's own
tokens scored (`logprobs`), which is how lm-evaluation-harness's `local-completions` model scores choices.

A prompt given as token ids is evaluated exactly as given (no BOS added, nothing re-tokenized).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .schemas import APIError, CompletionRequest

if TYPE_CHECKING:
    from synatra_local.runtime.batching import TokenLogprob
    from synatra_local.runtime.engine import Engine, Generation

Prompt = str | list[int]


def completion_prompts(body: CompletionRequest) -> list[Prompt]:
    """The request's prompts, each a text or a list of token ids (OpenAI's four forms of `prompt`)."""
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        return [list(prompt)]  # type: ignore[arg-type]
    prompts = list(prompt)
    if body.stream and len(prompts) > 1:
        raise APIError(400, "stream takes one prompt; send the others in requests of their own", param="stream")
    return prompts  # type: ignore[return-value]


def prompt_param(prompts: Sequence[Prompt], index: int) -> str:
    return "prompt" if len(prompts) == 1 else f"prompt[{index}]"


def token_text(data: bytes) -> str:
    """A token's text; a token that is part of a character (Korean byte fallback) shows its bytes as `\\xNN`."""
    return data.decode("utf-8", errors="backslashreplace")


def completion_logprobs(logprobs: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset (characters)."""
    text_offset, data = [], b""
    for entry in logprobs:
        text_offset.append(offset + len(data.decode("utf-8", errors="ignore")))
        data += entry.bytes
    return {
        "tokens": [token_text(entry.bytes) for entry in logprobs],
        "token_logprobs": [entry.logprob for entry in logprobs],
        "top_logprobs": [{token_text(d): value for _, d, value in entry.top} for entry in logprobs],
        "text_offset": text_offset,
    }


def echo_text(engine: Engine, prompt: Prompt) -> str:
    """The prompt as `echo` shows it: the text as given, or the ids' text (control tokens as their text)."""
    return prompt if isinstance(prompt, str) else engine.detokenize(prompt)


def prompt_logprobs(engine: Engine, generation: Generation, text: str) -> dict[str, Any]:
    """The prompt's tokens in the legacy shape; the first has no logprob (nothing before it), so its
    `token_logprobs` and `top_logprobs` are null, as OpenAI's echo gives them. `text_offset` counts characters of
    `text`: the tokens' own text may hold one more leading space (sentencepiece's dummy prefix) than `text`."""
    pieces = [engine.token_input_bytes(token) for token in generation.prompt]
    offsets, data = [], b""
    for piece in pieces:
        offsets.append(len(data.decode("utf-8", errors="ignore")))
        data += piece
    joined = data.decode("utf-8", errors="replace")
    shift = len(joined) - len(text) if joined.endswith(text) else 0
    scores = generation.prompt_logprobs
    return {
        "tokens": [token_text(piece) for piece in pieces],
        "token_logprobs": [None] + [entry.logprob for entry in scores],
        "top_logprobs": [None] + [{token_text(d): value for _, d, value in entry.top} for entry in scores],
        "text_offset": [max(0, offset - shift) for offset in offsets],
    }


def join_logprobs(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    return {key: first[key] + then[key] for key in first}
