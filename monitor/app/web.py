"""The HTTP endpoints of the service. The public listener serves health, readiness and the pages (unsubscribe,
admin); Prometheus metrics have a listener of their own (`metrics_host`/`metrics_port`, loopback by default),
so operational data never sits on the public port. Built by the composition root; holds no state of its own
beyond what it is handed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from monitor.app.metrics import Metrics

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def create_app(
    readiness: Callable[[], dict[str, bool]],
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The public app. `readiness()` returns named checks (database, model, scheduler...); all must be true
    for /readyz."""

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    # readyz and metrics query the database: plain functions, which Starlette runs in its thread pool, so
    # a slow disk never stalls the event loop that fetches feeds.
    def readyz(_: Request) -> Response:
        checks = readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        *extra_routes,
    ]
    return Starlette(routes=routes)


def create_metrics_app(metrics: Metrics) -> Starlette:
    """The metrics listener: /metrics only (it reads the database, so it runs in Starlette's thread pool)."""

    def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", metrics_endpoint)])
