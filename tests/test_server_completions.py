"""`/v1/completions` beyond one text prompt (server/completions.py): prompts as text or token ids, one or many, and
`echo` with the prompt's own tokens scored, checked against the model's logits from one plain evaluation (numpy
log-softmax), through a real uvicorn on loopback and the official `openai` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from synatra_local.core.llama_backend import LlamaModel  # noqa: E402
from synatra_local.runtime.engine import Engine  # noqa: E402
from synatra_local.server.app import create_app  # noqa: E402
from synatra_local.server.run import BackgroundServer  # noqa: E402

MODEL_ID = "synatra-tiny"
PROMPTS = ["Once upon a time", "안녕하세요, 오늘은", "The capital of Korea is"]
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}


@pytest.fixture(scope="module")
def engine(tiny_gguf_v01: Path) -> Iterator[Engine]:
    engine = Engine(tiny_gguf_v01, n_ctx=512, parallel=2, batch=64)  # long prompts take several steps
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine: Engine) -> Iterator[str]:
    with BackgroundServer(create_app(engine, model_id=MODEL_ID, stream_interval=0)) as server:
        yield server.url


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny_gguf_v01: Path) -> Iterator[LlamaModel]:
    model = LlamaModel(tiny_gguf_v01, n_ctx=512, n_batch=64, logits_all=True)  # the engine's steps
    yield model
    model.close()


def log_softmax(model: LlamaModel, tokens: list[int]) -> np.ndarray:
    model.evaluate(tokens)
    logits = model.logits().astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def test_token_prompts_are_evaluated_as_given(url: str, engine: Engine) -> None:
    for prompt in PROMPTS:
        ids = engine.tokenize(prompt, add_special=True)
        as_text = post(url, {"prompt": prompt, "max_tokens": 8, **GREEDY}).json()
        as_ids = post(url, {"prompt": ids, "max_tokens": 8, **GREEDY}).json()
        assert as_ids["choices"][0]["text"] == as_text["choices"][0]["text"]
        assert as_ids["usage"] == as_text["usage"]
    # no BOS is added to ids: without it the prompt is one token shorter
    bare = engine.tokenize(PROMPTS[0], add_special=False)
    assert post(url, {"prompt": bare, "max_tokens": 1}).json()["usage"]["prompt_tokens"] == len(bare)


def test_many_prompts_give_one_choice_each_in_order(url: str, engine: Engine, client: openai.OpenAI) -> None:
    alone = [post(url, {"prompt": p, "max_tokens": 6, **GREEDY}).json() for p in PROMPTS]
    texts = post(url, {"prompt": PROMPTS, "max_tokens": 6, **GREEDY}).json()
    ids = [engine.tokenize(p, add_special=True) for p in PROMPTS]
    tokens = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=6, temperature=0,
                                       extra_body={"repeat_penalty": 1.0})
    for batched in (texts, tokens.model_dump()):
        assert [c["index"] for c in batched["choices"]] == list(range(len(PROMPTS)))
        assert [c["text"] for c in batched["choices"]] == [a["choices"][0]["text"] for a in alone]
        assert batched["usage"]["prompt_tokens"] == sum(a["usage"]["prompt_tokens"] for a in alone)
        assert batched["usage"]["completion_tokens"] == sum(a["usage"]["completion_tokens"] for a in alone)


@pytest.mark.parametrize("max_tokens", [0, 1, 3])
def test_echo_scores_the_prompt_as_the_logits_do(url: str, engine: Engine, reference: LlamaModel,
                                                 max_tokens: int) -> None:
    ids = [engine.tokenize(p, add_special=True) for p in PROMPTS]
    reply = post(url, {"prompt": ids, "echo": True, "logprobs": 3, "max_tokens": max_tokens, **GREEDY}).json()
    for tokens, choice in zip(ids, reply["choices"], strict=True):
        logprobs = choice["logprobs"]
        assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
        generated = len(logprobs["tokens"]) - len(tokens)  # an end token the model chose counts too
        if choice["finish_reason"] == "length":
            assert generated == max_tokens
        else:
            assert 0 < generated <= max_tokens
        assert len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == len(logprobs["text_offset"])
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        expected = log_softmax(reference, tokens)
        for k in range(1, len(tokens)):
            assert logprobs["token_logprobs"][k] == pytest.approx(expected[k - 1, tokens[k]], abs=1e-3)
            top = logprobs["top_logprobs"][k]
            assert len(top) <= 3
            best = np.sort(expected[k - 1])[::-1][:3]
            assert sorted(top.values(), reverse=True) == pytest.approx(best[: len(top)], abs=1e-3)
        # the text is the prompt's, then the reply's; the offsets point into it
        text = choice["text"]
        assert text.startswith(engine.detokenize(tokens))
        assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
        for token, offset in zip(logprobs["tokens"][1:], logprobs["text_offset"][1:], strict=True):
            if "\\x" not in token:  # not part of a character (byte fallback)
                assert text[offset:].startswith(token), (text, offset, token)
    # a text prompt echoes as given; its tokens carry the same scores
    text_reply = post(url, {"prompt": PROMPTS[1], "echo": True, "logprobs": 3, "max_tokens": max_tokens, **GREEDY})
    choice = text_reply.json()["choices"][0]
    assert choice["text"].startswith(PROMPTS[1])
    assert choice["logprobs"]["token_logprobs"] == reply["choices"][1]["logprobs"]["token_logprobs"]


def test_echo_in_the_openai_client_and_in_a_stream(url: str, client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL_ID, prompt=PROMPTS[0], echo=True, logprobs=1, max_tokens=4,
                                      temperature=0, extra_body={"repeat_penalty": 1.0})
    logprobs = whole.choices[0].logprobs
    assert logprobs.token_logprobs[0] is None and all(v <= 0 for v in logprobs.token_logprobs[1:])
    chunks = list(client.completions.create(model=MODEL_ID, prompt=PROMPTS[0], echo=True, logprobs=1, max_tokens=4,
                                            temperature=0, extra_body={"repeat_penalty": 1.0}, stream=True))
    assert chunks[0].choices[0].text == PROMPTS[0]
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    streamed = [v for c in chunks if c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs]
    assert streamed == logprobs.token_logprobs
    echo_only = client.completions.create(model=MODEL_ID, prompt=PROMPTS[0], echo=True, max_tokens=0)
    assert echo_only.choices[0].text == PROMPTS[0] and echo_only.choices[0].logprobs is None
    assert echo_only.usage.completion_tokens == 0 and echo_only.choices[0].finish_reason == "length"
    scored_only = list(client.completions.create(model=MODEL_ID, prompt=PROMPTS[0], echo=True, logprobs=1,
                                                 max_tokens=0, stream=True))
    assert [c.choices[0].text for c in scored_only] == [PROMPTS[0], ""]
    assert scored_only[0].choices[0].logprobs.token_logprobs == logprobs.token_logprobs[: whole.usage.prompt_tokens]
    assert scored_only[-1].choices[0].finish_reason == "length"


def test_echo_requests_from_many_clients_at_once(url: str, engine: Engine, reference: LlamaModel) -> None:
    """Prompt scoring shares the batch with other sequences' prompts and replies: every score stays its own."""
    import concurrent.futures

    ids = [engine.tokenize(" ".join([p] * 24), add_special=True) for p in PROMPTS]
    assert all(64 < len(tokens) < 500 for tokens in ids)  # each prompt is read in several steps of 64
    bodies = [{"prompt": tokens, "echo": True, "logprobs": 1, "max_tokens": 2, **GREEDY} for tokens in ids]
    bodies += [{"prompt": p, "max_tokens": 12, "temperature": 0.8, "seed": 3} for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda body: post(url, body).json(), bodies))
    for tokens, reply in zip(ids, replies, strict=False):
        expected = log_softmax(reference, tokens)
        got = reply["choices"][0]["logprobs"]["token_logprobs"][1 : len(tokens)]
        # Where a prompt's steps start depends on what the other sequences put in the same batch, and llama.cpp's
        # logits after a step boundary differ by up to ~0.03 on this random model (the same tokens read in steps of
        # 64 or 512 alone differ as much); a row off by one position is off by nats.
        assert got == pytest.approx([expected[k - 1, tokens[k]] for k in range(1, len(tokens))], abs=0.06)
    json.dumps(replies)
