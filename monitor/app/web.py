"""The HTTP endpoints of the service (one port): health, readiness, Prometheus metrics and the unsubscribe
pages. Built by the composition root; holds no state of its own beyond what it is handed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from monitor.app.metrics import Metrics

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def create_app(
    metrics: Metrics,
    readiness: Callable[[], dict[str, bool]],
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """`readiness()` returns named checks (database, model, scheduler...); all must be true for /readyz."""

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    # readyz and metrics query the database: plain functions, which Starlette runs in its thread pool, so
    # a slow disk never stalls the event loop that fetches feeds.
    def readyz(_: Request) -> Response:
        checks = readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        *extra_routes,
    ]
    return Starlette(routes=routes)
