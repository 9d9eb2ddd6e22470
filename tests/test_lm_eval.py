"""lm-evaluation-harness itself (the real `lm_eval` package, its `local-completions` model) against a live
`synatra-local serve` on loopback: a local task in KoBEST BoolQ's format (a YAML and a jsonl written here, no
download), whose accuracy and every choice's log-likelihood must equal the same choices scored independently from
the model's logits (llama.cpp's logits of every position in one plain evaluation, log-softmax in numpy).

lm-eval tokenizes through the server (`tokenizer_backend=remote`: /tokenizer_info, /tokenize), sends token ids
in batches (`prompt` as lists of token lists), and reads `echo: true` prompt logprobs in the legacy shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lm_eval")

from synatra_local.core.llama_backend import LlamaModel  # noqa: E402
from synatra_local.runtime.engine import Engine  # noqa: E402
from synatra_local.server.app import create_app  # noqa: E402
from synatra_local.server.run import BackgroundServer  # noqa: E402

# Easy sentences for a task in KoBEST SentiNeg's format: (sentence, label) with label 1 = positive.
SENTIMENT_ITEMS = [
    ("I love this movie, it is wonderful.", 1), ("This is the worst meal I have ever eaten.", 0),
    ("What a beautiful, happy day!", 1), ("I hate waiting in this terrible line.", 0),
    ("The gift made me so happy.", 1), ("The service was awful and rude.", 0),
    ("She did a great job, I am proud of her.", 1), ("This broken phone is useless garbage.", 0),
    ("The concert was fantastic and fun.", 1), ("I feel sad and miserable today.", 0),
    ("Thank you, this is excellent work.", 1), ("The room was dirty and smelled bad.", 0),
    ("Our holiday was relaxing and lovely.", 1), ("The movie was boring and far too long.", 0),
    ("I am delighted with my new bike.", 1), ("This coffee tastes horrible.", 0),
    ("The kind nurse made everyone smile.", 1), ("The train was late again, what a disaster.", 0),
    ("This book is brilliant and inspiring.", 1), ("My order arrived damaged and the support was useless.", 0),
    ("The food was delicious and the staff were friendly.", 1), ("I regret buying this awful jacket.", 0),
    ("What a wonderful surprise party!", 1), ("The hotel was noisy, cold and unpleasant.", 0),
]
KOREAN_ITEMS = [
    ("서울은 대한민국의 수도이다.", "서울은 대한민국의 수도인가?", 1),
    ("물은 섭씨 100도에서 끓는다.", "물은 섭씨 10도에서 끓는가?", 0),
    ("고양이는 포유류이다.", "고양이는 포유류인가?", 1),
    ("일주일은 7일이다.", "일주일은 10일인가?", 0),
    ("한글은 세종대왕이 만들었다.", "한글은 세종대왕이 만들었나?", 1),
    ("겨울은 여름보다 춥다.", "겨울은 여름보다 더운가?", 0),
]
MODEL_ID = "synatra-local-test"


def write_task(folder: Path, name: str, docs: list[dict], *, text: str, choices: list[str]) -> None:
    """A task in KoBEST's format (its YAML keys, a `label` indexing `doc_to_choice`) over a local jsonl: nothing
    is downloaded."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs), encoding="utf-8")
    (folder / f"{name}.yaml").write_text("\n".join([
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data))}",
        "output_type: multiple_choice",
        "test_split: test",
        f"doc_to_text: {json.dumps(text, ensure_ascii=False)}",
        'doc_to_target: "{{label}}"',
        f"doc_to_choice: {json.dumps(choices, ensure_ascii=False)}",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
        "",
    ]), encoding="utf-8")


def boolq_docs(items: list[tuple[str, str, int]]) -> list[dict]:
    return [{"paragraph": paragraph, "question": question, "label": label} for paragraph, question, label in items]


# The Python API as a script: with only the local tasks indexed it starts in a second, where the command line
# first indexes lm-eval's thousands of built-in task files.
API_SCRIPT = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
model_args, names, include, out = json.loads(sys.argv[1])
results = lm_eval.simple_evaluate(model="local-completions", model_args=model_args, tasks=names, batch_size=4,
                                  task_manager=TaskManager(include_path=include, include_defaults=False))
found = {name: [results["results"][name]["acc,none"], [
    {"doc_id": s["doc_id"], "target": s["target"], "acc": s["acc"], "pairs": [list(a) for a in s["arguments"]],
     "logliks": [r[0][0] for r in s["resps"]]} for s in results["samples"][name]]] for name in names}
