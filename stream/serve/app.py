"""The prediction API as an ASGI app (FastAPI): health, model metadata, predict, metrics.

Paths follow the conventions of ML serving (KServe's v2 health routes) and never change
within a major version: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v1/model``,
``POST /v1/predict``, ``GET /metrics``, ``GET /openapi.json``. Every refusal is JSON
``{"error": {"code": ..., "message": ...}}`` with a 4xx (503 while no model is loaded);
docs/integration.md lists the codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from stream.core.compression import profile_from
from stream.core.errors import ApiError
from stream.core.records import FEATURES, N_ACTIONS, WINDOW
from stream.core.settings import Settings
from stream.lifecycle.reload import POLL_S, ModelWatcher
from stream.metrics.serve import ServeMetrics
from stream.serve.batcher import Batcher, DecisionConfig
from stream.serve.openapi import AUTHENTICATED, COMMON, ERRORS, NOT_READY, SECURITY_SCHEMES, predict_doc
from stream.serve.requests import parse_predict

log = logging.getLogger("bwp.serve")

ROUTES = ("/v2/health/live", "/v2/health/ready", "/v1/model", "/v1/predict", "/metrics", "/openapi.json")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    r = _json({"error": {"code": code, "message": message}}, status)
    if headers:
        r.headers.update(headers)  # e.g. Allow on a 405 (RFC 9110)
    return r


class _Metered:
    """ASGI middleware: count each request by route and status and time it (no per-link labels)."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"  # bounded label set
        status = [500]

        async def send_(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"body must be <= {limit} bytes, Content-Length says {declared}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"body must be <= {limit} bytes, got more")
        chunks.append(chunk)
    return b"".join(chunks)


def _authorizer(settings: Settings) -> Callable[[Request], None]:
    token = settings.serve_token.get_secret_value().encode() if settings.serve_token else None

    def check(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        # constant time: the comparison does not tell how much of a guess was right
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), token):
            raise ApiError(401, "unauthorized", "send the header 'Authorization: Bearer <BWP_SERVE_TOKEN>'")

    return check


def model_info(predictor: Any, schema_version: int) -> dict[str, Any]:
    """``GET /v1/model``: version, window, features, head, horizons, quantiles of ``predictor``."""
    spec = getattr(predictor, "spec", None)
    return {
        "model_version": predictor.version,
        "window": WINDOW,
        "features": list(FEATURES),
        "head": getattr(predictor, "head", "point"),
        "horizons": list(spec.horizons) if spec is not None else [1],
        "quantiles": list(spec.quantiles) if spec is not None else [],
        "n_actions": N_ACTIONS,
        "decisions_schema_version": schema_version,
    }


# Long on purpose: the app's routes, handlers and lifespan read best as one definition.
def create_app(
    settings: Settings,
    *,
    model_version: str | None = None,
    loader: Callable[[Path, str], Any] | None = None,
    metrics: ServeMetrics | None = None,
    poll_s: float = POLL_S,
) -> FastAPI:
    """The API app on ``settings``: it loads the registry's current model (or pins ``model_version``)
    off the event loop, is ready once one is loaded, and follows the ``current`` pointer like the worker."""
    m = metrics or ServeMetrics.create()
    config = DecisionConfig(
        settings.decisions_schema_version, profile_from(settings.compression_profile), settings.compression_horizon
    )
    batcher = Batcher(
        m, config, batching=settings.serve_batching,
        delay_s=settings.serve_batch_delay_ms / 1000.0, max_batch=settings.serve_max_batch,
    )  # fmt: skip
    authorize = _authorizer(settings)
    watcher = ModelWatcher(settings.model_dir, "", batcher.set_predictor, m, loader=loader, pinned=model_version)

    async def follow() -> None:
        while True:
            await watcher.tick()
            await asyncio.sleep(poll_s)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        task = asyncio.get_running_loop().create_task(follow(), name="bwp-serve-watcher")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            watcher.close()
            await batcher.close()

    app = FastAPI(
        title="bwp prediction API", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Forecasts and allocation decisions for 10-state link windows, as the bwp worker makes them.",
    )  # fmt: skip
    app.state.batcher, app.state.metrics, app.state.watcher = batcher, m, watcher

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> Response:
        m.errors.labels(exc.code).inc()
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        m.errors.labels(code).inc()
        return _error(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> Response:
        log.exception("bwp serve: unexpected error")
        m.errors.labels("internal").inc()
        return _error(500, "internal", f"{type(exc).__name__}: {exc}")

    @app.get("/v2/health/live", summary="Liveness: 200 while the process serves requests", responses=COMMON)
    async def live() -> Response:
        return _json({"status": "live"})

    @app.get(
        "/v2/health/ready", summary="Readiness: 200 once a model is loaded, else 503 not_ready", responses=NOT_READY
    )
    async def ready() -> Response:
        p = batcher.predictor
        if p is None:
            raise ApiError(503, "not_ready", "no model is loaded yet")
        return _json({"status": "ready", "model_version": p.version})

    @app.get(
        "/v1/model", summary="The model answering: version, window, features, horizons, quantiles", responses=ERRORS,
        openapi_extra=AUTHENTICATED,
    )  # fmt: skip
    async def model(request: Request) -> Response:
        authorize(request)
        p = batcher.predictor
        if p is None:
            raise ApiError(503, "not_ready", "no model is loaded yet")
        return _json(model_info(p, batcher.config.schema_version))

    @app.post("/v1/predict", **predict_doc(settings.serve_max_windows))
    async def predict(request: Request) -> Response:
        authorize(request)
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "unsupported_media_type", f"Content-Type must be application/json, got {ctype!r:.60}")
        x, profiles = parse_predict(await _read_body(request, settings.serve_max_body_bytes),
                                    settings.serve_max_windows)  # fmt: skip
        version, rows = await batcher.predict(x, profiles)
        m.windows.inc(len(rows))
        return _json({"model_version": version, "predictions": rows})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_() -> Response:
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Metered, metrics=m)
    _with_security(app)
    return app


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The document ``GET /openapi.json`` serves (docs/openapi.json holds a copy)."""
    return create_app(settings).openapi()


def _with_security(app: FastAPI) -> None:
    """Declare the bearer scheme in ``components.securitySchemes`` (FastAPI adds it only for its own
    security dependencies; the token check here is a plain function)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            doc.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
