"""GPU layer planning: decided from figures alone, so any VRAM size can be tested on a CPU-only machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from synatra_local.core.errors import SynatraError
from synatra_local.core.gguf_info import ModelInfo, read_model_info
from synatra_local.runtime.offload import (
    CUDA_INSTALL,
    MIB,
    ModelFootprint,
    choose_layers,
    footprint,
    plan_offload,
    recommend_quantization,
)

GIB = 1 << 30
LAYER = 200 * MIB
OUTPUT = 100 * MIB
KV = 2 * 4096 * 8 * 128 * 2  # K and V, ctx 4096, 8 KV heads of 128, f16: 16 MiB per layer
COMPUTE = 300 * MIB
SEVEN_B = ModelFootprint(layer_bytes=[LAYER] * 32, output_bytes=OUTPUT, kv_bytes_per_layer=KV, compute_bytes=COMPUTE)


def test_synthetic_footprint_total() -> None:
    assert KV == 16 * MIB
    assert SEVEN_B.total == 32 * (LAYER + KV) + OUTPUT


@pytest.mark.parametrize("request_", ["auto", "all", "12", 33])
def test_cpu_build_offloads_nothing(request_: str | int) -> None:
    plan = choose_layers(SEVEN_B, request_, can_offload=False, free_vram=24 * GIB)
    assert plan.layers == 0
    assert plan.total_layers == 33
    assert "no GPU offload" in plan.reason
    if request_ == "auto":
        assert CUDA_INSTALL not in plan.reason
    else:
        assert CUDA_INSTALL in plan.reason, "the user asked for GPU layers: say how to get a CUDA build"


def test_plenty_of_vram_takes_everything() -> None:
    plan = choose_layers(SEVEN_B, "auto", can_offload=True, free_vram=24 * GIB)
    assert (plan.layers, plan.total_layers) == (33, 33)
    assert "24576 MiB" in plan.reason


def test_four_gib_is_a_partial_offload() -> None:
    free = 4 * GIB
    headroom = max(512 * MIB, free // 20)  # 512 MiB
    available = free - headroom - COMPUTE  # 4096 - 512 - 300 = 3284 MiB
    assert available == 3284 * MIB
    expected = available // (LAYER + KV)  # 216 MiB per layer with its KV: 15 layers (3240 MiB)
    assert expected == 15
    plan = choose_layers(SEVEN_B, "auto", can_offload=True, free_vram=free)
    assert plan.layers == expected
    assert plan.total_layers == 33
    assert "15 of 33" in plan.reason


def test_just_under_everything_leaves_the_output_on_cpu() -> None:
    # room for every repeating layer but not for the output layer too
    free = 32 * (LAYER + KV) + OUTPUT // 2 + 512 * MIB + COMPUTE
    assert free // 20 < 512 * MIB
    plan = choose_layers(SEVEN_B, "auto", can_offload=True, free_vram=free)
    assert plan.layers == 32


@pytest.mark.parametrize("free", [0, None])
def test_no_vram_reported(free: int | None) -> None:
    plan = choose_layers(SEVEN_B, "auto", can_offload=True, free_vram=free)
    assert plan.layers == 0


def test_tiny_vram_fits_no_layer() -> None:
    plan = choose_layers(SEVEN_B, "auto", can_offload=True, free_vram=800 * MIB)
    assert plan.layers == 0


def test_explicit_requests() -> None:
    assert choose_layers(SEVEN_B, "10", can_offload=True, free_vram=None).layers == 10
    assert choose_layers(SEVEN_B, 20, can_offload=True, free_vram=1 * GIB).layers == 20
    assert choose_layers(SEVEN_B, "99", can_offload=True, free_vram=None).layers == 33
    assert choose_layers(SEVEN_B, "all", can_offload=True, free_vram=None).layers == 33
    assert choose_layers(SEVEN_B, " ALL ", can_offload=True, free_vram=None).layers == 33
    plan = choose_layers(SEVEN_B, "0", can_offload=True, free_vram=24 * GIB)
    assert plan.layers == 0 and "CPU only" in plan.reason
    assert choose_layers(SEVEN_B, 0, can_offload=False, free_vram=None).layers == 0


@pytest.mark.parametrize("bad", ["many", "1.5", "", "auto-ish", "3 layers"])
def test_invalid_request_raises(bad: str) -> None:
    for can in (True, False):
        with pytest.raises(SynatraError, match="gpu-layers"):
            choose_layers(SEVEN_B, bad, can_offload=can, free_vram=24 * GIB)


def test_negative_request_is_refused_or_means_all() -> None:
    try:
        plan = choose_layers(SEVEN_B, "-1", can_offload=True, free_vram=None)
    except SynatraError:
        return
    assert plan.layers == 33 and "-1" not in plan.reason


@pytest.fixture(scope="module")
def tiny_info(tiny_gguf_v01: Path) -> ModelInfo:
    return read_model_info(tiny_gguf_v01)


def _expected_bytes(type_name: str, n_elements: int) -> int:
    """Storage size from the GGML type alone: Q8_0 blocks are 32 values in 34 bytes (f16 scale + 32 int8)."""
    if type_name == "Q8_0":
        return n_elements // 32 * 34
    return n_elements * {"F32": 4, "F16": 2}[type_name]


def test_footprint_of_the_tiny_gguf(tiny_info: ModelInfo) -> None:
    info = tiny_info
    assert info.block_count == 2
    per_layer = [0, 0]
    output = 0
    names = set()
    for t in info.tensors:
        names.add(t.name)
        assert t.n_bytes == _expected_bytes(t.type_name, t.n_elements), t.name
        if t.name.startswith("blk."):
            per_layer[int(t.name.split(".")[1])] += t.n_bytes
        elif t.name in ("output.weight", "output_norm.weight"):
            output += t.n_bytes
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.1.ffn_down.weight"} <= names
    # each layer: q, o (256x256), k, v (128x256), gate, up, down (512x256) in Q8_0, two f32 norms of 256
    layer = (2 * 256 * 256 + 2 * 128 * 256 + 3 * 512 * 256) // 32 * 34 + 2 * 256 * 4
    assert per_layer == [layer, layer]
    assert output == 32000 * 256 // 32 * 34 + 256 * 4
    fp = footprint(info, n_ctx=1024)
    assert fp.layer_bytes == per_layer
    assert fp.output_bytes == output
    # 256 wide, 4 heads (head_dim 64), 2 KV heads: K and V in f16 for 1024 positions
    assert fp.kv_bytes_per_layer == 2 * 1024 * 2 * 64 * 2
    assert footprint(info, n_ctx=2048).kv_bytes_per_layer == 2 * fp.kv_bytes_per_layer
    assert fp.total == sum(per_layer) + output + 2 * fp.kv_bytes_per_layer
    assert sum(per_layer) + output < info.file_bytes  # the token embeddings stay on the CPU


def test_plan_offload_on_this_machine(tiny_info: ModelInfo) -> None:
    from synatra_local.core import llama_backend

    info = tiny_info
    plan = plan_offload(info, "auto", n_ctx=512)
    assert plan.total_layers == 3
    if not llama_backend.supports_gpu_offload():
        why = "found no usable GPU" if llama_backend.gpu_backends() else "no GPU offload"
        assert plan.layers == 0 and why in plan.reason
    assert plan_offload(info, "0", n_ctx=512).layers == 0
    with pytest.raises(SynatraError):
        plan_offload(info, "lots", n_ctx=512)


@pytest.mark.parametrize(
    ("vram", "ram", "expected"),
    [
        (24 * GIB, 0, "Q8_0"),
        (10 * GIB, 0, "Q8_0"),
        (10 * GIB - 1, 64 * GIB, "Q4_K_M (fits the GPU"),
        (6 * GIB, 0, "Q4_K_M (fits the GPU"),
        (6 * GIB - 1, 6 * GIB, "Q4_K_M (CPU"),
        (0, 32 * GIB, "Q4_K_M (CPU"),
        (0, 6 * GIB - 1, "Q4_K_M, with a smaller --ctx"),
        (0, 0, "Q4_K_M, with a smaller --ctx"),
    ],
)
def test_recommend_quantization(vram: int, ram: int, expected: str) -> None:
    assert recommend_quantization(vram, ram).startswith(expected)


@pytest.mark.parametrize("request_", ["auto", "all", "12"])
def test_gpu_build_without_a_usable_gpu_says_so_instead_of_asking_for_one(request_: str) -> None:
    plan = choose_layers(SEVEN_B, request_, can_offload=False, free_vram=None, gpu_backend="CUDA")
    assert plan.layers == 0
    assert "CUDA build found no usable GPU" in plan.reason and "doctor" in plan.reason
    assert "pip install" not in plan.reason
