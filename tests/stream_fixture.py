"""Real worker processes for integration tests: `recsys worker` started as a subprocess on
the session's Kafka broker, each with its own topics, consumer group, state and web port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from devtools.broker import free_port
from recsys.config import Settings, stream_env
from streaming.kafka import clients
from streaming.topics import isolated


def stream_settings(bootstrap: str, name: str | None = None, partitions: int = 4, **kw) -> Settings:
    name = name or f"t{uuid.uuid4().hex[:8]}"
    return isolated(Settings(), name, bootstrap=bootstrap, partitions=partitions, **kw)


def settings_env(s: Settings) -> dict[str, str]:
    """The environment that gives a worker or retrain process these stream settings."""
    return stream_env(s)


class WorkerProcess:
    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        model_dir: Path,
        web_port: int | None = None,
        env: dict[str, str] | None = None,
    ):
        self.settings, self.workdir, self.model_dir = settings, Path(workdir), Path(model_dir)
        self.web_port = web_port or free_port()
        self.data_dir = self.workdir / f"worker-{self.web_port}"
        self.log_path = self.workdir / f"worker-{self.web_port}.log"
        self.proc: subprocess.Popen | None = None
        self.env = dict(env or {})

    def start(self, timeout: float = 90.0, wait_ready: bool = True) -> WorkerProcess:
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1", **self.env}
        cmd = [
            sys.executable,
            "-m",
            "streaming.cli.main",
            "worker",
            "--bootstrap",
            self.settings.bootstrap,
            "--web-port",
            str(self.web_port),
            "--data-dir",
            str(self.data_dir),
            "--model-dir",
            str(self.model_dir),
        ]
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1]
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 90.0) -> dict:
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            status, body = self.get("/ready")
            last = (status, body)
            if status == 200:
                return body
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready in {timeout}s (last {last}):\n{self.tail()}")

    def get(self, path: str, timeout: float = 5.0, token: str | None = None) -> tuple[int, dict | str | None]:
        """GET from the worker; with the worker's own bearer token (stream.web_token) unless `token`
        ("" sends none)."""
        token = self.env.get("STREAMREC_WEB_TOKEN", "") if token is None else token
        req = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read().decode()
                return r.status, (json.loads(body) if r.headers.get_content_type() == "application/json" else body)
        except urllib.error.HTTPError as e:
            body = e.read().decode()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, None

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.get("/metrics")
        assert status == 200, text
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += s.value
        return total

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **clients.kafka_python())
    for k, v in messages:
        p.send(topic, key=k, value=v)
    p.flush()
    p.close()


def event_bytes(user: str, item: str, type_: str = "view", ts: int | None = None, **kw) -> tuple[bytes, bytes]:
    body = {"user": user, "item": item, "type": type_, "ts": ts or int(time.time() * 1000), **kw}
    return user.encode(), json.dumps(body).encode()


class TopicReader:
    """Reads a topic from the beginning (no consumer group) and accumulates what it saw."""

    def __init__(self, bootstrap: str, topic: str):
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **clients.kafka_python(),
        )
        parts = None
        deadline = time.time() + 30
        while not parts and time.time() < deadline:
            parts = self.consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.2)
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(parts or [])])
        self.records: list = []

    def read_until(self, predicate, timeout: float = 30.0) -> list:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for recs in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(recs)
            if predicate(self.records):
                return self.records
        raise TimeoutError(f"condition not met in {timeout}s; saw {len(self.records)} records")

    def close(self) -> None:
        self.consumer.close()


# ---------------------------------------------------------------- reliability helpers (issue 5)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate()` until it returns a truthy value (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s (last: {last!r})")
        time.sleep(interval)


def changelog_profiles(bootstrap: str, topic: str) -> dict:
    """user -> UserProfile: the latest state record of every user in a table's changelog."""
    from streaming.jobs.changelog import read_profiles

    return read_profiles(bootstrap, topic)


def profile_diff(expected: dict, got: dict) -> dict:
    """Compare per-user profiles (everything but the stream-only input offset).

    Returns counts: users that differ, events lost (expected but missing), events doubled
    (counted more often than sent), and a few example users."""
    lost = doubled = differ = 0
    examples = []
    for user in expected.keys() | got.keys():
        e, g = expected.get(user), got.get(user)
        ne, ng = (e.events if e else 0), (g.events if g else 0)
        lost += max(0, ne - ng)
        doubled += max(0, ng - ne)
        same = (
            e is not None
            and g is not None
            and (e.items, e.last_ts, e.history, e.events) == (g.items, g.last_ts, g.history, g.events)
        )
        if not same:
            differ += 1
            if len(examples) < 5:
                examples.append((user, ne, ng))
    return {"users": len(expected), "differ": differ, "lost": lost, "doubled": doubled, "examples": examples}
