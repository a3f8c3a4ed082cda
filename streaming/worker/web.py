"""HTTP views on Faust's web server (JSON; an error is {"error", "hint", ...} with a 4xx status).

GET /recommendations/{user}    last recommendation message published for the user, with the
                               fields of the recommendations topic (docs/formats.md) plus
                               `events` and `served_by` (routed to the owner worker);
   ?n=&category=&brand=&price_min=&price_max=&exclude=&item=
                               a fresh list from the user's state, same scoring and catalogue
                               mask as the stream, plus these filters (streaming/worker/requests.py);
                               a version with a ranker: its ranked list over the candidates the
                               filters allow (`source` ranker, or ranker+blend when filled up)
GET /similar/{item}?n=10       items similar to an item under the serving model (same filters)
                               (both also answer with a trailing slash)
GET /items/{item}              this worker's catalogue record of an item (and whether it is shown)
POST /events                   one JSON event or an array: validated as the stream does, produced
                               to the clickstream keyed by user (202), or 400 with each reason
GET /health                    liveness + what is serving
GET /ready                     200 once partitions are assigned and state is recovered
GET /metrics                   Prometheus exposition
any other path                 404 JSON naming these routes
"""

from __future__ import annotations

import time
from typing import Any

import faust
from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from streaming.worker.auth import require_token
from streaming.worker.requests import RECS_PARAMS, SIMILAR_PARAMS, BadRequest, parse_query, validate_events

# Prometheus text format 0.0.4 (aiohttp wants the charset kept out of content_type).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"


