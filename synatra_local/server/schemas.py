"""Request bodies as OpenAI defines them, and OpenAI-style error objects.

The models are strict (a string is not a number, `1` is not `true`) and ignore fields they do not know, as
OpenAI's own API does. `top_k`, `min_p` and `repeat_penalty` are llama.cpp-style extensions; a field left
out (or null) takes the engine's default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_STRINGS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class ContentPart(_Strict):
    """One part of a list-form message content; only `{"type": "text", "text": ...}` is supported."""

    type: str
    text: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


StopField = Annotated[str | list[str] | None, Field(description="Stop at any of these strings (not included).")]


class SamplingFields(_Strict):
    """What chat and text completions share."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(ge=0, le=1)] = None
    top_k: Annotated[int | None, Field(ge=0)] = None
    min_p: Annotated[float | None, Field(ge=0, le=1)] = None
    repeat_penalty: Annotated[float | None, Field(gt=0, le=10)] = None
    seed: int | None = None
    stop: StopField = None
    n: Annotated[int | None, Field(ge=1)] = None
    user: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    logprobs: bool | None = None
    tools: list[Any] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1)]
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    best_of: Annotated[int | None, Field(ge=1)] = None


FIELD_NAMES = frozenset(
    name
    for model in (ContentPart, ChatMessage, StreamOptions, ChatCompletionRequest, CompletionRequest)
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
