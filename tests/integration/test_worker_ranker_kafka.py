"""The worker's ranked lists through Kafka equal the streaming evaluation's (method `ranker`), and
a version's ranker is hot-swapped with it; a corrupt ranker file refuses its version.

Real Taobao events go through a real worker process on the real broker, with a model version
that carries a ranker trained (small settings) on the same training events: the training events
in bulk, in time order on one partition (the sources count events in arrival order, as the
replay does), then the test slice ONE event at a time, waiting for the list the worker publishes
after each. `stream_evaluate` replays the same events with the same model and ranker, one event
per chunk; the list on screen before each compared event must be its `ranker` list. The slice is
chosen so the two read the same state (`tests.helpers.ranker_slice`: nothing happens between a
user's two events, so the stream-wide features are the same at publication and at the next event).
The category-popularity source is on (the default): each record carries the Taobao event's
category, which the worker reads as stream-eval does.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from kafka import KafkaProducer

from recsys.candidates.training import train_ranker
from recsys.confidence import build_profiles
from recsys.config import Config
from recsys.data.datasets import load_events, time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate
from recsys.events import Event
from recsys.model.store import RANKER, ModelStore
from recsys.model.train import TrainConfig, train
from streaming.jobs.retrain import announce
from streaming.kafka import clients
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from tests.conftest import require_dataset
from tests.helpers import ranker_slice
from tests.stream_fixture import TopicReader, WorkerProcess, stream_settings, wait_for

pytestmark = pytest.mark.kafka

CFG = Config()
RCFG = replace(CFG.ranker, n_estimators=10, min_child_samples=5)
TCFG = TrainConfig(factors=16, iterations=10, num_threads=1)


@pytest.fixture(scope="module")
def data():
    events = load_events(require_dataset("taobao_small"))
    tr, te = time_split(events, test_fraction=0.2)
    test_slice, compared = ranker_slice(tr, te)
    assert CFG.sources.category_recent > 0 and all(e.category for e in (*tr, *test_slice))
    ranker = train_ranker(tr, ccfg=CFG.confidence, scfg=CFG.scoring, ecfg=StreamEvalConfig(ranker=RCFG))
    return tr, test_slice, compared, ranker


@pytest.fixture(scope="module")
def model(data):
    """The ALS model on the training events (deterministic: one thread, a fixed seed); each test
    stores it under its own version names."""
    tr, *_ = data
    model, _, _ = train(build_profiles(tr, CFG.confidence), CFG.confidence, TCFG, version="v-trained")
    return model


def versioned(model, version: str):
    return replace(model, version=version, metadata=dict(model.metadata))


@pytest.fixture(scope="module")
def ranked(data, model):
    """The "v-ranked" version (the model with ranker A) and stream-eval's lists of the slice with it:
    what the first and the restart test's workers must publish."""
    tr, test_slice, _, ranker = data
    ranked = versioned(model, "v-ranked")
    return ranked, replay(tr, test_slice, ranked, ranker)


def replay(tr, test_slice, model, ranker):
    """stream-eval's ranker lists of the slice, one event per chunk, popularity refreshed every event."""
    rep = stream_evaluate(
        tr,
        test_slice,
        ccfg=CFG.confidence,
        scfg=CFG.scoring,
        model=model,
        ecfg=StreamEvalConfig(methods=("system", "ranker"), chunk_max=1, pop_refresh=1, ranker=RCFG),
        ranker=ranker,
        keep_lists=("ranker",),
    )
    assert rep["skipped_same_item"] == 0
    return {(r["user"], r["item"], r["ts"]): r["lists"]["ranker"] for r in rep["events"]}


