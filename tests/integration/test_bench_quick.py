"""Each benchmark's --quick mode runs and produces sane numbers (never a speed assertion)."""

import json
import math

import pytest

from tests.conftest import require_dataset


def finite_pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_compute_quick(tmp_path):
    from bench import compute

    out = tmp_path / "compute.json"
    rep = compute.main(["--quick", "--output", str(out), "--plot", str(tmp_path / "c.png")])
    assert json.loads(out.read_text())["bench"] == "compute" and (tmp_path / "c.png").stat().st_size > 0
    (r,) = rep["results"]
    for k in (
        "ceiling_ms",
        "batched_ms",
        "foldin_ms",
        "scoring_ms",
        "naive_ms_per_event",
        "batched_over_ceiling",
        "batched_speedup_vs_naive",
        "ann_build_s",
        "ann_scoring_ms",
    ):
        assert finite_pos(r[k]), k
    assert 0.5 <= r["ann_recall_at_10"] <= 1.0
    assert all(0.0 <= w["recall_at_10"] <= 1.0 for w in r["ann_nprobe_sweep"])


def test_sources_gc_quick(tmp_path):
    from bench import sources_gc

    rep = sources_gc.main(["--quick", "--output", str(tmp_path / "s.json")])
    assert rep["sizes"]["sessions"] > 1000 and rep["events"] == 20_000
    assert rep["tracked_objects"] < 100  # nothing per session or user (tests/unit/test_sources_memory.py)
    for k in ("pause_ms", "update_us", "bytes_per_session"):
        assert finite_pos(rep[k]), k


