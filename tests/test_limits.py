"""Every numeric option out of range is one clear error naming it and its range: Python API, CLI and the size
llama.cpp really allocates. (The server's 400s are in test_server.py.)"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from synatra_local.core.errors import SynatraError
from synatra_local.runtime import limits
from synatra_local.runtime.engine import Engine, GenerationOptions
from synatra_local.runtime.limits import OptionError

CLI = str(Path(sys.executable).with_name("synatra-local"))

BAD_OPTIONS = [
    ("max_tokens", [0, -1, 2**40, 1.5, "8", None, True]),
    ("temperature", [-0.1, 2.5, math.nan, math.inf, "hot", None]),
    ("top_p", [-0.01, 1.5, math.nan, -math.inf]),
    ("top_k", [-1, 2**31, 2**64, 3.0]),
    ("min_p", [-1, 1.01, math.nan]),
    ("repeat_penalty", [0, -1, 10.5, math.inf]),
    ("seed", [-1, 2**32 - 1, 2**32, 2**64, 1.0, "1"]),
]


@pytest.mark.parametrize(("name", "values"), BAD_OPTIONS, ids=[b[0] for b in BAD_OPTIONS])
def test_generation_options_out_of_range(name: str, values: list[object]) -> None:
    for value in values:
        with pytest.raises(OptionError) as raised:
            GenerationOptions(**{name: value})
        error = raised.value
        assert isinstance(error, ValueError) and isinstance(error, SynatraError)
        assert error.message.startswith(f"{name} must be ") and repr(value) in error.message
        assert str(limits.RANGES[name].high).split(".")[0] in error.message or name == "seed"


def test_generation_options_at_the_edges_are_accepted() -> None:
    GenerationOptions(max_tokens=1, temperature=0, top_p=0, top_k=0, min_p=0, repeat_penalty=0.01, seed=0)
    GenerationOptions(max_tokens=1 << 20, temperature=2, top_p=1, top_k=2**31 - 1, min_p=1, repeat_penalty=10,
                      seed=2**32 - 2)
    GenerationOptions(temperature=1, top_p=1, seed=None)  # ints where floats go


def test_seed_range_says_how_to_get_a_random_seed() -> None:
    with pytest.raises(OptionError) as raised:
        GenerationOptions(seed=2**32 - 1)
    assert "from 0 to 4294967294" in raised.value.message and "leave the seed out" in (raised.value.fix or "")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_ctx": -100000}, "n_ctx"), ({"n_ctx": 0}, "n_ctx"), ({"n_ctx": 2**21}, "n_ctx"),
        ({"n_ctx": 4096.0}, "n_ctx"),
        ({"batch": -1}, "batch"), ({"batch": 0}, "batch"), ({"batch": 2**17}, "batch"),
        ({"threads": 0}, "threads"), ({"threads": -4}, "threads"), ({"threads": 100000}, "threads"),
    ],
)
def test_engine_refuses_bad_sizes_before_loading(tmp_path: Path, kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(OptionError, match=f"^{name} must be an integer from 1 to"):
        Engine(tmp_path / "not-even-there.gguf", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("layers", ["-5", -3, "lots", True, "1e3"])
def test_engine_refuses_bad_gpu_layers(tiny_gguf_v01: Path, layers: object) -> None:
    with pytest.raises(SynatraError, match=r"--gpu-layers must be auto, all or a number of layers from 0 \(this "
                                           r"model has 3\), not '"):
        Engine(tiny_gguf_v01, gpu_layers=layers)  # type: ignore[arg-type]


def test_cli_refuses_bad_gpu_layers(tiny_gguf_v01: Path) -> None:
    done = subprocess.run([CLI, "run", str(tiny_gguf_v01), "hi", "--gpu-layers", "-5"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: --gpu-layers must be auto, all or a number of layers from 0"), done.stderr


def test_context_is_what_llama_cpp_allocates(tiny_gguf_v01: Path) -> None:
    """--ctx 300 is rounded up to 512 by llama.cpp; a 308-token prompt then fits, everywhere the size is used."""
    engine = Engine(tiny_gguf_v01, n_ctx=300)
    try:
        assert engine.n_ctx == 512
        content = "가나다라 " * 200
        messages = [{"role": "user", "content": content}]
        while engine.count_tokens(messages) > 308:
            content = content[:-1]
            messages = [{"role": "user", "content": content}]
        assert engine.count_tokens(messages) == 308
        generation = engine.stream(messages, GenerationOptions(max_tokens=4, seed=1))
        assert "".join(generation) is not None and generation.stats.stop_reason == "max_tokens"
        assert generation.stats.prompt_tokens == 308 and generation.stats.generated_tokens == 4
        raw = engine.complete("가나다라 " * 60, GenerationOptions(max_tokens=2, seed=1))
        "".join(raw)
        assert raw.stats.prompt_tokens > 300 and raw.stats.stop_reason == "max_tokens"
    finally:
        engine.close()


# --- the command line: one `error:` line naming the flag and its range, exit 1, before any model loads ---

CLI_CASES = [
    ("run", ["--ctx", "-100000"], "--ctx"), ("run", ["--ctx", "0"], "--ctx"), ("run", ["-c", "99999999"], "--ctx"),
    ("run", ["--batch", "-1"], "--batch"), ("run", ["--batch", "0"], "--batch"),
    ("run", ["--threads", "0"], "--threads"), ("run", ["-t", "-2"], "--threads"),
    ("run", ["--max-tokens", "0"], "--max-tokens"), ("run", ["-n", "-5"], "--max-tokens"),
    ("run", ["--temperature", "-1"], "--temperature"), ("run", ["--temp", "nan"], "--temperature"),
    ("run", ["--temperature", "inf"], "--temperature"),
    ("run", ["--top-p", "1.5"], "--top-p"), ("run", ["--top-k", "-1"], "--top-k"),
    ("run", ["--top-k", "99999999999"], "--top-k"), ("run", ["--min-p", "2"], "--min-p"),
    ("run", ["--repeat-penalty", "0"], "--repeat-penalty"), ("run", ["--seed", "-1"], "--seed"),
    ("run", ["--seed", "4294967295"], "--seed"), ("run", ["--seed", str(2**64)], "--seed"),
    ("chat", ["--ctx", "-1"], "--ctx"), ("chat", ["--top-p", "-0.5"], "--top-p"), ("chat", ["--seed", "-7"], "--seed"),
    ("serve", ["--port", "70000"], "--port"), ("serve", ["--port", "-1"], "--port"),
    ("serve", ["--max-tokens-cap", "0"], "--max-tokens-cap"), ("serve", ["--max-body-bytes", "0"], "--max-body-bytes"),
    ("serve", ["--stream-interval-ms", "-5"], "--stream-interval-ms"), ("serve", ["--batch", "-1"], "--batch"),
    ("doctor", ["--ctx", "-100000"], "--ctx"), ("quantize", ["--threads", "0"], "--threads"),
]


@pytest.mark.parametrize(("command", "args", "flag"), CLI_CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CLI_CASES])
def test_cli_option_out_of_range(
    command: str, args: list[str], flag: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from synatra_local.cli import main

    model = str(tmp_path / "model.gguf")
    positional = {"run": [model, "hi"], "chat": [model], "serve": [model], "doctor": [model], "quantize": [model]}
    assert main([command, *positional[command], *args]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, captured.err
    assert errors[0].startswith(f"error: {flag} must be ") and (" from " in errors[0] or "greater than" in errors[0])
    assert "Traceback" not in captured.err and "model.gguf" not in captured.err, "refused before the model is looked at"


def test_cli_crashers_exit_1_not_a_signal(tiny_gguf_v01: Path) -> None:
    """What used to allocate 20 GB (`--ctx -100000`) or crash (`--batch -1`) on a real model: exit 1, one line."""
    for args in (["--ctx", "-100000"], ["--batch", "-1"], ["--ctx", "-1"]):
        done = subprocess.run([CLI, "run", str(tiny_gguf_v01), "hi", "-n", "2", *args], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith(f"error: {args[0]} must be ") and "Traceback" not in done.stderr
