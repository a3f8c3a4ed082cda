"""The deployment files, proved as far as a machine without a Docker engine can.

docker-compose.yml against the Compose specification's JSON schema; every service's command,
port and volume against the repository (real `recsys` parser, real paths, ports that line up
between services, Prometheus and Grafana); the Dockerfile's base, user and copies; `promtool`
on the Prometheus configuration and on every dashboard query; the dashboard's metric names and
labels against what WorkerMetrics and RetrainMetrics export; the container entry point runs
for real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamrec.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASH_PROVIDER = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "streamrec.yml"
SCHEMA = Path(__file__).parents[1] / "data" / "compose-spec" / "compose-spec.json"
APP_IMAGE = "streamrec:"
EXACT_TAG = re.compile(r":v?\d+\.\d+\.\d+([-.][\w.-]+)?$|@sha256:[0-9a-f]{64}$")


def require_tool(name: str, package: str) -> str:
    """Path of a command-line tool; missing: fail in CI (CI=true), skip with the reason elsewhere."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found: install the Debian package {package!r} (scripts/system-deps.sh, run by make test)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def load_yaml(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())


@lru_cache(maxsize=1)
def compose() -> dict:
    return load_yaml(COMPOSE)


def services() -> dict[str, dict]:
    return compose()["services"]


def app_services() -> dict[str, dict]:
    return {n: s for n, s in services().items() if str(s.get("image", "")).startswith(APP_IMAGE)}


def parse_recsys(argv: list[str]):
    from streaming.cli.main import build_parser

    return build_parser().parse_args(argv)


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


@lru_cache(maxsize=1)
def exported_metrics() -> dict[str, set[str]]:
    """Every sample name WorkerMetrics and RetrainMetrics export -> its label names."""
    from prometheus_client import CollectorRegistry

    from streaming.jobs.retrain import RetrainMetrics
    from streaming.worker.metrics import WorkerMetrics

    out: dict[str, set[str]] = {}
    for registry in (WorkerMetrics(CollectorRegistry()).registry, RetrainMetrics(CollectorRegistry()).registry):
        for fam in registry.collect():
            labels = set()
            # Label names of metrics without samples yet: prometheus_client has no public API for them.
            for m in registry._names_to_collectors.values():  # noqa: SLF001
                if getattr(m, "_name", None) == fam.name:
                    labels = set(m._labelnames)  # noqa: SLF001
            suffixes = {
                "counter": ["_total"],
                "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""],
                "summary": ["_sum", "_count", ""],
            }.get(fam.type, [""])
            for s in suffixes:
                out[fam.name + s] = labels | ({"le"} if s == "_bucket" else set())
    return out


def dashboard_targets() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


# -- docker-compose.yml -----------------------------------------------------------------------------
def test_compose_file_is_valid_against_the_compose_specification_schema():
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, errors
    # The schema has teeth: typos and wrong types are rejected.
    bad = json.loads(json.dumps(compose()))
    bad["services"]["worker"]["commnad"] = ["worker"]
    bad["services"]["kafka"]["ports"] = "29092:29092"
    bad["volumse"] = {}
    assert len(list(validator.iter_errors(bad))) >= 3


def test_compose_uses_the_official_kafka_image_in_kraft_mode_at_the_tested_version():
    from devtools.broker import DEFAULT_KAFKA_VERSION

    kafka = services()["kafka"]
    assert kafka["image"] == f"apache/kafka:{DEFAULT_KAFKA_VERSION}"  # the version the test suite runs
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft, no ZooKeeper
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "zookeeper" not in COMPOSE.read_text().lower()


def test_every_image_is_pinned_to_an_exact_version():
    for name, svc in services().items():
        image = svc["image"]
        if image.startswith(APP_IMAGE):
            assert "build" in svc, f"{name}: the app image is built from the Dockerfile"
            continue
        assert EXACT_TAG.search(image), f"{name}: {image} is not pinned to an exact version"


def test_app_commands_are_real_recsys_commands_and_options():
    from streaming.cli.main import build_parser

    assert {"topics", "worker", "retrain", "replay"} <= set(app_services())
    for name, svc in app_services().items():
        cmd = svc["command"]
        assert isinstance(cmd, list), f"{name}: use the exec form"
        if "entrypoint" in svc:
            continue
        args = build_parser().parse_args(cmd)  # SystemExit (a failure) on any unknown option
        assert callable(args.func), name
        assert args.command == cmd[0]
    worker = parse_recsys(services()["worker"]["command"])
    retrain = parse_recsys(services()["retrain"]["command"])
    topics = parse_recsys(services()["topics"]["command"])
    assert retrain.every == 300 and retrain.metrics_port and not retrain.once
    assert worker.bootstrap == retrain.bootstrap == topics.bootstrap
    # One partition count everywhere: topics, the workers' environment, the replay.
    env_parts = int(compose()["x-app"]["environment"]["STREAMREC_PARTITIONS"])
    assert topics.partitions == env_parts