@pytest.mark.data
@pytest.mark.kafka
@pytest.mark.timeout(600)  # five child processes (produce, cold, fit, warm) and a real-data comparison
def test_retrain_quick(tmp_path, kafka_broker, monkeypatch):
    require_dataset("taobao_small")
    from bench import retrain

    monkeypatch.setenv("STREAMREC_BOOTSTRAP", kafka_broker.bootstrap)
    rep = retrain.main(["--quick", "--output", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    (size,) = rep["sizes"]
    assert size["users"] == 2000 and size["nnz"] > 0 and (tmp_path / "r.png").stat().st_size > 0
    assert size["cold"]["result"] == "published" and size["warm"]["result"] == "published"
    for k in ("read_decode_s", "fit_s", "gate_s", "save_s"):
        assert size["cold"]["phases"][k] >= 0, k
    for x in (
        size["read_decode_records_per_s"],
        size["wall_over_fit"],
        size["cold"]["peak_rss_mb"],
        size["implicit_fit_s"],
        size["direct"]["fit_s"],
    ):
        assert finite_pos(x)
    assert size["warm"]["fit"]["warm_start_from"] == size["cold"]["version"]
    assert finite_pos(rep["warm_real"]["speedup"])


@pytest.mark.kafka
def test_changelog_read_quick(tmp_path, kafka_broker, monkeypatch):
    from bench import changelog_read

    monkeypatch.setenv("STREAMREC_BOOTSTRAP", kafka_broker.bootstrap)
    rep = changelog_read.main(["--quick", "--output", str(tmp_path / "c.json")])
    s = rep["summary"]
    assert json.loads((tmp_path / "c.json").read_text())["bench"] == "changelog_read"
    for mode in ("fetch", "full"):
        (run,) = rep["runs"][mode]
        assert run["records"] == 2000 and finite_pos(run["records_per_s"]) and finite_pos(run["cpu_s"]), mode
    assert s["full"]["users"] == 2000 and s["full"]["skipped"] == 0 and s["full"]["nnz"] > 2000
    assert finite_pos(s["full_over_fetch"]) and finite_pos(s["cpu_full_over_fetch"])


@pytest.mark.kafka
def test_state_quick(tmp_path, kafka_broker, monkeypatch):
    from bench import state

    monkeypatch.setenv("STREAMREC_BOOTSTRAP", kafka_broker.bootstrap)
    rep = state.main(["--quick", "--users", "2000", "--restore-users", "500", "--output", str(tmp_path / "s.json")])
    mix = rep["rocksdb"]["real_mix"]
    assert 50 < mix["encoded_bytes_per_user"] < 20_000 and finite_pos(mix["disk_bytes_per_user"])
    full = rep["restore"]["full"]
    assert full["users"] == 500 and finite_pos(full["start_to_serving_s"]) and finite_pos(full["worker_rss_mb"])


@pytest.mark.kafka
@pytest.mark.parametrize("light", [False, True], ids=["kafka-python", "librdkafka"])
def test_e2e_clients_hand_over_offsets_and_stamp_answers(kafka_broker, light):
    """bench/e2e's own clients, either library (`--light-clients`): the producer reports each
    event's offset, the stamping consumer matches an answer to the event it answers."""
    import time
    import uuid

    from bench.e2e import Answers, Producer
    from streaming.kafka.admin import ensure_topics

    clicks, recs = f"tc-{uuid.uuid4().hex[:6]}", f"tr-{uuid.uuid4().hex[:6]}"
    ensure_topics(kafka_broker.bootstrap, {clicks: 2, recs: 2})
    producer, answers = Producer.open(kafka_broker.bootstrap, light), Answers(kafka_broker.bootstrap, recs, light)
    try:
        offsets: list[int] = []
        for _ in range(3):
            producer.send(clicks, b"u1", b"{}", offsets.append)
        producer.flush()
        assert sorted(offsets) == [0, 1, 2]  # one partition (one key): each event's own offset
        first = producer.send_now(clicks, b"u1", b"{}")
        assert first == 3
        # an answer to offsets up to 2 (a worker coalesces a user's events of a batch), not to 3
        producer.send_now(recs, b"u1", json.dumps({"offset": 2, "model_version": "v"}).encode())
        deadline = time.time() + 30
        while answers.answered(b"u1", 2) is None and time.time() < deadline:
            time.sleep(0.05)
        assert answers.answered(b"u1", 0) is not None and answers.answered(b"u1", 2) is not None
        assert answers.answered(b"u1", 3) is None
    finally:
        answers.close()
        producer.close()


def test_e2e_quick(tmp_path, kafka_broker, monkeypatch):
    from bench import e2e

    monkeypatch.setenv("STREAMREC_BOOTSTRAP", kafka_broker.bootstrap)
    rep = e2e.main(
        [
            "--quick",
            "--events",
            "600",
            "--naive-events",
            "150",
            "--half-seconds",
            "2",
            "--warm-events",  # workers warmed first; events at the data's times, fresh ones at half load
            "300",
            "--data-time",
            "--output",
            str(tmp_path / "e.json"),
            "--plot",
            str(tmp_path / "e.png"),
        ]
    )
    assert rep["warm_events"] == 300 and rep["data_time"]
    for name in ("passthrough", "worker_full", "worker_half", "naive"):
        r = rep["results"][name]
        assert r["unanswered"] == 0 and r["answered"] == r["events"], name
        assert finite_pos(r["events_per_s"]) and finite_pos(r["recs_per_s"]), name
        lat = r["latency_ms"]
        assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"], name
    assert finite_pos(rep["ratios"]["worker_vs_naive_throughput"])


@pytest.mark.kafka
def test_catalogue_quick(tmp_path, kafka_broker, monkeypatch):
    from bench import catalogue

    monkeypatch.setenv("STREAMREC_BOOTSTRAP", kafka_broker.bootstrap)
    rep = catalogue.main(
        ["--quick", "--catalogue", "5000", "--events", "600", "--request-seconds", "2", "--rate", "50"]
        + ["--output", str(tmp_path / "c.json")]
    )
    s = rep["summary"]
    for k in ("throughput_ratio", "catalogue_load_s"):
        assert finite_pos(s[k]), k
    assert finite_pos(s["requests"]["50.0"]["p50_ms"]) and finite_pos(s["requests"]["50.0"]["p99_ms"])
    (r,) = rep["rounds"]
    assert r["requests"]["50.0"]["ok"] == r["requests"]["50.0"]["sent"] > 0
    assert s["violations"] == 0 and r["lists_checked"] > 0


@pytest.mark.kafka
def test_scale_quick(tmp_path, kafka_broker, monkeypatch):
    from bench import scale

    monkeypatch.setenv("STREAMREC_BOOTSTRAP", kafka_broker.bootstrap)
    rep = scale.main(["--quick", "--output", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png")])
    s = rep["summary"]
    assert (tmp_path / "s.png").stat().st_size > 0
    for k in ("sustained_events_per_s", "max_lag", "state_bytes_per_user", "restore_ready_s", "retrain_wall_s"):
        assert finite_pos(s[k]), k
    assert 0 < s["events_processed"] <= rep["events"] and finite_pos(s["retrain_peak_rss_mb"])
    assert rep["retrain"]["result"] == "published" and rep["restore"]["ready"]["ready"] is True
    # the retrain read this run's clickstream (the workers' topic names) and trained a ranker,
    # which the workers serve with the retrained model
    ranker = rep["retrain"]["ranker"]
    assert ranker["window"]["events"] > 0 and ranker["model"].startswith("trained"), ranker
    if ranker["published"]:
        assert all(w["ranker"] for w in rep["swaps"][0]["workers"].values()), rep["swaps"][0]
    # the retrained model and both synthetic ones were swapped to; lists kept coming meanwhile,
    # from the version being replaced
    assert [sw["items"] for sw in s["swaps"].values()][1:] == [3000, 8000]
    for name, sw in s["swaps"].items():
        assert finite_pos(sw["swap_s"]), name
        for during in sw["lists_during_swap"].values():
            assert during["other"] == 0, name


@pytest.mark.data
def test_als_kernel_quick(tmp_path):
    """Both half-steps are timed on the matrix the shapes promise: bench/state's history lengths
    (capped at 200), the fixed catalogue's items at every size."""
    import numpy as np

    from bench import als_kernel
    from bench.state import real_shape

    require_dataset("taobao")
    lengths, items = real_shape()
    m = als_kernel.matrix(5_000, len(items), lengths)
    per_user = np.diff(m.indptr)
    assert m.shape == (5_000, len(items)) and per_user.max() <= 200 and per_user.min() >= 1
    # duplicates summed: a user's row names each item once; confidences are 1 + 15 x a weight
    assert all(np.unique(m.indices[a:b]).size == b - a for a, b in zip(m.indptr[:-1], m.indptr[1:], strict=True))
    assert set(np.unique(m.data)) >= {np.float32(1 + 15 * 0.25), np.float32(16.0)}
    assert abs(per_user.mean() - np.minimum(lengths, 200).mean()) < 0.15 * np.minimum(lengths, 200).mean()

    rep = als_kernel.main(["--quick", "--output", str(tmp_path / "k.json")])
    assert [(r["users"], r["items"]) for r in rep["rows"]] == [(20_000, len(items)), (60_000, len(items))]
    for r in rep["rows"]:
        assert finite_pos(r["user_step_ns_median"]) and finite_pos(r["item_step_ns_median"])
        assert r["users_per_item"] == round(r["nnz"] / r["items"])
    assert json.loads((tmp_path / "k.json").read_text())["bench"] == "als_kernel"


def test_gate_cost_quick(tmp_path):
    """The gate's scoring is timed with the index (forced on at this size) and exact, on the same
    cases, and both score the same synthetic cases to a MAP@10 in [0, 1]."""
    from bench import gate_cost

    rep = gate_cost.main(["--quick", "--repeats", "1", "--output", str(tmp_path / "g.json")])
    assert rep["uses_index"] and rep["cases"] == 300 and rep["items"] == 20_000
    for name in ("index", "exact"):
        (run,) = rep["runs"][name]
        assert finite_pos(run["wall_s"]) and 0.0 <= run["map10"] <= 1.0
    assert finite_pos(rep["index_over_exact"])
    assert json.loads((tmp_path / "g.json").read_text())["bench"] == "gate_cost"
