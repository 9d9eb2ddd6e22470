"""`eval` (runtime/quality.py, commands/eval_cmd.py): perplexity and KL-divergence equal llama-perplexity's.

llama-perplexity is built from the pinned binding's vendored llama.cpp (tests/llama_cpp_tools.py) and run on the
same model, text, window and batch (one sequence per batch: -b equal to -c). Its KL-divergence reads the base
model's log-probabilities back from the file `--kl-divergence-base` wrote, rounded to 16 bits over a 16-nat range
and cut below e^-16, while ours are exact, so KLD agrees within the tolerances below; perplexities agree to the
digits llama-perplexity prints.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from llama_cpp_tools import ToolUnavailable, tool

from synatra_local.commands import eval_cmd
from synatra_local.convert import convert, quantize
from synatra_local.convert.tiny import build_checkpoint
from synatra_local.core.errors import SynatraError
from synatra_local.core.korean_text import calibration_text, eval_text
from synatra_local.core.llama_backend import text_windows
from synatra_local.runtime.limits import OptionError
from synatra_local.runtime.quality import evaluate, log_softmax, score

CTX, CHUNKS = 128, 4
PPL_REL = 1e-4  # relative, perplexity (ours vs llama-perplexity's printed 4-6 decimals)
KLD_ABS = 2e-4  # mean / median / p99 / max KL-divergence, absolute, from the 16-bit base file
TOP1_ABS = 0.01  # share of positions (one flip in a near-tie out of 252)


def _perplexity_tool() -> Path:
    try:
        return tool("llama-perplexity")
    except ToolUnavailable as exc:
        pytest.skip(f"llama-perplexity unavailable: {exc}")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval-text") / "ko_eval.txt"
    path.write_text(eval_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random V0.1-shaped model as F32 (the reference) and Q4_K_M made from it."""
    root = tmp_path_factory.mktemp("quality")
    folder = build_checkpoint(root / "Synatra-V0.1-tiny", seed=5, tokenizer_model=None)
    base = convert(folder, root / "tiny-F32.gguf", outtype="f32")
    (quantized,) = quantize(base, ["Q4_K_M"], output_dir=root)
    return base, quantized


def _run(command: list[str]) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _number(pattern: str, log: str) -> float:
    match = re.search(pattern, log)
    assert match, f"{pattern!r} not in llama-perplexity's output:\n{log[-3000:]}"
    return float(match.group(1))


def test_log_softmax_is_normalised_and_shift_invariant() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 1000)).astype(np.float32) * 8
    got = log_softmax(logits)
    assert np.allclose(np.exp(got).sum(axis=1), 1.0, atol=1e-12)
    naive = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    assert np.allclose(got, naive, atol=1e-9)
    assert np.allclose(log_softmax(logits.astype(np.float64) + 1000), got, atol=1e-9)  # exp(1000) would overflow


def test_windows_are_llama_perplexitys() -> None:
    tokens = list(range(1000))
    windows = text_windows(tokens, 128)
    assert len(windows) == 1000 // 128 and all(len(w) == 128 for w in windows)
    assert windows[1][0] == 128 and windows[-1][-1] == 7 * 128 - 1
    assert len(text_windows(tokens, 128, chunks=3)) == 3
    with pytest.raises(SynatraError, match="at least 1024"):
        text_windows(tokens, 512)


def test_shipped_texts_are_disjoint_parts_of_the_constitution(constitution_text: str) -> None:
    calibration, evaluation = calibration_text(), eval_text()
    assert calibration + evaluation == constitution_text
    assert evaluation.startswith("       제4장 정부") and "제3장 국회" in calibration and "제3장" not in evaluation