def committed(s) -> int:
    """The worker's consumer group's committed offset on the clickstream (one partition)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap)
    try:
        got = admin.list_group_offsets({s.app_id: None}).get(s.app_id, {})
    finally:
        admin.close()
    return sum(om.offset for tp, om in got.items() if tp.topic == s.clickstream_topic and om.offset > 0)


def serving(worker) -> str | None:
    status, body = worker.get("/health", timeout=10)
    return body["model_version"] if status == 200 and isinstance(body, dict) else None


class Live:
    """A worker on its own topics (one partition) and its published lists."""

    def __init__(self, bootstrap, tmp_path, models):
        self.s = stream_settings(bootstrap, partitions=1, batch_within_s=0.02)
        ensure_topics(self.s.bootstrap, topic_specs(self.s))
        self.worker = WorkerProcess(self.s, tmp_path, models).start()
        self.recs = TopicReader(self.s.bootstrap, self.s.recommendations_topic)
        self.producer = KafkaProducer(bootstrap_servers=self.s.bootstrap, acks="all", **clients.kafka_python())
        self.on_screen: dict[str, dict] = {}

    def send(self, evs) -> dict:
        """Produce `evs` in order; the message published after the last one."""
        last = evs[-1]
        for e in evs:
            self.producer.send(self.s.clickstream_topic, key=e.user.encode(), value=json.dumps(e.to_dict()).encode())
        self.producer.flush()

        def mine(r):
            v = json.loads(r.value)
            return r.key == last.user.encode() and v["event_ts"] == last.ts and v["query"] == last.item

        got = self.recs.read_until(lambda rs: any(mine(r) for r in rs), timeout=60)
        msg = json.loads([r for r in got if mine(r)][-1].value)
        return msg

    def walk(self, evs: list[Event]) -> list[tuple[Event, dict | None]]:
        """Each event one at a time: (event, the message on screen before it)."""
        out = []
        for e in evs:
            out.append((e, self.on_screen.get(e.user)))
            self.on_screen[e.user] = self.send([e])
        return out

    def restart(self) -> None:
        """Stop the worker and start it again on the same data dir and consumer group."""
        old = self.worker
        assert old.stop() == 0, old.tail()
        self.worker = WorkerProcess(self.s, old.workdir, old.model_dir, web_port=old.web_port).start()

    def close(self):
        self.producer.close()
        self.recs.close()
        self.worker.stop()


def test_worker_ranked_lists_equal_stream_eval(kafka_broker, tmp_path, data, ranked) -> None:
    tr, test_slice, compared, ranker = data
    model, want = ranked
    ModelStore(tmp_path / "models").save(model, ranker=ranker.to_bytes())
    live = Live(kafka_broker.bootstrap, tmp_path, tmp_path / "models")
    try:
        assert live.send(tr)["model_version"] == "v-ranked"  # every training event applied
        shown = live.walk(test_slice)
    finally:
        live.close()
    keys = {(e.user, e.item, e.ts) for e in compared}
    checked = [(e, before) for e, before in shown if (e.user, e.item, e.ts) in keys]
    assert len(checked) == len(compared) > 50
    for e, before in checked:
        assert before is not None and before["source"] == "ranker" and before["model_version"] == "v-ranked"
        assert before["items"] == want[(e.user, e.item, e.ts)], (e, before)


def test_ranker_hot_swaps_with_its_version_and_a_corrupt_one_is_refused(kafka_broker, tmp_path, data, model) -> None:
    """Version A with ranker A serves; B with another ranker is announced: the lists are B's
    (equal to stream-eval's with B's ranker, and not all equal to A's); C, whose ranker file was
    changed after it was saved, is announced: refused (log line, metric), B keeps serving."""
    tr, test_slice, compared, ranker_a = data
    ranker_b = train_ranker(
        tr,
        ccfg=CFG.confidence,
        scfg=CFG.scoring,
        ecfg=StreamEvalConfig(ranker=replace(RCFG, n_estimators=30, num_leaves=7, seed=1)),
    )
    store = ModelStore(tmp_path / "models")
    models = {}
    for v, r in (("v-a", ranker_a), ("v-b", ranker_b), ("v-c", ranker_b)):
        models[v] = versioned(model, v)  # the same factors: only the rankers differ
        store.save(models[v], ranker=r.to_bytes(), publish=v == "v-a")
    raw = bytearray((store.root / "v-c" / RANKER).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (store.root / "v-c" / RANKER).write_bytes(bytes(raw))

    live = Live(kafka_broker.bootstrap, tmp_path, store.root)
    w, s = live.worker, live.s
    try:
        assert live.send(tr)["model_version"] == "v-a"
        third = len(test_slice) // 3
        shown = live.walk(test_slice[:third])
        announce(s.bootstrap, s.model_updates_topic, "v-b")
        wait_for(lambda: serving(w) == "v-b", 60, "serving v-b")
        shown += live.walk(test_slice[third : 2 * third])
        mark = w.log_path.stat().st_size
        announce(s.bootstrap, s.model_updates_topic, "v-c")
        wait_for(lambda: w.metric("streamrec_model_fetch_refused_total", {"reason": "ranker"}) == 1, 60, "v-c refused")
        assert w.metric("streamrec_model_loads_total", {"result": "refused"}) == 1
        log = w.log_path.read_bytes()[mark:].decode(errors="replace")
        assert "refused model v-c" in log and "ranker" in log and "still serving v-b" in log, log
        shown += live.walk(test_slice[2 * third :])
    finally:
        live.close()

    want = {v: replay(tr, test_slice, models[v], r) for v, r in (("v-a", ranker_a), ("v-b", ranker_b))}
    keys = {(e.user, e.item, e.ts) for e in compared}
    by_version: dict[str, int] = {}
    differs = 0
    for e, before in shown:
        if before is None or (e.user, e.item, e.ts) not in keys:
            continue
        v = before["model_version"]
        assert v in want and before["source"] == "ranker", before
        key = (e.user, e.item, e.ts)
        assert before["items"] == want[v][key], (v, e, before)
        by_version[v] = by_version.get(v, 0) + 1
        differs += v == "v-b" and want["v-a"][key] != before["items"]
    assert by_version.get("v-a", 0) > 5 and by_version.get("v-b", 0) > 20, by_version
    assert differs > 0  # B's ranker, not A's, ordered B's lists
    assert {live.on_screen[u]["model_version"] for u in live.on_screen} == {"v-b"}  # C never served


def test_after_a_restart_the_sources_are_read_back_from_the_clickstream(kafka_broker, tmp_path, data, ranked) -> None:
    """The worker is restarted between the training events and the slice: it re-reads the recent
    clickstream into its sources, item counters and popularity before its first batch, so its
    lists still equal stream-eval's (which never restarts)."""
    tr, test_slice, compared, ranker = data
    model, want = ranked
    ModelStore(tmp_path / "models").save(model, ranker=ranker.to_bytes())
    live = Live(kafka_broker.bootstrap, tmp_path, tmp_path / "models")
    try:
        assert live.send(tr)["model_version"] == "v-ranked"
        # the group has committed every training event: the warm-up, not redelivery, must bring them back
        wait_for(lambda: committed(live.s) == len(tr), 60, "the training events' offsets committed")
        mark = live.worker.log_path.stat().st_size  # the restarted worker appends to the same log
        live.restart()
        w = live.worker
        warmed = wait_for(
            lambda: [
                ln
                for ln in w.log_path.read_bytes()[mark:].decode(errors="replace").splitlines()
                if "sources warmed up" in ln
            ],
            60,
            "the sources' warm-up",
        )
        read = int(re.search(r": (\d+) events in", warmed[-1]).group(1))  # type: ignore[union-attr]
        assert read == len(tr), warmed
        shown = live.walk(test_slice)
    finally:
        live.close()
    keys = {(e.user, e.item, e.ts) for e in compared}
    checked = [(e, before) for e, before in shown if (e.user, e.item, e.ts) in keys]
    assert len(checked) == len(compared) > 50
    for e, before in checked:
        assert before is not None and before["source"] == "ranker"
        assert before["items"] == want[(e.user, e.item, e.ts)], (e, before)
