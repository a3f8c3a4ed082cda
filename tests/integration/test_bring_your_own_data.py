"""README "Bring your own data", run as written: a shop's export with its own column and type names
(`customer,sku,action,when`; `page_view`, `add_to_basket`, `order`; ISO-8601 times) through
train -> evaluate -> worker -> replay -> HTTP with only the documented mapping flags, then the
shop's backend (kafka-python) sending the same rows as its own JSON: nothing dead-lettered."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from devtools.broker import free_port
from recsys.config import Settings, stream_env
from streaming.topics import isolated

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = "user=customer,item=sku,type=action,ts=when"
TYPES = "view=page_view,addtocart=add_to_basket,transaction=order"


def readme_section(title: str = "Bring your own data") -> tuple[list[list[str]], str]:
    """(the shell blocks of the README section as lists of command lines, its python block)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert m, f"README.md has no '## {title}' section"
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", m.group(1), re.M | re.S)
    shell = [[ln.strip() for ln in body.splitlines() if ln.strip()] for lang, body in blocks if lang == "bash"]
    python = [body for lang, body in blocks if lang == "python"]
    return shell, python[0] if python else ""


def shop_export(path: Path, users: int = 60, items: int = 90, rows: int = 1500, seed: int = 7) -> list[dict]:
    """A clustered clickstream in the shop's own vocabulary, oldest first, ISO-8601 times."""
    rng = random.Random(seed)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)
    out = []
    for k in range(rows):
        u = rng.randrange(users)
        group = u % 3  # each customer browses mostly one third of the catalogue
        item = group * (items // 3) + rng.randrange(items // 3) if rng.random() < 0.85 else rng.randrange(items)
        action = rng.choices(["page_view", "add_to_basket", "order"], [0.8, 0.15, 0.05])[0]
        when = (start + timedelta(seconds=60 * k)).isoformat().replace("+00:00", "Z")
        out.append({"customer": f"c{u + 1}", "sku": f"sku-{item}", "action": action, "when": when})
    path.write_text("customer,sku,action,when\n" + "".join(",".join(r.values()) + "\n" for r in out))
    return out


def argv_of(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    assert words[0] == "recsys", line
    exe = Path(sys.executable).with_name("recsys")
    return [str(exe), *words[1:]] if exe.exists() else [sys.executable, "-m", "streaming.cli.main", *words[1:]]


def mapping_flags(words: list[str]) -> dict[str, str]:
    return {w: words[i + 1] for i, w in enumerate(words) if w in ("--columns", "--types", "--time-format")}


def metric(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items())
    )


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            last = predicate()
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last!r})")


