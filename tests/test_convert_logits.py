"""llama.cpp, running a converted GGUF, computes the same logits as an independent numpy Mistral forward pass.

`tests/reference_forward.py` works in Hugging Face's layout (rotate-half rope, q/k rows not permuted) from the
checkpoint's own tensors, so agreement at every position proves the q/k permutation, the tensor-name mapping,
the hyperparameters (eps, rope theta, head counts) and the dtype conversions. All tiny checkpoints use grouped-
query attention: TINY has 4 query heads sharing 2 KV heads (group 2), and one case uses Mistral-7B's ratio of
4 (8 query heads, 2 KV heads).

Measured on the tiny random models (1 BOS + 31 prompt tokens, seeds 7-10), relative error =
max|llama.cpp - reference| / max|reference|:
    F32 output, all four layouts: top-1 agreement 1.0, rel err 2.5e-4 .. 3.7e-4 (llama.cpp's KV cache is F16)
    F32 output, 8 query / 2 KV heads: top-1 1.0, rel err 2.8e-4
    F16 output: top-1 1.0, rel err <= 5.4e-4
    BF16 output: top-1 >= 0.969, rel err <= 5.7e-3
    Q8_0 output (the converter's own Q8_0): top-1 >= 0.9375, rel err <= 2.1e-2
    F32 output with the q/k permutation disabled (negative control): top-1 0.5, rel err 0.39
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm
from reference_forward import mistral_logits

from synatra_local.convert import gguf_export
from synatra_local.convert.api import convert
from synatra_local.convert.checkpoint import open_checkpoint
from synatra_local.convert.tensors import bf16_bits_to_f32
from synatra_local.convert.tiny import ModelShape, build_checkpoint
from synatra_local.core.llama_backend import LlamaModel

PROMPT = "대한민국은 민주공화국이다. The quick brown fox jumps over 42 lazy dogs! 😀"
F32_TOLERANCE = 1e-2
# Looser tolerances for 16-bit and 8-bit outputs, set from the measurements in the module docstring.
LOOSE = {
    # outtype: (minimum top-1 agreement, maximum relative error)
    "f16": (0.95, 5e-3),
    "bf16": (0.9, 3e-2),
    "q8_0": (0.85, 6e-2),
}
FILE_TYPES = {
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}


@dataclass(frozen=True)
class Layout:
    weights: str
    dtype: str
    shards: int

    @property
    def id(self) -> str:
        return f"{self.weights}-{self.dtype}-{self.shards}shard"


LAYOUTS = [
    Layout("bin", "F16", 2),
    Layout("safetensors", "BF16", 1),
    Layout("bin", "F32", 1),
    Layout("safetensors", "F16", 3),
]


@pytest.fixture(scope="session")
def prompt_tokens(tokenizer_model: Path) -> list[int]:
    tokens = [1, *spm.SentencePieceProcessor(model_file=str(tokenizer_model)).encode(PROMPT)]
    assert len(tokens) >= 24
    return tokens


@pytest.fixture(scope="session")
def logits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logits")


def reference_logits(folder: Path, tokens: list[int]) -> np.ndarray:
    checkpoint = open_checkpoint(folder)
    weights = {}
    for name, tensor in checkpoint.tensors.items():
        data = tensor.load()
        weights[name] = bf16_bits_to_f32(data) if tensor.dtype == "BF16" else np.asarray(data, dtype=np.float32)
    return mistral_logits(weights, checkpoint.config, tokens)


def llama_logits(path: Path, tokens: list[int], metadata: dict[str, str] | None = None) -> np.ndarray:
    """Logits [len(tokens), vocab] from llama.cpp; fills `metadata` with the GGUF's key/values as it loaded them."""
    # Flash attention accumulates in F16 on the CPU, which can flip a near-tie of a random model's logits;
    # this proof is about the converted weights, so it uses llama.cpp's plain attention.
    model = LlamaModel(path, n_ctx=128, logits_all=True, n_threads=2, flash_attn=False)
    try:
        if metadata is not None:
            metadata.update(model.metadata)
        model.evaluate(tokens)
        return np.array(model.logits(), dtype=np.float64)
    finally:
        model.close()


