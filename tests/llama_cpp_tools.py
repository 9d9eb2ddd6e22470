"""llama.cpp's own tools, built from the pinned binding's sdist, as independent references for tests and benchmarks.

`llama-server`, `llama-perplexity`, `llama-imatrix`, `llama-batched-bench`, `llama-quantize` and
`convert_hf_to_gguf.py` come from `vendor/llama.cpp` of `llama-cpp-python==BINDING_VERSION` (the same llama.cpp
our runtime links), downloaded with pip from PyPI and built once with cmake into a cache folder
(`$SYNATRA_LOCAL_TOOLS_CACHE`, default `~/.cache/synatra-local/llama.cpp-<version>`). Concurrent callers wait for
one build (a file lock). `python tests/llama_cpp_tools.py` builds everything ahead of the tests (`make test` does).

When a tool cannot be had (no cmake, no compiler, no registry), `ToolUnavailable` says why; tests skip with that
reason rather than pass without the reference.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

BINDING_VERSION = "0.3.36"
TOOLS = ("llama-server", "llama-perplexity", "llama-imatrix", "llama-batched-bench", "llama-quantize")


class ToolUnavailable(RuntimeError):
    """A llama.cpp tool that could not be downloaded or built here; the message says why."""


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "synatra-local" / f"llama.cpp-{BINDING_VERSION}"
    return Path(os.environ.get("SYNATRA_LOCAL_TOOLS_CACHE") or default)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(command: list[str], log: Path, **kwargs: object) -> None:
    with log.open("ab") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise ToolUnavailable(f"`{' '.join(command[:4])} …` failed (exit {result.returncode}); log {log}:\n{tail}")


def source_dir() -> Path:
    """`vendor/llama.cpp` of the pinned binding's sdist, downloaded and unpacked once."""
    root = cache_dir()
    source = root / "src" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    with _locked(root):
        if (source / "CMakeLists.txt").is_file():
            return source
        download = root / "download"
        download.mkdir(parents=True, exist_ok=True)
        archive = download / f"llama_cpp_python-{BINDING_VERSION}.tar.gz"
        if not archive.is_file():
            _run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                 f"llama-cpp-python=={BINDING_VERSION}", "-d", str(download)],
                root / "download.log",
            )
        unpacked = root / "src.partial"
        shutil.rmtree(unpacked, ignore_errors=True)
        prefix = f"llama_cpp_python-{BINDING_VERSION}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for member in members:
                member.name = member.name[len(prefix) :]
            tar.extractall(unpacked / "llama.cpp", members=[m for m in members if m.name], filter="data")
        shutil.rmtree(root / "src", ignore_errors=True)
        unpacked.rename(root / "src")
    return source


def tool(name: str) -> Path:
    """The path of one built llama.cpp tool (building them all the first time: ~10 minutes on 2 cores)."""
    if name not in TOOLS:
        raise ValueError(f"unknown tool {name!r}; known: {', '.join(TOOLS)}")
    binary = cache_dir() / "build" / "bin" / name
    if binary.is_file():
        return binary
    build_all()
    return binary


def build_all() -> Path:
    """Build every tool in TOOLS (once); returns the folder holding them."""
    if shutil.which("cmake") is None:
        raise ToolUnavailable("cmake is not installed (apt-get install cmake)")
    source = source_dir()
    root = cache_dir()
    bin_dir = root / "build" / "bin"
    if all((bin_dir / name).is_file() for name in TOOLS):
        return bin_dir
    with _locked(root):
        if all((bin_dir / name).is_file() for name in TOOLS):
            return bin_dir
        build = root / "build"
        log = root / "build.log"
        _run(
            ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
             "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF",
             "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON"],
            log,
        )
        _run(
            ["cmake", "--build", str(build), "--config", "Release", "-j", str(os.cpu_count() or 2),
             "--target", *TOOLS],
            log,
        )
    return bin_dir


def convert_script() -> Path:
    """llama.cpp's own `convert_hf_to_gguf.py` (needs torch and transformers to run; it uses its vendored gguf-py)."""
    return source_dir() / "convert_hf_to_gguf.py"


if __name__ == "__main__":
    try:
        print(build_all())
    except ToolUnavailable as exc:
        print(f"llama.cpp tools unavailable: {exc}", file=sys.stderr)
        sys.exit(1)
