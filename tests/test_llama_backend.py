"""The llama.cpp boundary: model parameters the binding does not expose reach llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest

from synatra_local.core import llama_backend


@pytest.fixture(scope="module")
def tiny_q4_k_m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Q4_K weights are the ones llama.cpp repacks on x86 CPUs with AVX2."""
    from synatra_local.convert import quantize
    from synatra_local.convert.tiny import build_checkpoint

    root = tmp_path_factory.mktemp("repack")
    (path,) = quantize(build_checkpoint(root / "Synatra-V0.1-tiny"), ["Q4_K_M"], output_dir=root)
    return path


def _load_log(path: Path, capsys: pytest.CaptureFixture[str], **kwargs: bool) -> str:
    capsys.readouterr()
    llama_backend.set_verbose(True)
    try:
        llama_backend.LlamaModel(path, n_ctx=256, **kwargs).close()
    finally:
        llama_backend.set_verbose(False)
    return capsys.readouterr().err


def test_repack_is_llama_cpps_default_and_can_be_turned_off(
    tiny_q4_k_m: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repacked = _load_log(tiny_q4_k_m, capsys)
    plain = _load_log(tiny_q4_k_m, capsys, repack=False)
    assert "load_tensors" in repacked and "load_tensors" in plain
    if "AVX2 = 1" in llama_backend.system_info():
        assert "CPU_REPACK model buffer" in repacked
    assert "CPU_REPACK" not in plain
    assert "CPU_Mapped model buffer" in plain


def test_a_file_that_is_no_model_is_a_model_file_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(llama_backend.ModelFileError) as raised:
        llama_backend.LlamaModel(bad, n_ctx=256, repack=False)
    assert str(bad) in raised.value.message


def test_greedy_tokens_do_not_depend_on_the_weight_layout(tiny_q4_k_m: Path) -> None:
    sampling = llama_backend.SamplingParams(temperature=0.0)
    replies = []
    for repack in (True, False):
        model = llama_backend.LlamaModel(tiny_q4_k_m, n_ctx=256, repack=repack)
        prompt = model.tokenize("대한민국은 민주공화국이다.", add_bos=True, special=False)
        sampler = model.sampler(sampling, seed=None)
        tokens: list[int] = []
        model.decode([llama_backend.BatchEntry(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        while len(tokens) < 16:
            tokens.append(sampler.sample(-1))  # the batch's last entry
            model.decode([llama_backend.BatchEntry(tokens[-1], len(prompt) + len(tokens) - 1, 0, True)])
        replies.append(tokens)
        sampler.close()
        model.close()
    assert replies[0] == replies[1]


def test_the_attached_thread_pool_changes_nothing_but_who_runs_the_threads(
    tiny_q4_k_m: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every context gets a thread pool of its own (as llama-server's does); llama.cpp's logits are the same bits
    as with the pool ggml makes for each decode, and the pool is freed with the context."""
    rows = []
    for attached in (True, False):
        if not attached:
            monkeypatch.setattr(llama_backend, "_ggml_cpu", lambda: None)
        model = llama_backend.LlamaModel(tiny_q4_k_m, n_ctx=256, n_threads=2, logits_all=True)
        assert bool(model._threadpool._pool) is attached
        text = "대한민국은 민주공화국이다. 모든 권력은 국민으로부터 나온다."
        tokens = model.tokenize(text, add_bos=True, special=False)
        model.evaluate(tokens)
        rows.append(model.logits().copy())
        model.close()
        assert model._threadpool._pool is None
    assert (rows[0] == rows[1]).all()


def test_token_bytes_for_every_id_and_pieces_longer_than_the_buffer(tiny_q4_k_m: Path) -> None:
    model = llama_backend.LlamaModel(tiny_q4_k_m, n_ctx=256)
    try:
        pieces = [model.token_bytes(token) for token in range(model.n_vocab)]
        assert pieces == [model.token_bytes(token) for token in range(model.n_vocab)]  # from the cache
        long_ones = [token for token, piece in enumerate(pieces) if len(piece) > 3]
        assert long_ones
        for token in long_ones[:50]:
            assert model._piece(token, size=2) == pieces[token]  # asks again with the length llama.cpp gives
        hangul = model.tokenize("대한민국", add_bos=False, special=False)
        assert b"".join(pieces[t] for t in hangul).decode("utf-8").strip() == "대한민국"
    finally:
        model.close()


def test_llama_cpp_errors_are_quoted_in_ours(tiny_q4_k_m: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    data = tiny_q4_k_m.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(llama_backend.ModelFileError) as raised:
        llama_backend.LlamaModel(truncated, n_ctx=256)
    assert "not within the file bounds" in raised.value.message  # llama.cpp's own words, logged as an error
    assert any("not within the file bounds" in line for line in llama_backend.recent_errors())


def test_a_cpu_build_has_no_gpu_backend() -> None:
    if "CUDA" in llama_backend.system_info() or llama_backend.supports_gpu_offload():
        assert llama_backend.gpu_backends()
    else:
        assert llama_backend.gpu_backends() == []


_PERSON_SCHEMA = (
    '{"type": "object", "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer"}, '
    '"tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}, "required": ["name", "age", "tags"]}'
)


def _constrained(
    model: llama_backend.LlamaModel,
    params: llama_backend.SamplingParams,
    seed: int,
    shortlists: tuple[int, ...],
    spy: list[int],
) -> list[int]:
    """40 grammar-constrained tokens after a fixed prompt; `spy` collects each grammar pass's candidate count."""
    grammar = llama_backend.json_schema_to_gbnf(_PERSON_SCHEMA)
    sampler = model.sampler(params, seed=seed, grammar=grammar)
    sampler.SHORTLISTS = shortlists
    real_apply = sampler._apply

    def apply(target: object, candidates) -> int:
        if target is sampler._grammar:
            spy.append(len(candidates))
        return real_apply(target, candidates)

    sampler._apply = apply
    model.forget(0)
    prompt = model.tokenize("사람 한 명을 JSON으로: ", add_bos=True, special=False)
    model.decode([llama_backend.BatchEntry(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    tokens: list[int] = []
    while len(tokens) < 40 and not (tokens and model.is_end_of_generation(tokens[-1])):
        tokens.append(sampler.sample(-1))
        model.decode([llama_backend.BatchEntry(tokens[-1], len(prompt) + len(tokens) - 1, 0, True)])
    sampler.close()
    return tokens


@pytest.mark.parametrize("weights", ["random", "real"])
def test_the_grammar_shortlist_draws_what_the_whole_vocabulary_draws(
    weights: str, tiny_q4_k_m: Path, smollm2_gguf: Path
) -> None:
    """The re-draw reads the grammar over runs of the best candidates first; greedy and seeded draws equal
    whole-vocabulary ones."""
    model = llama_backend.LlamaModel(tiny_q4_k_m if weights == "random" else smollm2_gguf, n_ctx=256)
    whole_reads, shortlist_reads = 0, 0
    try:
        for params, seed in [
            (llama_backend.SamplingParams(temperature=0.0, repeat_penalty=1.1), 0),
            (llama_backend.SamplingParams(temperature=0.8), 7),
            (llama_backend.SamplingParams(temperature=1.2, top_k=5), 11),
        ]:
            spy_short: list[int] = []
            spy_whole: list[int] = []
            short = _constrained(model, params, seed, llama_backend.Sampler.SHORTLISTS, spy_short)
            whole = _constrained(model, params, seed, (), spy_whole)
            assert short == whole, params
            whole_reads += sum(n == model.n_vocab for n in spy_short)
            shortlist_reads += sum(1 < n < model.n_vocab for n in spy_short)
            assert sum(n == model.n_vocab for n in spy_whole) >= sum(n == model.n_vocab for n in spy_short)
    finally:
        model.close()
    assert shortlist_reads > whole_reads, "the shortlist serves most re-draws"


def _grammar_in_chain(model: llama_backend.LlamaModel, repeat_penalty: float, prompt: list[int], n: int) -> list[int]:
    """llama.cpp applying the grammar to every candidate of every step inside one chain (penalty → ban → grammar →
    greedy): the slow, plain reading of a constrained greedy draw, built here with the binding directly."""
    import math

    import llama_cpp

    grammar = llama_backend.json_schema_to_gbnf(_PERSON_SCHEMA).encode()
    banned = [t.id for t in model.special_tokens if t.control and not model.is_end_of_generation(t.id)]
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for sampler in (
        llama_cpp.llama_sampler_init_penalties(model.n_vocab, llama_backend.PENALTY_LAST_N, repeat_penalty, 0.0, 0.0),
        llama_cpp.llama_sampler_init_logit_bias(
            model.n_vocab, len(banned), (llama_cpp.llama_logit_bias * len(banned))(*[(t, -math.inf) for t in banned])
        ),
        llama_cpp.llama_sampler_init_grammar(model._vocab, grammar, b"root"),
        llama_cpp.llama_sampler_init_greedy(),
    ):
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    model.forget(0)
    model.decode([llama_backend.BatchEntry(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    tokens: list[int] = []
    try:
        while len(tokens) < n and not (tokens and model.is_end_of_generation(tokens[-1])):
            tokens.append(llama_cpp.llama_sampler_sample(chain, model._ctx.ctx, -1))
            model.decode([llama_backend.BatchEntry(tokens[-1], len(prompt) + len(tokens) - 1, 0, True)])
    finally:
        llama_cpp.llama_sampler_free(chain)
    return tokens


@pytest.mark.parametrize("repeat_penalty", [1.0, 1.5])
def test_a_constrained_greedy_draw_equals_the_grammar_applied_to_every_candidate(
    repeat_penalty: float, smollm2_gguf: Path
) -> None:
    """Drawing first and re-drawing only on refusal picks what llama.cpp picks with the grammar in the chain; with a
    repeat penalty too, whose history must hold the tokens chosen, never the refused first draws."""
    model = llama_backend.LlamaModel(smollm2_gguf, n_ctx=256)
    try:
        params = llama_backend.SamplingParams(temperature=0.0, repeat_penalty=repeat_penalty)
        refusals: list[int] = []
        ours = _constrained(model, params, 0, llama_backend.Sampler.SHORTLISTS, refusals)
        prompt = model.tokenize("사람 한 명을 JSON으로: ", add_bos=True, special=False)
        reference = _grammar_in_chain(model, repeat_penalty, prompt, 40)
    finally:
        model.close()
    assert ours == reference
    assert refusals, "some first draws were refused and re-drawn"
