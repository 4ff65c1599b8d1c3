"""Static checks of the deployment files (no Docker engine here) and of the Grafana dashboard
against the worker's real metrics."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extras: pip install -e '.[test]'")

from stream.cli.main import build_parser  # noqa: E402
from tests.helpers import REPO  # noqa: E402

COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "bwp.json"
BWP_IMAGE = "bwp:"
# An image reference with an explicit version tag: name:1.2 / name:v2.54.1 / name:3.11.10-slim-bookworm.
PINNED = re.compile(r"^[a-z0-9./_-]+:v?\d+(\.\d+)+[A-Za-z0-9._-]*(@sha256:[0-9a-f]{64})?$")
# Env-var style names that hold secrets (BWP_REDIS_PASSWORD, GF_SECURITY_ADMIN_PASSWORD...).
SECRET_KEY = re.compile(r"^[A-Z0-9_]*(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIAL)[A-Z0-9_]*$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _parses_as_bwp(argv: list[str]) -> None:
    """``argv`` is a valid ``bwp`` command line (argparse exits on an unknown subcommand/flag)."""
    parser = build_parser()
    try:
        args = parser.parse_args([str(a) for a in argv])
    except SystemExit as exc:
        raise AssertionError(f"`bwp {' '.join(map(str, argv))}` is not a valid bwp command (exit {exc.code})") from None
    assert callable(getattr(args, "func", None)), f"`bwp {' '.join(argv)}` selects no handler"


def _bwp_image(svc: dict[str, Any]) -> bool:
    return str(svc.get("image", "")).startswith(BWP_IMAGE) or "build" in svc


# --- docker-compose.yml ---------------------------------------------------------------------
def test_services_present(services: dict[str, Any]) -> None:
    wanted = {"kafka", "redis", "prometheus", "grafana", "worker", "simulator", "recorder", "retrain-cron",
              "kafka-init", "model-init", "serve"}  # fmt: skip
    assert wanted <= set(services), f"missing services: {wanted - set(services)}"


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name}: no image"
        assert PINNED.match(image), f"{name}: image {image!r} is not pinned to a version tag"
        assert not image.endswith(":latest")
    kafka = services["kafka"]["image"]
    assert kafka.startswith("apache/kafka:"), "Kafka must be the official apache/kafka image"
    assert services["redis"]["image"].startswith("redis:7.")


def test_dockerfile_base_images_are_pinned() -> None:
    text = (REPO / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage build expected (builder + runtime)"
    for ref in froms:
        ref = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
        assert PINNED.match(ref), f"FROM {ref} is not pinned"
        assert ref.startswith("python:3.11."), ref
    assert re.search(r"^USER (?!root|0)\S+", text, re.M), "runtime must not run as root"
    assert "HEALTHCHECK" in text
    assert re.search(r"^COPY --from=builder ", text, re.M)


def test_referenced_files_exist(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = REPO / (build["context"] if isinstance(build, dict) else build)
            assert ctx.is_dir(), f"{name}: build context {ctx} missing"
            dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            assert (ctx / dockerfile).is_file(), f"{name}: {dockerfile} missing"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")):
                assert (REPO / src).exists(), f"{name}: mounted {src} does not exist"
        for env_file in svc.get("env_file", []):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            # The operator creates .env from the checked-in example.
            example = REPO / "deploy" / (Path(path).name + ".example")
            assert example.is_file(), f"{name}: env_file {path} has no example at {example}"
    for needed in ("deploy/prometheus/prometheus.yml", "deploy/grafana/provisioning/datasources",
                   "deploy/grafana/provisioning/dashboards", ".dockerignore"):  # fmt: skip
        assert (REPO / needed).exists(), needed


def test_named_volumes_for_models_and_recordings(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    assert {"models", "recordings"} <= declared
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in declared, f"{name}: volume {src} not declared"
    mounts = {n: [v.split(":")[0] for v in s.get("volumes", [])] for n, s in services.items()}
    assert "models" in mounts["worker"] and "models" in mounts["retrain-cron"]
    assert "recordings" in mounts["recorder"] and "recordings" in mounts["retrain-cron"]


def _bwp_commands(services: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """(service, argv) for every bwp invocation the compose file makes."""
    for name, svc in services.items():
        if not _bwp_image(svc):
            continue
        entry = svc.get("entrypoint")
        command = [str(c) for c in svc.get("command", [])]
        if entry is None:
            yield name, command  # image ENTRYPOINT is ["bwp"]
        elif entry[0] == "sh":
            # A shell wrapper: every `bwp ...` it runs, and "$@" = the command.
            script = entry[2]
            for m in re.finditer(r"\bbwp ((?:[\w.:/=-]+ ?)+)", script):
                yield name, shlex.split(m.group(1))
            assert 'exec bwp "$$@"' in script or 'exec bwp "$@"' in script
            yield name, command
        elif entry[0] == "crond":
            tab = next(v.split(":")[0] for v in svc["volumes"] if "/etc/crontabs/" in v)
            for line in (REPO / tab).read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    fields = line.split(None, 5)
                    assert len(fields) == 6, f"bad crontab line: {line!r}"
                    argv = shlex.split(fields[5])
                    assert argv[0] == "bwp", f"cron job is not a bwp command: {line!r}"
                    yield name, argv[1:]
        else:
            raise AssertionError(f"{name}: unexpected entrypoint {entry}")


def test_every_bwp_command_is_a_real_subcommand(services: dict[str, Any]) -> None:
    seen = set()
    for name, argv in _bwp_commands(services):
        _parses_as_bwp(argv)
        seen.add((name, argv[0]))
    subs = {s for _, s in seen}
    assert {"worker", "simulate", "record", "retrain", "stack", "train"} <= subs, subs


def test_simulator_runs_forever_and_recorder_writes_to_volume(services: dict[str, Any]) -> None:
    assert "--forever" in services["simulator"]["command"]
    rec = services["recorder"]["command"]
    assert rec[:1] == ["record"] and rec[rec.index("--out") + 1] == "/data/recordings"


def test_worker_is_scalable(services: dict[str, Any]) -> None:
    w = services["worker"]
    assert "container_name" not in w, "container_name prevents --scale worker=N"
    assert "ports" not in w, "published host ports collide when scaled; use expose"
    assert "hostname" not in w
    assert w["command"][0] == "worker" and "--metrics-port" in w["command"]


def test_serve_is_published_on_loopback_and_checked_for_readiness(services: dict[str, Any]) -> None:
    svc = services["serve"]
    assert svc["command"][0] == "serve"
    _parses_as_bwp(svc["command"])
    assert svc["environment"]["BWP_SERVE_HOST"] == "0.0.0.0"  # inside the container only
    assert svc["ports"] == ["127.0.0.1:8501:8501"], "the API must not be published beyond the host's loopback"
    assert svc["healthcheck"]["test"][-1] == "http://127.0.0.1:8501/v2/health/ready"
    assert any(v.endswith(":ro") and v.startswith("models:") for v in svc["volumes"])
    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert any(j["job_name"] == "bwp-serve" for j in prom["scrape_configs"]), "the API's /metrics is not scraped"


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if svc.get("restart") == "no":
            continue  # one-shot jobs
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name}: no healthcheck"
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name}: no restart policy"


def test_one_shots_gate_the_pipeline(services: dict[str, Any]) -> None:
    for name in ("worker", "simulator", "recorder"):
        deps = services[name]["depends_on"]
        assert deps["kafka-init"]["condition"] == "service_completed_successfully", name
    assert services["worker"]["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, node


def _assert_no_inline_secrets(doc: Any, where: str) -> None:
    for path, value in _walk(doc):
        key = path.rsplit(".", 1)[-1]
        if isinstance(value, str):
            # KEY=VALUE list entries and shell snippets
            for m in re.finditer(r"([A-Za-z_]*(?:PASSWORD|SECRET|TOKEN)[A-Za-z_]*)=([^\s;\"']+)", value, re.I):
                assert m.group(2).startswith("$"), f"{where} {path}: inline secret {m.group(1)}=..."
            assert not re.search(r"requirepass\s+[^\s\"$]", value), f"{where} {path}: inline redis password"
        if SECRET_KEY.search(key) and value not in (None, ""):
            assert isinstance(value, str) and value.startswith("${"), f"{where} {path}: secret value inline"


def test_no_secrets_inline(compose: dict[str, Any]) -> None:
    _assert_no_inline_secrets(compose, "docker-compose.yml")
    # And the secrets the stack needs are required from .env, not defaulted.
    text = COMPOSE.read_text()
    for var in ("BWP_REDIS_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"):
        assert f"${{{var}:?" in text, f"{var} must be required (${{{var}:?...}})"


def test_env_example_holds_no_secret_and_only_known_settings() -> None:
    from stream.core.settings import Settings

    known = {f"BWP_{n.upper()}" for n in Settings.model_fields}
    for line in (REPO / "deploy" / ".env.example").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        assert key in known or key.startswith("GF_"), f".env.example: unknown setting {key}"
        if SECRET_KEY.search(key):
            assert value == "", f".env.example must not carry a value for {key}"
    assert ".env" in (REPO / ".gitignore").read_text().split(), ".env holds secrets: it must be gitignored"
    assert ".env" in (REPO / ".dockerignore").read_text().split(), ".env must not reach the image"


def test_prometheus_config_scrapes_every_worker_replica() -> None:
    cfg = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "bwp-worker")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["worker"] and sd["type"] == "A" and sd["port"] == 9464


def test_prometheus_config_and_alert_rules_with_promtool() -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus, `make prometheus`) is not on PATH")
    d = REPO / "deploy" / "prometheus"
    for cmd in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts.test.yml"]):
        proc = subprocess.run([promtool, *cmd], cwd=d, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alert_rules_use_real_metrics() -> None:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\b(bwp_[a-z0-9_]+)", e)}
    assert used and not used - _exported_sample_names(), sorted(used - _exported_sample_names())


def test_grafana_provisioning() -> None:
    ds_dir = REPO / "deploy" / "grafana" / "provisioning" / "datasources"
    sources = [d for f in ds_dir.glob("*.yml") for d in yaml.safe_load(f.read_text())["datasources"]]
    prom = next(d for d in sources if d["type"] == "prometheus")
    assert prom["url"] == "http://prometheus:9090"
    dash = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"]} | {
        t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]
    }
    assert uids == {prom["uid"]}, "every panel must use the provisioned datasource by uid"
    prov = [p for f in (REPO / "deploy/grafana/provisioning/dashboards").glob("*.yml")
            for p in yaml.safe_load(f.read_text())["providers"]]  # fmt: skip
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == prov[0]["options"]["path"]


# --- the dashboard against the real metrics ---------------------------------------------------
def _exported_sample_names() -> set[str]:
    """Every sample name the worker's metrics container can export."""
    from prometheus_client import CollectorRegistry

    from stream.metrics.worker import WorkerMetrics

    registry = CollectorRegistry()
    WorkerMetrics.create(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created", ""),
        "gauge": ("",),
        "info": ("_info",),
    }
    names = set()
    for fam in registry.collect():
        names.update(fam.name + s for s in suffixes.get(fam.type, ("",)))
    return names


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    return exprs


