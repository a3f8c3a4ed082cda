"""HTTP views on Faust's web server (JSON; an error is {"error", "hint", ...} with a 4xx status).

GET /recommendations/{user}    last recommendation message published for the user, with the
                               fields of the recommendations topic (docs/formats.md) plus
                               `events` and `served_by` (routed to the owner worker)
GET /similar/{item}?n=10       items similar to an item under the serving model
                               (both also answer with a trailing slash)
GET /health                    liveness + what is serving
GET /ready                     200 once partitions are assigned and state is recovered
GET /metrics                   Prometheus exposition
any other path                 404 JSON naming these routes
"""

from __future__ import annotations

from typing import Any

import faust
from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from streaming.worker.auth import require_token

# Prometheus text format 0.0.4 (aiohttp wants the charset kept out of content_type).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"


def register_views(app: faust.App, worker: Any) -> None:
    s = worker.settings
    require_token(app, s.web_token)  # stream.web_token: every route below but /health and /metrics

    class Recs(View):
        @app.table_route(table=worker.table.table, match_info="user")  # type: ignore[arg-type]  # typed for views without route parameters
        async def get(self, request: Request, user: str) -> Response:
            state = worker.table.get(user)
            if state is None or not state.last_items:
                return self.json(
                    {
                        "error": f"no recommendations for user {user!r}",
                        "user": user,
                        "hint": "a user gets a list once one of their events has been applied: send an event "
                        "keyed by this user id to the clickstream (ids are case-sensitive; `recsys dlq` shows "
                        "rejected events)",
                    },
                    status=404,
                )
            return self.json(
                {
                    "user": user,
                    "items": state.last_items,
                    "scores": [round(x, 6) for x in state.last_scores] if state.last_scores else None,
                    "source": state.last_source or None,
                    "model_version": state.last_version or None,
                    "query": state.last_query or None,
                    "event_ts": state.last_event_ts or None,
                    "ingest_ts": state.last_ingest_ts or None,
                    "published_ts": state.last_published_ms,
                    "offset": state.profile.offset,
                    "partition": state.last_partition if state.last_partition >= 0 else None,
                    "events": state.profile.events,
                    "served_by": app.conf.web_port,
                }
            )

    class Similar(View):
        async def get(self, request: Request, item: str) -> Response:
            rec = worker.serving.snapshot.current
            if rec is None:
                return self.json(
                    {
                        "error": "no model is serving yet",
                        "hint": "train one (recsys train) or wait for the retrain job; GET /health names the "
                        "serving version",
                    },
                    status=404,
                )
            try:
                n = int(request.query.get("n", s.top_n))
                if not 0 < n <= 1000:
                    raise ValueError
            except ValueError:
                return self.json(
                    {
                        "error": f"n must be an integer in 1..1000, got {request.query.get('n')!r}",
                        "hint": f"e.g. /similar/{item}?n=10",
                    },
                    status=400,
                )
            out = rec.scorer.similar(item, n)
            if out is None:
                return self.json(
                    {
                        "error": f"item {item!r} is not in model {rec.version}",
                        "item": item,
                        "hint": "the model knows the items of its training data; a new item is known after "
                        "the next retrain (or folded in live with stream.item_foldin on)",
                    },
                    status=404,
                )
            return self.json({"item": item, "items": out.items, "scores": out.scores, "model_version": rec.version})

    # With and without the trailing slash: a client that adds or drops it gets the same answer.
    for path, view in (("/recommendations/{user}", Recs), ("/similar/{item}", Similar)):
        app.page(path, name=view.__name__)(view)
        app.page(path + "/", name=view.__name__ + "-slash")(type(view.__name__ + "Slash", (view,), {}))
    server: Any = app.web  # Faust's aiohttp driver (its Web type does not declare web_app)
    server.web_app.middlewares.append(unknown_path_as_json)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "model_version": worker.serving.version, "batches": worker.batches})

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            # Ready = state recovered AND listening for model announcements (one made before the
            # listener is positioned at the topic's end would be missed).
            listening = worker.updates.listening
            tables: Any = app.tables  # Faust's TableManager (its TableManagerT type lacks .recovery)
            recovered = tables.recovery.completed.is_set() and not app.rebalancing and listening
            assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == s.clickstream_topic)
            body = {
                "ready": recovered,
                "partitions": assigned,
                "model_version": worker.serving.version,
                "models_listening": listening,
            }
            return self.json(body, status=200 if recovered else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            await update_lag(app, worker)
            tables: Any = app.tables
            users = worker.table.count_users(tables.recovery.completed.is_set() and not app.rebalancing)
            if users is not None:  # else keep the last count until recovery completes
                worker.metrics.users.set(users)
            return self.bytes(generate_latest(worker.metrics.registry), content_type=METRICS_CONTENT_TYPE)


ROUTES_HINT = "routes: GET /recommendations/<user>, /similar/<item>?n=10, /health, /ready, /metrics"


@web.middleware
async def unknown_path_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """A path no route matches gets a JSON 404 naming the routes (aiohttp's is plain text)."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPNotFound:
        return web.json_response(
            {"error": f"no route {request.method} {request.path}", "hint": ROUTES_HINT}, status=404
        )


async def update_lag(app: faust.App, worker: Any) -> None:
    """Consumer lag per clickstream partition: broker high-water mark minus what was handled
    (before the first batch of an assignment: minus the consumer's position)."""
    consumer = app.consumer
    handled = worker.guard.last
    for tp in consumer.assignment():
        if tp.topic != worker.settings.clickstream_topic:
            continue
        try:
            high = consumer.highwater(tp)
            last = handled.get(tp.partition)
            done = last + 1 if last is not None else await consumer.position(tp)
        except Exception:  # noqa: BLE001 - not known yet right after assignment
            continue
        worker.metrics.consumer_lag.labels(str(tp.partition)).set(max(0, (high or 0) - (done or 0)))