open(out, "w").write(json.dumps(found))
"""


def run_lm_eval(url: str, tasks: Path, names: list[str], out: Path, *, cli: bool) -> dict[str, tuple[float, list]]:
    """lm-eval's `local-completions` model against `url`, by its command line as a user runs it (`cli`) or by its
    Python API; each task's accuracy and its samples (`doc_id`, `target`, `acc`, `pairs` of context and
    continuation, the `logliks` it read from the server)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(out / "hf"), "HF_DATASETS_CACHE": str(out / "datasets"), "TOKENIZERS_PARALLELISM": "false"}
    model_args = f"model={MODEL_ID},base_url={url}/v1/completions,tokenizer_backend=remote,max_length=512,max_retries=1"
    if cli:
        command = [
            sys.executable, "-m", "lm_eval", "run", "--model", "local-completions", "--model_args", model_args,
            "--batch_size", "4", "--tasks", ",".join(names), "--include_path", str(tasks),
            "--output_path", str(out / "results"), "--log_samples",
        ]
    else:
        command = [sys.executable, "-c", API_SCRIPT, json.dumps([model_args, names, str(tasks), str(out / "found")])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    if not cli:
        found = json.loads((out / "found").read_text())
        return {name: (accuracy, samples) for name, (accuracy, samples) in found.items()}
    (results,) = (out / "results").rglob("results_*.json")
    accuracies = json.loads(results.read_text())["results"]
    found = {}
    for name in names:
        (logged,) = (out / "results").rglob(f"samples_{name}_*.jsonl")
        samples = []
        for line in logged.read_text().splitlines():
            sample = json.loads(line)
            samples.append({"doc_id": sample["doc_id"], "target": sample["target"], "acc": sample["acc"],
                            "pairs": [[a["arg_0"], a["arg_1"]] for a in sample["arguments"].values()],
                            "logliks": [float(r[0][0]) for r in sample["resps"]]})
        found[name] = accuracies[name]["acc,none"], samples
    return found


def independent_scores(model_path: Path, samples: list[dict]) -> dict[int, list[float]]:
    """Each doc's choices scored from the model's logits, outside the server: the same context/continuation split
    as lm-eval's (trailing spaces of the context go to the continuation; no BOS), the whole sequence evaluated in
    one context with every position's logits, log-softmax in float64, the continuation's log-probabilities summed."""
    model = LlamaModel(model_path, n_ctx=512, logits_all=True)
    scores: dict[int, list[float]] = {}
    try:
        for sample in samples:
            values = []
            for context, continuation in sample["pairs"]:
                spaces = len(context) - len(context.rstrip())
                if spaces:
                    context, continuation = context[:-spaces], context[-spaces:] + continuation
                whole = model.tokenize(context + continuation, add_bos=False, special=True)
                head = len(model.tokenize(context, add_bos=False, special=True))
                model.evaluate(whole)
                logits = model.logits().astype(np.float64)
                log_probs = logits - logits.max(axis=1, keepdims=True)
                log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
                values.append(float(sum(log_probs[i - 1, whole[i]] for i in range(head, len(whole)))))
            scores[sample["doc_id"]] = values
    finally:
        model.close()
    return scores


def check_against_logits(model_path: Path, accuracy: float, samples: list[dict]) -> None:
    scores = independent_scores(model_path, samples)
    picks = 0
    for sample in samples:
        theirs = sample["logliks"]
        ours = scores[sample["doc_id"]]
        assert np.allclose(theirs, ours, atol=2e-3, rtol=0), (sample["doc_id"], theirs, ours)
        picks += int(np.argmax(ours)) == int(sample["target"])
        assert sample["acc"] == float(int(np.argmax(ours)) == int(sample["target"])), (sample, ours)
    assert accuracy == pytest.approx(picks / len(samples))


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path]]:
    path: Path = request.getfixturevalue(request.param)
    engine = Engine(path, n_ctx=512, parallel=2)
    try:
        with BackgroundServer(create_app(engine, model_id=MODEL_ID)) as server:
            yield server.url, path
    finally:
        engine.close()


@pytest.mark.parametrize("served", ["tiny_gguf_v01"], indirect=True)
def test_kobest_format_task_on_random_weights_equals_the_engine_logits(served, tmp_path: Path) -> None:
    url, path = served
    write_task(tmp_path / "tasks", "ko_boolq_local", boolq_docs(KOREAN_ITEMS),
               text="{{paragraph}} 질문: {{question}} 답변: ", choices=["아니오", "예"])  # kobest_boolq's own
    [(accuracy, samples)] = run_lm_eval(url, tmp_path / "tasks", ["ko_boolq_local"], tmp_path, cli=False).values()
    assert len(samples) == len(KOREAN_ITEMS)
    check_against_logits(path, accuracy, samples)


