"""The admin pages: server-rendered (jinja2, `templates/admin/`), a little plain JS for the live backtest
(`static/admin.js`, shipped in the package: no CDN), a strict Content-Security-Policy, a CSRF token on every
state-changing form, login required everywhere but the login page.

`guarded(ctx, handler)` is the reusable part: it reads the session, sends visitors who are not logged in to
the login page, refuses a POST without the session's CSRF token, runs the (synchronous) handler in the
thread pool, and adds the security headers and the session cookie to its response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from monitor.app.admin import AdminContext, backtest, charts, configfile, forms
from monitor.app.admin.auth import CSRF_FIELD, CSRF_HEADER, WebSession, verify_user
from monitor.delivery.render import safe_url
from monitor.errors import ConfigError
from monitor.signal import match

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parents[3] / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
LOGIN_PATH = "/admin/login"
# The editor's backtest answers within this (matches and the item diff are always there); stories and
# alerts that take longer follow on the next request (the page asks again while they are pending).
PAGE_WAIT_S = 0.6

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Form = dict[str, Any]
Handler = Callable[[Request, WebSession, Form], Response]


def templates(extra_dir: Path | None = None) -> jinja2.Environment:
    loader = jinja2.FileSystemLoader([str(p) for p in (extra_dir, TEMPLATES_DIR) if p is not None])
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["safe_url"] = safe_url  # feed links become links only when they are http(s)
    return env


def _when(dt: datetime | None) -> str:
    if dt is None:
        return "—"
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


class Pages:
    """Renders admin templates with what every page needs (user, CSRF token, navigation)."""

    def __init__(self, env: jinja2.Environment) -> None:
        self.env = env

    def render(self, name: str, session: WebSession, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(user=session.user, csrf_token=session.csrf,
                                                  csrf_field=CSRF_FIELD, **context)
        return HTMLResponse(html, status_code=status)


async def _read_form(request: Request) -> Form:
    ctype = request.headers.get("content-type", "")
    if "form" not in ctype:
        return {}
    out: Form = {}
    async with request.form(max_files=2, max_fields=200) as data:
        for k, v in data.multi_items():
            if isinstance(v, UploadFile):
                out[k] = await v.read()
            else:
                out[k] = v
    return out


def guarded(ctx: AdminContext, pages: Pages, handler: Handler, *, public: bool = False) -> Callable[..., Any]:
    async def endpoint(request: Request) -> Response:
        session = ctx.sessions.read(request)
        form: Form = {}
        if request.method not in ("GET", "HEAD"):
            form = await _read_form(request)
            token = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
            if not ctx.sessions.csrf_ok(session, token if isinstance(token, str) else None):
                response: Response = pages.render(
                    "admin/error.html", session, 403, title="Request refused",
                    message="This form was refused: its security token is missing or out of date. "
                            "Reload the page and try again.")
                return _finish(ctx, response, session)
        if not public and session.user is None:
            if request.method in ("GET", "HEAD"):
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(f"{LOGIN_PATH}?next={quote(target)}", status_code=303)
            else:
                response = pages.render("admin/error.html", session, 401, title="Not logged in",
                                        message="Your session has ended. Log in again.")
            return _finish(ctx, response, session)
        response = await run_in_threadpool(handler, request, session, form)
        return _finish(ctx, response, session)

    return endpoint


def _finish(ctx: AdminContext, response: Response, session: WebSession) -> Response:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    if session.fresh and "set-cookie" not in response.headers:
        ctx.sessions.write(response, session)
    return response


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _safe_next(target: str | None) -> str:
    """Only a path of this site's admin pages (no open redirect)."""
    if not target:
        return "/admin/topics"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin/") or target.startswith("//"):
        return "/admin/topics"
    return target


def _str(form: Form, key: str, default: str = "") -> str:
    v = form.get(key, default)
    return v if isinstance(v, str) else default


def _days(form: Form | dict[str, str]) -> int:
    try:
        return max(1, min(90, int(str(form.get("_days") or backtest.DEFAULT_DAYS))))
    except ValueError:
        return backtest.DEFAULT_DAYS


