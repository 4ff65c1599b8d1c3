"""Render docs/img/dashboard.png: dashboard panels from a real short run.

Starts the embedded stack, trains a quick model, runs one ``bwp worker`` with the
simulator publishing at a fixed rate, lets a local ``prometheus`` scrape the worker every
second, then plots the dashboard's own PromQL (query_range) with matplotlib. Takes a few
minutes; needs ``prometheus`` on PATH. Usage::

    .venv/bin/python deploy/grafana/snapshot.py [--seconds 90] [--links 300] [--rate 600]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from stream.core.settings import load_settings  # noqa: E402
from stream.ops.stack import EmbeddedStack, free_port  # noqa: E402

BWP = str(Path(sys.executable).parent / "bwp")
OUT = REPO / "docs" / "img" / "dashboard.png"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _panel_queries() -> dict[str, list[tuple[str, str]]]:
    dash = json.loads((REPO / "deploy/grafana/dashboards/bwp.json").read_text())
    return {
        p["title"]: [(t["expr"].replace("$__rate_interval", "15s").replace("$instance", ".*"), t["legendFormat"])
                     for t in p["targets"]]
        for p in dash["panels"]
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=90)
    ap.add_argument("--links", type=int, default=300)
    ap.add_argument("--rate", type=int, default=600)
    ap.add_argument("--series", type=Path, default=None, help="save the queried series here (JSON)")
    ap.add_argument("--replot", type=Path, default=None, help="plot series saved with --series; no run")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads(args.replot.read_text())
        _plot(saved["series"], argparse.Namespace(**saved["args"]))
        print(f"wrote {OUT}")
        return 0
    prom_bin = shutil.which("prometheus")
    if not prom_bin:
        print("prometheus is not on PATH (make prometheus)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bwp-snapshot-"))
    mport = free_port()
    s = load_settings(
        state_dir=tmp / "state", model_dir=tmp / "models", metrics_port=mport,
        kafka_bootstrap=f"127.0.0.1:{free_port()}", redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )  # fmt: skip
    stack = EmbeddedStack(s)
    procs: list[subprocess.Popen] = []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", BWP_KAFKA_BOOTSTRAP=s.kafka_bootstrap, BWP_REDIS_URL=s.redis_url,
               BWP_STATE_DIR=str(s.state_dir), BWP_MODEL_DIR=str(s.model_dir))  # fmt: skip
    try:
        stack.up(partitions=4)
        subprocess.run([BWP, "train", "--quick"], env=env, check=True, stdout=subprocess.DEVNULL)
        log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - the worker writes to it until the end
        procs.append(subprocess.Popen([BWP, "worker", "--metrics-port", str(mport)], env=env, stdout=log, stderr=log))
        cfg = tmp / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: bwp-worker\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{mport}']}}]\n"
        )
        pport = free_port()
        procs.append(subprocess.Popen(
            [prom_bin, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{pport}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        # Wait for the worker (TensorFlow import, model load) and Prometheus before feeding.
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2).close()
                urllib.request.urlopen(f"http://127.0.0.1:{pport}/-/ready", timeout=2).close()
                break
            except OSError:
                if time.time() > deadline or procs[0].poll() is not None:
                    raise RuntimeError((tmp / "worker.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        time.sleep(5)  # let the consumer group settle
        start = time.time()
        # Simulated time must advance like the wall clock, or ts_ms-based latency is meaningless.
        step_ms = max(1, round(1000 * args.links / args.rate))
        procs.append(subprocess.Popen(
            [BWP, "simulate", "--links", str(args.links), "--forever", "--rate", str(args.rate), "--profile", "mixed",
             "--step-ms", str(step_ms), "--progress-every", "3600"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        time.sleep(args.seconds)
        end = time.time()
        base = f"http://127.0.0.1:{pport}/api/v1/query_range?"
        series = {}
        for title, queries in _panel_queries().items():
            rows = []
            for expr, legend in queries:
                q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 2})
                for r in _get(base + q)["data"]["result"]:
                    label = legend
                    for k, v in r["metric"].items():
                        label = label.replace("{{" + k + "}}", v)
                    rows.append((label, [(float(t) - start, float(v)) for t, v in r["values"]]))
            series[title] = rows
        if args.series:
            keep = {"seconds": args.seconds, "links": args.links, "rate": args.rate}
            args.series.write_text(json.dumps({"args": keep, "series": series}))
        _plot(series, args)
        print(f"wrote {OUT}")
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


def _plot(series: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [
        ("Throughput", "records / s"),
        ("End-to-end latency", "seconds"),
        ("Latency per stage (p50 / p99 per micro-batch)", "seconds"),
        ("Consumer lag by partition", "records"),
        ("Micro-batch size", "records"),
        ("Redis latency (window update / ack round trip)", "seconds"),
    ]
    fig, axes = plt.subplots(3, 2, figsize=(13, 10.5), constrained_layout=True)
    for ax, (title, ylabel) in zip(axes.flat, chosen):
        for label, pts in series.get(title, []):
            pts = [(t, v) for t, v in pts if v == v]  # drop NaN (quantile of an empty rate)
            if pts:
                ax.plot([t for t, _ in pts], [v for _, v in pts], label=label, lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds since the simulator started")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ylabel == "seconds":
            ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2)
    model = ", ".join(lbl for lbl, _ in series.get("Model version", [])) or "?"
    step_ms = max(1, round(1000 * args.links / args.rate))
    fig.suptitle(
        f"bwp dashboard panels from a real run: 1 worker, model {model}, simulator {args.links} links at "
        f"{args.rate} states/s,\nembedded stack on a shared 2-core machine. End-to-end latency counts from a "
        f"state's ts_ms: the paced simulator stamps\nall states of a step with the step's time and sends them "
        f"over the step ({step_ms} ms), which that panel includes.",
        fontsize=9,
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
