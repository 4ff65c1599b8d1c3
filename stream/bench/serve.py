"""``bwp bench serve``: requests/s and latency of the prediction API, batching on and off.

For each mode (dynamic batching on, then off) the bench starts ``bwp serve`` in its own
process on a free loopback port with the registry's current model, waits until it is
ready, and then, for each concurrency (default 1, 16, 64), keeps that many keep-alive
HTTP/1.1 connections busy with single-window ``POST /v1/predict`` requests (simulator
windows, each connection sends its next request when the answer came) for ``--seconds``
after a one-second warm-up. Reported per mode and concurrency: requests/s (= windows/s
here), p50 and p99 latency from request sent to answer read, errors, and the server's
mean windows per forward pass (from its /metrics). The load generator runs in this
process on raw asyncio streams (a few microseconds per request), so on a 2-core machine
client and server share the cores, as they would on one host.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import numpy as np
import orjson

from ml.data import simulator_links, windows_of
from stream.core.records import FEATURES
from stream.core.settings import Settings
from stream.metrics.scrape import scrape, total
from stream.ops.harness import ServeSubprocess, remove_or_keep, wait_until
from stream.ops.stack import free_port

CONCURRENCY = (1, 16, 64)


def _bodies(n: int = 256) -> list[bytes]:
    """``n`` single-window predict bodies from simulator links (both profiles)."""
    links = simulator_links("mixed", 8, 60, seed=11)
    w, _, _ = windows_of(links)
    w = w[np.random.default_rng(0).permutation(len(w))[:n]]  # (n, 10, 4)
    return [orjson.dumps({"windows": [[dict(zip(FEATURES, row)) for row in win.tolist()]]}) for win in w]


def _request(host: str, port: int, body: bytes) -> bytes:
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def _client(host: str, port: int, reqs: list[bytes], stop: float, lat: list[float], errs: list[int]) -> None:
    """One keep-alive connection sending requests back to back until ``stop`` (monotonic)."""
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            writer.write(reqs[i % len(reqs)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line[:15].lower() == b"content-length:")  # fmt: skip
            await reader.readexactly(length)
            if status == 200:
                lat.append(time.perf_counter() - t0)
            else:
                errs.append(status)
    finally:
        writer.close()


async def _load(host: str, port: int, reqs: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    """Warm up 1 s, then measure ``seconds`` of closed-loop load at ``concurrency``."""
    await asyncio.gather(*(_client(host, port, reqs, time.monotonic() + 1.0, [], []) for _ in range(concurrency)))
    lat: list[float] = []
    errs: list[int] = []
    t0 = time.monotonic()
    await asyncio.gather(*(_client(host, port, reqs, t0 + seconds, lat, errs) for _ in range(concurrency)))
    wall = time.monotonic() - t0
    t = np.asarray(lat) * 1e3
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "requests_per_s": len(lat) / wall,
        "windows_per_s": len(lat) / wall,  # one window per request
        "p50_ms": float(np.percentile(t, 50)) if len(t) else None,
        "p99_ms": float(np.percentile(t, 99)) if len(t) else None,
        "errors": len(errs),
    }


def _batch_totals(port: int) -> tuple[float, float]:
    """(forward passes, windows) the server has run so far, from its /metrics."""
    m = scrape(port) or {}
    return total(m, "bwp_serve_batch_windows_count") or 0.0, total(m, "bwp_serve_batch_windows_sum") or 0.0


def ready_version(url: str) -> str | None:
    """The model version ``GET /v2/health/ready`` names; None while not ready (or not answering)."""
    try:
        with urlopen(url + "/v2/health/ready", timeout=2) as r:
            return str(orjson.loads(r.read())["model_version"])
    except OSError:
        return None


def _run_mode(
    settings: Settings, batching: bool, concurrency: tuple[int, ...], seconds: float, log: Path, quiet: bool
) -> tuple[list[dict[str, Any]], str | None]:
    """One server (batching on or off) under each concurrency: the rows and the model version."""
    port = free_port()
    s = settings.model_copy(update={"serve_host": "127.0.0.1", "serve_port": port, "serve_batching": batching})
    srv = ServeSubprocess(s, log).start()
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: ready_version(url) is not None or not srv.alive(), 300, 0.5) or not srv.alive():
            raise RuntimeError(f"bwp serve did not get ready; log tail:\n{srv.log_tail()}")
        reqs = [_request("127.0.0.1", port, b) for b in _bodies()]
        rows = []
        for c in concurrency:
            if not quiet:
                mode = "on" if batching else "off"
                print(f"[bench serve] batching {mode}: concurrency {c}, {seconds:g} s", file=sys.stderr, flush=True)
            passes, windows = _batch_totals(port)
            row = asyncio.run(_load("127.0.0.1", port, reqs, c, seconds))
            p2, w2 = _batch_totals(port)
            row["mean_batch_windows"] = (w2 - windows) / (p2 - passes) if p2 > passes else None  # incl. warm-up
            rows.append(row)
        return rows, ready_version(url)
    finally:
        srv.stop()


def run_serve_bench(
    settings: Settings, seconds: float = 10.0, concurrency: tuple[int, ...] = CONCURRENCY, quiet: bool = False
) -> dict[str, Any]:
    """Start ``bwp serve`` per batching mode, load it at each concurrency, stop it. Returns the result."""
    out: dict[str, Any] = {"seconds": seconds, "modes": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bwp-bench-serve-"))
    ok = False
    try:
        for mode, batching in (("batching_on", True), ("batching_off", False)):
            rows, version = _run_mode(settings, batching, concurrency, seconds, tmp / f"serve-{mode}.log", quiet)
            out["modes"][mode] = rows
            out.setdefault("model_version", version)
        on = {r["concurrency"]: r for r in out["modes"]["batching_on"]}
        off = {r["concurrency"]: r for r in out["modes"]["batching_off"]}
        top = max(concurrency)
        out["batching_speedup_at_max_concurrency"] = on[top]["windows_per_s"] / max(off[top]["windows_per_s"], 1e-9)
        ok = True
        return out
    finally:
        remove_or_keep(tmp, ok)
