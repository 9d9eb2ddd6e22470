"""Hugging Face Synatra/Mistral/Llama checkpoints → GGUF for llama.cpp, without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import convert, quantize

__all__ = ["convert", "quantize"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
