"""synatra-local: run the Korean chat model Synatra-7B locally on llama.cpp.

    from synatra_local import Engine
    engine = Engine("models/synatra-7b-v0.1-Q4_K_M.gguf")
    for piece in engine.stream([{"role": "user", "content": "안녕하세요"}]):
        print(piece, end="", flush=True)

Importing this package loads nothing heavy: names resolve on first use, and the runtime never imports the
converter, torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.errors import SynatraError
    from .runtime.conversation import Conversation
    from .runtime.engine import Engine, GenerationOptions, GenerationStats, Reply

_EXPORTS = {
    "Engine": "synatra_local.runtime.engine",
    "GenerationOptions": "synatra_local.runtime.engine",
    "GenerationStats": "synatra_local.runtime.engine",
    "Reply": "synatra_local.runtime.engine",
    "Conversation": "synatra_local.runtime.conversation",
    "SynatraError": "synatra_local.core.errors",
}
__all__ = ["Conversation", "Engine", "GenerationOptions", "GenerationStats", "Reply", "SynatraError"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
