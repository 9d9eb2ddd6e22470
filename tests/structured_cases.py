"""Shared by the structured-output tests: a schema with every supported feature, Korean included, and a minimal
llama.cpp sampling loop (llama-cpp-python's low-level API, independent of our engine) that generates under a GBNF.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp

# Nested objects, arrays with minItems/maxItems, enums (Korean), integers with minimum/maximum, booleans, numbers,
# required and optional fields, bounded strings, an anchored pattern, anyOf with null, a Korean property name.
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "사람",
    "type": "object",
    "properties": {
        "이름": {"type": "string", "minLength": 1, "maxLength": 8, "description": "한국어 이름"},
        "city": {"enum": ["서울", "부산", "대구", "인천"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "student": {"type": "boolean"},
        "height": {"type": "number"},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string", "minLength": 2, "maxLength": 10},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "floor": {"type": "integer", "minimum": -3, "maximum": 60},
            },
            "required": ["street", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"enum": ["친구", "가족", "동료"]}, "maxItems": 2},
        "note": {"anyOf": [{"type": "string", "maxLength": 8}, {"type": "null"}]},
        "contact": {"$ref": "#/$defs/contact"},
    },
    "required": ["이름", "city", "age", "student", "hobbies", "address"],
    "additionalProperties": False,
    "$defs": {
        "contact": {
            "type": "object",
            "properties": {"kind": {"const": "전화"}, "verified": {"type": ["boolean", "null"]}},
            "required": ["kind", "verified"],
        },
    },
}

PROMPT = "서울에 사는 가상의 사람 한 명을 JSON으로 소개해 줘. 이름, 도시, 나이, 취미, 주소를 넣어."


def validate(text: str, schema: dict[str, Any] | None) -> Any:
    """The reply parsed (strict JSON: no raw control characters) and validated; raises on any failure."""
    value = json.loads(text)
    if schema is None:
        assert isinstance(value, dict), text
    else:
        jsonschema.Draft202012Validator(schema).validate(value)
    return value


@dataclass
class Reply:
    text: str
    ended: bool  # an end-of-generation token came (the grammar was complete) before max_tokens
    tokens: int


class LowLevelModel:
    """A GGUF loaded with llama.cpp's C API; `generate` samples with a chain grammar → top-k → temp → dist(seed)."""

    def __init__(self, path: Path, n_ctx: int = 2048) -> None:
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert self.model, f"cannot load {path}"
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_threads = cparams.n_threads_batch = 1
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        assert self.ctx

    def grammar_sampler(self, gbnf: str) -> ctypes.c_void_p | None:
        """llama.cpp's own grammar parser: None when it rejects the grammar."""
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        return sampler or None

    def tokenize(self, text: str, *, special: bool, bos: bool = True) -> list[int]:
        data = text.encode()
        buffer = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, len(buffer), bos, special)
        assert n >= 0
        return list(buffer[:n])

    def token_for(self, text: str) -> int:
        """The token whose whole piece is `text` (a byte token for control characters)."""
        if not hasattr(self, "_by_piece"):
            self._by_piece: dict[bytes, int] = {}
            for token in range(llama_cpp.llama_vocab_n_tokens(self.vocab)):
                self._by_piece.setdefault(self.piece(token), token)
        return self._by_piece[text.encode()]

    def piece(self, token: int) -> bytes:
        """The token's text as the grammar sampler sees it (llama.cpp's cache renders control tokens too)."""
        buffer = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, True)
        assert n >= 0
        return buffer.raw[:n]

    def generate(
        self, prompt: str, gbnf: str | None, *, seed: int, max_tokens: int = 1024, special: bool = True,
        temperature: float = 0.9, top_k: int = 40,
    ) -> Reply:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        try:
            if gbnf is not None:
                grammar = self.grammar_sampler(gbnf)
                assert grammar is not None, "llama.cpp rejected the grammar"
                llama_cpp.llama_sampler_chain_add(chain, grammar)
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
            tokens = self.tokenize(prompt, special=special)
            out = bytearray()
            for step in range(max_tokens):
                array = (llama_cpp.llama_token * len(tokens))(*tokens)  # kept alive while the batch points to it
                status = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(array, len(tokens)))
                assert status == 0, f"llama_decode returned {status} at step {step}"
                token = llama_cpp.llama_sampler_sample(chain, self.ctx, -1)
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    return Reply(out.decode("utf-8"), True, step)
                out += self.piece(token)
                tokens = [token]
            return Reply(out.decode("utf-8", errors="replace"), False, max_tokens)
        finally:
            llama_cpp.llama_sampler_free(chain)

    def close(self) -> None:
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


def chatml(user: str) -> str:
    """SmolLM2's prompt (its template's default system turn included)."""
    return (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def synatra_v01(user: str) -> str:
    return f"[INST] {user} [\\INST] "
