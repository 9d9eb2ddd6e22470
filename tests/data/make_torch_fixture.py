"""Write `torch_saved_state_dict.bin` with real torch.save, and the values it must hold as a numpy `.npz`.

The `.bin` reader is tested against this file so that it is checked against torch's own writer, not only
against ours, while tests need no torch. Run once, with torch installed:
`python tests/data/make_torch_fixture.py`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
SPECIAL_F32 = [float("nan"), float("inf"), float("-inf"), -0.0, 1e-40, 3.0e38]


def expected(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values as numpy, bfloat16 as its raw uint16 bits."""
    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def main() -> None:
    gen = torch.Generator().manual_seed(20240601)
    f32 = torch.randn(6, 8, generator=gen)
    f32[0, : len(SPECIAL_F32)] = torch.tensor(SPECIAL_F32)
    bf16 = torch.randn(16, 12, generator=gen).to(torch.bfloat16)
    bf16[0, : len(SPECIAL_F32)] = torch.tensor(SPECIAL_F32).to(torch.bfloat16)
    embed = torch.randn(32, 16, generator=gen).to(torch.float16)
    base = torch.randn(10, 7, generator=gen)

    state = OrderedDict()
    state["model.f32.weight"] = f32
    state["model.f16.embed_tokens.weight"] = embed
    state["lm_head.weight"] = embed  # tied weight: the same tensor under two names
    state["model.bf16.weight"] = bf16
    state["model.bf16.transposed"] = bf16.t()  # non-contiguous view of the same storage
    state["model.f32.transposed"] = base.t()
    state["model.f32.rows_3_to_9"] = base[3:9]  # view with a storage offset
    state["model.norm.weight"] = torch.randn(12, generator=gen).to(torch.bfloat16)
    state["model.param"] = torch.nn.Parameter(torch.randn(2, 3, generator=gen))
    state._metadata = OrderedDict({"": {"version": 1}})  # what nn.Module.state_dict() attaches

    torch.save(state, HERE / "torch_saved_state_dict.bin")
    np.savez(HERE / "torch_saved_state_dict.npz", **{name: expected(t) for name, t in state.items()})


if __name__ == "__main__":
    main()