@pytest.mark.parametrize("served", ["smollm2_gguf"], indirect=True)
def test_smollm2_scores_above_chance_and_equals_the_engine_logits(served, tmp_path: Path) -> None:
    """Real weights, lm-eval's command line: a binary task in KoBEST SentiNeg's format, in English (SmolLM2 reads
    little Korean). (Yes/no questions in BoolQ's format score at chance on this 135M model: it answers "no" to
    nearly all of them, so they prove nothing the random-weight test above does not.)"""
    url, path = served
    sentences = [{"sentence": sentence, "label": label} for sentence, label in SENTIMENT_ITEMS]
    write_task(tmp_path / "tasks", "en_sentineg_local", sentences,
               text="Sentence: {{sentence}} Sentiment:", choices=["negative", "positive"])  # kobest_sentineg's shape
    [(accuracy, samples)] = run_lm_eval(url, tmp_path / "tasks", ["en_sentineg_local"], tmp_path, cli=True).values()
    assert len(samples) == len(SENTIMENT_ITEMS)
    check_against_logits(path, accuracy, samples)
    print(f"SmolLM2-135M-Instruct Q4_1, {len(samples)} sentiment items: accuracy {accuracy:.3f}")
    assert accuracy >= 0.75  # chance is 0.5: 18 of 24 by luck has p < 0.012


@pytest.mark.parametrize("served", ["smollm2_gguf"], indirect=True)
def test_an_end_token_the_model_chooses_is_scored_too(served) -> None:
    """lm-eval's own request and parser: it drops the last logprob (the token generated with max_tokens 1), so one
    must be there even where the model would end its turn (an end token is no text, but it is a choice)."""
    import httpx
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    url, _ = served
    text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n2+2 is 4."
    ids = httpx.post(f"{url}/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    payload = LocalCompletionsAPI._create_payload(SimpleNamespace(model=MODEL_ID), [ids], generate=False)
    assert payload["echo"] is True and payload["max_tokens"] == 1
    reply = httpx.post(f"{url}/v1/completions", json=payload, timeout=60).json()
    choice = reply["choices"][0]
    assert choice["text"] == text and choice["finish_reason"] == "stop"  # the model chose <|im_end|>
    logprobs = choice["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1 and logprobs["tokens"][-1] == ""
    [(value, greedy)] = LocalCompletionsAPI.parse_logprobs(reply, ctxlens=[len(ids) - 3])
    assert value == pytest.approx(sum(logprobs["token_logprobs"][-4:-1]))
    assert isinstance(greedy, bool)


ROLLING_SCRIPT = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
model_args, name, include, out = json.loads(sys.argv[1])
results = lm_eval.simple_evaluate(model="local-completions", model_args=model_args, tasks=[name], batch_size=2,
                                  task_manager=TaskManager(include_path=include, include_defaults=False))
samples = [{"doc_id": s["doc_id"], "text": s["arguments"][0][0], "loglik": s["resps"][0][0]}
           for s in results["samples"][name]]
perplexity = results["results"][name]["word_perplexity,none"]
open(out, "w").write(json.dumps({"samples": samples, "word_perplexity": perplexity}))
"""


@pytest.mark.parametrize("served", ["tiny_gguf_v01"], indirect=True)
def test_rolling_loglikelihood_starts_from_the_bos_the_remote_tokenizer_names(served, tmp_path: Path) -> None:
    """Perplexity tasks (`loglikelihood_rolling`, wikitext's kind) score a whole text after lm-eval's prefix token,
    which its remote tokenizer takes as `encode(tokenizer_info["bos_token"])[0]`: the server must name BOS and its
    /tokenize must read that text as the one BOS id, or every text is scored after a stray "<". Each logged
    log-likelihood must equal the text scored after BOS from an independent `logits_all` evaluation."""
    url, path = served
    texts = ["대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
             "모든 국민은 법 앞에 평등하다."]
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = folder / "ko_rolling_local.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    (folder / "ko_rolling_local.yaml").write_text("\n".join([
        "task: ko_rolling_local", "dataset_path: json", "dataset_kwargs:", "  data_files:",
        f"    test: {json.dumps(str(data))}", "output_type: loglikelihood_rolling", "test_split: test",
        'doc_to_text: ""', 'doc_to_target: "{{text}}"', "metric_list:", "  - metric: word_perplexity",
        "metadata:", "  version: 1.0", "",
    ]), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "TOKENIZERS_PARALLELISM": "false"}
    model_args = f"model={MODEL_ID},base_url={url}/v1/completions,tokenizer_backend=remote,max_length=512,max_retries=1"
    out = tmp_path / "found"
    done = subprocess.run([sys.executable, "-c", ROLLING_SCRIPT,
                           json.dumps([model_args, "ko_rolling_local", str(folder), str(out)])],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    found = json.loads(out.read_text())
    assert len(found["samples"]) == len(texts)

    model = LlamaModel(path, n_ctx=512, logits_all=True)
    try:
        bos = model.tokenize("", add_bos=True, special=True)
        assert len(bos) == 1
        for sample in found["samples"]:
            whole = bos + model.tokenize(sample["text"], add_bos=False, special=True)
            model.evaluate(whole)
            logits = model.logits().astype(np.float64)
            log_probs = logits - logits.max(axis=1, keepdims=True)
            log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
            expected = float(sum(log_probs[i - 1, whole[i]] for i in range(1, len(whole))))
            assert sample["loglik"] == pytest.approx(expected, abs=2e-3), (sample["doc_id"], expected)
    finally:
        model.close()
    assert found["word_perplexity"] > 1
