"""Running the app under uvicorn: in the foreground (`synatra-local serve`) or in a background thread."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from synatra_local.core.errors import SynatraError

from .app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS_CAP, DEFAULT_STREAM_INTERVAL, create_app

if TYPE_CHECKING:
    from synatra_local.runtime.engine import Engine


def serve(
    engine: Engine,
    *,
    model_id: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
    stream_interval: float = DEFAULT_STREAM_INTERVAL,
    web: bool = True,
    verbose: bool = False,
    on_ready: Callable[[str], None] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve `engine` until Ctrl-C (or SIGTERM); `on_ready(url)` is called once the socket listens.

    `sock`, from `bind(host, port)`, lets a caller claim the port before the slow model load.
    """
    app = create_app(
        engine,
        model_id=model_id or engine.path.stem,
        api_key=api_key,
        cors_origins=cors_origins,
        max_body_bytes=max_body_bytes,
        max_tokens_cap=max_tokens_cap,
        stream_interval=stream_interval,
        web=web,
    )
    sock = sock or bind(host, port)
    config = _config(app, verbose=verbose)
    url = base_url(host, sock.getsockname()[1])
    server = _Server(config, (lambda: on_ready(url)) if on_ready else None)
    try:
        server.run(sockets=[sock])
    finally:
        engine.cancel()
        sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on (host, port), or a SynatraError that says why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise SynatraError(f"cannot listen on {host}:{port}: {exc}", fix="check --host") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SynatraError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            fix="choose another --port (or stop the other server)",
        ) from exc
    sock.set_inheritable(True)
    return sock


def base_url(host: str, port: int) -> str:
    try:
        shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        shown = host
    return f"http://{shown}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _config(app: FastAPI, *, verbose: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level="info" if verbose else "warning",
        access_log=verbose,
        timeout_graceful_shutdown=3,
        server_header=False,
    )


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()


class BackgroundServer:
    """`app` served by uvicorn in a daemon thread (tests, benchmarks): `with BackgroundServer(app) as server:`.

    Port 0 (the default) picks a free port; `server.url` is the base URL once the context is entered.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> None:
        self.app = app
        self.host = host
        self._sock = bind(host, port)
        self.port = self._sock.getsockname()[1]
        self.url = base_url(host, self.port)
        self._server = uvicorn.Server(_config(app, verbose=verbose))
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)

    def _run(self) -> None:
        self._server.run(sockets=[self._sock])

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
