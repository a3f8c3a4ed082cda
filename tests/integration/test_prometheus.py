"""A real Prometheus server scraping a real worker and retrain job with the project's configuration.

deploy/prometheus/prometheus.yml is taken as is, except that the worker job's Docker DNS
discovery becomes a static target on loopback (the worker started here) and the retrain job
points at `recsys retrain --every ... --metrics-port` started here. Traffic goes through Kafka;
Prometheus's HTTP API must then show the key series, moving with the traffic; every Grafana
dashboard query must evaluate.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from devtools.broker import free_port
from recsys.data.datasets import write_canonical
from recsys.model.store import ModelStore
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from tests.helpers import clustered_events, train_into
from tests.integration.test_deploy import PROMETHEUS, dashboard_targets, require_tool
from tests.stream_fixture import WorkerProcess, event_bytes, produce, settings_env, stream_settings

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


def scrape_config_for(worker_port: int, retrain_port: int, prom_port: int) -> dict:
    conf = yaml.safe_load(PROMETHEUS.read_text())
    conf["global"]["scrape_interval"] = "1s"
    conf["global"]["evaluation_interval"] = "1s"
    conf["global"]["scrape_timeout"] = "1s"
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    worker = jobs["streamrec-worker"]
    assert worker.pop("dns_sd_configs")[0]["port"] == 6066  # the compose file's discovery, replaced:
    worker["static_configs"] = [{"targets": [f"127.0.0.1:{worker_port}"]}]
    jobs["streamrec-retrain"]["static_configs"] = [{"targets": [f"127.0.0.1:{retrain_port}"]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
    return conf


class Prometheus:
    def __init__(self, binary: str, config: dict, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.config = config
        self.binary = binary
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Prometheus:
        self.config_path.write_text(yaml.safe_dump(self.config))
        with open(self.workdir / "prometheus.log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.tail()
            ready = f"http://127.0.0.1:{self.port}/-/ready"
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=2) as r:
                if r.status == 200:
                    return self
            time.sleep(0.3)
        raise TimeoutError(f"prometheus not ready:\n{self.tail()}")

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def wait_for(self, expr: str, predicate, timeout: float = 60.0) -> float:
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = self.value(expr)
            if last is not None and predicate(last):
                return last
            time.sleep(0.5)
        raise AssertionError(f"{expr} never satisfied the condition in {timeout}s (last {last})\n{self.tail()}")

    def targets(self) -> dict[str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/targets", timeout=10) as r:
            body = json.loads(r.read())
        return {t["labels"]["job"]: t["health"] for t in body["data"]["activeTargets"]}

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.workdir / "prometheus.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def monitored(kafka_broker, tmp_path_factory):
    prometheus_bin = require_tool("prometheus", "prometheus")
    tmp = tmp_path_factory.mktemp("prom")
    s = stream_settings(kafka_broker.bootstrap, partitions=2, batch_within_s=0.02)
    ensure_topics(s.bootstrap, topic_specs(s))
    store = ModelStore(tmp / "models")
    first = train_into(store, seed=1)
    # The worker logs JSON (STREAMREC_LOG_FORMAT=json), checked below on its real output.
    saved = os.environ.get("STREAMREC_LOG_FORMAT")
    os.environ["STREAMREC_LOG_FORMAT"] = "json"
    try:
        worker = WorkerProcess(s, tmp, tmp / "models").start()
    finally:
        if saved is None:
            os.environ.pop("STREAMREC_LOG_FORMAT")
        else:
            os.environ["STREAMREC_LOG_FORMAT"] = saved
    # The retrain job on a schedule, trained from a history file, with its metrics port.
    history = tmp / "history.csv"
    write_canonical(clustered_events(seed=3), history)
    retrain_port = free_port()
    with open(tmp / "retrain.log", "ab") as retrain_log:  # the child keeps its own copy of the descriptor
        retrain = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streaming.cli.main",
                "retrain",
                "--every",
                "1h",
                "--data",
                str(history),
                "--bootstrap",
                s.bootstrap,
                "--model-dir",
                str(store.root),
                "--metrics-port",
                str(retrain_port),
            ],
            stdout=retrain_log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **settings_env(s)},
            cwd=ROOT,
        )
    prom = Prometheus(prometheus_bin, scrape_config_for(worker.web_port, retrain_port, 0), tmp)
    prom.config["scrape_configs"][-1]["static_configs"] = [{"targets": [f"127.0.0.1:{prom.port}"]}]
    try:
        prom.start()
        yield s, worker, prom, first, store, tmp
    finally:
        prom.stop()
        if retrain.poll() is None:
            retrain.send_signal(signal.SIGTERM)
            try:
                retrain.wait(20)
            except subprocess.TimeoutExpired:
                retrain.kill()
                retrain.wait()
        worker.stop()


def test_prometheus_scrapes_the_worker_and_the_retrain_job(monitored):
    s, worker, prom, *_ = monitored
    prom.wait_for('up{job="streamrec-worker"}', lambda v: v == 1)
    prom.wait_for('up{job="streamrec-retrain"}', lambda v: v == 1)
    prom.wait_for('up{job="prometheus"}', lambda v: v == 1)
    assert prom.targets() == {"streamrec-worker": "up", "streamrec-retrain": "up", "prometheus": "up"}


def test_key_series_exist_and_move_with_the_traffic(monitored):
    s, worker, prom, first, store, _ = monitored
    total = 'sum(streamrec_events_in_total{job="streamrec-worker"})'
    before = prom.value(total) or 0.0
    now = int(time.time() * 1000)
    users = [f"p{k}" for k in range(20)]
    batch1 = [event_bytes(u, f"i{(k * 3 + j) % 30}", ts=now + j) for k, u in enumerate(users) for j in range(3)]
    produce(s.bootstrap, s.clickstream_topic, batch1)
    after1 = prom.wait_for(total, lambda v: v >= before + len(batch1))
    recs1 = prom.wait_for("sum(streamrec_recommendations_out_total)", lambda v: v > 0)
    lat1 = prom.wait_for("sum(streamrec_event_to_publish_seconds_count)", lambda v: v >= len(batch1))

    # More traffic from the same shoppers (so live hit checks count), and one malformed message.
    # (A new label set's first value is no increase to Prometheus: views again, so rate() sees them.)
    batch2 = [
        event_bytes(u, f"i{(k * 3 + 7) % 30}", type_, ts=now + 100 + j)
        for k, u in enumerate(users)
        for j, type_ in enumerate(("view", "addtocart"))
    ]
    produce(s.bootstrap, s.clickstream_topic, batch2 + [(b"p0", b"{not json")])
    prom.wait_for(total, lambda v: v >= after1 + len(batch2))
    prom.wait_for("sum(streamrec_recommendations_out_total)", lambda v: v > recs1)
    prom.wait_for("sum(streamrec_event_to_publish_seconds_count)", lambda v: v > lat1)
    prom.wait_for('sum(streamrec_events_in_total{type="addtocart"})', lambda v: v >= len(users))
    prom.wait_for('sum(streamrec_events_rejected_total{reason="bad_json"})', lambda v: v >= 1)
    prom.wait_for("sum(streamrec_live_hit_checks_total)", lambda v: v >= len(batch2))
    prom.wait_for("sum(rate(streamrec_events_in_total[1m]))", lambda v: v > 0)
    prom.wait_for(
        "histogram_quantile(0.95, sum by (le) (rate(streamrec_event_to_publish_seconds_bucket[1m])))",
        lambda v: 0 < v < 10,
    )
    assert prom.query("streamrec_consumer_lag"), "consumer lag per partition"
    # The retrain job published a model; the worker swapped to it; Prometheus saw both.
    prom.wait_for('sum(streamrec_retrain_runs_total{result="published"})', lambda v: v >= 1, timeout=120)
    prom.wait_for('sum(streamrec_model_loads_total{result="ok"})', lambda v: v >= 2, timeout=60)
    serving = {r["metric"]["version"] for r in prom.query("streamrec_model_info == 1")}
    assert serving == {store.current()} and store.current() != first.version
    assert 0 <= prom.value("time() - max(streamrec_model_created_timestamp_seconds)") < 3600


def test_every_dashboard_query_evaluates_on_live_data(monitored):
    _, _, prom, *_ = monitored
    prom.wait_for('sum(streamrec_retrain_runs_total{result="published"})', lambda v: v >= 1, timeout=120)
    for _, expr in dashboard_targets():
        prom.query(expr)  # raises on a PromQL error
    # With traffic and a retrain behind us, the panels the issue asks for all have data (a rate
    # needs two scrapes of a series, so give new series a few seconds).
    wanted = (
        "Throughput: events in by type",
        "End-to-end latency (Kafka arrival to published)",
        "Consumer lag by partition",
        "Dead-letter rate by reason",
        "Serving model version per worker",
        "Model age",
        "Retrain results",
        "Live hit rate by model version",
        "Live hit rate (1h)",
        "Workers up",
    )
    exprs = {title: expr for title, expr in dashboard_targets()}
    assert set(wanted) <= set(exprs)
    deadline = time.time() + 30
    empty = list(wanted)
    while empty and time.time() < deadline:
        empty = [t for t in wanted if not prom.query(exprs[t])]
        time.sleep(1)
    assert not empty, f"panels without data: {empty}"


def test_worker_logs_are_json_lines_with_the_model_version(monitored):
    _, worker, *_ = monitored
    lines = [ln for ln in worker.log_path.read_text(errors="replace").splitlines() if ln.strip()]
    records = []
    for ln in lines:
        with contextlib.suppress(ValueError):  # not JSON: counted below
            records.append(json.loads(ln))
    # Faust's own records too: it configures logging itself, with our formatter.
    assert len(records) >= 0.9 * len(lines), "\n".join(ln for ln in lines if not ln.startswith("{"))[:2000]
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"].startswith("faust") or r["logger"].startswith("mode") for r in records)
    served = [r for r in records if r["message"].startswith("serving model")]
    assert served and all(r.get("model_version") for r in served)
    dead = [r for r in records if r["message"].startswith("dead-lettered")]
    assert all(isinstance(r.get("partition"), int) for r in dead)
