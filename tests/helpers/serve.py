"""``bwp serve``'s app under a real uvicorn server on a free loopback port, in a thread of the test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from stream.serve.app import create_app
from stream.serve.server import bind

STATE = {"latency_ms": 20.0, "bandwidth_mbps": 100.0, "packet_loss": 0.001, "reliability": 0.99}


class Renamed:
    """A loaded predictor answering under another version name (hot-reload tests swap between two)."""

    def __init__(self, predictor: Any, version: str) -> None:
        self._p = predictor
        self.version = version
        self.head = predictor.head
        self.spec = predictor.spec

    def predict(self, windows: Any, profiles: Any = None) -> Any:
        return self._p.predict(windows, profiles)


@contextmanager
def running_server(settings: Any, **app_kw: Any) -> Iterator[tuple[httpx.Client, Any]]:
    """(client on the server's base URL, the app) while a uvicorn server runs ``create_app(settings, **app_kw)``."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(settings, **app_kw)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        end = time.monotonic() + 60
        while not server.started and time.monotonic() < end:
            time.sleep(0.02)
        assert server.started, "uvicorn did not start"
        yield client, app
    finally:
        client.close()
        server.should_exit = True
        thread.join(15)
        sock.close()


def wait_ready(client: httpx.Client, timeout_s: float = 120) -> dict:
    """The /v2/health/ready answer once it is 200."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        r = client.get("/v2/health/ready")
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"server not ready after {timeout_s} s: {r.status_code} {r.text}")


def body(windows: list[list[dict]], **extra: Any) -> dict:
    """A predict request body."""
    return {"windows": windows, **extra}
