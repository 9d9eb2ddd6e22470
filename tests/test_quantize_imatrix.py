"""`quantize --imatrix auto|FILE`: the importance matrix reaches llama.cpp's quantizer as llama-quantize hands it.

Proof: for the same matrix file (ours, GGUF or legacy .dat), our quantization is byte for byte llama-quantize
--imatrix's; with the matrix the tensors differ from a quantization without it; the i-quants are refused without one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
from llama_cpp_tools import ToolUnavailable, tool

from synatra_local.commands import quantize_cmd
from synatra_local.convert import convert, quantize
from synatra_local.convert.imatrix import collect_imatrix
from synatra_local.convert.imatrix_file import write_imatrix
from synatra_local.convert.tiny import build_checkpoint
from synatra_local.core.errors import SynatraError
from synatra_local.core.llama_backend import read_gguf_header


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(checkpoint folder, F32 GGUF, its importance matrix as GGUF): a tiny random V0.1-shaped model."""
    root = tmp_path_factory.mktemp("quantize-imatrix")
    folder = build_checkpoint(root / "Synatra-V0.1-tiny", seed=3, tokenizer_model=None)
    base = convert(folder, root / "tiny-F32.gguf", outtype="f32")
    matrix = collect_imatrix(base, n_ctx=128, chunks=4, threads=2)
    return folder, base, write_imatrix(matrix, root / "ko.gguf")


def tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).tobytes())) for t in gguf.GGUFReader(path).tensors}


def test_i_quants_need_a_matrix(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    folder, base, _ = tiny
    with pytest.raises(SynatraError) as caught:
        quantize(base, ["Q4_K_M", "IQ3_XXS"], output_dir=tmp_path)
    assert "IQ3_XXS needs an importance matrix" in caught.value.message and "--imatrix auto" in (caught.value.fix or "")
    assert quantize_cmd.main([str(folder), "-q", "IQ2_XS", "-o", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "IQ2_XS needs an importance matrix" in err and "--imatrix auto" in err
    assert quantize_cmd.main([str(base), "-q", "Q4_K_M", "--imatrix", str(tmp_path / "no.gguf"), "-o",
                              str(tmp_path), "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_matrix_changes_the_quantization(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, base, matrix = tiny
    (plain,) = quantize(base, ["Q4_K_M"], output_dir=tmp_path / "plain")
    (weighted,) = quantize(base, ["Q4_K_M"], output_dir=tmp_path / "weighted", imatrix=matrix)
    a, b = tensors(plain), tensors(weighted)
    assert {n: t for n, (t, _) in a.items()} == {n: t for n, (t, _) in b.items()}  # same recipe
    changed = [n for n in a if a[n][1] != b[n][1]]
    assert {f"blk.{i}.{w}.weight" for i in range(2) for w in ("attn_q", "ffn_down")} <= set(changed)
    assert "token_embd.weight" not in changed  # no activations enter the embedding: no matrix for it
    header = read_gguf_header(weighted)
    assert header is not None
    assert header.values["quantize.imatrix.file"] == "ko.gguf"
    assert header.values["quantize.imatrix.dataset"] == "ko_calibration.txt"
    assert header.values["quantize.imatrix.entries_count"] == 14
    assert header.values["quantize.imatrix.chunks_count"] == 4


@pytest.mark.parametrize("suffix", [".gguf", ".dat"])
def test_same_bytes_as_llama_quantize(tiny: tuple[Path, Path, Path], tmp_path: Path, suffix: str) -> None:
    try:
        binary = tool("llama-quantize")
    except ToolUnavailable as exc:
        pytest.skip(f"llama-quantize unavailable: {exc}")
    _, base, matrix_gguf = tiny
    from synatra_local.convert.imatrix_file import read_imatrix

    matrix = write_imatrix(read_imatrix(matrix_gguf), tmp_path / f"ko{suffix}")
    theirs = tmp_path / "theirs.gguf"
    result = subprocess.run([str(binary), "--imatrix", str(matrix), str(base), str(theirs), "IQ3_XXS", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (ours,) = quantize(base, ["IQ3_XXS"], output_dir=tmp_path / "ours", imatrix=matrix, threads=2)
    mine, reference = tensors(ours), tensors(theirs)
    assert mine == reference
    assert {t for t, _ in mine.values()} >= {"IQ3_XXS"}


def test_auto_from_a_checkpoint(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    folder, _, _ = tiny
    code = quantize_cmd.main([str(folder), "-q", "IQ4_XS", "--imatrix", "auto", "-o", str(tmp_path), "--quiet"])
    assert code == 0, capsys.readouterr().err
    (written,) = [Path(line) for line in capsys.readouterr().out.split()]
    header = read_gguf_header(written)
    assert header is not None and header.values["quantize.imatrix.file"] == "auto"
    assert header.values["quantize.imatrix.dataset"] == "ko_calibration.txt"
    assert "IQ4_XS" in {t.tensor_type.name for t in gguf.GGUFReader(written).tensors}
    assert sorted(p.name for p in tmp_path.iterdir()) == [written.name]  # intermediate removed
