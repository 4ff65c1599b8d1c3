"""``bwp serve``: the prediction API (docs/integration.md)."""

from __future__ import annotations

import argparse
import json
import sys

from stream.core.flags import add_settings_flags, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bwp serve``."""
    p = sub.add_parser(
        "serve",
        help="the prediction API: forecasts and allocations for windows over HTTP (FastAPI + uvicorn)",
        description="Serve GET /v2/health/live, GET /v2/health/ready (200 once a model is loaded), GET /v1/model, "
        "POST /v1/predict (one or many 10-state windows in raw units -> the decision the worker would make for "
        "each), GET /metrics and GET /openapi.json. Concurrent requests are batched into one forward pass "
        "(BWP_SERVE_BATCHING, BWP_SERVE_BATCH_DELAY_MS). The registry's current model is followed and hot-reloaded "
        "like the worker's (unless --model-version pins one). Binds to 127.0.0.1:8501 by default; set "
        "BWP_SERVE_TOKEN to require 'Authorization: Bearer <token>' on /v1/*. Stop with Ctrl-C / SIGTERM.",
    )
    p.add_argument("--host", default=None, help="address to bind (env BWP_SERVE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (env BWP_SERVE_PORT, default 8501; 0 = any free)")
    p.add_argument("--model-version", default=None, help="serve this version only (no hot reload)")
    p.add_argument("--no-batching", action="store_true", help="one forward pass per request (BWP_SERVE_BATCHING=0)")
    p.add_argument("--openapi", action="store_true", help="print the OpenAPI document and exit (docs/openapi.json)")
    add_settings_flags(p, "--model-dir")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    extra: dict[str, object] = {}
    if args.host is not None:
        extra["serve_host"] = args.host
    if args.port is not None:
        extra["serve_port"] = args.port
    if args.no_batching:
        extra["serve_batching"] = False
    settings = settings_from_args(args, **extra)
    if args.openapi:
        from stream.serve.app import openapi_document  # FastAPI: only this command needs it

        print(json.dumps(openapi_document(settings), indent=2, sort_keys=True))
        return 0
    from stream.serve.server import serve  # FastAPI, uvicorn and the model code: only this command needs them

    return serve(settings, args.model_version, announce=sys.stdout)
