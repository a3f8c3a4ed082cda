"""The worker's HTTP server may require a bearer token (`stream.web_token`, STREAMREC_WEB_TOKEN).

With a token set, every route but `/health` (liveness for orchestrators) and `/metrics`
(Prometheus scrapes) answers 401 unless the request carries `Authorization: Bearer <token>`.
Requests Faust routes to the worker that owns a user (`/recommendations/...`) keep their headers,
so the token travels with them. The comparison takes constant time; the token is never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

OPEN_PATHS = frozenset({"/health", "/metrics"})


def authorized(header: str | None, token: str) -> bool:
    """Does an `Authorization` header carry `token`?"""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def middleware(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def bearer_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.rstrip("/") in OPEN_PATHS or authorized(request.headers.get("Authorization"), token):
            return await handler(request)
        return web.json_response(
            {"error": "this route needs a bearer token (Authorization: Bearer <stream.web_token>)"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="streamrec"'},
        )

    return bearer_token


def require_token(app: Any, token: str) -> None:
    """Install the check on the Faust app's web server (before it starts); no token: nothing."""
    if token:
        app.web.web_app.middlewares.append(middleware(token))
