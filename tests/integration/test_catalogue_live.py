"""The item catalogue and the request routes against the real broker and two real worker processes:
hidden and unavailable items leave every list published after the change (and every HTTP
answer) and come back, lists keep N items, filters return only matching items, training still
sees hidden items, and events posted over HTTP are validated, produced and change the next list."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.model.store import ModelStore
from recsys.model.train import TrainConfig, train
from streaming.topics import ensure, topics
from tests.helpers import clustered_events, train_into
from tests.stream_fixture import TopicReader, WorkerProcess, event_bytes, produce, stream_settings, wait_for

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]
N_ITEMS = 60  # tests.helpers.clustered_events: item k is in cluster k % 3


def recsys(s, *args: str) -> str:
    """Run `recsys ...` against this test's topics; its stdout."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming.cli.main",
            *args,
            "--bootstrap",
            s.bootstrap,
            "--set",
            f"stream.items_topic={s.items_topic}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def post(worker: WorkerProcess, path: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{worker.web_port}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def shop(kafka_broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("catalogue")
    s = stream_settings(kafka_broker.bootstrap, partitions=2, batch_within_s=0.02)
    ensure(s.bootstrap, topics(s).core)
    model = train_into(ModelStore(tmp / "models"), seed=1)
    # category c<cluster>, price = item number, brand b<k % 2>
    lines = [
        json.dumps({"item": f"i{k}", "categories": [f"c{k % 3}"], "price": float(k), "brand": f"b{k % 2}"})
        for k in range(N_ITEMS)
    ]
    (tmp / "items.jsonl").write_text("\n".join(lines) + "\n")
    assert "60 item records produced" in recsys(s, "items", "load", str(tmp / "items.jsonl"))
    workers = [WorkerProcess(s, tmp, tmp / "models").start(), WorkerProcess(s, tmp, tmp / "models").start()]
    for w in workers:  # each worker has the whole catalogue
        assert wait_for(lambda w=w: w.get("/health")[1]["catalogue"]["items"] == N_ITEMS, 30, "catalogue loaded")
    recs = TopicReader(s.bootstrap, s.recommendations_topic)
    yield s, workers, model, recs
    recs.close()
    for w in workers:
        w.stop()


def lists(recs, since_ms=0):
    return [json.loads(r.value) for r in recs.records if json.loads(r.value)["published_ts"] > since_ms]


def browse(s, users, items, rounds=1):
    now = int(time.time() * 1000)
    produce(
        s.bootstrap,
        s.clickstream_topic,
        [event_bytes(u, items[(k + j) % len(items)], ts=now + k) for j in range(rounds) for k, u in enumerate(users)],
    )


def applied(workers, item, shown):
    def check():
        return all(w.get(f"/items/{item}")[1]["shown"] is shown for w in workers)

    wait_for(check, 30, f"{item} shown={shown} on every worker")
    return int(time.time() * 1000)


USERS = [f"u{k}" for k in range(12)]
CLUSTER1 = [f"i{k}" for k in range(1, N_ITEMS, 3)]


def test_hidden_and_unavailable_items_leave_every_list_and_come_back(shop):
    s, workers, _, recs = shop
    browse(s, USERS, CLUSTER1[:4])
    recs.read_until(lambda rs: {r.key for r in rs} >= {u.encode() for u in USERS}, timeout=30)
    counts: dict[str, int] = {}
    for rec in lists(recs):
        for i in rec["items"][:3]:
            counts[i] = counts.get(i, 0) + 1
    top = sorted(counts, key=lambda i: -counts[i])
    hidden, gone = top[0], top[1]  # the two items these users are shown most
    recsys(s, "items", "set", hidden, "--hidden")
    recsys(s, "items", "set", gone, "--unavailable")
    applied(workers, hidden, False)
    t = applied(workers, gone, False)

    browse(s, USERS, CLUSTER1[4:8], rounds=2)
    recs.read_until(lambda rs: len({r["user"] for r in lists(recs, t)}) == len(USERS), timeout=30)
    after = lists(recs, t)
    assert after and all(hidden not in r["items"] and gone not in r["items"] for r in after)
    assert all(len(r["items"]) == s.top_n for r in after)  # filtered inside the top-k: still N
    for u in USERS:  # HTTP answers: the last list, a fresh one, similar items
        w = workers[hash(u) % 2]
        for path in (f"/recommendations/{u}/", f"/recommendations/{u}/?n=15", f"/similar/{CLUSTER1[0]}/?n=15"):
            status, body = w.get(path)
            assert status == 200 and hidden not in body["items"] and gone not in body["items"], (path, body)
            assert len(body["items"]) == (15 if "n=15" in path else s.top_n)
    # the records say why
    assert workers[0].get(f"/items/{hidden}")[1]["hidden"] is True
    assert workers[1].get(f"/items/{gone}")[1]["available"] is False

    recsys(s, "items", "set", hidden, "--visible")
    recsys(s, "items", "set", gone, "--available")
    applied(workers, hidden, True)
    t = applied(workers, gone, True)
    browse(s, USERS, CLUSTER1[:4])
    recs.read_until(
        lambda rs: (
            any(hidden in r["items"] for r in lists(recs, t)) and any(gone in r["items"] for r in lists(recs, t))
        ),
        timeout=30,
    )


