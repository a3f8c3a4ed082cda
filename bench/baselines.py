"""Baseline Faust apps the end-to-end benchmark (bench/e2e.py) measures the real worker against.

    passthrough   reads each clickstream message and writes one message per event, nothing else:
                  the framework's ceiling on this broker and machine.
    naive         the one-event-at-a-time pipeline: per event, decode and validate, read the
                  user's state from the RocksDB table, apply the event, write it back, fold the
                  user in and score with one `implicit` `recommend(..., recalculate_user=True)`
                  call, publish one recommendation.

Both publish to the output topic keyed by user, with the input's partition and offset in the
JSON value (as the real worker does), so the benchmark can match every event to the first
message that answers it.

    python -m bench.baselines passthrough|naive --bootstrap B --app-id ID --clicks T --recs T
                                  [--model-dir M] [--data-dir D] [--web-port P] [--partitions N]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("streamrec.baselines")


def create_app(kind: str, args: argparse.Namespace):
    from recsys.config import Settings
    from streaming.faust_compat import App  # the worker's transport ...

    worker = Settings()  # ... fetch wait and producer linger

    app = App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="rocksdb://",
        datadir=args.data_dir,
        web_host="127.0.0.1",
        web_port=args.web_port,
        topic_partitions=args.partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=worker.producer_linger_ms,
        fetch_max_wait_ms=worker.fetch_max_wait_ms,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        logging_config=None,
    )
    clicks = app.topic(
        args.clicks,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=args.partitions,
    )
    recs = app.topic(args.recs, key_serializer="raw", value_serializer="raw")

    if kind == "passthrough":

        @app.agent(clicks, name="passthrough")
        async def passthrough(stream: Any) -> None:
            async for event in stream.events():
                msg = event.message
                await recs.send(
                    key=msg.key,
                    value=json.dumps(
                        {"partition": msg.partition, "offset": msg.offset, "published_ts": int(time.time() * 1000)},
                        separators=(",", ":"),
                    ).encode(),
                )

        return app

    if kind != "naive":
        raise SystemExit(f"unknown baseline {kind!r}: passthrough | naive")

    import numpy as np

    from recsys.confidence import ConfidenceConfig
    from recsys.errors import EventError
    from recsys.model.foldin import FoldIn
    from recsys.model.store import ModelStore
    from streaming.worker.processor import Incoming, decode_event
    from streaming.worker.state import UserState, decode, encode

    model = ModelStore(args.model_dir).load()
    fold = FoldIn(model)
    als = fold.als
    ccfg = ConfidenceConfig()
    table = app.Table("user-state", key_type=bytes, value_type=bytes, partitions=args.partitions, default=None)

    @app.agent(clicks, name="naive")
    async def naive(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            inc = Incoming(msg.key, msg.value, msg.partition, msg.offset, int(msg.timestamp * 1000))
            try:
                ev = decode_event(inc)
            except EventError:
                continue
            raw = table.get(msg.key)
            state = decode(raw) if raw is not None else UserState()
            if msg.offset <= state.profile.offset:
                continue
            state.profile.apply(ev, ccfg)
            state.profile.offset = msg.offset
            row = fold.matrix([state.profile.confidence(ccfg)])
            if row.nnz:
                ids, scores = als.recommend(0, row, N=10, recalculate_user=True)
                items = [model.item_ids[i] for i in np.asarray(ids) if i >= 0]
                scores = [round(float(s), 6) for s in np.asarray(scores)[: len(items)]]
            else:
                items, scores = [], []
            state.last_items, state.last_version = items, model.version
            state.last_published_ms = int(time.time() * 1000)
            table[msg.key] = encode(state)
            await recs.send(
                key=msg.key,
                value=json.dumps(
                    {
                        "user": ev.user,
                        "items": items,
                        "scores": scores,
                        "model_version": model.version,
                        "query": ev.item,
                        "event_ts": ev.ts,
                        "partition": msg.partition,
                        "offset": msg.offset,
                        "published_ts": state.last_published_ms,
                    },
                    separators=(",", ":"),
                ).encode(),
            )

    return app


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("passthrough", "naive"))
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--app-id", required=True)
    ap.add_argument("--clicks", required=True, help="input topic")
    ap.add_argument("--recs", required=True, help="output topic")
    ap.add_argument("--model-dir", default="var/models", help="model store (naive only)")
    ap.add_argument("--data-dir", default="var/baseline")
    ap.add_argument("--web-port", type=int, default=6067)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import faust

    from recsys.model.threads import pin_blas_threads
    from streaming.logs import no_spinner

    pin_blas_threads()
    app = create_app(args.kind, args)
    worker = faust.Worker(app, loglevel=args.log_level, quiet=True, redirect_stdouts=False)
    no_spinner(worker)  # as the real worker: the same logging cost
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
