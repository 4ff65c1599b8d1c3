"""The prediction API end to end: a real uvicorn server, the real quick-trained model,
real HTTP. Every endpoint, the bad-input matrix, tokens, batching on/off, hot reload,
and agreement with the worker's decisions for the same windows."""

from __future__ import annotations

import json
import math
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from stream.core.records import FEATURES, WINDOW
from stream.core.settings import load_settings
from stream.metrics.scrape import parse, total
from stream.serve.app import openapi_document
from tests.helpers import REPO
from tests.helpers.pipeline import make_record
from tests.helpers.pipeline_core import in_records, run_core
from tests.helpers.serve import STATE, Renamed, body, running_server, wait_ready

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def predictor(trained_model_dir):
    from ml.serving.predictor import load_predictor

    return load_predictor(trained_model_dir)


def _settings(model_dir: Path, **kw):
    return load_settings(model_dir=model_dir, **kw)


def _loader(predictor):
    return lambda _dir, version: predictor if version == predictor.version else Renamed(predictor, version)


def _window(bw: float = 100.0, n: int = WINDOW) -> list[dict]:
    return [dict(STATE, bandwidth_mbps=bw * (1 + 0.01 * i)) for i in range(n)]


@pytest.fixture(scope="module")
def server(trained_model_dir, predictor):
    with running_server(_settings(trained_model_dir), loader=_loader(predictor)) as (client, app):
        wait_ready(client)
        yield client, app


