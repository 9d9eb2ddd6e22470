"""How many layers to put on the GPU: estimated from the GGUF's tensor sizes, the KV cache and free VRAM."""

from __future__ import annotations

import re
from dataclasses import dataclass

from synatra_local.core import llama_backend
from synatra_local.core.errors import SynatraError
from synatra_local.core.gguf_info import ModelInfo

MIB = 1 << 20
MIN_HEADROOM = 512 * MIB  # VRAM `auto` always leaves free beyond its estimate (5% of free VRAM if larger)
CUDA_INSTALL = (
    'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'
)
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelFootprint:
    """Bytes llama.cpp puts on the device per repeating layer and for the output layer."""

    layer_bytes: list[int]
    output_bytes: int
    kv_bytes_per_layer: int
    compute_bytes: int

    def offloaded_bytes(self, layers: int) -> int:
        """Weights and KV cache of the first `layers` layers on the GPU; past the last, the output layer too."""
        n = min(layers, len(self.layer_bytes))
        output = self.output_bytes if layers > len(self.layer_bytes) else 0
        return sum(self.layer_bytes[:n]) + self.kv_bytes_per_layer * n + output

    @property
    def total(self) -> int:
        return self.offloaded_bytes(len(self.layer_bytes) + 1)


@dataclass(frozen=True)
class OffloadPlan:
    layers: int
    total_layers: int
    reason: str


def footprint(info: ModelInfo, n_ctx: int, n_batch: int = 512) -> ModelFootprint:
    n_layers = info.block_count or 0
    per_layer = [0] * n_layers
    output = 0
    for t in info.tensors:
        found = _LAYER.match(t.name)
        if found and int(found.group(1)) < n_layers:
            per_layer[int(found.group(1))] += t.n_bytes
        elif t.name.startswith("output"):
            output += t.n_bytes
    heads = info.head_count or 1
    head_dim = (info.embedding_length or 0) // heads
    kv_per_layer = 2 * n_ctx * (info.head_count_kv or heads) * head_dim * 2
    vocab = next(
        (
            t.n_elements // max(info.embedding_length or 1, 1)
            for t in info.tensors
            if t.name == "token_embd.weight"
        ),
        32000,
    )
    compute = n_batch * vocab * 4 + heads * n_ctx * n_batch * 4
    return ModelFootprint(per_layer, output, kv_per_layer, compute)


def choose_layers(
    fp: ModelFootprint,
    request: str | int,
    *,
    can_offload: bool,
    free_vram: int | None,
    gpu_backend: str | None = None,
) -> OffloadPlan:
    """The decision, kept free of devices so it can be tested with any VRAM figure.

    `gpu_backend` names the GPU backend this build has when it found no device to offload to (a driver
    missing or too old), so the reason says that instead of asking for a GPU build.
    """
    n = len(fp.layer_bytes)
    everything = n + 1
    request = str(request).strip().lower()
    if request == "-1":  # llama.cpp's spelling of "all"
        request = "all"
    if request not in {"auto", "all"} and not request.isdigit():
        raise SynatraError(
            f"--gpu-layers must be auto, all or a number of layers from 0 (this model has {everything}), "
            f"not {request!r}",
            fix="e.g. --gpu-layers auto",
        )
    if request == "0":
        return OffloadPlan(0, everything, "CPU only (--gpu-layers 0)")
    if not can_offload:
        if gpu_backend:
            why = f"this {gpu_backend} build found no usable GPU (see `synatra-local doctor`); running on the CPU"
        else:
            why = "this llama.cpp build has no GPU offload; running on the CPU"
            if request != "auto":
                why += f" (install the CUDA build: {CUDA_INSTALL})"
        return OffloadPlan(0, everything, why)
    if request == "all":
        return OffloadPlan(everything, everything, f"all {everything} layers on the GPU (--gpu-layers all)")
    if request != "auto":
        layers = min(int(request), everything)
        return OffloadPlan(layers, everything, f"{layers} of {everything} layers on the GPU (--gpu-layers)")
    if not free_vram:
        return OffloadPlan(0, everything, "no GPU memory reported; running on the CPU")
    headroom = max(MIN_HEADROOM, free_vram // 20)
    available = free_vram - headroom - fp.compute_bytes
    if fp.total <= available:
        return OffloadPlan(
            everything, everything, f"all {everything} layers fit in {free_vram // MIB} MiB free VRAM"
        )
    layers = max((k for k in range(n + 1) if fp.offloaded_bytes(k) <= available), default=0)
    return OffloadPlan(
        layers, everything, f"{layers} of {everything} layers fit in {free_vram // MIB} MiB free VRAM (auto)"
    )


def plan_offload(info: ModelInfo, request: str | int, *, n_ctx: int, n_batch: int = 512) -> OffloadPlan:
    can = llama_backend.supports_gpu_offload()
    free = None
    if can:
        gpus = [d for d in llama_backend.devices() if d.kind in {"gpu", "igpu"}]
        free = max((d.free_bytes for d in gpus), default=None)
    backend = None if can else next(iter(llama_backend.gpu_backends()), None)
    return choose_layers(footprint(info, n_ctx, n_batch), request, can_offload=can, free_vram=free, gpu_backend=backend)


def recommend_quantization(free_vram: int, free_ram: int) -> str:
    """For a 7B model: Q8_0 where it fits a GPU whole, else Q4_K_M (the fastest good choice on CPU)."""
    if free_vram >= 10 * (1 << 30):
        return "Q8_0 (fits the GPU whole)"
    if free_vram >= 6 * (1 << 30):
        return "Q4_K_M (fits the GPU whole)"
    if free_ram >= 6 * (1 << 30):
        return "Q4_K_M (CPU; ~4.4 GB)"
    return "Q4_K_M, with a smaller --ctx (little free memory)"