def test_deleted_item_is_never_shown(shop):
    s, workers, _, recs = shop
    item = CLUSTER1[5]
    recsys(s, "items", "delete", item)
    wait_for(lambda: all(w.get(f"/items/{item}")[1].get("deleted") for w in workers), 30, "deleted everywhere")
    t = int(time.time() * 1000)
    browse(s, USERS[:4], [item, CLUSTER1[6]])
    recs.read_until(lambda rs: len({r["user"] for r in lists(recs, t)}) == 4, timeout=30)
    assert all(item not in r["items"] and len(r["items"]) == s.top_n for r in lists(recs, t))
    recsys(s, "items", "set", item)  # listed again, with default flags
    applied(workers, item, True)


def test_category_brand_and_price_filters_return_only_matching_items(shop):
    s, workers, _, recs = shop
    browse(s, ["filt"], CLUSTER1[:3], rounds=2)
    recs.read_until(lambda rs: any(r.key == b"filt" for r in rs), timeout=30)
    owner = next(w for w in workers if w.get("/recommendations/filt/")[0] == 200)
    status, body = owner.get("/recommendations/filt/?category=c2&n=8")
    assert status == 200 and body["fresh"] and len(body["items"]) == 8
    assert all(int(i[1:]) % 3 == 2 for i in body["items"])  # only category c2 (not what filt browses)
    status, body = owner.get("/recommendations/filt/?price_min=10&price_max=30&brand=b1&n=5")
    assert status == 200 and body["items"]
    assert all(10 <= int(i[1:]) <= 30 and int(i[1:]) % 2 == 1 for i in body["items"])
    status, body = owner.get("/recommendations/filt/?exclude=i1,i4&item=i7")
    assert status == 200 and not {"i1", "i4", "i7"} & set(body["items"]) and body["query"] == "i7"
    status, body = workers[0].get("/similar/i1/?category=c0&n=5")
    assert status == 200 and len(body["items"]) == 5 and all(int(i[1:]) % 3 == 0 for i in body["items"])
    # routed: either worker answers for the user
    assert (
        workers[1].get("/recommendations/filt/?category=c2")[1]["items"]
        == owner.get("/recommendations/filt/?category=c2")[1]["items"]
    )
    for path, word in (
        ("/recommendations/filt/?colour=red", "unknown parameter"),
        ("/recommendations/filt/?n=0", "n must be"),
        ("/recommendations/filt/?price_min=abc", "price_min must be a number"),
        ("/recommendations/filt/?price_min=9&price_max=1", "above price_max"),
        ("/similar/i1/?item=i2", "unknown parameter"),
    ):
        status, body = owner.get(path)
        assert status == 400 and word in body["error"], (path, body)


def test_hidden_items_interactions_still_train_the_model(shop):
    s, workers, _, recs = shop
    item = CLUSTER1[2]
    recsys(s, "items", "set", item, "--hidden")
    applied(workers, item, False)
    try:
        browse(s, ["trainer"], [item], rounds=3)
        recs.read_until(lambda rs: any(r.key == b"trainer" for r in rs), timeout=30)
        from streaming.worker.state import decode

        log = TopicReader(s.bootstrap, s.changelog_topic)  # what a retrain reads
        try:
            log.read_until(lambda rs: any(r.key == b"trainer" and item in decode(r.value).profile.items for r in rs))
            profiles = {r.key.decode(): decode(r.value).profile for r in log.records if r.value is not None}
        finally:
            log.close()
        assert item in profiles["trainer"].items  # the state (what a retrain reads) holds the hidden item
        model, _, _ = train(profiles, ConfidenceConfig(), TrainConfig(factors=8, iterations=4))
        assert item in model.item_index
    finally:
        recsys(s, "items", "set", item, "--visible")
        applied(workers, item, True)


