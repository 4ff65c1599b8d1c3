"""Write deploy/grafana/dashboards/bwp.json (the provisioned Grafana dashboard).

The JSON is generated so that panels stay uniform; edit this file, then run
``.venv/bin/python deploy/grafana/build_dashboard.py``. ``tests/deploy/test_compose.py`` checks
that every ``bwp_*`` metric the PromQL uses is one the worker exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "bwp.json"
DS = {"type": "prometheus", "uid": "bwp-prometheus"}
SEL = 'instance=~"$instance"'


def _targets(exprs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": legend, "range": True}
        for i, (e, legend) in enumerate(exprs)
    ]


def timeseries(title: str, exprs: list[tuple[str, str]], unit: str, desc: str, stack: bool = False) -> dict[str, Any]:
    """A time-series panel (Grafana 11)."""
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": _targets(exprs),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },  # fmt: skip
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
    }


def stat(title: str, expr: str, unit: str, desc: str, legend: str = "", thresholds: list | None = None) -> dict:
    """A single-value panel."""
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": _targets([(expr, legend)]),
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto"},
    }  # fmt: skip


def quantiles(metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[tuple[str, str]]:
    """histogram_quantile expressions over ``metric``'s buckets, per ``by`` label when given."""
    group = f"le, {by}" if by else "le"
    out = []
    for q in qs:
        legend = f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else "")
        out.append(
            (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[$__rate_interval])))", legend)
        )
    return out