def register_views(app: faust.App, worker: Any) -> None:
    s = worker.settings
    require_token(app, s.web_token)  # stream.web_token: every route below but /health and /metrics

    def bad_request(e: BadRequest, example: str) -> Any:
        return web.json_response({"error": str(e), "hint": f"e.g. {example}"}, status=400)

    class Recs(View):
        @app.table_route(table=worker.table.table, match_info="user")  # type: ignore[arg-type]  # typed for views without route parameters
        async def get(self, request: Request, user: str) -> Response:
            try:
                q = parse_query(request.query, RECS_PARAMS, s.top_n)
            except BadRequest as e:
                return bad_request(e, f"/recommendations/{user}/?n=10&category=shoes&price_max=50")
            state = worker.table.get(user)
            if q.given or (state is not None and state.last_items and not shown(state.last_items)):
                return self.json(fresh_list(user, state, q))
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
            try:
                q = parse_query(request.query, SIMILAR_PARAMS, s.top_n)
            except BadRequest as e:
                return bad_request(e, f"/similar/{item}/?n=10&category=shoes")
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
            out = rec.scorer.similar(item, q.n, q.filter.exclude, worker.processor.eligibility(rec, q.filter))
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

    def shown(items: list[str]) -> bool:
        cat = worker.processor.catalogue
        return cat is None or all(cat.allows(i) for i in items)

    def fresh_list(user: str, state: Any, q: Any) -> dict[str, Any]:
        """A list computed now from the user's state (or none: a visitor without events gets the
        similar items of `item`, or popular ones), as the stream scores it: with the version's
        ranker, its ranked list over the candidates the filters allow (`source` "ranker", or
        "ranker+blend" when too few pass and the blend's filtered list fills it up)."""
        from streaming.worker.state import UserState

        t0 = time.perf_counter()
        proc = worker.processor
        state = state if state is not None else UserState()
        query = q.item if q.item is not None else (state.last_query or None)
        out = proc.on_request(user, state, query, q.n, q.filter)
        return {
            "user": user,
            "items": out.items,
            "scores": [round(x, 6) for x in out.scores],
            "source": out.source,
            "model_version": out.model_version,
            "query": query,
            "fresh": True,
            "compute_ms": round((time.perf_counter() - t0) * 1000, 3),
            "events": state.profile.events,
            "served_by": app.conf.web_port,
        }

    class Items(View):
        async def get(self, request: Request, item: str) -> Response:
            store = worker.catalogue
            rec = store.catalogue.get(item) if store is not None else None
            status = store.status() if store is not None else None
            if rec is None:
                deleted = store is not None and store.catalogue.deleted(item)
                return self.json(
                    {
                        "error": f"item {item!r} is {'deleted from' if deleted else 'not in'} the catalogue",
                        "item": item,
                        "deleted": deleted,
                        "shown": not deleted,
                        "catalogue": status,
                        "hint": "recsys items set ITEM ... or recsys items load FILE lists it; an item the "
                        "catalogue never listed is shown",
                    },
                    status=404,
                )
            return self.json({**rec.to_json(), "shown": rec.eligible, "catalogue": status})

    events_in: Any = None

    class Events(View):
        async def post(self, request: Request) -> Response:
            from prometheus_client import Counter

            nonlocal events_in
            if events_in is None:
                events_in = Counter(
                    "streamrec_http_events",
                    "Events received by POST /events: accepted (produced) or rejected, by reason",
                    ["result", "reason"],
                    registry=worker.metrics.registry,
                )
            body = bytearray()
            raw: Any = request  # aiohttp's request (Faust's Request type does not declare .content)
            async for chunk in raw.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > s.events_max_bytes:
                    return self.json(
                        {
                            "error": f"request body over {s.events_max_bytes} bytes (stream.events_max_bytes)",
                            "hint": "send fewer events per request",
                        },
                        status=413,
                    )
            records, rejected = validate_events(bytes(body), worker.processor.input, s.events_max_count)
            if rejected:
                for r in rejected:
                    events_in.labels("rejected", r["reason"]).inc()
                return self.json(
                    {
                        "error": f"{len(rejected)} event(s) invalid: nothing was produced",
                        "rejected": rejected,
                        "valid": len(records),
                        "hint": "fix or drop the events named and send the request again (docs/data-formats.md)",
                    },
                    status=400,
                )
            for fut in await worker.publisher.publish(s.clickstream_topic, [(k, v, ()) for k, v in records]):
                await fut
            events_in.labels("accepted", "").inc(len(records))
            return self.json({"accepted": len(records), "topic": s.clickstream_topic}, status=202)

    app.page("/events", name="Events")(Events)
    app.page("/events/", name="Events-slash")(type("EventsSlash", (Events,), {}))
    # With and without the trailing slash: a client that adds or drops it gets the same answer.
    for path, view in (("/recommendations/{user}", Recs), ("/similar/{item}", Similar), ("/items/{item}", Items)):
        app.page(path, name=view.__name__)(view)
        app.page(path + "/", name=view.__name__ + "-slash")(type(view.__name__ + "Slash", (view,), {}))
    server: Any = app.web  # Faust's aiohttp driver (its Web type does not declare web_app)
    server.web_app.middlewares.append(unknown_path_as_json)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json(
                {
                    "status": "ok",
                    "model_version": worker.serving.version,
                    "batches": worker.batches,
                    "catalogue": worker.catalogue.status() if worker.catalogue is not None else None,
                    # events the candidate sources have counted (stream.candidate_sources off: null)
                    "sources_events": ranking.observed if (ranking := worker.processor.ranking) is not None else None,
                }
            )

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            # Ready = state recovered AND listening for model announcements (one made before the
            # listener is positioned at the topic's end would be missed).
            listening = worker.updates.listening
            tables: Any = app.tables  # Faust's TableManager (its TableManagerT type lacks .recovery)
            catalogue = worker.catalogue is None or worker.catalogue.ready.is_set()
            recovered = tables.recovery.completed.is_set() and not app.rebalancing and listening and catalogue
            assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == s.clickstream_topic)
            body = {
                "ready": recovered,
                "partitions": assigned,
                "model_version": worker.serving.version,
                "models_listening": listening,
                "catalogue_ready": catalogue,
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


ROUTES_HINT = (
    "routes: GET /recommendations/<user>?n=&category=&brand=&price_min=&price_max=&exclude=&item=, "
    "/similar/<item>?n=10, /items/<item>, /health, /ready, /metrics; POST /events"
)


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
    handled = worker.guard.handled_since_assignment()
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
