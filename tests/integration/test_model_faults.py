"""Issue 5: model store faults, retrain failures and rollback, against a real worker.

Each bad version is announced on the model-updates topic like a real retrain would: a
truncated factor file, a checksum mismatch, wrong dimensions (checksums consistent, so only
the shape check can catch it), missing metadata, a version announced but absent. Each is
refused; the current model keeps serving (recommendations keep naming it); the worker's
streamrec_model_loads_total{result="refused"} counts it and its log says why.

A `recsys retrain` SIGKILLed while it writes a version (held at a known point by a fault
hook, so the kill lands mid-write every time) leaves only its temporary directory, which no
reader sees; the next retrain counts it as a failed run and removes it. A retrain that fails
(an exception) counts streamrec_retrain_runs_total{result="failed"} and keeps running; the
workers keep serving. `recsys models rollback --announce` moves the store back one version
and the workers follow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from devtools.broker import free_port
from recsys.model.store import ModelStore, _sha256
from streaming.jobs.retrain import announce
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from tests.helpers import clustered_events, train_into
from tests.integration.test_reliability import FAST_GROUP, ROOT, report
from tests.stream_fixture import (
    TopicReader,
    WorkerProcess,
    event_bytes,
    produce,
    settings_env,
    stream_settings,
    wait_for,
)

pytestmark = pytest.mark.kafka

OLD, NEW = "20200101T000000Z-000001", "20200102T000000Z-000002"


@pytest.fixture(scope="module")
def system(kafka_broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    s = stream_settings(kafka_broker.bootstrap, partitions=2, batch_within_s=0.02)
    ensure_topics(s.bootstrap, topic_specs(s))
    store = ModelStore(tmp / "models")
    train_into(store, seed=1, version=OLD)
    train_into(store, seed=2, version=NEW)
    worker = WorkerProcess(s, tmp, store.root, env=FAST_GROUP).start()
    recs = TopicReader(s.bootstrap, s.recommendations_topic)
    yield s, worker, store, recs, tmp
    recs.close()
    worker.stop()


def refused(worker) -> float | None:
    """The worker's refusal count, or None if /metrics did not answer (a busy machine)."""
    try:
        return worker.metric("streamrec_model_loads_total", {"result": "refused"})
    except AssertionError:
        return None


def serving(worker) -> str | None:
    status, body = worker.get("/health", timeout=10)
    return body["model_version"] if status == 200 else "(no answer)"


def next_rec(s, recs, user: str, item: str) -> dict:
    ts = int(time.time() * 1000)
    produce(s.bootstrap, s.clickstream_topic, [event_bytes(user, item, ts=ts)])
    recs.read_until(
        lambda rs: any(r.key == user.encode() and json.loads(r.value)["event_ts"] == ts for r in rs), timeout=30
    )
    return [json.loads(r.value) for r in recs.records if r.key == user.encode()][-1]


def log_since(worker, mark: int) -> str:
    return worker.log_path.read_bytes()[mark:].decode(errors="replace")


# ------------------------------------------------------------------------- the bad versions


def truncated(store, v):
    train_into(store, seed=3, version=v, publish=False)
    f = store.root / v / "item_factors.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "has"  # "... item_factors.npy has N bytes, expected M"


def checksum(store, v):
    train_into(store, seed=3, version=v, publish=False)
    f = store.root / v / "item_factors.npy"
    data = bytearray(f.read_bytes())
    data[-8:] = b"\x7f" * 8
    f.write_bytes(bytes(data))
    return "sha256"


def wrong_dims(store, v):
    train_into(store, seed=3, version=v, publish=False)
    vdir = store.root / v
    y = np.load(vdir / "item_factors.npy")
    np.save(vdir / "item_factors.npy", np.zeros((y.shape[0], y.shape[1] + 3), dtype=np.float32))
    meta = json.loads((vdir / "metadata.json").read_text())
    f = vdir / "item_factors.npy"
    meta["files"]["item_factors.npy"] = {"sha256": _sha256(f), "bytes": f.stat().st_size}  # consistent
    (vdir / "metadata.json").write_text(json.dumps(meta))
    return "shape"