def test_events_posted_over_http_are_validated_produced_and_change_the_next_list(shop):
    s, workers, _, recs = shop
    now = int(time.time() * 1000)
    cluster2 = [f"i{k}" for k in range(2, N_ITEMS, 3)]
    good = [{"user": "poster", "item": i, "type": "view", "ts": now + k} for k, i in enumerate(cluster2[:4])]
    bad = [
        {"user": "poster-bad", "item": "i1", "type": "teleport", "ts": now},
        {"user": "poster-bad", "type": "view", "ts": now},
        {"user": "poster-bad", "item": "i1", "type": "view", "ts": now + 10**10},
    ]
    clicks = TopicReader(s.bootstrap, s.clickstream_topic)
    try:
        status, body = post(workers[0], "/events", json.dumps([good[0], *bad]).encode())
        assert status == 400 and body["valid"] == 1
        assert [(r["index"], r["reason"]) for r in body["rejected"]] == [
            (1, "unknown_type"),
            (2, "missing_item"),
            (3, "ts_in_future"),
        ]
        assert post(workers[1], "/events/", b"{not json")[0] == 400
        status, body = post(workers[1], "/events", json.dumps(good).encode())
        assert status == 202 and body["accepted"] == 4
        assert post(workers[0], "/events", json.dumps(good[0] | {"ts": now + 10}).encode())[1]["accepted"] == 1
        recs.read_until(
            lambda rs: any(r.key == b"poster" and json.loads(r.value)["query"] == cluster2[0] for r in rs), timeout=30
        )
        clicks.read_until(lambda rs: sum(r.key == b"poster" for r in rs) >= 5, timeout=10)
        assert not any(r.key == b"poster-bad" for r in clicks.records)  # nothing invalid was produced
        assert sum(r.key == b"poster" for r in clicks.records) == 5  # nor the valid one of the refused request
    finally:
        clicks.close()
    last = [json.loads(r.value) for r in recs.records if r.key == b"poster"][-1]
    assert sum(int(i[1:]) % 3 == 2 for i in last["items"][:5]) >= 4  # the posted cluster
    assert workers[0].metric("streamrec_http_events_total", {"result": "rejected"}) == 3


def test_a_restarted_worker_reads_its_catalogue_back_and_catches_up_before_serving(shop):
    s, workers, _, _ = shop
    w, item = workers[0], CLUSTER1[3]
    w.stop()
    recsys(s, "items", "set", item, "--unavailable")  # while it is down
    w.start()  # same data dir: ready only once the catalogue is read to the end it had at start
    assert w.get(f"/items/{item}")[1]["shown"] is False
    assert "item records read back" in w.tail(200)
    assert w.get("/health")[1]["catalogue"]["items"] == N_ITEMS
    recsys(s, "items", "set", item, "--available")
    applied(workers, item, True)


def test_a_bad_item_record_is_dead_lettered_once_with_its_reason_and_counted(shop):
    s, workers, _, _ = shop
    produce(s.bootstrap, s.items_topic, [(b"i3", b'{"item":"i3","hidden":"yes"}'), (b"zz", b'{"item":"i4"}')])
    dlq = TopicReader(s.bootstrap, s.dlq_topic)
    try:
        dlq.read_until(lambda rs: sum(r.value.startswith(b'{"item"') for r in rs) >= 2, timeout=30)
        for w in workers:  # both read and rejected them; only the leader dead-letters
            wait_for(lambda w=w: w.metric("streamrec_catalogue_rejected_total") == 2, 30, "rejections counted")
        dlq.read_until(lambda rs: True, timeout=2)
        got = sorted(dict(r.headers)["reason"].decode() for r in dlq.records if r.value.startswith(b'{"item"'))
    finally:
        dlq.close()
    assert got == ["bad_hidden", "key_mismatch"]
    for w in workers:
        assert w.get("/items/i3")[1]["shown"] is True  # the bad record changed nothing


# The two tests below run last: the first makes the shop serve a version with a ranker, the
# second stops a worker for good.


def ranked_version(s, store: ModelStore) -> str:
    """A version with a ranker (small settings) on the shop's training events, announced and served."""
    from dataclasses import replace

    from recsys.candidates.training import train_ranker
    from recsys.config import Config
    from recsys.evaluation.streaming import StreamEvalConfig
    from streaming.jobs.retrain import announce

    cfg = Config()
    events = clustered_events(seed=1)
    rcfg = replace(cfg.ranker, n_estimators=10, min_child_samples=5)
    ranker = train_ranker(events, ccfg=cfg.confidence, scfg=cfg.scoring, ecfg=StreamEvalConfig(ranker=rcfg))
    model, _, _ = train(
        build_profiles(events, cfg.confidence), cfg.confidence, TrainConfig(factors=8, iterations=8), version="v-ranked"
    )
    store.save(model, ranker=ranker.to_bytes())
    announce(s.bootstrap, s.model_updates_topic, model.version)
    return model.version