def test_readme_bring_your_own_data(kafka_broker, tmp_path):
    shell, producer_code = readme_section()
    five, evaluate = shell[0], shell[1]
    assert len(five) == 5, five
    broker, train, worker, replay, curl = five
    assert broker == "recsys broker start"
    assert train.startswith("recsys train --data shop.csv ")
    assert worker.startswith("recsys worker ")
    assert replay.startswith("recsys replay shop.csv ")
    assert curl.startswith("curl ") and "/recommendations/c1/" in curl
    assert evaluate == [evaluate[0]] and evaluate[0].startswith("recsys evaluate --data shop.csv ")
    # the documented mapping, the same on every command that reads events, and nothing else
    for line in (train, worker, replay, evaluate[0]):
        words = shlex.split(line, comments=True)
        assert mapping_flags(words) == {"--columns": COLUMNS, "--types": TYPES}, line
        rest = [w for w in words[2:] if w not in (COLUMNS, TYPES, "--columns", "--types")]
        assert rest in (["--data", "shop.csv"], ["shop.csv"], [], ["--data", "shop.csv", "--kinds", "als"]), line
    assert '"customer"' in producer_code and '"when"' in producer_code and "KafkaProducer" in producer_code

    rows = shop_export(tmp_path / "shop.csv")
    # `recsys broker start` is the fixture's broker (devtools/broker.py, the same code), found
    # through STREAMREC_BOOTSTRAP; everything else runs as written, on this run's own topics.
    web_port = free_port()
    settings = isolated(
        Settings(),
        f"byod-{uuid.uuid4().hex[:8]}",
        bootstrap=kafka_broker.bootstrap,
        model_dir=str(tmp_path / "models"),
        data_dir=str(tmp_path / "worker"),
        web_port=web_port,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(stream_env(settings), PYTHONUNBUFFERED="1")

    def run(line: str, timeout: float = 300) -> subprocess.CompletedProcess:
        r = subprocess.run(argv_of(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{line}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
        return r

    trained = run(train)
    version = trained.stdout.strip().splitlines()[-1]
    assert f"loaded {len(rows)} events" in trained.stderr and "skipped" not in trained.stderr
    evaluated = run(evaluate[0])
    assert "als" in evaluated.stdout.lower() and "MAP@" in evaluated.stdout, evaluated.stdout

    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv_of(worker), cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{web_port}/ready", timeout=5).status == 200,
            120,
            "worker ready",
            proc,
            log,
        )
        replayed = run(replay)
        assert f"sent {len(rows)} events" in replayed.stderr, replayed.stderr

        # the curl line as written, at this worker's port
        url = re.search(r"http://\S+", curl).group(0).replace(":6066/", f":{web_port}/")

        def served():
            if shutil.which("curl"):
                r = subprocess.run(["curl", "-sf", url], capture_output=True, text=True, timeout=10)
                return json.loads(r.stdout) if r.returncode == 0 else None
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())

        body = wait_for(served, 60, f"GET {url}", proc, log)
        assert body["user"] == "c1" and body["items"] and body["model_version"] == version, body

        # the backend: the same rows, as the shop's own JSON with ISO times, keyed by customer
        producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
        try:
            for r in rows:
                producer.send(settings.clickstream_topic, key=r["customer"].encode(), value=json.dumps(r).encode())
            producer.flush(timeout=60)
        finally:
            producer.close()
        wait_for(
            lambda: metric(web_port, "streamrec_events_in_total") >= 2 * len(rows),
            120,
            "every replayed and produced event accepted",
            proc,
            log,
        )
        assert metric(web_port, "streamrec_events_rejected_total") == 0
        by_type = {t: metric(web_port, "streamrec_events_in_total", {"type": t}) for t in ("addtocart", "transaction")}
        expected = {
            "addtocart": 2 * sum(r["action"] == "add_to_basket" for r in rows),
            "transaction": 2 * sum(r["action"] == "order" for r in rows),
        }
        assert by_type == expected
        consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=None)
        try:
            parts = consumer.partitions_for_topic(settings.dlq_topic)
            assert parts, f"no topic {settings.dlq_topic}"
            ends = consumer.end_offsets([TopicPartition(settings.dlq_topic, p) for p in parts])
        finally:
            consumer.close()
        assert sum(ends.values()) == 0, f"dead letters: {ends}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        from streaming.kafka.admin import delete_topics, list_topics

        delete_topics(
            kafka_broker.bootstrap, [t for t in list_topics(kafka_broker.bootstrap) if t.startswith(settings.app_id)]
        )


def test_replay_refuses_a_topic_that_does_not_exist(kafka_broker, tmp_path):
    """A typo in --topic is an error naming the configured clickstream, not a new topic and a
    report of success; --create makes it on purpose."""
    from streaming.kafka.admin import delete_topics, list_topics

    shop_export(tmp_path / "shop.csv", rows=30)
    settings = isolated(Settings(), f"byod-{uuid.uuid4().hex[:8]}", bootstrap=kafka_broker.bootstrap)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(stream_env(settings))
    typo = f"{settings.app_id}-click"
    cmd = argv_of(f"recsys replay shop.csv --columns {COLUMNS} --types {TYPES} --topic {typo} --no-progress")
    try:
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert f"topic '{typo}' does not exist" in r.stderr
        assert f"the configured clickstream is '{settings.clickstream_topic}'" in r.stderr and "--create" in r.stderr
        assert "sent" not in r.stderr and typo not in list_topics(kafka_broker.bootstrap)

        r = subprocess.run([*cmd, "--create"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "sent 30 events" in r.stderr, r.stderr
        assert typo in list_topics(kafka_broker.bootstrap)
        # the configured clickstream needs no --create
        clicks = argv_of(f"recsys replay shop.csv --columns {COLUMNS} --types {TYPES} --no-progress")
        r = subprocess.run(clicks, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "sent 30 events" in r.stderr, r.stderr
    finally:
        delete_topics(kafka_broker.bootstrap, [typo, settings.clickstream_topic])