def missing_metadata(store, v):
    train_into(store, seed=3, version=v, publish=False)
    (store.root / v / "metadata.json").unlink()
    assert v not in store.versions()  # invisible to listings and rollback
    return "metadata.json is missing"


def absent(store, v):
    return "does not exist"


FAULTS = [truncated, checksum, wrong_dims, missing_metadata, absent]


def test_bad_versions_are_refused_and_the_current_model_keeps_serving(system):
    s, worker, store, recs, _ = system
    announce(s.bootstrap, s.model_updates_topic, NEW)
    wait_for(lambda: serving(worker) == NEW, 90, "serving the current version")
    good = serving(worker)
    figures = {}
    for k, fault in enumerate(FAULTS):
        version = f"2099010{k}T000000Z-bad{k:03d}"
        why = fault(store, version)
        before = wait_for(lambda: refused(worker) is not None and [refused(worker)], 30, "metrics")[0]
        mark = worker.log_path.stat().st_size
        announce(s.bootstrap, s.model_updates_topic, version)
        wait_for(lambda: refused(worker) == before + 1, 90, f"{fault.__name__} refused")
        line = wait_for(
            lambda: [ln for ln in log_since(worker, mark).splitlines() if f"refused model {version}" in ln],
            30,
            "the refusal's log line",
        )[0]
        assert why in line and f"still serving {good}" in line, line
        assert serving(worker) == good
        assert next_rec(s, recs, f"shopper-{k}", "i4")["model_version"] == good
        assert store.current() == NEW
        figures[fault.__name__] = line.split("refused model", 1)[1].strip()[:160]
        import shutil

        shutil.rmtree(store.root / version, ignore_errors=True)
    report("model_faults", refused=len(FAULTS), serving=good, reasons=figures)


# ------------------------------------------------------------------ retrain killed mid-write

