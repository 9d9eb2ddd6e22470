"""The browser chat page at `/`: static files shipped in the package (`web/`), served with a strict CSP.

The page is plain JavaScript modules plus two vendored, pinned libraries (marked, DOMPurify; see
`web/vendor/fetch.sh`); nothing is built at install time and nothing is loaded from anywhere but this server.
It talks only to `/v1/chat/completions` and `/v1/models`, so the page itself needs no API key: it asks the user
for one when the API answers 401.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

from .schemas import APIError

WEB_ROOT = Path(__file__).with_name("web")
STATIC_PREFIX = "/web/"
PAGE_PATHS = frozenset({"/", "/index.html"})

# Model output is rendered as sanitised Markdown; this policy is the second wall: no inline script or style, no
# eval, nothing fetched from another origin (images only as data: URLs), no forms, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",  # revalidated (ETag), so an upgraded package's page is seen at once
}
# A fixed table rather than the platform's mimetypes: module scripts must be served as JavaScript everywhere.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def is_web_path(path: str) -> bool:
    """The page and its static files: public, so that a browser can load them before it knows the API key."""
    return path in PAGE_PATHS or path.startswith(STATIC_PREFIX)


def static_files(root: Path = WEB_ROOT) -> dict[str, Path]:
    """URL name → file for every servable file under `root` (an allow-list: no path from a request is joined)."""
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in CONTENT_TYPES
    }


def add_web(app: FastAPI, root: Path = WEB_ROOT) -> None:
    """Serve the chat page at `/` and its files under `/web/`."""
    files = static_files(root)
    page = root / "index.html"

    def send(path: Path) -> Response:
        return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=SECURITY_HEADERS)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    @app.api_route("/index.html", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> Response:
        return send(page)

    @app.api_route(STATIC_PREFIX + "{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static(name: str) -> Response:
        path = files.get(name)
        if path is None:
            raise APIError(404, f"no such file: {STATIC_PREFIX}{name}", code="not_found")
        return send(path)
