"""An OpenAI-compatible HTTP server over one loaded model (`synatra-local serve`).

FastAPI and uvicorn come with the `server` extra; they are imported only here, so the rest of the package
works without them. Importing this package without them raises a SynatraError that says how to install them.
"""

from __future__ import annotations

from synatra_local.core.errors import SynatraError

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the modules
    raise SynatraError("the server needs FastAPI and uvicorn", fix="pip install 'synatra-local[server]'") from exc
