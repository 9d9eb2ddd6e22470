#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with everything cuda_check.sh installs on a lent GPU machine, which has no network:
# the CUDA build of llama-cpp-python (build_cuda_wheel.sh), this project's wheel, and the packages that
# machine's image lacks or has at other versions than the tests ran with, as Python 3.12 wheels.
# Usage: benchmarks/device/prepare.sh [CUDA_WHEEL]
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
cuda_wheel=${1:-}
if [ -n "$cuda_wheel" ]; then
  cp "$cuda_wheel" .whl/
elif ! ls .whl/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "no CUDA wheel in .whl/: build one with benchmarks/device/build_cuda_wheel.sh, then pass its path" >&2
  exit 1
fi
rm -f .whl/synatra_local-*.whl
.venv/bin/python -m pip wheel --quiet --no-deps --wheel-dir .whl .
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  diskcache==5.6.3 gguf==0.19.0 prompt_toolkit==3.0.53 wcwidth==0.9.4 \
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 uvicorn==0.54.0 openai==3.57.0 distro==1.9.0 jiter==0.19.0 sniffio==1.3.1 \
  pexpect==4.9.0 ptyprocess==0.7.0 mistral_common==1.13.1 \
  typer==0.29.2 annotated-doc==0.0.7 click==8.5.1 rich==15.0.0 huggingface_hub==2.4.0 \
  httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 opentelemetry-api==1.45.2
du -sh .whl