def test_dashboard_metrics_exist_in_the_worker() -> None:
    exported = _exported_sample_names()
    used = {m for e in _dashboard_exprs() for m in re.findall(r"\b(bwp_[a-z0-9_]+)", e)}
    assert used, "the dashboard queries no bwp metric"
    missing = used - exported
    assert not missing, f"dashboard uses metrics the worker does not export: {sorted(missing)}"


def test_dashboard_covers_the_operational_questions() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36 and dash["uid"]
    text = "\n".join(_dashboard_exprs())
    for needle in ("rate(bwp_records_consumed_total", "bwp_decisions_total",
                   "bwp_stage_duration_seconds_bucket", "by (le, stage)", "bwp_end_to_end_latency_seconds_bucket",
                   "bwp_consumer_lag_records", "by (reason)", "bwp_model_info", 'stage=~"redis'):  # fmt: skip
        assert needle in text, needle
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:  # panels inside the 24-column grid
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24


def test_dashboard_file_is_generated() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_dashboard", REPO / "deploy/grafana/build_dashboard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert json.loads(DASHBOARD.read_text()) == mod.dashboard(), "run deploy/grafana/build_dashboard.py"


# --- Kubernetes manifests -----------------------------------------------------------------------
def _k8s_docs() -> list[dict[str, Any]]:
    return [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def _pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if doc["kind"] == "CronJob":
        yield doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        yield doc["spec"]["template"]["spec"]


def test_k8s_retrain_cronjob() -> None:
    docs = _k8s_docs()
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (c,) = next(_pod_specs(cron))["containers"]
    assert c["args"][0] == "retrain"


def test_k8s_workloads_pinned_nonroot_real_commands_no_secrets() -> None:
    docs = _k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {"CronJob", "Deployment", "ConfigMap", "Secret", "PersistentVolumeClaim"} <= kinds
    pods = [p for d in docs for p in _pod_specs(d)]
    assert len(pods) >= 3
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert PINNED.match(c["image"].rsplit("/", 1)[-1]), c["image"]
            _parses_as_bwp(c["args"])
            for env in c.get("env", []):
                if SECRET_KEY.search(env["name"]):
                    assert "valueFrom" in env and "value" not in env, f"{env['name']} inline"
            assert any("secretRef" in e for e in c.get("envFrom", [])) or c.get("env")
    for d in docs:
        if d["kind"] == "Secret":
            assert all(v == "" for v in (d.get("stringData") or {}).values()), "example Secret must hold no value"
            assert not d.get("data")
        else:
            _assert_no_inline_secrets(d, d["kind"])