def routes(ctx: AdminContext, env: jinja2.Environment | None = None) -> list[BaseRoute]:
    pages = Pages(env or templates())

    def page(handler: Handler, public: bool = False) -> Callable[..., Any]:
        return guarded(ctx, pages, handler, public=public)

    # --- login ------------------------------------------------------------------------------------------

    def login_form(request: Request, session: WebSession, form: Form) -> Response:
        if session.user:
            return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
        return pages.render("admin/login.html", session, title="Log in", error="",
                            next=_safe_next(request.query_params.get("next")), username="")

    def login(request: Request, session: WebSession, form: Form) -> Response:
        username, password = _str(form, "username").strip(), _str(form, "password")
        nxt = _safe_next(_str(form, "next"))
        wait = ctx.limiter.retry_after(_client(request), username)
        if wait:
            r = pages.render("admin/login.html", session, 429, title="Log in", next=nxt, username=username,
                             error=f"Too many failed attempts. Try again in {wait} seconds.")
            r.headers["Retry-After"] = str(wait)
            return r
        if not username or not verify_user(ctx.engine, username, password):
            ctx.limiter.failed(_client(request), username)
            log.warning("admin login failed", extra={"user": username[:128], "client": _client(request)})
            return pages.render("admin/login.html", session, 401, title="Log in", next=nxt, username=username,
                                error="Wrong user name or password.")
        ctx.limiter.succeeded(_client(request), username)
        new = ctx.sessions.login(username)
        response = RedirectResponse(nxt, status_code=303)
        ctx.sessions.write(response, new)
        log.info("admin logged in", extra={"user": username})
        return response

    def logout(request: Request, session: WebSession, form: Form) -> Response:
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        ctx.sessions.write(response, ctx.sessions.logout(session))  # ends this account's sessions everywhere
        return response

    # --- topics -----------------------------------------------------------------------------------------

    def topics_list(request: Request, session: WebSession, form: Form) -> Response:
        config, _sha = configfile.current_config(ctx.config_path)
        now = ctx.clock()
        act = charts.activity(ctx.engine, now, [t.id for t in config.topics], 30)
        rows = []
        for t in config.topics:
            counts = act[t.id]
            rows.append({"topic": t, "chart": charts.bars_svg(counts, label=f"{t.name}: matches and alerts per day"),
                         "matches": sum(c.matches for c in counts), "alerts": sum(c.alerts for c in counts)})
        return pages.render("admin/topics.html", session, title="Topics", rows=rows, nav="topics",
                            saved=request.query_params.get("saved", ""))

    def editor(session: WebSession, *, topic_id: str | None, values: dict[str, str], errors: dict[str, str],
               base_sha: str, status: int = 200, days: int = backtest.DEFAULT_DAYS, saved: str = "") -> Response:
        return pages.render("admin/topic_edit.html", session, status, title=f"Topic {topic_id}" if topic_id
                            else "New topic", nav="topics", topic_id=topic_id, fields=forms.TOPIC_FIELDS,
                            values=values, errors=errors, base_sha=base_sha, days=days, saved=saved,
                            backtest_url=f"/admin/topics/{quote(topic_id)}/backtest" if topic_id
                            else "/admin/topics/new/backtest")

    def topic_page(request: Request, session: WebSession, form: Form) -> Response:
        topic_id = request.path_params.get("topic_id")
        config, sha = configfile.current_config(ctx.config_path)
        topic = forms.find_topic(config, topic_id) if topic_id else None
        if topic_id and topic is None:
            return pages.render("admin/error.html", session, 404, title="No such topic",
                                message=f"There is no topic {topic_id!r} in {ctx.config_path.name}.")
        return editor(session, topic_id=topic_id, values=forms.form_values(topic, forms.TOPIC_FIELDS), errors={},
                      base_sha=sha, saved=request.query_params.get("saved", ""))

    def topic_save(request: Request, session: WebSession, form: Form) -> Response:
        topic_id = request.path_params.get("topic_id")
        values = {s.name: _str(form, s.name) for s in forms.TOPIC_FIELDS}
        base_sha = _str(form, "base_sha")
        try:
            topic = configfile.validate_topic(forms.parse_form(form, forms.TOPIC_FIELDS))
            forms.save_topic(ctx.engine, ctx.config_path, topic, original_id=topic_id, actor=session.user or "?",
                             expected_sha=base_sha or None)
        except configfile.FieldErrors as e:
            return editor(session, topic_id=topic_id, values=values, errors=e.errors, base_sha=base_sha,
                          status=422, days=_days(form))
        except ConfigError as e:
            return editor(session, topic_id=topic_id, values=values, errors={"": str(e)}, base_sha=base_sha,
                          status=409 if isinstance(e, configfile.StaleEdit) else 422, days=_days(form))
        log.info("topic saved from the admin pages", extra={"topic": topic.id, "user": session.user})
        return RedirectResponse(f"/admin/topics/{quote(topic.id)}?saved=1", status_code=303)

    def topic_backtest(request: Request, session: WebSession, form: Form) -> Response:
        topic_id = request.path_params.get("topic_id")
        days = _days(form)
        try:
            edited = configfile.validate_topic(forms.parse_form(form, forms.TOPIC_FIELDS))
        except configfile.FieldErrors as e:
            return pages.render("admin/_backtest.html", session, result=None, diff=None, saved=None,
                                errors=e.errors, warnings=[],
                                message="Fix the fields marked below to see the backtest.")
        # Valid but probably unintended (an example without the topic's keywords): said, never refused; only
        # here, in the preview of the form as it stands (the page itself has none: it would stay after a fix).
        warnings = match.example_warnings(edited)
        tester = ctx.backtester()
        if tester is None:
            return pages.render("admin/_backtest.html", session, result=None, diff=None, saved=None, errors={},
                                warnings=warnings,
                                message="The embedding model is still loading; the backtest starts in a moment.")
        config, _sha = configfile.current_config(ctx.config_path)
        saved_topic = forms.find_topic(config, topic_id) if topic_id else None
        now = ctx.clock()
        result, saved, d = tester.compare(edited, saved_topic, days=days, now=now, wait_s=PAGE_WAIT_S)
        return pages.render("admin/_backtest.html", session, result=result, saved=saved, diff=d, errors={},
                            warnings=warnings, message="", per_day=charts.bars_svg(
                                [charts.DayCount(day, m, a) for day, m, a in result.per_day(now)],
                                width=420, height=40, label="matches and alerts per day"),
                            is_new=topic_id is None, disabled=not edited.enabled,
                            own_texts={t.strip() for t in (*edited.examples, *edited.counterexamples)})

    # --- audit ------------------------------------------------------------------------------------------

    def audit_page(request: Request, session: WebSession, form: Form) -> Response:
        return pages.render("admin/audit.html", session, title="Audit log", nav="audit",
                            entries=configfile.audit_log(ctx.engine, 300))

    def home(request: Request, session: WebSession, form: Form) -> Response:
        return RedirectResponse("/admin/topics", status_code=303)

    from monitor.app.admin import operations  # the feeds, deliveries and subscribers pages
    from monitor.app.admin import workers as workers_page  # the processes sharing the work

    return [
        Mount("/admin/static", app=StaticFiles(directory=str(STATIC_DIR)), name="admin-static"),
        Route("/admin", page(home), methods=["GET"]),
        Route("/admin/", page(home), methods=["GET"]),
        Route(LOGIN_PATH, page(login_form, public=True), methods=["GET"]),
        Route(LOGIN_PATH, page(login, public=True), methods=["POST"]),
        Route("/admin/logout", page(logout), methods=["POST"]),
        Route("/admin/topics", page(topics_list), methods=["GET"]),
        Route("/admin/topics/new", page(topic_page), methods=["GET"]),
        Route("/admin/topics/new", page(topic_save), methods=["POST"]),
        Route("/admin/topics/new/backtest", page(topic_backtest), methods=["POST"]),
        Route("/admin/topics/{topic_id}", page(topic_page), methods=["GET"]),
        Route("/admin/topics/{topic_id}", page(topic_save), methods=["POST"]),
        Route("/admin/topics/{topic_id}/backtest", page(topic_backtest), methods=["POST"]),
        Route("/admin/audit", page(audit_page), methods=["GET"]),
        *operations.routes(ctx, pages, page),
        *workers_page.routes(ctx, pages, page),
    ]