def test_the_retrain_job_serves_metrics_on_the_container_network():
    retrain = parse_recsys(services()["retrain"]["command"])
    assert retrain.metrics_host == "0.0.0.0" and retrain.metrics_port


def test_ports_line_up_between_services_prometheus_and_grafana():
    svcs = services()
    worker = parse_recsys(svcs["worker"]["command"])
    # Kafka: the app's bootstrap is the kafka service on a listener it advertises.
    host, port = host_port(worker.bootstrap)
    assert host == "kafka" and f"PLAINTEXT://kafka:{port}" in svcs["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert compose()["x-app"]["environment"]["STREAMREC_BOOTSTRAP"] == worker.bootstrap
    host_listener = re.search(r"HOST://localhost:(\d+)", svcs["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"])
    assert f"{host_listener.group(1)}:{host_listener.group(1)}" in svcs["kafka"]["ports"]
    # Workers: one fixed container port, no host port (replicas would clash), health on it.
    assert svcs["worker"]["expose"] == [str(worker.web_port)] and "ports" not in svcs["worker"]
    assert f":{worker.web_port}/ready" in " ".join(svcs["worker"]["healthcheck"]["test"])
    # Prometheus finds every replica by DNS on that port, and the retrain job on its metrics port.
    prom = load_yaml(PROMETHEUS)
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    dns = jobs["streamrec-worker"]["dns_sd_configs"][0]
    assert dns["names"] == ["worker"] and dns["type"] == "A" and dns["port"] == worker.web_port
    retrain = parse_recsys(svcs["retrain"]["command"])
    assert jobs["streamrec-retrain"]["static_configs"][0]["targets"] == [f"retrain:{retrain.metrics_port}"]
    # Grafana's data source is the prometheus service on its port.
    ds = load_yaml(DATASOURCES)["datasources"][0]
    prom_port = [p.split(":")[-1] for p in svcs["prometheus"]["ports"]]
    assert ds["url"] == f"http://prometheus:{prom_port[0]}" and ds["type"] == "prometheus"
    assert any(a == "--config.file=/etc/prometheus/prometheus.yml" for a in svcs["prometheus"]["command"])


def test_volumes_mount_real_paths_and_no_model_store_is_shared():
    svcs = services()
    declared = set(compose()["volumes"])
    used = set()
    for name, svc in svcs.items():
        for v in svc.get("volumes", []):
            source, target = v.split(":")[:2]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist in the repository"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared
    worker = parse_recsys(svcs["worker"]["command"])
    retrain = parse_recsys(svcs["retrain"]["command"])
    # Models travel through Kafka (docs/operations.md, multi-host): no volume is mounted by both the
    # retrain job and the workers, none at all at a worker's model dir (it fetches into its own).
    env = compose()["x-app"]["environment"]
    assert env["STREAMREC_MODEL_TRANSPORT"] == "kafka"
    mounted = {name: {v.split(":")[0] for v in svc.get("volumes", [])} for name, svc in svcs.items()}
    assert not mounted.get("worker", set()) & mounted["retrain"], "a volume shared by the retrain job and the workers"
    assert not any(v.split(":")[1] == worker.model_dir for v in svcs["worker"].get("volumes", []))
    assert f"retrain-models:{retrain.model_dir}" in svcs["retrain"]["volumes"]  # its versions outlive it
    # Worker state stays in the container (a shared volume would put replicas on one RocksDB):
    assert not any(v.split(":")[1].startswith(worker.data_dir) for v in svcs["worker"].get("volumes", []))
    docker = DOCKERFILE.read_text()
    for path in (worker.data_dir, worker.model_dir):
        assert path in docker, f"{path} is created (and owned by the app user) in the Dockerfile"
    # Grafana reads the dashboards where its provisioning says.
    provider = load_yaml(DASH_PROVIDER)["providers"][0]
    mounts = dict(v.split(":")[:2] for v in svcs["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = svcs["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_compose_environment_names_real_settings_and_loads_as_a_valid_configuration():
    from recsys.config import load_config

    env = {k: str(v) for k, v in compose()["x-app"]["environment"].items()}
    assert all(k.startswith("STREAMREC_") for k in env)
    cfg = load_config(env=env)
    assert {k for k, o in cfg.origins.items()} and all(o.startswith("env ") for o in cfg.origins.values())
    named = {o.split()[1] for o in cfg.origins.values()}
    assert named == set(env), f"variables that name no setting: {set(env) - named}"
    assert cfg.ops.log_format == "json"


# -- Dockerfile ----------------------------------------------------------------------------------------
def test_dockerfile_is_pinned_small_and_non_root():
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases, "no FROM"
    for b in bases:
        assert EXACT_TAG.search(b) and "latest" not in b, f"base {b} is not pinned"
        assert re.match(r"python:3\.11\.\d+-slim", b), f"{b}: the project is Python 3.11; slim keeps it small"
    assert len(bases) >= 2, "a build stage keeps pip caches and build tools out of the final image"
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    for src in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"COPY {path}: not in the repository"
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for src in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):
        for path in src.split():
            assert not any(path == i or path.startswith(i.rstrip("/") + "/") for i in ignored), (
                f"{path} is copied but .dockerignore excludes it"
            )
    entry = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])$", text, re.M).group(1))
    assert entry == ["/app/docker-entrypoint.sh"] and (ROOT / "deploy" / "docker-entrypoint.sh").exists()


