"""gguf-py, imported without the Mistral tokenizer library it would load alongside.

gguf's vocab module imports `mistral_common` whenever it is installed (for Mistral's own tokenizer formats, which
this project never reads): about a second at every start of `convert`, `quantize` and `inspect` on machines that
have it (the demo extra installs it). Hiding it while gguf loads leaves gguf's own fallback in place; anything
imported later sees `mistral_common` as usual. Import `gguf` from here.
"""

from __future__ import annotations

import sys
from types import ModuleType

_UNUSED = ("mistral_common",)


def _load() -> ModuleType:
    if "gguf" in sys.modules:
        return sys.modules["gguf"]
    hidden = [name for name in _UNUSED if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # an import of it raises ImportError
    try:
        import gguf
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return gguf


gguf = _load()