HOLD = """
import os, sys, time
import numpy as np
import recsys.model.store as st
real = np.save
def held(path, arr, *a, **kw):
    real(path, arr, *a, **kw)
    open(os.environ["HOLD_MARKER"], "w").write(str(path))   # half the files are written
    time.sleep(3600)
class HeldNumpy:  # numpy as store.py sees it, but np.save holds after its first file
    save = staticmethod(held)
    def __getattr__(self, name):
        return getattr(np, name)
st.np = HeldNumpy()
from streaming.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def history_file(path: Path) -> Path:
    base = int(time.time() * 1000) - 86_400_000
    with open(path, "w") as f:
        for k, e in enumerate(clustered_events(seed=9)):
            f.write(json.dumps({"user": e.user, "item": e.item, "type": e.type, "ts": base + k}) + "\n")
    return path


def retrain_env(s) -> dict:
    return {**os.environ, **settings_env(s)}


def scrape(port: int, name: str, labels: dict) -> float | None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                return smp.value
    return 0.0


def test_retrain_killed_mid_write_is_invisible_and_counted_as_failed(system):
    s, worker, store, recs, tmp = system
    good, current, versions = serving(worker), store.current(), store.versions()
    data = history_file(tmp / "history.jsonl")
    marker = tmp / "held"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD,
            "retrain",
            "--once",
            "--data",
            str(data),
            "--bootstrap",
            s.bootstrap,
            "--model-dir",
            str(store.root),
        ],
        env={**retrain_env(s), "HOLD_MARKER": str(marker)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, 120, "the retrain writing its version")
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        tmp_dirs = list(store.root.glob(".tmp-*"))
        assert len(tmp_dirs) == 1 and any(tmp_dirs[0].iterdir())  # a half-written version on disk
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Invisible: not a version, not current, the worker never heard of it.
    assert store.versions() == versions and store.current() == current
    assert serving(worker) == good
    assert next_rec(s, recs, "after-kill", "i2")["model_version"] == good

    # The next retrain run notices, counts a failed run, cleans up, and then does its job.
    port = free_port()
    with open(tmp / "retrain-next.log", "wb") as log:  # the child keeps its own copy of the descriptor
        nxt = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streaming.cli.main",
                "retrain",
                "--every",
                "1h",
                "--data",
                str(data),
                "--metrics-port",
                str(port),
                "--bootstrap",
                s.bootstrap,
                "--model-dir",
                str(store.root),
            ],
            env=retrain_env(s),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: (
                (scrape(port, "streamrec_retrain_runs_total", {"result": "published"}) or 0) >= 1
                or nxt.poll() is not None
            ),
            180,
            "the next retrain publishing",
        )
        assert nxt.poll() is None
        assert scrape(port, "streamrec_retrain_runs_total", {"result": "failed"}) == 1
        text = (tmp / "retrain-next.log").read_text()
        assert "was killed while writing" in text, text[-2000:]
        assert not list(store.root.glob(".tmp-*"))
        new = store.current()
        assert new not in (current, None)
        wait_for(lambda: serving(worker) == new, 60, "the worker swapping to the next retrain's version")
    finally:
        nxt.kill()
        nxt.wait()
    report("retrain_killed_mid_write", invisible=True, counted_failed=1, next_version=new)


def test_failing_retrain_is_counted_and_the_system_keeps_serving(system):
    s, worker, store, recs, tmp = system
    good, current = serving(worker), store.current()
    bad_data = tmp / "corrupt.jsonl"
    bad_data.write_text('{"user": "u1", "item": "i1", "type": "view", "ts": 1700000000000}\n{not json\n')
    not_a_dir = tmp / "file-not-a-store"
    not_a_dir.write_text("x")
    good_data = history_file(tmp / "history2.jsonl")
    cases = [("corrupt history file", bad_data, store.root), ("unwritable model store", good_data, not_a_dir)]
    counts = {}
    for name, data, model_dir in cases:
        # --once: the failure is the exit status.
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "streaming.cli.main",
                "retrain",
                "--once",
                "--data",
                str(data),
                "--bootstrap",
                s.bootstrap,
                "--model-dir",
                str(model_dir),
            ],
            env=retrain_env(s),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert r.returncode != 0 and "retrain failed" in r.stderr, (name, r.returncode, r.stderr[-2000:])
        # --every: the job keeps running and counts each failure.
        port = free_port()
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streaming.cli.main",
                "retrain",
                "--every",
                "1s",
                "--data",
                str(data),
                "--metrics-port",
                str(port),
                "--bootstrap",
                s.bootstrap,
                "--model-dir",
                str(model_dir),
            ],
            env=retrain_env(s),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(
                lambda: (
                    (scrape(port, "streamrec_retrain_runs_total", {"result": "failed"}) or 0) >= 2
                    or p.poll() is not None
                ),
                120,
                f"{name}: failures counted",
            )
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            counts[name] = scrape(port, "streamrec_retrain_runs_total", {"result": "failed"})
            assert scrape(port, "streamrec_retrain_runs_total", {"result": "published"}) == 0
        finally:
            p.kill()
            p.wait()
        assert store.current() == current and serving(worker) == good
        assert next_rec(s, recs, f"during-{len(counts)}", "i7")["model_version"] == good
    report("retrain_failures", failed_runs_counted=counts, still_serving=good)


# --------------------------------------------------------------------------------- rollback


def test_rollback_command_moves_the_store_back_and_the_workers_follow(system):
    s, worker, store, recs, tmp = system
    announce(s.bootstrap, s.model_updates_topic, store.current())
    wait_for(lambda: serving(worker) == store.current(), 30, "serving the current version")
    before = store.current()
    previous = [v for v in store.versions() if v < before][-1]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming.cli.main",
            "models",
            "rollback",
            "--announce",
            "--bootstrap",
            s.bootstrap,
            "--model-dir",
            str(store.root),
        ],
        env=retrain_env(s),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == previous and store.current() == previous
    wait_for(lambda: serving(worker) == previous, 30, "the worker following the rollback")
    assert next_rec(s, recs, "rolled-back", "i1")["model_version"] == previous
    assert worker.metric("streamrec_model_info", {"version": previous}) == 1
    report("rollback", from_version=before, to_version=previous)
