"""The OpenAI-compatible API over one Engine: `/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/health`,
and the tokenizer (`/tokenize`, `/detokenize`, `/tokenizer_info`: tokenizer.py).

Every refusal is a 4xx with OpenAI's error object `{"error": {"message", "type", "param", "code"}}`; request
validation errors are 400 (as OpenAI answers them), never FastAPI's default 422. A request is validated and its
prompt tokenized before any response header is sent, so a streamed request that cannot run still gets a 400.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synatra_local.core.errors import SynatraError
from synatra_local.runtime.limits import RANDOM_SEED

from .completions import (
    completion_logprobs,
    completion_prompts,
    echo_text,
    join_logprobs,
    prompt_logprobs,
    prompt_param,
    token_text,
)
from .scheduler import Scheduler
from .schemas import (
    MAX_STOP_STRINGS,
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
    error_body,
    param_path,
)
from .tokenizer import add_tokenizer
from .web import add_web, is_web_path

if TYPE_CHECKING:
    from synatra_local.runtime.batching import TokenLogprob
    from synatra_local.runtime.engine import Engine, Generation, GenerationOptions

logger = logging.getLogger("synatra_local.server")
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_TOKENS_CAP = 2048
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
OPEN_PATHS = frozenset({"/health"})
FINISH_REASONS = {"end_of_turn": "stop", "stop": "stop", "max_tokens": "length", "context_full": "length"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Streamed text goes out at most every 20 ms (50 events a second, about a screen refresh): a model faster than
# that gets a few tokens per event instead of paying the HTTP cost (~0.3 ms of event-loop CPU) for every token;
# a slower one (a 7B on a CPU) still gets one event per token.
DEFAULT_STREAM_INTERVAL = 0.02


def create_app(
    engine: Engine,
    *,
    model_id: str,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
    stream_interval: float = DEFAULT_STREAM_INTERVAL,
    web: bool = True,
) -> FastAPI:
    """The ASGI app serving `engine` as the one model `model_id`; run it with uvicorn (see `run.serve`).

    `stream_interval` (seconds) is the shortest time between two streamed events; text that comes faster is
    merged into the next event (0: one event per piece the engine yields). `web`: the chat page at `/` (web.py).
    """
    scheduler = Scheduler(engine)
    created = int(time.time())
    app = FastAPI(title="synatra-local", summary="OpenAI-compatible API over a local Synatra model")
    app.state.engine = engine
    app.state.scheduler = scheduler
    app.state.model_id = model_id
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    _install_error_handlers(app)
    add_tokenizer(app, engine)
    app.add_middleware(_LastResort)  # added last: the outermost of ours
    if web:
        add_web(app)

    def model_object() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "synatra-local"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_id,
            "busy": scheduler.busy,
            "parallel": engine.parallel,
            "active": scheduler.active,
            "waiting": scheduler.waiting,
            "served": scheduler.served,
            "cancelled": scheduler.cancelled,
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise APIError(
                404,
                f"The model {name!r} does not exist; this server has {model_id!r}",
                param="model",
                code="model_not_found",
            )
        return model_object()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        if body.n not in (None, 1):
            raise APIError(400, "n > 1 is not supported: this server returns one choice", param="n")
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if body.tools:
            raise APIError(400, "tools are not supported", param="tools")
        messages = _messages(body.messages)
        max_tokens, param = (
            (body.max_completion_tokens, "max_completion_tokens")
            if body.max_completion_tokens is not None
            else (body.max_tokens, "max_tokens")
        )
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        options = _options(body, max_tokens, param, max_tokens_cap, logprobs=logprobs)
        generation = await run_in_threadpool(_start, lambda: engine.stream(messages, options), "messages")
        _check_room(engine, generation, max_tokens, param)
        reply = _Reply("chatcmpl", model_id, generation.stats.prompt_tokens, logprobs=logprobs is not None)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _chat_events(scheduler, generation, reply, usage, stream_interval)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        [text] = await _collect(scheduler, [generation], request)
        return reply.chat_completion(text, generation)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        if body.n not in (None, 1) or (body.best_of or 1) > 1:
            raise APIError(400, "n and best_of > 1 are not supported: this server returns one choice", param="n")
        if body.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        prompts = completion_prompts(body)
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        options = _options(body, max(max_tokens, 1), "max_tokens", max_tokens_cap, logprobs=body.logprobs)
        scored = body.logprobs if body.echo else None  # echo with logprobs: the prompt's own tokens are scored

        def start(prompt: str | list[int]) -> Generation:
            return engine.complete(prompt, options, prompt_logprobs=scored, generate=max_tokens > 0)

        generations: list[Generation] = []
        try:
            for index, prompt in enumerate(prompts):
                generations.append(await run_in_threadpool(_start, lambda p=prompt: start(p),
                                                           prompt_param(prompts, index)))
                _check_room(engine, generations[-1], max_tokens, "max_tokens")
        except BaseException:
            for generation in generations:
                generation.close()
            raise
        echoes = [echo_text(engine, prompt) if body.echo else "" for prompt in prompts]
        reply = _Reply("cmpl", model_id, sum(g.stats.prompt_tokens for g in generations),
                       logprobs=body.logprobs is not None)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _completion_events(scheduler, generations[0], reply, usage, stream_interval, echoes[0], engine)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        texts = await _collect(scheduler, generations, request)
        return reply.text_completion(engine, texts, generations, echoes)

    return app


# -- requests ------------------------------------------------------------------------------------------------


def _messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """OpenAI messages as the engine's `{"role", "content"}` dicts (text parts joined; `developer` = system)."""
    result = []
    for index, message in enumerate(messages):
        content = message.content
        if content is None:
            if message.role != "assistant":
                raise APIError(400, f"message {index} has no content", param=f"messages[{index}].content")
            content = ""
        elif isinstance(content, list):
            texts = []
            for part_index, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise APIError(
                        400,
                        f"only text content is supported; message {index} has a {part.type!r} part",
                        param=f"messages[{index}].content[{part_index}]",
                    )
                texts.append(part.text)
            content = "".join(texts)
        role = "system" if message.role == "developer" else message.role
        result.append({"role": role, "content": content})
    return result