def agreement(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement over positions, max abs error / max abs reference logit)."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    top1 = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    return top1, float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="session")
def built(logits_root: Path, prompt_tokens: list[int]) -> dict[str, tuple[Path, np.ndarray]]:
    """{layout id: (checkpoint folder, reference logits)}, each built and computed once."""
    found = {}
    for seed, layout in enumerate(LAYOUTS, start=7):
        folder = build_checkpoint(
            logits_root / f"Synatra-V0.1-{layout.id}",
            weights=layout.weights,
            dtype=layout.dtype,
            shards=layout.shards,
            seed=seed,
        )
        found[layout.id] = (folder, reference_logits(folder, prompt_tokens))
    return found


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.id)
def test_f32_logits_match_reference_at_every_position(built, logits_root, prompt_tokens, layout: Layout) -> None:
    folder, expected = built[layout.id]
    checkpoint = open_checkpoint(folder)
    assert checkpoint.source_dtypes <= {layout.dtype, "F32"} and layout.dtype in checkpoint.source_dtypes
    assert len(checkpoint.weight_files) == layout.shards
    assert all(f.suffix == f".{layout.weights}" for f in checkpoint.weight_files)

    path = convert(folder, logits_root / "out" / f"{layout.id}-f32.gguf", outtype="f32")
    got = llama_logits(path, prompt_tokens)
    top1, rel = agreement(got, expected)
    assert np.array_equal(got.argmax(-1), expected.argmax(-1)), f"top-1 agreement only {top1:.3f}"
    assert rel < F32_TOLERANCE, f"relative error {rel:.2e}"


@pytest.mark.parametrize("outtype", list(LOOSE))
@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1]], ids=lambda layout: layout.id)
def test_lower_precision_outputs_agree_with_reference(
    built, logits_root, prompt_tokens, layout: Layout, outtype: str
) -> None:
    folder, expected = built[layout.id]
    path = convert(folder, logits_root / "out" / f"{layout.id}-{outtype}.gguf", outtype=outtype)
    metadata: dict[str, str] = {}
    top1, rel = agreement(llama_logits(path, prompt_tokens, metadata), expected)
    assert int(metadata["general.file_type"]) == FILE_TYPES[outtype]
    min_top1, max_rel = LOOSE[outtype]
    assert top1 >= min_top1, f"{outtype}: top-1 agreement {top1:.3f}"
    assert rel < max_rel, f"{outtype}: relative error {rel:.2e}"


def test_negative_control_without_qk_permutation_disagrees(
    built, logits_root, prompt_tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipping the q/k row permutation must be caught by the comparison above, or it proves nothing."""
    calls = []

    def no_permute(rows: int, head_rows: int) -> np.ndarray:
        calls.append(head_rows)
        return np.arange(rows)

    monkeypatch.setattr(gguf_export, "_interleaved_row_order", no_permute)
    folder, expected = built[LAYOUTS[2].id]
    path = convert(folder, logits_root / "out" / "unpermuted-f32.gguf", outtype="f32")
    assert calls, "the patched permute was never called"
    top1, rel = agreement(llama_logits(path, prompt_tokens), expected)
    assert rel > 0.1 or top1 < 0.9, f"an unpermuted model still agrees: top-1 {top1:.3f}, rel {rel:.2e}"


def test_grouped_query_attention_with_mistral_ratio(logits_root, prompt_tokens) -> None:
    """8 query heads over 2 KV heads (group 4, as Mistral-7B's 32/8), head_dim 32."""
    shape = ModelShape(hidden_size=256, intermediate_size=512, num_layers=2, num_heads=8, num_kv_heads=2)
    folder = build_checkpoint(logits_root / "Synatra-V0.1-gqa4", shape=shape, weights="safetensors", seed=3)
    path = convert(folder, logits_root / "out" / "gqa4-f32.gguf", outtype="f32")
    expected = reference_logits(folder, prompt_tokens)
    metadata: dict[str, str] = {}
    got = llama_logits(path, prompt_tokens, metadata)
    assert metadata["llama.attention.head_count"] == "8"
    assert metadata["llama.attention.head_count_kv"] == "2"
    assert metadata["llama.rope.dimension_count"] == "32"
    top1, rel = agreement(got, expected)
    assert np.array_equal(got.argmax(-1), expected.argmax(-1)), f"top-1 agreement only {top1:.3f}"
    assert rel < F32_TOLERANCE, f"relative error {rel:.2e}"


def test_default_tiny_shape_is_grouped_query_attention(built) -> None:
    folder, _ = built[LAYOUTS[0].id]
    config = open_checkpoint(folder).config
    assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == 2