def test_perplexity_equals_llama_perplexity_on_real_weights(smollm2_gguf: Path, text_file: Path) -> None:
    log = _run([_perplexity_tool(), "-m", smollm2_gguf, "-f", text_file, "-c", CTX, "-b", CTX,
                "--chunks", CHUNKS, "-t", 2])
    expected = _number(r"Final estimate: PPL = ([0-9.]+)", log)
    report = evaluate(smollm2_gguf, n_ctx=CTX, chunks=CHUNKS, batch=CTX, threads=2)
    assert report.tokens_scored == CHUNKS * (CTX - 1 - CTX // 2)
    assert report.perplexity == pytest.approx(expected, rel=PPL_REL)
    assert report.kld is None and report.ref_perplexity is None


def test_kl_divergence_equals_llama_perplexity(tiny_pair: tuple[Path, Path], text_file: Path, tmp_path: Path) -> None:
    base, quantized = tiny_pair
    binary = _perplexity_tool()
    common = ["-f", text_file, "-c", CTX, "-b", CTX, "--chunks", CHUNKS, "-t", 2]
    logits_file = tmp_path / "base.kld"
    _run([binary, "-m", base, *common, "--kl-divergence-base", logits_file])
    log = _run([binary, "-m", quantized, *common, "--kl-divergence-base", logits_file, "--kl-divergence"])

    report = evaluate(quantized, reference=base, n_ctx=CTX, chunks=CHUNKS, batch=CTX, threads=2)
    assert report.perplexity == pytest.approx(_number(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", log), rel=PPL_REL)
    assert report.ref_perplexity == pytest.approx(_number(r"Mean PPL\(base\)\s*:\s*([0-9.]+)", log), rel=PPL_REL)
    assert report.ppl_ratio == pytest.approx(_number(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([0-9.]+)", log), rel=PPL_REL)
    assert report.kld is not None
    assert report.kld.mean > 1e-3  # Q4_K_M of random weights loses something: the comparison is not vacuous
    assert report.kld.mean == pytest.approx(_number(r"Mean    KLD:\s*([0-9.]+)", log), abs=KLD_ABS)
    assert report.kld.median == pytest.approx(_number(r"Median  KLD:\s*([0-9.]+)", log), abs=KLD_ABS)
    assert report.kld.p99 == pytest.approx(_number(r"99\.0%   KLD:\s*([0-9.]+)", log), abs=KLD_ABS)
    assert report.kld.max == pytest.approx(_number(r"Maximum KLD:\s*([0-9.]+)", log), abs=KLD_ABS)
    same_top = _number(r"Same top p:\s*([0-9.]+)", log) / 100
    assert report.top1_agreement == pytest.approx(same_top, abs=TOP1_ABS)


def test_a_model_against_itself_has_zero_divergence(tiny_pair: tuple[Path, Path]) -> None:
    base, _ = tiny_pair
    report = evaluate(base, reference=base, n_ctx=64, chunks=2, batch=64, threads=2)
    assert report.kld is not None and report.kld.max < 1e-9
    assert report.top1_agreement == 1.0 and report.ppl_ratio == pytest.approx(1.0, abs=1e-12)


def test_scoring_yields_the_figures_so_far(tiny_pair: tuple[Path, Path]) -> None:
    base, quantized = tiny_pair
    reports = list(score(quantized, reference=base, n_ctx=64, chunks=3, batch=32, threads=2))
    assert [r.windows_scored for r in reports] == [1, 2, 3] and reports[-1].complete
    assert [r.tokens_scored for r in reports] == [31, 62, 93]
    assert not reports[0].complete


def test_eval_json(tiny_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base, quantized = tiny_pair
    assert eval_cmd.main([str(quantized), "--ref", str(base), "--ctx", "64", "--chunks", "2", "--json",
                          "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["kld"]) == {"mean", "median", "p99", "max"}
    for key in ("perplexity", "ref_perplexity", "ppl_ratio", "top1_agreement"):
        assert isinstance(data[key], float)
    assert data["tokens_scored"] == 2 * 31 and data["complete"] is True


def test_eval_table(tiny_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base, quantized = tiny_pair
    assert eval_cmd.main([str(quantized), "--ref", str(base), "-c", "64", "--chunks", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    for label in ("perplexity", "KL-divergence mean", "KL-divergence 99%", "same top token", "tokens scored"):
        assert label in out


def test_ctrl_c_prints_what_was_scored(
    tiny_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, quantized = tiny_pair
    from synatra_local.commands import _progress

    advanced = []

    def advance(self: object, amount: int) -> None:
        advanced.append(amount)
        if len(advanced) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(_progress.CountingProgress, "advance", advance)
    code = eval_cmd.main([str(quantized), "--ref", str(base), "-c", "64", "--chunks", "5", "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 130
    data = json.loads(captured.out)
    assert data["windows_scored"] == 2 and data["windows"] == 5 and data["complete"] is False
    assert data["kld"]["mean"] > 0
    assert "interrupted: figures over 2 of 5 windows" in captured.err


def test_bad_input_is_one_error_line(
    tiny_pair: tuple[Path, Path], tiny_gguf_v03: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, quantized = tiny_pair
    assert eval_cmd.main([str(quantized), "--ctx", "100000", "--quiet"]) == 1
    assert "need at least 200000" in capsys.readouterr().err
    # v0.3 has two more tokens (ChatML): not a quantization of the same model
    assert eval_cmd.main([str(tiny_gguf_v03), "--ref", str(base), "-c", "64", "--chunks", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "different vocabularies" in err and "fix:" in err and "Traceback" not in err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    assert eval_cmd.main([str(quantized), "--text", str(latin1), "--quiet"]) == 1
    assert "is not UTF-8" in capsys.readouterr().err
    assert eval_cmd.main([str(quantized), "--chunks", "0"]) == 1
    assert "--chunks must be" in capsys.readouterr().err
    with pytest.raises(OptionError, match="batch must be"):
        evaluate(quantized, batch=0)