def _options(
    body: SamplingFields, max_tokens: int | None, param: str, cap: int, *, logprobs: int | None = None
) -> GenerationOptions:
    from synatra_local.runtime.engine import GenerationOptions

    if max_tokens is not None and max_tokens > cap:
        raise APIError(
            400, f"{param} is {max_tokens}; this server allows at most {cap}", param=param, code="invalid_value"
        )
    stop: list[str] = []
    if isinstance(body.stop, str):
        stop = [body.stop]
    elif body.stop is not None:
        stop = body.stop
    if len(stop) > MAX_STOP_STRINGS:
        raise APIError(400, f"at most {MAX_STOP_STRINGS} stop strings are supported", param="stop")
    given = {
        name: value
        for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")
        if (value := getattr(body, name)) is not None
    }
    # OpenAI takes any 64-bit seed; llama.cpp's are 0 ... 2^32-2 (all-ones means "random"). Mapped, not refused, so
    # that clients which send large or negative seeds still get the same text for the same seed.
    seed = None if body.seed is None else body.seed % RANDOM_SEED
    json, schema = _response_format(body.response_format)
    try:
        return GenerationOptions(
            max_tokens=max_tokens or cap, seed=seed, stop=tuple(s for s in stop if s), json=json, json_schema=schema,
            logprobs=logprobs, **given,
        )
    except SynatraError as exc:  # a schema the grammar converter cannot express, or an invalid one
        raise APIError(400, str(exc), param="response_format") from exc


