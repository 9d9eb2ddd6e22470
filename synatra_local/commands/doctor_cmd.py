"""`synatra-local doctor [MODEL]`: what this machine and this llama.cpp build can do, and what it would pick."""

from __future__ import annotations

import platform
import sys

import typer

from ._app import run_app
from .options import Ctx, GpuLayers

app = typer.Typer(add_completion=False)
GIB = 1 << 30


@app.command()
def doctor(
    model: str | None = typer.Argument(None, help="A model to plan for (path or name)."),
    ctx: Ctx = 4096,
    gpu_layers: GpuLayers = "auto",
) -> None:
    """Python and binding versions, CPU features, GPU offload, devices and free memory, and the plan for MODEL."""
    from synatra_local.core import llama_backend
    from synatra_local.core.cpu import physical_cores
    from synatra_local.runtime.offload import CUDA_INSTALL, footprint, plan_offload, recommend_quantization

    devices = llama_backend.devices()
    backends = llama_backend.gpu_backends()
    gpus = [d for d in devices if d.kind in {"gpu", "igpu"}]
    print(f"python          {sys.version.split()[0]} ({platform.platform()})")
    print(f"llama-cpp-python {llama_backend.binding_version()}")
    print(f"cpu features    {llama_backend.system_info()}")
    print(f"threads         {physical_cores()} (one per physical core; --threads changes it)")
    offload = _offload_line(llama_backend.supports_gpu_offload(), backends, llama_backend.recent_errors())
    print(f"gpu offload     {offload}")
    for d in devices:
        print(f"device          {d.name} ({d.kind}, {d.description}): "
              f"{d.free_bytes / GIB:.1f} GiB free of {d.total_bytes / GIB:.1f} GiB")
    free_vram = max((d.free_bytes for d in gpus), default=0)
    ram = next((d.free_bytes for d in devices if d.kind == "cpu"), 0)
    print(f"recommended     {recommend_quantization(free_vram, ram)} for Synatra-7B on this machine")
    if not backends:
        print(f"cuda build      {CUDA_INSTALL}")
    if model:
        from synatra_local.core.gguf_info import read_model_info
        from synatra_local.runtime.store import resolve_model

        info = read_model_info(resolve_model(model))
        ctx = llama_backend.allocated_context(ctx)  # what llama.cpp would allocate for it
        plan = plan_offload(info, gpu_layers, n_ctx=ctx)
        fp = footprint(info, ctx)
        print(f"model           {info.path} ({info.file_type}, {info.parameters / 1e9:.2f} B parameters)")
        print(f"needs           {fp.total / GIB:.2f} GiB weights+KV at ctx {ctx}, "
              f"compute {fp.compute_bytes / GIB:.2f} GiB")
        print(f"gpu layers      {plan.layers} of {plan.total_layers}: {plan.reason}")


def _offload_line(can_offload: bool, backends: list[str], errors: list[str]) -> str:
    if can_offload:
        return f"yes ({', '.join(backends)})"
    if not backends:
        return "no (CPU-only build)"
    why = next((e for e in reversed(errors) if "init" in e or "driver" in e), "")
    return f"no: this {backends[0]} build found no usable GPU" + (f" ({why})" if why else "")


def main(argv: list[str]) -> int:
    return run_app(app, argv, "doctor")
