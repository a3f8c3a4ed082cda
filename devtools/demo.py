"""`recsys demo`: the whole system, live, on this machine, for a bounded time.

  1. Kafka: the project's own broker (fetched from Maven Central once), unless the
     configuration names one (`stream.bootstrap`: --bootstrap, STREAMREC_BOOTSTRAP).
  2. Data: the real Taobao clickstream in the shared data folder when present, else the
     simulator. The earlier 80% (by time) is the history: it trains the first model and is
     replayed through the worker as fast as it goes, so the users' state (and every retrain
     from the state changelog) holds it. The rest is the live part.
  3. The dataset's item catalogue on the items topic (`recsys items load`: Taobao's category
     ids; the simulator's prices), then a worker and a retrain loop (from the state changelog)
     as separate processes.
  4. The live part at a steady rate, re-timed to now; recommendations tailed and printed,
     model swaps announced as they land.
  5. After --duration seconds (or Ctrl-C): one filtered list on request (the category of the
     item a shopper looked at last, or a price range), everything stopped, a summary printed.

Each run uses its own topics, consumer group, state and model store under var/demo/<run>/
and deletes its topics at the end, so runs never see each other's data. Everything else comes
from the one configuration (`recsys.config`), which the worker and the retrain loop get
through their environment (`Config.to_env`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.confidence import build_profiles
from recsys.config import Config, Settings, child_env
from recsys.errors import RecsysError
from recsys.model.item_foldin import user_gram
from recsys.model.store import ModelStore
from recsys.model.train import train
from recsys.progress import say


@dataclass(frozen=True)
class DemoOptions:
    """What a demo run does besides the configuration (`recsys demo`'s own options)."""

    duration: float = 90.0  # seconds of live replay
    rate: float = 200.0  # events per second replayed
    retrain_every: float = 30.0  # seconds between retrains
    print_every: float = 1.0  # print one recommendation this often (s)
    simulate_events: int = 40_000  # events to simulate without real data
    workdir: str = "var/demo"  # where runs keep their state and logs
    no_history: bool = False  # skip replaying the history through the worker


def _load_data(events_limit: int, folder: str) -> tuple[list, str, Path | None]:
    """(events, what they are, the file they came from: None for the simulator)."""
    from recsys.data.datasets import DATASETS, data_dir, load_events

    path = data_dir(folder) / DATASETS["taobao"]
    if path.exists():
        return load_events(path), f"Taobao UserBehavior ({path})", path
    from recsys.data.simulator import SimConfig, simulate

    return simulate(SimConfig(events=events_limit)), "the clickstream simulator (real data not found)", None


def _load_catalogue(bootstrap: str, topic: str, events: list, path: Path | None, root: Path) -> str:
    """The dataset's catalogue on the items topic: from the file (`recsys items load`), or for
    simulated events, each item with the price its events carry."""
    from streaming.jobs.items import load

    if path is None:
        from recsys.catalogue import Item

        prices = {e.item: e.price for e in events if e.price is not None}
        path = root / "items.jsonl"
        path.write_text("".join(json.dumps(Item(i, price=p).to_json()) + "\n" for i, p in prices.items()))
    return load(bootstrap, topic, path).summary()


def _free_port() -> int:
    from devtools.broker import free_port

    return free_port()


def _metric(url: str, name: str) -> float:
    """Sum of a metric's samples on a /metrics page (0 if unreachable)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except Exception:  # noqa: BLE001 - a page not (yet) served counts as nothing so far
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except Exception:  # noqa: BLE001 - not up yet, or not JSON: asked again
        return None


class Demo:
    def __init__(self, args: DemoOptions, config: Config):
        self.args, self.config = args, config
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        self.root = Path(args.workdir) / self.run_id
        self.procs: list[subprocess.Popen] = []
        self.broker: Any = None
        self.stop = threading.Event()
        self.tailer: threading.Thread | None = None
        self.latencies: list[float] = []
        self.versions: list[str] = []
        self.received = 0
        self.sources: dict[str, int] = {}
        self.last_rec: dict | None = None

    # -- set-up ---------------------------------------------------------------------------
    def start_broker(self) -> str:
        from devtools.broker import KafkaBroker, default_data_dir
        from streaming.kafka import clients

        cfg = self.config
        if cfg.stream.bootstrap:
            say(f"using the Kafka at {cfg.stream.bootstrap} (stream.bootstrap: {cfg.source('stream.bootstrap')})")
            clients.check(cfg.stream.bootstrap, cfg.kafka)  # refused: one line and exit 77, not a hang
            return cfg.stream.bootstrap
        broker = KafkaBroker(data_dir=default_data_dir(cfg.ops.kafka_dir), jar_cache=cfg.ops.kafka_cache)
        if broker.state_file.exists() and broker.is_running():
            say(f"using the project's running broker at {broker.bootstrap}")
            clients.check(broker.bootstrap, cfg.kafka)
            return broker.bootstrap
        say("starting the project's Kafka broker (KRaft, loopback; jars fetched from Maven Central the first time)")
        broker.start()
        self.broker = broker
        say(f"Kafka {broker.version} ready at {broker.bootstrap} in {broker.started_in or 0:.1f}s")
        return broker.bootstrap

    def settings(self, bootstrap: str) -> Settings:
        from streaming.topics import isolated

        return isolated(
            self.config.stream,
            f"demo-{self.run_id}",
            bootstrap=bootstrap,
            model_dir=str(self.root / "models"),
            data_dir=str(self.root / "worker"),
        )

    def env(self, s: Settings) -> dict[str, str]:
        """The children's environment: this run's configuration, every setting of it."""
        return child_env({**dataclasses.replace(self.config, stream=s).to_env(), "PYTHONUNBUFFERED": "1"})

    def spawn(self, name: str, argv: list[str], s: Settings) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
            p = subprocess.Popen(
                [sys.executable, "-m", "streaming.cli.main", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(s),
                start_new_session=True,
            )
        self.procs.append(p)
        return p

    # -- the run --------------------------------------------------------------------------
    def run(self) -> int:
        from streaming.jobs.replay import replay
        from streaming.kafka.admin import delete_topics
        from streaming.topics import ensure, topics

        self.root.mkdir(parents=True, exist_ok=True)
        bootstrap = self.start_broker()
        s = self.settings(bootstrap)
        try:
            ensure(bootstrap, topics(s).core)
            events, source, path = _load_data(self.args.simulate_events, self.config.ops.data)
            cut = int(len(events) * 0.8)
            history, live = events[:cut], events[cut:]
            say(
                f"data: {len(events)} events from {source}; first model from {len(history)}, replaying {len(live)} live"
            )
            ccfg = self.config.confidence
            model, x, _ = train(
                build_profiles(history, ccfg), ccfg, self.config.train, metadata={"data_source": source}
            )
            ModelStore(s.model_dir).save(model, publish=True, user_gram=user_gram(x))
            say(
                f"initial model {model.version}: {model.n_items} items x {model.factors} factors "
                f"({model.metadata['train_seconds']}s)"
            )
            say(f"catalogue: {_load_catalogue(bootstrap, s.items_topic, events, path, self.root)}")

            self.spawn(
                "worker",
                [
                    "worker",
                    "--bootstrap",
                    bootstrap,
                    "--web-port",
                    str(s.web_port),
                    "--data-dir",
                    s.data_dir,
                    "--model-dir",
                    s.model_dir,
                ],
                s,
            )
            metrics_port = _free_port()
            self.spawn(
                "retrain",
                [
                    "retrain",
                    "--every",
                    f"{self.args.retrain_every}s",
                    "--bootstrap",
                    bootstrap,
                    "--model-dir",
                    s.model_dir,
                    "--metrics-port",
                    str(metrics_port),
                ],
                s,
            )
            self.wait_ready(s)
            web = f"http://127.0.0.1:{s.web_port}"
            say(
                f"worker ready: {web}/recommendations/<user>/  {web}/similar/<item>/  {web}/metrics  "
                f"| retrain metrics http://127.0.0.1:{metrics_port}/metrics | logs in {self.root}"
            )

            self.catch_up(replay, history, s, web)
            self.tailer = threading.Thread(target=self.tail, args=(s,), daemon=True)
            self.tailer.start()
            replayer = threading.Thread(target=self.replay, args=(replay, live, s), daemon=True)
            replayer.start()
            deadline = time.time() + self.args.duration
            while time.time() < deadline and replayer.is_alive():
                time.sleep(0.2)
            time.sleep(1.0)  # let the last recommendations arrive
            self.filtered_request(web)
            self.summary(s, web)
            return 0
        finally:
            self.stop.set()
            if self.tailer is not None:
                self.tailer.join(timeout=5)
            self.shutdown()
            try:
                delete_topics(bootstrap, [t.name for t in topics(s).all])  # every topic the run made
            except Exception as e:  # noqa: BLE001 - the broker may already be gone on Ctrl-C
                say(f"could not delete the demo topics: {e}")
            if self.broker is not None:
                self.broker.stop()
                say("Kafka stopped")

    def wait_ready(self, s: Settings, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RecsysError(f"a demo process exited early: see the logs in {self.root}")
            body = _get(f"http://127.0.0.1:{s.web_port}/ready")
            if body and body.get("ready"):
                return
            time.sleep(0.3)
        raise RecsysError(f"the worker was not ready within {timeout}s: see {self.root / 'worker.log'}")

    def catch_up(self, replay_fn: Any, history: list, s: Settings, web: str) -> None:
        """Replay the history as fast as possible (original times) and wait for the worker."""
        if not history or self.args.no_history:
            return
        say(f"replaying the history ({len(history)} events, original times) through the worker...")
        t0 = time.time()
        stats = replay_fn(history, s.bootstrap, s.clickstream_topic, retime=False, progress=sys.stderr.isatty())
        deadline = time.time() + max(120.0, len(history) / 200)
        done = 0.0
        while time.time() < deadline:
            done = _metric(f"{web}/metrics", "streamrec_events_in_total") + _metric(
                f"{web}/metrics", "streamrec_events_rejected_total"
            )
            if done >= stats.sent:
                break
            time.sleep(0.5)
        took = time.time() - t0
        say(
            f"worker caught up with {done:.0f}/{stats.sent} history events in {took:.1f}s "
            f"({done / took:,.0f} events/s end to end)"
        )

    def replay(self, replay_fn: Any, events: list, s: Settings) -> None:
        stats = replay_fn(
            events,
            s.bootstrap,
            s.clickstream_topic,
            rate=self.args.rate,
            limit=int(self.args.rate * self.args.duration),
            progress=False,
        )
        say(f"replay: {stats.summary()}")

    def tail(self, s: Settings) -> None:
        from streaming.jobs.tail import Tail, format_recommendation

        last_print = 0.0
        # Ends within a poll (0.5 s) of the stop, so its consumer is closed before the demo
        # deletes the topics and stops the broker.
        with Tail(s.bootstrap, s.recommendations_topic, timeout_s=None, should_stop=self.stop.is_set) as stream:
            for rec in stream:
                if self.stop.is_set():
                    return
                self.received += 1
                self.last_rec = rec
                self.sources[rec.get("source", "?")] = self.sources.get(rec.get("source", "?"), 0) + 1
                self.latencies.append(rec["published_ts"] - rec["ingest_ts"])
                v = rec.get("model_version")
                if v and (not self.versions or self.versions[-1] != v):
                    if self.versions:
                        say(f"MODEL SWAP: recommendations now come from {v} (was {self.versions[-1]})")
                    self.versions.append(v)
                if time.time() - last_print >= self.args.print_every:
                    print(format_recommendation(rec), flush=True)
                    last_print = time.time()

    def filtered_request(self, web: str) -> None:
        """One list on request with a filter: the category of the item the last shopper looked
        at (its catalogue record), or, without categories, a price range around its price."""
        rec = self.last_rec
        if rec is None:
            return
        user, query = rec["user"], rec.get("query")
        item = _get(f"{web}/items/{query}") if query else None
        if item and item.get("categories"):
            params = f"n=5&category={item['categories'][0]}"
        elif item and item.get("price") is not None:
            params = f"n=5&price_max={item['price'] * 1.5:.2f}"
        else:
            params = "n=5"
        url = f"{web}/recommendations/{urllib.parse.quote(user)}/?{params}"
        body = _get(url)
        if body is None:
            say(f"filtered request {url}: no answer")
            return
        say(f"filtered request GET {url}")
        say(f"  -> {body.get('items')} ({body.get('source')}, model {body.get('model_version')})")

    def summary(self, s: Settings, web: str) -> None:
        lat = np.array(self.latencies or [0.0])
        rejected = _metric(f"{web}/metrics", "streamrec_events_rejected_total")
        say(
            "summary: "
            f"{self.received} recommendation messages ({', '.join(f'{k}: {v}' for k, v in self.sources.items())}); "
            f"latency Kafka->published p50 {np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms, "
            f"p99 {np.percentile(lat, 99):.0f} ms; model versions seen: {', '.join(self.versions) or 'none'}; "
            f"dead-lettered: {rejected:.0f}"
        )

    def shutdown(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if self.procs:
            say("worker and retrain loop stopped")


def run_demo(options: DemoOptions, config: Config) -> int:
    return Demo(options, config).run()
