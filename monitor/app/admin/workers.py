"""The admin page of the processes sharing the work (/admin/workers): each worker's heartbeat, roles and the
leases it holds, and the queue depths (monitor.storage.workers.cluster_status, also `monitor status`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from monitor.app.admin import AdminContext
from monitor.app.admin.auth import WebSession
from monitor.storage import db, workers


def routes(ctx: AdminContext, pages: Any, page: Callable[..., Any]) -> list[BaseRoute]:
    def workers_page(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        # Heartbeats and leases are real time; which feeds are due follows the service's clock.
        with Session(ctx.engine) as s:
            cluster = workers.cluster_status(s, db.utcnow(), schedule_now=ctx.clock())
        return pages.render("admin/workers.html", session, title="Workers", nav="workers", cluster=cluster)

    return [Route("/admin/workers", page(workers_page), methods=["GET"])]
