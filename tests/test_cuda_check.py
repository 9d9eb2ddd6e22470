"""benchmarks/cuda_check.py, the CUDA proof for a GPU machine, runs its whole sequence here on the CPU.

On a build without offload (`--allow-cpu`) every step still loads, measures and compares; only the two checks
that need a GPU fail. This keeps the script working between the rare sessions that have a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from synatra_local.core import llama_backend

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "cuda_check.py"


def test_cuda_check_sequence_runs_on_the_cpu(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "tiny", "--allow-cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    report = json.loads((tmp_path / "cuda_check.json").read_text(encoding="utf-8"))
    results = {entry["check"]: entry["result"] for entry in report}
    failed = {check for check, result in results.items() if result == "FAIL"}
    if llama_backend.supports_gpu_offload():
        assert not failed, done.stdout
    else:
        assert failed == {"build offloads", "auto takes every layer when VRAM is plentiful"}, done.stdout
        assert done.returncode == 1
    logits = [entry for entry in report if entry["check"].startswith("logits F32")]
    assert len(logits) == 2 and all(entry["top1"] == 1.0 and entry["rel_err"] < 1e-2 for entry in logits)
    assert any(check.startswith("budget tiny") for check in results)
    assert any(check.startswith("speed tiny") for check in results)
