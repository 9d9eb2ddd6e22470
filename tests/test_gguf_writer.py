"""convert/gguf_writer.py: bulk-packed metadata arrays are byte for byte what gguf-py itself writes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from synatra_local.convert.gguf_writer import GGUFWriter
from synatra_local.convert.vocab import load_vocabulary
from synatra_local.core.gguf_lib import gguf


def _metadata_bytes(writer_class: type, path: Path, fill) -> bytes:
    writer = writer_class(path, "llama")
    fill(writer)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path.read_bytes()


def _same_as_gguf_py(tmp_path: Path, fill) -> bytes:
    ours = _metadata_bytes(GGUFWriter, tmp_path / "ours.gguf", fill)
    reference = _metadata_bytes(gguf.GGUFWriter, tmp_path / "gguf-py.gguf", fill)
    assert ours == reference
    return ours


def test_real_vocabulary_packs_as_gguf_py(tmp_path: Path, tokenizer_model: Path) -> None:
    """The Mistral v1 sentencepiece vocabulary (32,000 pieces, scores, types), plus Korean added tokens."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    (folder / "added_tokens.json").write_text('{"<|im_end|>": 32000, "<|시작|>": 32001}')
    vocab = load_vocabulary(folder, 32002)
    data = _same_as_gguf_py(tmp_path, vocab.add_to_gguf)
    reader = gguf.GGUFReader(tmp_path / "ours.gguf")
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 32002
    assert bytes(tokens.parts[tokens.data[32001]]).decode() == "<|시작|>"
    assert len(data) > 32000 * 8


@pytest.mark.parametrize(
    "values",
    [
        ["가", b"\xff\x00raw", "", "한국어 토큰"],
        [0.5, -1000.0, 1e-30, -0.0, 3.4e38],
        [0, 1, -(1 << 31), (1 << 31) - 1],
        [7],
    ],
    ids=["strings", "floats", "int32 bounds", "one"],
)
def test_uniform_arrays_pack_as_gguf_py(tmp_path: Path, values: list) -> None:
    _same_as_gguf_py(tmp_path, lambda w: w.add_array("test.values", values))


@pytest.mark.parametrize(
    "values",
    [[1.0, math.inf, math.nan], [True, False], [[1, 2], [3, 4]], ("tuple", "of", "str")],
    ids=["inf and nan", "bools", "nested", "tuple"],
)
def test_other_arrays_are_left_to_gguf_py(tmp_path: Path, values: list) -> None:
    assert GGUFWriter(tmp_path / "x.gguf", "llama")._pack_array(values) is None
    if isinstance(values, list):  # gguf-py writes only lists as arrays
        _same_as_gguf_py(tmp_path, lambda w: w.add_array("test.values", values))


@pytest.mark.parametrize(
    "values",
    [[1 << 31], [-(1 << 31) - 1], [1 << 70], [1e39], [1, 2.5]],
    ids=["2^31", "-2^31-1", "2^70", "1e39", "mixed"],
)
def test_unpackable_values_fail_as_gguf_py(tmp_path: Path, values: list) -> None:
    """Beyond int32 or float32, or of mixed types: gguf-py's own error, not a wrapped or infinite value."""
    assert GGUFWriter(tmp_path / "x.gguf", "llama")._pack_array(values) is None
    errors = []
    for writer_class in (GGUFWriter, gguf.GGUFWriter):
        with pytest.raises(Exception) as caught:  # noqa: B017 (the reference decides which)
            _metadata_bytes(
                writer_class, tmp_path / f"{writer_class.__module__}.gguf", lambda w: w.add_array("test.values", values)
            )
        errors.append(caught.type)
    assert errors[0] is errors[1]
