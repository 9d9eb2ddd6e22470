"""The model's tokenizer over HTTP: `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`.

Both common shapes are accepted: llama-server's (`{"content", "add_special", "with_pieces"}` → `{"tokens"}`,
`{"tokens"}` → `{"content"}`) and vLLM's, which lm-evaluation-harness's remote tokenizer speaks
(`{"prompt", "add_special_tokens"}` → `{"tokens", "count", "max_model_len"}`, `{"tokens"}` → `{"prompt"}`, and
`/tokenizer_info` with `eos_token`, `bos_token`, `chat_template`). Text is model input, as in a raw completion:
special-token strings (`</s>`) become those tokens, which is how lm-eval finds the end token's id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from synatra_local.core.errors import SynatraError

from .schemas import APIError, DetokenizeRequest, TokenizeRequest

if TYPE_CHECKING:
    from synatra_local.runtime.engine import Engine


def _piece(data: bytes) -> str | list[int]:
    """llama-server's `piece`: the text, or its bytes where a token is part of a character."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


def add_tokenizer(app: FastAPI, engine: Engine) -> None:
    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        if (body.content is None) == (body.prompt is None):
            raise APIError(400, "give the text as content (or prompt), once", param="content")
        if body.content is not None:
            text, add = body.content, bool(body.add_special or body.add_special_tokens)
        else:
            assert body.prompt is not None
            add = body.add_special_tokens if body.add_special_tokens is not None else body.add_special is not False
            text = body.prompt
        tokens = await run_in_threadpool(engine.tokenize, text, add_special=add)
        listed: list[Any] = tokens
        if body.with_pieces:
            listed = [{"id": token, "piece": _piece(engine.token_input_bytes(token))} for token in tokens]
        return {"tokens": listed, "count": len(tokens), "max_model_len": engine.n_ctx}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        try:
            text = engine.detokenize(body.tokens)
        except SynatraError as exc:
            raise APIError(400, str(exc), param="tokens") from exc
        return {"content": text, "prompt": text}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        return {
            "tokenizer_class": "llama.cpp",
            "bos_token": engine.bos_token,
            "eos_token": engine.eos_token,
            "pad_token": None,
            "add_bos_token": engine.adds_bos,
            "chat_template": engine.info.chat_template,
            "model_max_length": engine.n_ctx,
            "vocab_size": engine.n_vocab,
        }
