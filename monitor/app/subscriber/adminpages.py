"""Admin pages for what readers said, in the admin UI's layout and behind its login and CSRF check
(monitor.app.admin.pages.guarded):

* `/admin/topics/{topic}/suggestions`  proposed counterexamples / examples from reader feedback, each with its
  backtest effect over the last 7 days; "Apply" edits the topic like any admin save (feeds.toml, audited).
* `/admin/suppressions`  addresses that bounced or complained (nothing is sent to them), with "Lift"."""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy import delete
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from monitor.app.admin import AdminContext
from monitor.app.admin.auth import WebSession
from monitor.app.admin.configfile import record_audit
from monitor.app.admin.pages import Form, Pages, guarded, templates
from monitor.app.subscriber import signup, suggest
from monitor.errors import ConfigError, MonitorError
from monitor.storage.db import aware_utc
from monitor.storage.tables import Suppression


def admin_routes(ctx: AdminContext) -> list[BaseRoute]:
    pages = Pages(templates())

    def page(handler):  # type: ignore[no-untyped-def]
        return guarded(ctx, pages, handler)

    def suggestions(request: Request, session: WebSession, form: Form) -> Response:
        topic_id = request.path_params["topic_id"]
        config = ctx.config()
        try:
            topic = config.topic(topic_id)
        except ConfigError:
            return pages.render("admin/error.html", session, 404, title="No such topic",
                                message=f"There is no topic {topic_id!r}.")
        with Session(ctx.engine) as s:
            found = suggest.suggestions(s, config, topic_id)
        backtester = ctx.backtester()
        if backtester is not None and found:
            found = suggest.with_effects(found, topic, backtester, ctx.clock())
        return pages.render("subscriber/admin_suggestions.html", session, title=f"Suggestions for {topic.name}",
                            nav="topics", topic=topic, suggestions=found, model_ready=backtester is not None,
                            applied=request.query_params.get("applied", ""), error=request.query_params.get("error", ""),
                            days=suggest.DAYS)

    def apply(request: Request, session: WebSession, form: Form) -> Response:
        topic_id = request.path_params["topic_id"]
        base = f"/admin/topics/{quote(topic_id)}/suggestions"
        try:
            sid = int(str(form.get("suggestion", "")))
            suggest.apply(ctx.engine, ctx.config_path, ctx.config(), topic_id, sid, actor=session.user or "admin",
                          now=ctx.clock())
        except (ValueError, MonitorError) as e:
            return RedirectResponse(f"{base}?error={quote(str(e)[:300])}", status_code=303)
        return RedirectResponse(f"{base}?applied={sid}", status_code=303)

    def suppressions(request: Request, session: WebSession, form: Form) -> Response:
        with Session(ctx.engine) as s:
            rows = [(r.address, r.reason, r.detail, aware_utc(r.created_at)) for r in signup.suppressed(s)]
        return pages.render("subscriber/admin_suppressions.html", session, title="Suppressed addresses",
                            nav="subscribers", rows=rows, lifted=request.query_params.get("lifted", ""))

    def lift(request: Request, session: WebSession, form: Form) -> Response:
        address = str(form.get("address", "")).strip().lower()
        with Session(ctx.engine) as s, s.begin():
            n = s.execute(delete(Suppression).where(Suppression.address == address)).rowcount  # type: ignore[attr-defined]
        if n:
            record_audit(ctx.engine, actor=session.user or "admin", action="subscriber.unsuppress", target=address,
                         now=ctx.clock())
        return RedirectResponse(f"/admin/suppressions?lifted={quote(address)}", status_code=303)

    return [
        Route("/admin/topics/{topic_id}/suggestions", page(suggestions), methods=["GET"]),
        Route("/admin/topics/{topic_id}/suggestions", page(apply), methods=["POST"]),
        Route("/admin/suppressions", page(suppressions), methods=["GET"]),
        Route("/admin/suppressions/lift", page(lift), methods=["POST"]),
    ]
