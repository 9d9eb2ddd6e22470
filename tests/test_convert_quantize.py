"""Quantizing with llama.cpp's own quantizer: the tensor-type recipe, file names, one intermediate, refusals.

The expected per-tensor types come from `llama_tensor_get_type_impl` in vendor/llama.cpp/src/llama-quant.cpp of
llama-cpp-python 0.3.36 (the version pyproject pins). For TINY (hidden 256, intermediate 512, 2 layers, 4 heads,
2 KV heads, vocab 32000, untied output):

* 1-D tensors (the norms) are never quantized (`tensor_allows_quantization`: `ggml_n_dims < 2`) → F32.
* `output.weight` (category OUTPUT): ne[0] = 256 is a multiple of QK_K and the default type is not Q8_0, so
  `new_type = GGML_TYPE_Q6_K` for every k-quant *and* for Q4_0 / Q5_K_M; Q8_0 keeps Q8_0.
* `token_embd.weight` (TOKEN_EMBD) only changes for IQ*/TQ* types, so it gets the default type.
* attn_v (ATTENTION_V) for Q4_K_M / Q5_K_M: Q6_K when `use_more_bits(i_attention_wv, n_attention_wv)`;
  ffn_down (FFN_DOWN) for Q4_K_M / Q5_K_M: Q6_K when `use_more_bits(i_layer, n_layer)`, where
  `use_more_bits(i, n) = i < n/8 || i >= 7*n/8 || (i - n/8) % 3 == 2`. With n = 2 (integer division):
  n/8 = 0, 7*n/8 = 1, so layer 0 → false, layer 1 → true. The counters follow the loader's weights_map, which is
  sorted by layer number (`weight_name_comparer`), so the file's tensor order does not matter.
* Everything else (attn_q, attn_k, attn_output, ffn_gate, ffn_up): the ftype's default type
  (`llama_ftype_get_default_type`: Q4_K_M → Q4_K, Q5_K_M → Q5_K, Q4_0 → Q4_0, Q8_0 → Q8_0). All their ne[0]
  (256 or 512) are multiples of 256, so `tensor_type_fallback` never applies.

Measured logits agreement with tests/reference_forward.py (32 positions, seed 0; seeds 1 and 2 in brackets):
Q8_0 top-1 0.97 [1.0, 0.875], rel err 0.019; Q4_K_M top-1 0.66 [0.75, 0.69], rel err 0.17 [0.17, 0.15].
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm
from reference_forward import mistral_logits

from synatra_local.convert.api import quantize
from synatra_local.convert.checkpoint import open_checkpoint
from synatra_local.convert.quantizer import read_unquantized
from synatra_local.convert.tiny import build_checkpoint
from synatra_local.core import llama_backend
from synatra_local.core.errors import SynatraError
from synatra_local.core.llama_backend import LlamaModel

STEM = "synatra-18m-v0.1"  # 17.6 M parameters → gguf's rounded notation "18M"
NORMS = ["output_norm.weight"] + [f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "ffn_norm")]
MATRICES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def recipe(default: str, *, more_bits: bool, output: str) -> dict[str, str]:
    """Expected type of every tensor; see the module docstring for the rules cited."""
    expected = dict.fromkeys(NORMS, "F32")
    expected["token_embd.weight"] = default
    expected["output.weight"] = output
    for layer in range(2):
        for matrix in MATRICES:
            expected[f"blk.{layer}.{matrix}.weight"] = default
    if more_bits:  # use_more_bits(1, 2) is true, use_more_bits(0, 2) false
        expected["blk.1.attn_v.weight"] = "Q6_K"
        expected["blk.1.ffn_down.weight"] = "Q6_K"
    return expected


EXPECTED_TYPES = {
    "Q4_K_M": recipe("Q4_K", more_bits=True, output="Q6_K"),
    "Q5_K_M": recipe("Q5_K", more_bits=True, output="Q6_K"),
    "Q4_0": recipe("Q4_0", more_bits=False, output="Q6_K"),
    "Q8_0": recipe("Q8_0", more_bits=False, output="Q8_0"),
}

_READERS: dict[Path, gguf.GGUFReader] = {}


def reader(path: Path) -> gguf.GGUFReader:
    """GGUFReader parses the 32000-token vocabulary slowly (~2 s), so each file is read once."""
    if path not in _READERS:
        _READERS[path] = gguf.GGUFReader(path)
    return _READERS[path]


def tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in reader(path).tensors}


def field(path: Path, key: str) -> object:
    found = reader(path).get_field(key)
    return None if found is None else found.contents()


def listing(folder: Path) -> list[str]:
    """Every entry of a folder, hidden ones included."""
    return sorted(os.listdir(folder))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("quantize") / "Synatra-V0.1-tiny", seed=0)


@pytest.fixture(scope="session")
def quantized(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """Q4_K_M and Q8_0 from the checkpoint, with every llama.cpp quantize call recorded."""
    out = tmp_path_factory.mktemp("quantized") / "models"
    calls: list[tuple[Path, bool, str]] = []
    real = llama_backend.quantize

    def spy(source: Path, output: Path, ftype: int, threads: int, **kwargs: object) -> None:
        calls.append((Path(source), Path(source).is_file(), Path(output).name))
        real(source, output, ftype, threads, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(llama_backend, "quantize", spy)
        paths = quantize(checkpoint, ["Q4_K_M", "Q8_0"], output_dir=out, threads=2)
    return out, paths, calls


@pytest.fixture(scope="session")
def kept(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("kept")
    return out, quantize(checkpoint, ["Q8_0"], output_dir=out, keep_intermediate=True, threads=2)


@pytest.fixture(scope="session")
def prompt_tokens(tokenizer_model: Path) -> list[int]:
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    return [1, *sp.encode("대한민국은 민주공화국이다. The quick brown fox jumps over 42 lazy dogs! 😀")]


def test_outputs_are_named_by_model_size_version_and_type(quantized) -> None:
    out, paths, _ = quantized
    assert paths == [out / f"{STEM}-Q4_K_M.gguf", out / f"{STEM}-Q8_0.gguf"]
    assert all(p.is_file() and p.read_bytes()[:4] == b"GGUF" for p in paths)


def test_one_intermediate_is_made_and_removed(quantized) -> None:
    out, _, calls = quantized
    assert len(calls) == 2
    for (_, _, written), final in zip(calls, [f"{STEM}-Q4_K_M.gguf", f"{STEM}-Q8_0.gguf"], strict=True):
        assert written.startswith(f".{final}") and ".part" in written, "llama.cpp writes a hidden partial file"
    sources = {c[0] for c in calls}
    assert len(sources) == 1, "both types must be made from one intermediate"
    assert all(c[1] for c in calls), "the intermediate existed while it was quantized"
    (intermediate,) = sources
    assert intermediate.parent == out
    assert not intermediate.exists()
    assert listing(out) == [f"{STEM}-Q4_K_M.gguf", f"{STEM}-Q8_0.gguf"], "no intermediate, partial or hidden file"


@pytest.mark.parametrize("type_name", ["Q4_K_M", "Q8_0"])
def test_tensor_types_follow_llama_cpp_recipe(quantized, type_name: str) -> None:
    out, _, _ = quantized
    path = out / f"{STEM}-{type_name}.gguf"
    assert tensor_types(path) == EXPECTED_TYPES[type_name]
    assert field(path, "general.file_type") == gguf.LlamaFileType[f"MOSTLY_{type_name}"]


def test_quantized_files_keep_converter_metadata(quantized, checkpoint: Path) -> None:
    out, _, _ = quantized
    path = out / f"{STEM}-Q4_K_M.gguf"
    assert field(path, "general.architecture") == "llama"
    assert field(path, "synatra.prompt_format") == "jinja"
    assert field(path, "general.license") == "cc-by-nc-4.0"
    template = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    assert field(path, "tokenizer.chat_template") == template


def test_keep_intermediate_keeps_the_f16_gguf(kept) -> None:
    out, paths = kept
    assert paths == [out / f"{STEM}-Q8_0.gguf", out / f"{STEM}-F16.gguf"]
    assert listing(out) == [f"{STEM}-F16.gguf", f"{STEM}-Q8_0.gguf"]
    assert (out / f"{STEM}-F16.gguf").read_bytes()[:4] == b"GGUF"


@pytest.fixture(scope="session")
def from_gguf(kept, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("from-gguf")
    return out, quantize(kept[0] / f"{STEM}-F16.gguf", ["Q5_K_M", "q4_0"], output_dir=out, threads=2)


def test_other_types_from_an_unquantized_gguf_are_named_canonically(from_gguf) -> None:
    out, paths = from_gguf
    assert paths == [out / f"{STEM}-Q5_K_M.gguf", out / f"{STEM}-Q4_0.gguf"]
    assert listing(out) == [f"{STEM}-Q4_0.gguf", f"{STEM}-Q5_K_M.gguf"]


@pytest.mark.parametrize("type_name", ["Q5_K_M", "Q4_0"])
def test_other_types_follow_llama_cpp_recipe(from_gguf, type_name: str) -> None:
    out, _ = from_gguf
    path = out / f"{STEM}-{type_name}.gguf"
    assert tensor_types(path) == EXPECTED_TYPES[type_name]
    assert field(path, "general.file_type") == gguf.LlamaFileType[f"MOSTLY_{type_name}"]


def test_already_quantized_gguf_is_refused(quantized, tmp_path: Path) -> None:
    out, _, _ = quantized
    with pytest.raises(SynatraError, match="already quantized") as caught:
        quantize(out / f"{STEM}-Q4_K_M.gguf", ["Q8_0"], output_dir=tmp_path, threads=2)
    assert "unquantized" in (caught.value.fix or "")
    assert listing(tmp_path) == []


def test_unknown_type_lists_valid_ones(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(SynatraError, match="Q9_X") as caught:
        quantize(checkpoint, ["Q4_K_M", "Q9_X"], output_dir=tmp_path / "out", threads=2)
    fix = caught.value.fix or ""
    for valid in ("Q4_K_M", "Q5_K_M", "Q8_0", "Q4_0", "Q6_K", "F16"):
        assert valid in fix
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_without_force(checkpoint: Path, tmp_path: Path) -> None:
    existing = tmp_path / f"{STEM}-Q8_0.gguf"
    existing.write_bytes(b"an older quantization")
    before = existing.stat().st_mtime_ns
    with pytest.raises(SynatraError, match="already exists") as caught:
        quantize(checkpoint, ["Q4_K_M", "Q8_0"], output_dir=tmp_path, threads=2)
    assert "--force" in (caught.value.fix or "")
    assert existing.read_bytes() == b"an older quantization"
    assert existing.stat().st_mtime_ns == before
    assert listing(tmp_path) == [existing.name], "nothing else may be written"


def _reference(checkpoint: Path, tokens: list[int]) -> np.ndarray:
    ckpt = open_checkpoint(checkpoint)
    weights = {n: np.asarray(t.load(), dtype=np.float32) for n, t in ckpt.tensors.items()}
    return mistral_logits(weights, ckpt.config, tokens)


def _llama_logits(path: Path, tokens: list[int]) -> np.ndarray:
    # Flash attention accumulates in F16 on the CPU, which can flip a near-tie of a random model's logits;
    # this proof is about the converted weights, so it uses llama.cpp's plain attention.
    model = LlamaModel(path, n_ctx=128, logits_all=True, n_threads=2, flash_attn=False)
    try:
        model.evaluate(tokens)
        return np.array(model.logits(), dtype=np.float64)
    finally:
        model.close()


@pytest.mark.parametrize(("type_name", "min_top1", "max_rel"), [("Q8_0", 0.8, 5e-2), ("Q4_K_M", 0.5, 0.3)])
def test_quantized_logits_still_follow_the_reference(
    quantized, checkpoint: Path, prompt_tokens: list[int], type_name: str, min_top1: float, max_rel: float
) -> None:
    out, _, _ = quantized
    expected = _reference(checkpoint, prompt_tokens)
    got = _llama_logits(out / f"{STEM}-{type_name}.gguf", prompt_tokens)
    top1 = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    rel = float(np.abs(got - expected).max() / np.abs(expected).max())
    assert top1 >= min_top1, f"{type_name}: top-1 agreement {top1:.3f}"
    assert rel < max_rel, f"{type_name}: relative error {rel:.3f}"


def test_already_quantized_message_names_the_quantized_tensors_type(tmp_path: Path) -> None:
    path = tmp_path / "mixed.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    q8 = gguf.quants.quantize(np.ones((2, 32), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SynatraError) as caught:
        read_unquantized(path)
    assert "token_embd.weight is Q8_0" in caught.value.message


def test_keep_intermediate_with_f16_type(checkpoint: Path, tmp_path: Path) -> None:
    paths = quantize(checkpoint, ["F16", "Q8_0"], output_dir=tmp_path, keep_intermediate=True, threads=2)
    assert tmp_path / f"{STEM}-F16.gguf" in paths and tmp_path / f"{STEM}-Q8_0.gguf" in paths
    assert listing(tmp_path) == [f"{STEM}-F16.gguf", f"{STEM}-Q8_0.gguf"]


class RecordingProgress:
    def __init__(self) -> None:
        self.steps: list[tuple[str, int | None, int]] = []

    def start(self, description: str, total: int | None) -> None:
        self.steps.append((description, total, 0))

    def advance(self, amount: int) -> None:
        description, total, done = self.steps[-1]
        self.steps[-1] = (description, total, done + amount)

    def finish(self) -> None:
        pass


def test_progress_reports_each_step_to_its_total(checkpoint: Path, tmp_path: Path) -> None:
    """Embedders get convert and quantize progress through their own Progress; each step ends at its total."""
    progress = RecordingProgress()
    quantize(checkpoint, ["Q8_0", "Q4_K_M"], output_dir=tmp_path, threads=2, progress=progress)
    names = [description for description, _, _ in progress.steps]
    assert names[0].startswith("convert") and names[1:] == [
        f"quantize → {STEM}-Q8_0.gguf",
        f"quantize → {STEM}-Q4_K_M.gguf",
    ]
    for description, total, done in progress.steps:
        assert total is not None and total > 0, description
        assert done == total, description