def test_with_a_ranker_requests_rank_the_candidates_their_filters_allow(shop):
    """A version with a ranker: lists on request are the ranker's (unfiltered: the list the stream
    just published), with the filters applied to every candidate and N items kept."""
    s, workers, _, recs = shop
    version = ranked_version(s, ModelStore(workers[0].model_dir))
    for w in workers:
        wait_for(lambda w=w: w.get("/health")[1]["model_version"] == version, 60, f"{version} served")
    now = int(time.time() * 1000)
    produce(
        s.bootstrap, s.clickstream_topic, [event_bytes("ranked", i, ts=now + k) for k, i in enumerate(CLUSTER1[:5])]
    )

    def published(rs):
        return [
            v
            for r in rs
            if r.key == b"ranked"
            and (v := json.loads(r.value))["query"] == CLUSTER1[4]
            and v["model_version"] == version
        ]

    last = published(recs.read_until(lambda rs: bool(published(rs)), timeout=30))[-1]
    assert last["source"] == "ranker"
    w = workers[1]  # routed to the owner
    status, body = w.get(f"/recommendations/ranked/?n={s.top_n}")
    assert status == 200 and body["fresh"] and body["source"] == "ranker" and body["model_version"] == version
    assert body["items"] == last["items"]  # nothing happened since: the stream's own ranked list
    status, body = w.get("/recommendations/ranked/?category=c2&n=8")
    assert status == 200 and body["source"] == "ranker" and len(body["items"]) == 8
    assert all(int(i[1:]) % 3 == 2 for i in body["items"])  # not the cluster "ranked" browses
    shown = ",".join(last["items"][:3])
    status, body = w.get(f"/recommendations/ranked/?exclude={shown}&price_max=40&n=12")
    assert status == 200 and body["source"] == "ranker" and len(body["items"]) == 12
    assert not set(last["items"][:3]) & set(body["items"]) and all(int(i[1:]) <= 40 for i in body["items"])


def test_partitions_moved_to_a_running_worker_are_read_into_its_sources(shop):
    """One worker stops for good; the other takes its partition and, before its next batch,
    reads that partition's recent events into its candidate sources: from then on its sources
    have counted every event of the clickstream exactly once (its own partition's as they
    came, the moved one's up to the takeover read back, the rest as they come)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.partitioner.default import murmur2

    from streaming.kafka import clients

    s, workers, _, recs = shop
    stay, leave = workers[1], workers[0]
    owned = wait_for(lambda: (leave.get("/ready")[1] or {}).get("partitions"), 60, "the leaving worker's partitions")
    assert len(owned) == 1
    user = next(u for u in (f"moved{k}" for k in range(100)) if (murmur2(u.encode()) & 0x7FFFFFFF) % 2 == owned[0])
    produce(s.bootstrap, s.clickstream_topic, [event_bytes(user, CLUSTER1[1], ts=int(time.time() * 1000))])
    recs.read_until(lambda rs: any(r.key == user.encode() for r in rs), timeout=60)  # counted by `leave` only
    read_before = stay.metric("streamrec_sources_reread_events_total", {"when": "rebalance"})
    assert leave.stop() == 0, leave.tail()

    def moved():
        status, body = stay.get("/ready")
        return status == 200 and len(body["partitions"]) == s.partitions

    wait_for(moved, 90, "the leaving worker's partition assigned to the other")
    t = int(time.time() * 1000)
    produce(s.bootstrap, s.clickstream_topic, [event_bytes(user, CLUSTER1[0], ts=t)])
    recs.read_until(lambda rs: any(r.key == user.encode() and json.loads(r.value)["event_ts"] == t for r in rs), 60)

    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap, **clients.kafka_python())
    try:
        ends = consumer.end_offsets([TopicPartition(s.clickstream_topic, p) for p in range(s.partitions)])
    finally:
        consumer.close()
    assert stay.get("/health")[1]["sources_events"] == sum(ends.values())  # every event, once
    assert stay.metric("streamrec_sources_reread_events_total", {"when": "rebalance"}) > read_before
    assert f"partitions {owned}, moved to this worker" in stay.tail(400)