def panels() -> list[dict[str, Any]]:
    """Every panel, laid out on a 24-column grid."""
    red = [{"color": "green", "value": None}, {"color": "orange", "value": 0.05}, {"color": "red", "value": 0.1}]
    lag_steps = [
        {"color": "green", "value": None},
        {"color": "orange", "value": 10000},
        {"color": "red", "value": 100000},
    ]
    row1 = [
        stat("Records in /s", f"sum(rate(bwp_records_consumed_total{{{SEL}}}[$__rate_interval]))", "ops",
             "Telemetry records consumed per second, all workers."),
        stat("Decisions /s", f"sum(rate(bwp_decisions_total{{{SEL}}}[$__rate_interval]))", "ops",
             "Decisions published (and acknowledged) per second."),
        stat("End-to-end p99", quantiles("bwp_end_to_end_latency_seconds", qs=(0.99,))[0][0], "s",
             "Decision publish time minus the state's timestamp; target <= 100 ms.", thresholds=red),
        stat("Consumer lag", f"sum(bwp_consumer_lag_records{{{SEL}}})", "short",
             "Records not yet committed, summed over telemetry partitions.", thresholds=lag_steps),
        stat("Workers up", 'count(up{job="bwp-worker"} == 1)', "short", "Worker replicas Prometheus scrapes."),
        stat("Model version", f"max by (version) (bwp_model_info{{{SEL}}})", "short",
             "Model version(s) the workers serve (more than one during a rollout).", legend="{{version}}"),
    ]  # fmt: skip
    for i, p in enumerate(row1):
        p["gridPos"] = {"h": 4, "w": 4, "x": 4 * i, "y": 0}
    if row1[-1]["type"] == "stat":
        row1[-1]["options"]["textMode"] = "name"
    big = [
        timeseries("Throughput", [
            (f"sum(rate(bwp_records_consumed_total{{{SEL}}}[$__rate_interval]))", "records in"),
            (f"sum by (model_version) (rate(bwp_decisions_total{{{SEL}}}[$__rate_interval]))", "decisions {{model_version}}"),
            (f"sum(rate(bwp_dead_letters_total{{{SEL}}}[$__rate_interval]))", "dead letters"),
            (f"sum(rate(bwp_windows_filling_total{{{SEL}}}[$__rate_interval]))", "windows filling"),
        ], "ops", "Records consumed, decisions by model version, dead letters, states whose window is not full yet."),
        timeseries("Latency per stage (p50 / p99 per micro-batch)",
                   quantiles("bwp_stage_duration_seconds", "stage", (0.5, 0.99)), "s",
                   "Time per micro-batch in decode, redis, predict, produce and ack."),
        timeseries("End-to-end latency", quantiles("bwp_end_to_end_latency_seconds"), "s",
                   "Decision publish time minus the state's ts_ms (includes probe clock skew)."),
        timeseries("Consumer lag by partition", [
            (f"sum by (partition) (bwp_consumer_lag_records{{{SEL}}})", "partition {{partition}}"),
        ], "short", "Highwater minus committed offset per telemetry partition.", stack=True),
        timeseries("Errors", [
            (f"sum(rate(bwp_produce_errors_total{{{SEL}}}[$__rate_interval]))", "produce"),
            (f"sum(rate(bwp_redis_errors_total{{{SEL}}}[$__rate_interval]))", "redis"),
            (f"sum(rate(bwp_predict_errors_total{{{SEL}}}[$__rate_interval]))", "predict"),
            (f"sum by (result) (rate(bwp_model_reloads_total{{{SEL}}}[$__rate_interval]))", "model reload {{result}}"),
        ], "ops", "Failed (retried) produce, Redis and predict calls; model hot reloads by result."),
        timeseries("Dead letters and dropped records by reason", [
            (f"sum by (reason) (rate(bwp_dead_letters_total{{{SEL}}}[$__rate_interval]))", "dlq {{reason}}"),
            (f"sum by (kind) (rate(bwp_records_dropped_total{{{SEL}}}[$__rate_interval]))", "dropped {{kind}}"),
        ], "ops", "Invalid telemetry by reason code; duplicate / stale records that changed no window.", stack=True),
        timeseries("Redis latency (window update / ack round trip)",
                   [(e.replace(f"{{{SEL}}}", f'{{stage=~"redis|ack",{SEL}}}'), lg)
                    for e, lg in quantiles("bwp_stage_duration_seconds", "stage", (0.5, 0.99))],
                   "s", "One Redis script round trip per micro-batch (redis) and the ack update (ack)."),
        timeseries("Model version per worker", [
            (f"max by (instance, version) (bwp_model_info{{{SEL}}})", "{{instance}} {{version}}"),
        ], "short", "1 for the version each worker serves; a promotion shows as a switch."),
        timeseries("Micro-batch size", quantiles("bwp_batch_records", qs=(0.5, 0.99)), "short",
                   "Records per micro-batch (grows with load: the worker batches what is waiting)."),
        timeseries("Time since last processed batch", [
            (f"time() - max by (instance) (bwp_last_record_processed_timestamp_seconds{{{SEL}}})", "{{instance}}"),
        ], "s", "Seconds since each worker finished a micro-batch; grows when input stops or a worker hangs."),
        timeseries("Live accuracy: model vs last value (mean relative error)", [
            (f"sum by (predictor, profile) (rate(bwp_live_rel_error_sum{{{SEL}}}[$__rate_interval])) / "
             f"sum by (predictor, profile) (rate(bwp_live_rel_error_count{{{SEL}}}[$__rate_interval]))",
             "{{predictor}} {{profile}}"),
        ], "percentunit", "Each forecast scored when the link's next state arrives: min(2, |forecast - actual| / "
           "actual), LSTM vs the last-value forecast, per profile. The model line above last-value's means it "
           "no longer beats the naive forecast."),
        timeseries("Live accuracy: mean absolute error, and drift detections", [
            (f"sum by (predictor, profile) (rate(bwp_live_abs_error_mbps_sum{{{SEL}}}[$__rate_interval])) / "
             f"sum by (predictor, profile) (rate(bwp_live_abs_error_mbps_count{{{SEL}}}[$__rate_interval]))",
             "MAE {{predictor}} {{profile}}"),
            (f"sum by (profile) (increase(bwp_drift_detections_total{{{SEL}}}[1h]))",
             "drift detections {{profile}} (last hour)"),
        ], "short", "Mean |forecast - actual| in Mbit/s per predictor and profile; drift detections (Page-Hinkley "
           "on model minus last-value relative error) over the last hour; each one sets the retrain flag."),
        timeseries("Live accuracy: mean pinball loss, served quantiles vs naive (quantile decisions)", [
            (f"sum by (predictor, profile) (rate(bwp_live_pinball_mbps_sum{{{SEL}}}[$__rate_interval])) / "
             f"sum by (predictor, profile) (rate(bwp_live_pinball_mbps_count{{{SEL}}}[$__rate_interval]))",
             "{{predictor}} {{profile}}"),
        ], "short", "Mean pinball loss (Mbit/s) over p10/p50/p90 of each scored h = 1 quantile forecast: served vs "
           "the last value widened by the model's training quantiles. Drift on quantile decisions watches this "
           "(relative to the actual); the served line above the naive one means the model no longer beats it."),
        timeseries("Garbage-collector pauses (p99 by generation)",
                   quantiles("bwp_gc_pause_seconds", by="generation", qs=(0.99,)), "s",
                   "Every thread of a worker waits during a collection. Full (generation 2) collections skip the "
                   "heap frozen at start-up (BWP_GC_FREEZE); one full collection follows each model swap."),
    ]  # fmt: skip
    for i, p in enumerate(big):
        p["gridPos"] = {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 4 + 8 * (i // 2)}
    out = row1 + big
    for n, p in enumerate(out, start=1):
        p["id"] = n
    return out


def dashboard() -> dict[str, Any]:
    """The dashboard JSON model."""
    return {
        "uid": "bwp-pipeline",
        "title": "bwp pipeline",
        "description": "Streaming bandwidth predictor: throughput, latency, lag, errors, model version.",
        "tags": ["bwp"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "utc",
        "templating": {
            "list": [
                {
                    "name": "instance",
                    "label": "worker",
                    "type": "query",
                    "datasource": DS,
                    "query": {"query": "label_values(bwp_records_consumed_total, instance)", "refId": "instance"},
                    "definition": "label_values(bwp_records_consumed_total, instance)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                    "sort": 1,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels(),
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
