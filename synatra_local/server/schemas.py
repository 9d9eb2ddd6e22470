"""Request bodies as OpenAI defines them, and OpenAI-style error objects.

The models are strict (a string is not a number, `1` is not `true`) and ignore fields they do not know, as
OpenAI's own API does. `top_k`, `min_p` and `repeat_penalty` are llama.cpp-style extensions; a field left
out (or null) takes the engine's default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from synatra_local.runtime.limits import INT32_MAX, RANGES

MAX_STOP_STRINGS = 16
INT64 = (-(2**63), 2**63 - 1)  # OpenAI's seeds are 64-bit integers


def _unicode_text(value: str) -> str:
    """JSON can carry lone surrogates (`"\\ud800"`), which are no text: nothing could encode or tokenize them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = exc.start
        raise ValueError(f"not valid Unicode text: a lone surrogate {value[where]!r} at index {where}") from None
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]


def _bounds(name: str) -> Any:
    """The engine's own range for option `name` (runtime/limits.py), as pydantic bounds."""
    allowed = RANGES[name]
    low = {"gt": allowed.low} if allowed.low_open else {"ge": allowed.low}
    return Field(**low, le=allowed.high)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class ContentPart(_Strict):
    """One part of a list-form message content; only `{"type": "text", "text": ...}` is supported."""

    type: Text
    text: Text | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart] | None = None
    name: Text | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


StopField = Annotated[Text | list[Text] | None, Field(description="Stop at any of these strings (not included).")]


class SamplingFields(_Strict):
    """What chat and text completions share."""

    model: Text | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int | None, _bounds("max_tokens")] = None
    temperature: Annotated[float | None, _bounds("temperature")] = None
    top_p: Annotated[float | None, _bounds("top_p")] = None
    top_k: Annotated[int | None, _bounds("top_k")] = None
    min_p: Annotated[float | None, _bounds("min_p")] = None
    repeat_penalty: Annotated[float | None, _bounds("repeat_penalty")] = None
    seed: Annotated[int | None, Field(ge=INT64[0], le=INT64[1])] = None
    stop: StopField = None
    n: Annotated[int | None, Field(ge=1, le=INT32_MAX)] = None
    user: Text | None = None
    # OpenAI's {"type": "text" | "json_object" | "json_schema", ...}; checked by runtime/structured.py
    response_format: dict[str, Any] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int | None, _bounds("max_tokens")] = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int | None, _bounds("logprobs")] = None
    tools: list[Any] | None = None


TokenIds = Annotated[list[int], Field(min_length=1)]
Prompts = Text | Annotated[list[Text], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    # OpenAI's four forms: a text, texts, token ids, lists of token ids (one choice per prompt)
    prompt: Prompts
    # 0: nothing generated (with echo, only the prompt's tokens and their logprobs)
    max_tokens: Annotated[int | None, Field(ge=0, le=RANGES["max_tokens"].high)] = None
    echo: bool | None = None
    suffix: Text | None = None
    logprobs: Annotated[int | None, _bounds("logprobs")] = None
    best_of: Annotated[int | None, Field(ge=1, le=INT32_MAX)] = None


class TokenizeRequest(_Strict):
    content: Text | None = None  # llama-server
    prompt: Text | None = None  # vLLM
    add_special: bool | None = None  # llama-server's name (default false)
    add_special_tokens: bool | None = None  # vLLM's and Hugging Face's name (default true)
    with_pieces: bool = False


class DetokenizeRequest(_Strict):
    tokens: list[int]


FIELD_NAMES = frozenset(
    name
    for model in (ContentPart, ChatMessage, StreamOptions, ChatCompletionRequest, CompletionRequest, TokenizeRequest,
                  DetokenizeRequest)
    for name in model.model_fields
)


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class APIError(Exception):
    """A request the server refuses, answered with `status` and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def param_path(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """`("body", "messages", 0, "role")` → `messages[0].role`; pydantic's union tags (`str`, ...) are dropped."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in FIELD_NAMES:
            path += f".{part}" if path else part
    return path or None