def _response_format(value: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
    """OpenAI's `response_format` (and llama-server's flat json_schema form): (JSON at all, the schema)."""
    if value is None:
        return False, None
    from synatra_local.runtime.structured import response_format_schema

    try:
        return response_format_schema(value)
    except SynatraError as exc:
        raise APIError(400, str(exc), param="response_format") from exc


def _start(start: Callable[[], Generation], param: str) -> Generation:
    """Tokenize and check the prompt (in a worker thread: long prompts take a while); the engine is not taken."""
    try:
        generation = start()
    except SynatraError as exc:
        failure = _failure(exc)
        failure.param = param
        raise failure from exc
    return generation


def _check_room(engine: Engine, generation: Generation, max_tokens: int | None, param: str) -> None:
    """The prompt and the reply asked for must fit the context together (as OpenAI checks it)."""
    prompt_tokens = generation.stats.prompt_tokens
    if max_tokens is not None and prompt_tokens + max_tokens > engine.n_ctx:
        generation.close()
        raise APIError(
            400,
            f"This model's context holds {engine.n_ctx} tokens; you asked for {prompt_tokens + max_tokens} "
            f"({prompt_tokens} in the prompt, {max_tokens} for the reply). Lower {param} or shorten the prompt.",
            param=param,
            code="context_length_exceeded",
        )


# -- responses -----------------------------------------------------------------------------------------------


class _Reply:
    """The parts of one response that stay the same in every chunk."""

    def __init__(self, prefix: str, model_id: str, prompt_tokens: int, *, logprobs: bool = False) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model_id
        self.prompt_tokens = prompt_tokens
        self.logprobs = logprobs

    def usage(self, *generations: Generation) -> dict[str, int]:
        prompt = sum(g.stats.prompt_tokens for g in generations) or self.prompt_tokens
        completion = sum(g.stats.generated_tokens for g in generations)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def head(self, object_name: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def chat_completion(self, text: str, generation: Generation) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": chat_logprobs(generation.logprobs) if self.logprobs else None,
            "finish_reason": finish_reason(generation),
        }
        return {**self.head("chat.completion"), "choices": [choice], "usage": self.usage(generation)}

    def text_completion(
        self, engine: Engine, texts: list[str], generations: list[Generation], echoes: list[str]
    ) -> dict[str, Any]:
        """One choice per prompt, in order; with `echo` each text starts with its prompt (`echoes`, else "")."""
        choices = []
        for index, (text, generation, echo) in enumerate(zip(texts, generations, echoes, strict=True)):
            logprobs = None
            if self.logprobs:
                logprobs = completion_logprobs(generation.logprobs, len(echo))
                if generation.scores_prompt:
                    logprobs = join_logprobs(prompt_logprobs(engine, generation, echo), logprobs)
            choices.append({"index": index, "text": echo + text, "logprobs": logprobs,
                            "finish_reason": finish_reason(generation)})
        return {**self.head("text_completion"), "choices": choices, "usage": self.usage(*generations)}


def finish_reason(generation: Generation) -> str:
    return FINISH_REASONS.get(generation.stats.stop_reason or "", "stop")


def chat_logprobs(logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: each token's text, logprob, bytes and its top alternatives."""
    return {
        "content": [
            {
                "token": token_text(entry.bytes),
                "logprob": entry.logprob,
                "bytes": list(entry.bytes),
                "top_logprobs": [
                    {"token": token_text(data), "logprob": value, "bytes": list(data)} for _, data, value in entry.top
                ],
            }
            for entry in logprobs
        ],
        "refusal": None,
    }


# JSON escapes control characters itself; these three are line breaks to str.splitlines(), which some SSE clients
# (httpx's iter_lines) split on, so they are escaped too. Everything else stays as UTF-8, Korean included.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).translate(_LINE_BREAKS).encode()


def _event(data: dict[str, Any]) -> bytes:
    # Each event holds only whole characters (the engine yields only complete UTF-8 characters), so every event
    # is valid UTF-8 text on its own, and one line.
    return b"data: " + _dumps(data) + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"
_MARK = "\0"


def _text_chunks(template: bytes) -> Callable[[str], bytes]:
    """Text chunks are one JSON with only the text changing (many per reply): render the rest once."""
    before, after = template.rsplit(_dumps(_MARK), 1)

    def render(text: str) -> bytes:
        return before + _dumps(text) + after

    return render


async def _chat_events(
    scheduler: Scheduler, generation: Generation, reply: _Reply, include_usage: bool, interval: float
) -> AsyncIterator[bytes]:
    head = reply.head("chat.completion.chunk")

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return _event({**head, "choices": [choice]})

    content = _text_chunks(chunk({"content": _MARK}))

    try:
        yield chunk({"role": "assistant", "content": ""})
        async with aclosing(scheduler.pieces(generation, interval=interval)) as pieces:
            async for text, logprobs in pieces:
                yield chunk({"content": text}, logprobs=chat_logprobs(logprobs)) if reply.logprobs else content(text)
        yield chunk({}, finish_reason(generation))
        if include_usage:
            yield _event({**head, "choices": [], "usage": reply.usage(generation)})
    except Exception as exc:  # the headers are gone: report in-band, as OpenAI does
        yield _event(_failure(exc).body())
    yield DONE_EVENT


async def _completion_events(
    scheduler: Scheduler, generation: Generation, reply: _Reply, include_usage: bool, interval: float, echo: str,
    engine: Engine,
) -> AsyncIterator[bytes]:
    head = reply.head("text_completion")

    def chunk(text: str, finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return _event({**head, "choices": [choice]})

    content = _text_chunks(chunk(_MARK))
    sent = len(echo)

    def echoed() -> bytes:  # the prompt first, once it is read (its logprobs are known then)
        scored = generation.scores_prompt and reply.logprobs
        return chunk(echo, logprobs=prompt_logprobs(engine, generation, echo) if scored else None)

    try:
        async with aclosing(scheduler.pieces(generation, interval=interval)) as pieces:
            async for text, logprobs in pieces:
                if echo:
                    yield echoed()
                    echo = ""
                if reply.logprobs:
                    yield chunk(text, logprobs=completion_logprobs(logprobs, sent))
                else:
                    yield content(text)
                sent += len(text)
        if echo:
            yield echoed()
        yield chunk("", finish_reason(generation))
        if include_usage:
            yield _event({**head, "choices": [], "usage": reply.usage(generation)})
    except Exception as exc:
        yield _event(_failure(exc).body())
    yield DONE_EVENT


async def _collect(scheduler: Scheduler, generations: list[Generation], request: Request) -> list[str]:
    """Each whole reply (decoded together, up to the engine's `parallel`); a client that hangs up before they are
    done cancels them all."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        for generation in generations:
            generation.cancel()

    async def whole(generation: Generation) -> str:
        async with aclosing(scheduler.pieces(generation, interval=None)) as pieces:
            return "".join([text async for text, _ in pieces])

    watcher = asyncio.create_task(watch())
    try:
        return list(await asyncio.gather(*(whole(generation) for generation in generations)))
    finally:
        watcher.cancel()
        for generation in generations:  # one that failed ends the others too
            generation.cancel()


# -- errors --------------------------------------------------------------------------------------------------


def _failure(exc: Exception) -> APIError:
    from synatra_local.runtime.engine import ContextOverflow, EngineBusy
    from synatra_local.runtime.templates import ChatTemplateError

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextOverflow):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, ChatTemplateError):
        return APIError(400, str(exc), param="messages")
    if isinstance(exc, EngineBusy):
        return APIError(503, str(exc), type="server_error", code="model_busy")
    if isinstance(exc, SynatraError):
        return APIError(400, str(exc))
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        error = _failure(exc)
        return JSONResponse(error.body(), status_code=error.status)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        # a union field (content: text or parts) reports one error per alternative: the deepest one says most
        first = max(errors, key=lambda e: len(param_path(e.get("loc", ())) or ""), default=None)
        first = first or {"msg": "invalid request", "loc": (), "type": ""}
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", "")
            body = error_body(f"The body is not valid JSON: {detail}".rstrip(": "), code="invalid_json")
            return JSONResponse(body, status_code=400)
        param = param_path(first.get("loc", ()))
        message = f"{param}: {first['msg']}" if param else f"Invalid request: {first['msg']}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
        return JSONResponse(error_body(message, param=param, code=first.get("type")), status_code=400)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}"
        else:
            message = str(exc.detail)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(
            error_body(message, type=kind), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(SynatraError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


class _LastResort:
    """An exception nothing else handled: a JSON 500 that closes the connection, never a dropped keep-alive.

    Without it Starlette answers a plain-text 500 and re-raises, and uvicorn then closes the connection without
    `Connection: close`, so a client's next request on it fails too. No input is meant to get here (every
    expected failure is a 4xx above); this is for bugs, and it logs them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            logger.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if started:  # part of a response is out: nothing valid can follow on this connection
                raise
            body = error_body(f"internal error: {type(exc).__name__}", type="server_error")
            await JSONResponse(body, status_code=500, headers={"Connection": "close"})(scope, receive, send)


# -- the guard: API key and body size, before anything reads the request -------------------------------------


class _Guard:
    """Pure ASGI middleware: `Authorization: Bearer KEY` (except /health and the page) and the body size cap."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in OPEN_PATHS and not is_web_path(scope["path"]):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "Invalid API key" if given else "Missing API key: send Authorization: Bearer KEY"
                response = JSONResponse(
                    error_body(message, code="invalid_api_key"),
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _too_large(self.max_body_bytes)(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large_message(limit))
            return message

        return counting_receive


def _too_large_message(limit: int) -> str:
    return f"The request body is larger than this server accepts ({limit} bytes)"


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(error_body(_too_large_message(limit), code="request_too_large"), status_code=413)
