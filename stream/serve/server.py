"""Run the prediction API under uvicorn on a socket bwp binds itself (so port 0 works and
the real port can be printed before the first request)."""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import uvicorn

from stream.core.errors import ConfigError
from stream.core.settings import Settings
from stream.serve.app import create_app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 = a free port); ConfigError when it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this (Linux). Without it, a keep-alive answer's body waited
    # for the client's delayed ACK of its head: 52 ms per request instead of 6 (measured).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"bwp serve cannot listen on {host}:{port} (BWP_SERVE_HOST/BWP_SERVE_PORT): {exc}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve(settings: Settings, model_version: str | None = None, announce: Any = sys.stdout) -> int:
    """Serve until SIGINT/SIGTERM; prints ``bwp serve: listening on http://HOST:PORT`` once bound."""
    sock = bind(settings.serve_host, settings.serve_port)
    host, port = sock.getsockname()[:2]
    app = create_app(settings, model_version=model_version)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(f"bwp serve: listening on http://{shown}:{port}", file=announce, flush=True)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    return 0
