"""What an operator reads off a running worker, against the real broker and a real worker process:
`recsys dlq` (dead letters with reason and source offset), the HTTP lookup (both route forms, JSON
errors with a hint, the fields docs/formats.md promises) and the exact users-in-state count."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from recsys.model.store import ModelStore
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from tests.helpers import train_into
from tests.stream_fixture import TopicReader, WorkerProcess, event_bytes, settings_env, stream_settings, wait_for

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def live(kafka_broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    s = stream_settings(kafka_broker.bootstrap, partitions=2, batch_within_s=0.02)
    ensure_topics(s.bootstrap, topic_specs(s))
    store = ModelStore(tmp / "models")
    train_into(store, seed=3)
    worker = WorkerProcess(s, tmp, tmp / "models").start()
    recs = TopicReader(s.bootstrap, s.recommendations_topic)
    yield s, worker, recs
    recs.close()
    worker.stop()


def send(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
    """Produce in order; the (partition, offset) each message got."""
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        futures = [p.send(topic, key=k, value=v) for k, v in messages]
        p.flush()
        return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    finally:
        p.close()


def recsys(s, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings_env(s)}
    return subprocess.run(
        [sys.executable, "-m", "streaming.cli.main", *args, "--bootstrap", s.bootstrap],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def test_dlq_prints_each_dead_letter_with_reason_detail_and_source_offset(live):
    s, worker, _ = live
    now = int(time.time() * 1000)
    bad = [
        (b"erin", b"{not json"),
        (b"erin", json.dumps({"user": "erin", "item": "i1", "type": "teleport", "ts": now}).encode()),
        (b"mallory", json.dumps({"user": "erin", "item": "i1", "type": "view", "ts": now}).encode()),
    ]
    where = send(s.bootstrap, s.clickstream_topic, [event_bytes("erin", "i4"), *bad])[1:]
    reasons = ["bad_json", "unknown_type", "key_mismatch"]
    dlq = TopicReader(s.bootstrap, s.dlq_topic)
    try:
        dlq.read_until(lambda rs: len(rs) >= len(bad), timeout=30)
    finally:
        dlq.close()

    out = recsys(s, "dlq", "--json")
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    # batches take the partitions in any order: match each dead letter to its message by source
    assert sorted(d["reason"] for d in got) == sorted(reasons)
    by_reason = {d["reason"]: d for d in got}
    for reason, (partition, offset), (key, value) in zip(reasons, where, bad, strict=True):
        d = by_reason[reason]
        assert (d["source_topic"], d["source_partition"], d["source_offset"]) == (
            s.clickstream_topic,
            partition,
            offset,
        )
        assert d["key"] == key.decode() and d["value"] == value.decode() and d["detail"]
    assert f"{len(bad)} dead letters" in out.stderr

    # the human form: one entry per dead letter, reason and topic/partition/offset on its first line
    text = recsys(s, "dlq", "--reason", "key_mismatch")
    assert text.returncode == 0, text.stderr
    first = text.stdout.splitlines()[0]
    partition, offset = where[2]
    assert "key_mismatch" in first and f"source={s.clickstream_topic}/{partition}/{offset}" in first
    assert "bad_json" not in text.stdout and "1 dead letters with reason 'key_mismatch'" in text.stderr

    missing = recsys(s, "dlq", "--topic", "no-such-dlq")
    assert missing.returncode == 2 and "topic 'no-such-dlq' does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr

    # --follow: waits past the retained ones (none has this reason) for the next one
    env = {**os.environ, **settings_env(s)}
    cmd = [sys.executable, "-m", "streaming.cli.main", "dlq", "--follow", "--reason", "missing_key", "-n", "1"]
    proc = subprocess.Popen(
        [*cmd, "--json", "--bootstrap", s.bootstrap], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        (p, o) = send(s.bootstrap, s.clickstream_topic, [(None, event_bytes("erin", "i1")[1])])[0]
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    d = json.loads(stdout)
    assert proc.returncode == 0 and d["reason"] == "missing_key"
    assert (d["source_partition"], d["source_offset"]) == (p, o)


def doc_example(section: str) -> dict:
    """The JSON example of one `## ` section of docs/formats.md."""
    text = (ROOT / "docs" / "formats.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```json\n(.*?)```", body, re.S)
    assert block, f"no JSON example under {section}"
    return json.loads(block.group(1))


def test_http_reply_carries_the_documented_fields_with_or_without_the_slash(live):
    s, worker, recs = live
    send(s.bootstrap, s.clickstream_topic, [event_bytes("frank", "i4"), event_bytes("frank", "i7", "addtocart")])
    recs.read_until(lambda rs: any(r.key == b"frank" and json.loads(r.value)["query"] == "i7" for r in rs))
    published = [json.loads(r.value) for r in recs.records if r.key == b"frank"][-1]

    status, body = worker.get("/recommendations/frank")
    assert status == 200, body
    assert worker.get("/recommendations/frank/") == (status, body)
    example = doc_example("Recommendations")
    assert set(example) <= set(body), set(example) - set(body)
    for field, value in example.items():
        assert isinstance(body[field], type(value)), (field, body[field])
        # what the lookup returns is the message the topic carried (scores are float32 in state)
        if field == "scores":
            assert body[field] == pytest.approx(published[field], rel=1e-6)
        else:
            assert body[field] == published[field], field
    assert body["source"] == "blend" and body["query"] == "i7" and body["events"] == 2

    status, sim = worker.get("/similar/i4?n=3")
    assert status == 200 and len(sim["items"]) == 3 and worker.get("/similar/i4/?n=3") == (status, sim)

    for path, code in (
        ("/recommendations/nobody-here", 404),
        ("/recommendations/nobody-here/", 404),
        ("/similar/no-such-item", 404),
        ("/similar/i4?n=0", 400),
        ("/similar/i4/?n=many", 400),
        ("/recommendation/frank", 404),  # a typo of the route
    ):
        status, err = worker.get(path)
        assert status == code and isinstance(err, dict), (path, status, err)
        assert err["error"] and err["hint"], (path, err)


def test_users_in_state_is_an_exact_count(live):
    s, worker, recs = live
    users = [f"count-{k}" for k in range(7)]
    send(s.bootstrap, s.clickstream_topic, [event_bytes(u, f"i{k}") for k, u in enumerate(users)])
    recs.read_until(lambda rs: {u.encode() for u in users} <= {r.key for r in rs})
    known = {r.key for r in recs.records}  # every user with an applied event in this module
    wait_for(lambda: worker.metric("streamrec_users_in_state") == len(known), 20, f"{len(known)} users counted")
    # a user already in state is not counted again
    send(s.bootstrap, s.clickstream_topic, [event_bytes(users[0], "i9")])
    recs.read_until(lambda rs: any(r.key == users[0].encode() and json.loads(r.value)["query"] == "i9" for r in rs))
    assert worker.metric("streamrec_users_in_state") == len(known)