def test_health_model_and_predict(server, predictor):
    client, _ = server
    assert client.get("/v2/health/live").json() == {"status": "live"}
    assert client.get("/v2/health/ready").json() == {"status": "ready", "model_version": predictor.version}
    meta = client.get("/v1/model").json()
    assert meta["model_version"] == predictor.version and meta["window"] == WINDOW
    assert meta["features"] == list(FEATURES) and meta["head"] == predictor.head
    assert meta["horizons"] == list(predictor.spec.horizons) and meta["quantiles"] == list(predictor.spec.quantiles)
    r = client.post("/v1/predict", json=body([_window(100), _window(5)], profiles=["datacenter", None]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == predictor.version and len(out["predictions"]) == 2
    for p in out["predictions"]:
        assert {"link_id", "seq", "ts_ms", "decided_at_ms"}.isdisjoint(p)
        assert p["allocation_pct"] == (p["action"] + 1) * 10
        assert math.isclose(p["allocated_bandwidth_mbps"], p["reference_bandwidth_mbps"] * p["allocation_pct"] / 100)
        f = p["forecast"]
        assert set(f) == {str(h) for h in predictor.spec.horizons}
        assert all(q["p10"] <= q["p50"] <= q["p90"] for q in f.values())
        assert p["predicted_bandwidth_mbps"] == f["1"]["p50"] and p["safe_bandwidth_mbps"] == f["1"]["p10"]
    # the answers differ with the input: 5 Mbit/s windows are not forecast like 100 Mbit/s ones
    assert out["predictions"][1]["predicted_bandwidth_mbps"] < out["predictions"][0]["predicted_bandwidth_mbps"] / 5


def test_answers_equal_the_workers_decisions_for_the_same_windows(server, predictor, bwp_settings):
    client, _ = server
    recs = [make_record(k, s, profile=("datacenter" if k else "internet")) for k in range(2) for s in range(13)]

    async def go(core):
        out = await core.process(in_records(recs))
        await core.confirm(out)
        return out

    decisions = run_core(bwp_settings, go, predictor).decisions
    assert len(decisions) == 2 * (13 - WINDOW + 1)
    by_link = {k: [r for r in recs if r.link_id == f"lk-{k:04d}"] for k in range(2)}
    windows, profiles, want = [], [], []
    for d in decisions:
        link = by_link[int(d.link_id[3:])]
        windows.append([dict(zip(FEATURES, r.features())) for r in link[d.seq - WINDOW + 1 : d.seq + 1]])
        profiles.append(d.profile)
        want.append(d.to_dict())
    got = client.post("/v1/predict", json=body(windows, profiles=profiles)).json()["predictions"]
    for g, w in zip(got, want):
        for k in ("action", "allocation_pct", "policy", "forecast_source", "schema_version", "model_version"):
            assert g[k] == w[k], k
        for k in ("predicted_bandwidth_mbps", "reference_bandwidth_mbps", "safe_bandwidth_mbps"):
            assert math.isclose(g[k], w[k], rel_tol=1e-5), (k, g[k], w[k])
        for h, q in w["forecast"].items():
            assert all(math.isclose(g["forecast"][h][n], v, rel_tol=1e-5) for n, v in q.items())


BAD = [
    # (headers, raw body, status, code)
    ({}, b"not json", 400, "invalid_json"),
    (
        {},
        b'{"windows": [['
        + b",".join([b'{"latency_ms": NaN, "bandwidth_mbps": 1, "packet_loss": 0, "reliability": 1}'] * 10)
        + b"]]}",
        422,
        "not_finite",
    ),
    ({}, json.dumps(body([_window(n=9)])).encode(), 422, "wrong_shape"),
    ({}, json.dumps(body([])).encode(), 422, "wrong_shape"),
    ({}, json.dumps({"windows": [[1] * 10]}).encode(), 422, "wrong_shape"),
    (
        {},
        json.dumps(body([[{k: v for k, v in STATE.items() if k != "reliability"}] * 10])).encode(),
        422,
        "wrong_shape",
    ),
    ({}, json.dumps(body([[dict(STATE, packet_loss="0.1")] * 10])).encode(), 422, "wrong_type"),
    ({}, json.dumps(body([[dict(STATE, bandwidth_mbps=-1.0)] * 10])).encode(), 422, "out_of_range"),
    ({}, json.dumps(body([[dict(STATE, reliability=1.5)] * 10])).encode(), 422, "out_of_range"),
    ({}, json.dumps(body([_window()] * 5)).encode(), 422, "too_many_windows"),
    ({}, json.dumps(body([_window()], profiles=["moon"])).encode(), 422, "invalid_profile"),
    ({}, json.dumps(body([_window()], profiles=[None, None])).encode(), 422, "wrong_shape"),
    ({}, json.dumps(body([_window()], extra=1)).encode(), 422, "unknown_field"),
    (
        {},
        b'{"windows": [' + b",".join([json.dumps(_window()).encode()] * 4) + b"]" + b" " * 9000 + b"}",
        413,
        "body_too_large",
    ),
    ({"content-type": "text/plain"}, json.dumps(body([_window()])).encode(), 415, "unsupported_media_type"),
]


def test_bad_input_matrix_gets_4xx_codes_and_the_server_lives_on(trained_model_dir, predictor):
    s = _settings(trained_model_dir, serve_max_windows=4, serve_max_body_bytes=8192)
    with running_server(s, loader=_loader(predictor)) as (client, app):
        wait_ready(client)
        for headers, raw, status, code in BAD:
            r = client.post("/v1/predict", content=raw, headers={"content-type": "application/json", **headers})
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (code, r.text)
            assert r.json()["error"]["message"]
        assert client.get("/nope").json()["error"]["code"] == "not_found"
        assert client.get("/v1/predict").status_code == 405
        assert client.get("/v2/health/live").status_code == 200
        assert client.post("/v1/predict", json=body([_window()])).status_code == 200  # still serving
        m = parse(client.get("/metrics").text)
        assert total(m, "bwp_serve_errors_total", code="out_of_range") == 2
        assert total(m, "bwp_serve_requests_total", route="/v1/predict", status="422") == 12
        assert total(m, "bwp_serve_windows_total") == 1


def test_not_ready_until_a_model_is_loaded(trained_model_dir, predictor):
    gate = threading.Event()

    def slow(_dir, version):
        gate.wait(30)
        return predictor

    with running_server(_settings(trained_model_dir), loader=slow) as (client, _):
        r = client.get("/v2/health/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert client.post("/v1/predict", json=body([_window()])).json()["error"]["code"] == "not_ready"
        assert client.get("/v2/health/live").status_code == 200
        gate.set()
        assert wait_ready(client)["model_version"] == predictor.version


def test_token_on_and_off(trained_model_dir, predictor, caplog):
    s = _settings(trained_model_dir, serve_token="s3cret-token")
    with running_server(s, loader=_loader(predictor)) as (client, _):
        wait_ready(client)  # health needs no token (probes)
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret-token"}):
            r = client.post("/v1/predict", json=body([_window()]), headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert client.get("/v1/model", headers=headers).status_code == 401
        ok = {"authorization": "Bearer s3cret-token"}
        assert client.post("/v1/predict", json=body([_window()]), headers=ok).status_code == 200
        assert client.get("/v1/model", headers=ok).status_code == 200
    assert "s3cret-token" not in caplog.text and "s3cret-token" not in repr(s)


def _concurrent(client, windows, threads=16):
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(lambda w: client.post("/v1/predict", json=body([w])).json(), windows))


def test_batching_on_and_off_give_the_same_answers(trained_model_dir, predictor):
    rng = np.random.default_rng(3)
    windows = [_window(float(bw)) for bw in rng.uniform(1, 500, 96)]
    answers = {}
    for batching in (True, False):
        s = _settings(trained_model_dir, serve_batching=batching, serve_batch_delay_ms=5.0)
        with running_server(s, loader=_loader(predictor)) as (client, _):
            wait_ready(client)
            answers[batching] = [a["predictions"][0] for a in _concurrent(client, windows)]
            m = parse(client.get("/metrics").text)
            passes, reqs = total(m, "bwp_serve_batch_requests_count"), total(m, "bwp_serve_batch_requests_sum")
            if batching:
                assert reqs / passes > 1.5, (reqs, passes)  # concurrent requests shared passes
            else:
                assert reqs == passes == len(windows)
    for on, off in zip(answers[True], answers[False]):
        assert on["action"] == off["action"] and on["policy"] == off["policy"]
        assert math.isclose(on["predicted_bandwidth_mbps"], off["predicted_bandwidth_mbps"], rel_tol=1e-5)


def test_hot_reload_mid_load_answers_every_request(trained_model_dir, predictor, tmp_path):
    reg = tmp_path / "models"
    shutil.copytree(trained_model_dir, reg)
    with running_server(_settings(reg), loader=_loader(predictor), poll_s=0.05) as (client, _):
        wait_ready(client)
        seen, errors = [], []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                r = client.post("/v1/predict", json=body([_window()]))
                (seen if r.status_code == 200 else errors).append(
                    r.json()["model_version"] if r.status_code == 200 else r.text
                )

        with ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(load) for _ in range(4)]
            while len(seen) < 20:
                threading.Event().wait(0.01)
            (reg / "current").write_text("v-next\n")
            end = len(seen) + 400
            while "v-next" not in seen[-5:] and len(seen) < end:
                threading.Event().wait(0.01)
            stop.set()
            for f in futs:
                f.result()
        assert not errors
        assert seen[0] == predictor.version and seen[-1] == "v-next"
        assert client.get("/v2/health/ready").json()["model_version"] == "v-next"
        first_new = seen.index("v-next")
        assert predictor.version not in seen[first_new + 8 :]  # at most the requests in flight at the swap


def test_openapi_document_is_served_and_checked_in(server):
    client, _ = server
    served = client.get("/openapi.json").json()
    for path in ("/v2/health/live", "/v2/health/ready", "/v1/model", "/v1/predict"):
        assert path in served["paths"]
    checked_in = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert served == checked_in == openapi_document(load_settings()), (
        "docs/openapi.json is stale: run `bwp serve --openapi > docs/openapi.json`"
    )


def test_a_pinned_version_serves_though_current_names_another(trained_model_dir, predictor, tmp_path):
    reg = tmp_path / "models"
    shutil.copytree(trained_model_dir, reg)  # current = predictor.version
    with running_server(_settings(reg), loader=_loader(predictor), model_version="v-pinned", poll_s=0.05) as (
        client,
        _,
    ):
        assert wait_ready(client)["model_version"] == "v-pinned"
        r = client.post("/v1/predict", json=body([_window()]))
        assert r.json()["model_version"] == "v-pinned"
        threading.Event().wait(0.3)  # several polls: the pointer is not followed
        assert client.get("/v2/health/ready").json()["model_version"] == "v-pinned"


def test_openapi_document_matches_what_the_server_enforces():
    """The bearer scheme is declared and asked for only on the routes that check a token; the
    value and size limits parse_predict enforces are in the schema; every route documents the
    errors the server sends."""
    from stream.core.records import MAX_BANDWIDTH_MBPS, MAX_LATENCY_MS

    settings = load_settings(serve_max_windows=77)
    doc = openapi_document(settings)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "BWP_SERVE_TOKEN, when the server sets one"
    }  # fmt: skip
    paths = doc["paths"]
    for path, method in (("/v1/model", "get"), ("/v1/predict", "post")):
        op = paths[path][method]
        assert op["security"] == [{"bearer": []}] and "401" in op["responses"], path
    for path in ("/v2/health/live", "/v2/health/ready"):
        op = paths[path]["get"]
        assert "security" not in op and "401" not in op["responses"], path
        assert {"405", "500"} <= set(op["responses"]), path
    assert "503" in paths["/v2/health/ready"]["get"]["responses"]
    body = paths["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert body["windows"]["maxItems"] == 77 == body["profiles"]["maxItems"]
    state = body["windows"]["items"]["items"]["properties"]
    assert state["bandwidth_mbps"]["maximum"] == MAX_BANDWIDTH_MBPS and state["latency_ms"]["maximum"] == MAX_LATENCY_MS
    assert {"400", "401", "405", "413", "415", "422", "500", "503"} <= set(paths["/v1/predict"]["post"]["responses"])


def test_a_wrong_method_gets_405_with_allow(server):
    client, _ = server
    for path, allowed in (("/v1/predict", "POST"), ("/v2/health/ready", "GET"), ("/v1/model", "GET")):
        r = client.put(path, json={})
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", path
        assert allowed in r.headers.get("allow", ""), (path, dict(r.headers))


def test_schema_valid_extremes_are_accepted(server):
    """A request at the documented limits is answered 200 (a schema-valid request was refused with 422
    when the limits were not in the document)."""
    from stream.core.records import MAX_BANDWIDTH_MBPS, MAX_LATENCY_MS

    client, _ = server
    state = {"latency_ms": MAX_LATENCY_MS, "bandwidth_mbps": MAX_BANDWIDTH_MBPS, "packet_loss": 1.0, "reliability": 0.0}
    r = client.post("/v1/predict", json={"windows": [[state] * WINDOW]})
    assert r.status_code == 200, r.text
    over = dict(state, bandwidth_mbps=MAX_BANDWIDTH_MBPS * 1.01)
    assert client.post("/v1/predict", json={"windows": [[over] * WINDOW]}).status_code == 422
