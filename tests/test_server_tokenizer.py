"""The tokenizer over HTTP (server/tokenizer.py) in llama-server's and vLLM's shapes, the latter as
lm-evaluation-harness's remote tokenizer (`lm_eval.utils.RemoteTokenizer`, the real one) reads them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from synatra_local.core.llama_backend import LlamaModel  # noqa: E402
from synatra_local.runtime.engine import Engine  # noqa: E402
from synatra_local.server.app import create_app  # noqa: E402
from synatra_local.server.run import BackgroundServer  # noqa: E402

TEXTS = ["Hello world", "안녕하세요, 반갑습니다!", "  spaces\nand\tlines  ", "a</s>b<s>", "😀 emoji"]


@pytest.fixture(scope="module")
def engine(tiny_gguf_v01: Path) -> Iterator[Engine]:
    engine = Engine(tiny_gguf_v01, n_ctx=256)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine: Engine) -> Iterator[str]:
    with BackgroundServer(create_app(engine, model_id="tiny", api_key="k")) as server:
        yield server.url


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer k"}, timeout=30) as client:
        yield client


def test_tokenize_in_both_shapes_equals_llama_cpp(http: httpx.Client, tiny_gguf_v01: Path) -> None:
    model = LlamaModel(tiny_gguf_v01, n_ctx=256)
    try:
        for text in TEXTS:
            plain = model.tokenize(text, add_bos=False, special=True)
            with_bos = model.tokenize(text, add_bos=True, special=True)
            assert http.post("/tokenize", json={"content": text}).json()["tokens"] == plain  # llama-server
            assert http.post("/tokenize", json={"content": text, "add_special": True}).json()["tokens"] == with_bos
            vllm = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
            assert vllm == {"tokens": plain, "count": len(plain), "max_model_len": 256}
            assert http.post("/tokenize", json={"prompt": text}).json()["tokens"] == with_bos  # vLLM's default
            pieces = http.post("/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
            assert [p["id"] for p in pieces] == plain
            data = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
            assert data == b"".join(model.input_bytes(t) for t in plain)
            # the text comes back in both shapes (sentencepiece's leading space aside; it also puts one before the
            # text after each special token, as llama.cpp tokenizes it)
            back = http.post("/detokenize", json={"tokens": plain}).json()
            assert back["content"] == back["prompt"]
            assert back["content"].lstrip(" ") == (text.lstrip(" ") if "<" not in text else "a</s> b<s>")
        assert http.post("/tokenize", json={"content": "</s>"}).json()["tokens"] == [model.eos_id]
    finally:
        model.close()


def test_tokenizer_info_and_lm_evals_remote_tokenizer(url: str, engine: Engine) -> None:
    info = httpx.get(f"{url}/tokenizer_info", headers={"Authorization": "Bearer k"}).json()
    assert info["eos_token"] == "</s>" and info["bos_token"] == "<s>" and info["add_bos_token"] is True
    assert info["model_max_length"] == 256 and info["vocab_size"] == engine.n_vocab
    utils = pytest.importorskip("lm_eval.utils")
    assert utils.check_remote_tokenizer_support(f"{url}/v1/completions", auth_token="k")
    remote = utils.RemoteTokenizer(f"{url}/v1/completions", auth_token="k")
    assert remote.eos_token_id == 2 and remote.bos_token_id == 1
    assert remote.encode("Hello world") == engine.tokenize("Hello world")
    assert remote.decode(engine.tokenize("반갑습니다")).strip() == "반갑습니다"


def test_bad_tokenizer_requests_get_400(http: httpx.Client, url: str) -> None:
    for path, body, param in [
        ("/tokenize", {}, "content"),
        ("/tokenize", {"content": "a", "prompt": "b"}, "content"),
        ("/tokenize", {"content": 5}, "content"),
        ("/tokenize", {"content": "\ud800"}, "content"),
        ("/detokenize", {"tokens": [1, 10**7]}, "tokens"),
        ("/detokenize", {"tokens": [-3]}, "tokens"),
        ("/detokenize", {"tokens": "1 2"}, "tokens"),
    ]:
        # ASCII escapes: a lone surrogate travels as JSON carries it
        response = http.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, response.text
    assert httpx.post(f"{url}/tokenize", json={"content": "a"}).status_code == 401  # the key guards it