def test_the_entry_point_advertises_the_container_address_and_runs_recsys(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run(
        ["sh", str(ROOT / "deploy" / "docker-entrypoint.sh"), "config", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    host = out["config"]["stream"]["web_host"]
    assert host and host != "127.0.0.1" and out["sources"]["stream.web_host"] == "env STREAMREC_WEB_HOST"
    socket.getaddrinfo(host, None)  # resolvable: other workers and Prometheus can reach it
    r = subprocess.run(
        ["sh", str(ROOT / "deploy" / "docker-entrypoint.sh"), "config", "--json"],
        env={**env, "STREAMREC_WEB_HOST": "worker-7"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(r.stdout)["config"]["stream"]["web_host"] == "worker-7"  # an explicit one wins


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- Prometheus ------------------------------------------------------------------------------------------
def test_promtool_accepts_the_prometheus_configuration():
    promtool = require_tool("promtool", "prometheus")
    r = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_rejects_a_broken_configuration(tmp_path):
    promtool = require_tool("promtool", "prometheus")
    bad = tmp_path / "prometheus.yml"
    bad.write_text(PROMETHEUS.read_text().replace("type: A", "type: BOGUS"))
    r = subprocess.run([promtool, "check", "config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


def test_every_dashboard_query_is_valid_promql(tmp_path):
    """promtool parses each panel's expression as a recording rule."""
    import yaml

    promtool = require_tool("promtool", "prometheus")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"streamrec:panel_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_targets())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# -- Grafana ----------------------------------------------------------------------------------------------
def test_dashboard_references_only_metrics_and_labels_the_project_exports():
    metrics = exported_metrics()
    jobs = {j["job_name"] for j in load_yaml(PROMETHEUS)["scrape_configs"]}
    seen = set()
    for title, expr in dashboard_targets():
        names = re.findall(r"\bstreamrec_[a-zA-Z0-9_]+", expr)
        assert names or re.search(r"\bup\{", expr), f"{title}: queries no streamrec metric"
        for name in names:
            assert name in metrics, f"{title}: {name} is not exported by WorkerMetrics or RetrainMetrics"
            seen.add(name)
        for name, matchers in re.findall(r"\b(streamrec_[a-zA-Z0-9_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-zA-Z_]\w*)\s*=~?", matchers):
                assert label in metrics[name] | {"job", "instance"}, f"{title}: {name} has no label {label}"
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, f"{title}: no scrape job {job}"
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert any(label in metrics[n] for n in names) or label in ("instance", "job", "le"), (
                    f"{title}: no metric in the query has the label {label}"
                )
    # What the issue asks the dashboard to show.
    wanted = {
        "throughput": "streamrec_events_in_total",
        "recommendations": "streamrec_recommendations_out_total",
        "end-to-end latency": "streamrec_event_to_publish_seconds_bucket",
        "consumer lag": "streamrec_consumer_lag",
        "dead-letter rate": "streamrec_events_rejected_total",
        "model version": "streamrec_model_info",
        "model age": "streamrec_model_created_timestamp_seconds",
        "retrain results": "streamrec_retrain_runs_total",
        "live hit rate": "streamrec_live_hits_total",
    }
    missing = {k: v for k, v in wanted.items() if v not in seen}
    assert not missing, missing


def test_dashboard_is_provisioned_against_the_provisioned_data_source():
    dash = json.loads(DASHBOARD.read_text())
    uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == uid, p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == uid for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
