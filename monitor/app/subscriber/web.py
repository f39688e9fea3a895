"""The subscriber pages' routes (see the package docstring). Server-rendered from templates/subscriber/, one
stylesheet shipped with the package, a strict Content-Security-Policy, no cookies: the signed link is the
credential, and each form carries a token bound to that link (monitor.delivery.links.form_token)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import available_timezones

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from monitor.app.subscriber import SubscriberContext, alertfeeds, feedback, prefs, signup, storypage
from monitor.delivery import links, render
from monitor.errors import MonitorError

log = logging.getLogger(__name__)

CSS_PATH = "/subscriber.css"
CSS_FILE = render.TEMPLATES_DIR / "subscriber" / "subscriber.css"

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}

FLASH = {
    "saved": "Saved. Your next digest follows these settings.",
    "unchanged": "Nothing changed.",
    "paused": "Paused. Digests resume on the date shown.",
    "resumed": "Resumed.",
    "unsubscribed": "You are unsubscribed. You can subscribe again below at any time.",
    "resubscribed": "Subscribed again. Your next digest starts with the news from now on.",
}


def routes(ctx: SubscriberContext) -> list[BaseRoute]:
    pages = render.Renderer()
    zones = sorted(available_timezones())

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = pages.render(f"subscriber/{name}.html", css=CSS_PATH, **context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def invalid(reason: str, status: int = 400) -> HTMLResponse:
        return page("invalid", status, title="This link cannot be used", reason=reason)

    def now() -> datetime:
        return ctx.clock()

    async def form_of(request: Request, token: str) -> dict[str, Any]:
        form = await request.form()
        links.check_form_token(ctx.secret_key, token, form.get("form_token"), now())  # type: ignore[arg-type]
        return {k: form.getlist(k) if k == "topics" else form.get(k) for k in form}

    # --- preferences ------------------------------------------------------------------------------------

    def prefs_page(token: str, sub_id: int, *, flash: str | None = None, error: str | None = None,
                   status: int = 200) -> Response:
        def load() -> prefs.PrefsView:
            with Session(ctx.engine) as s:
                return prefs.view(s, ctx.config(), sub_id, now())

        try:
            v = load()
        except MonitorError as e:
            return invalid(str(e), 404)
        if not v.managed:
            return invalid("Channels are managed by the administrators.", 403)
        return page("preferences", status, title="Your digest", v=v, zones=zones, flash=flash, error=error,
                    form_token=links.form_token(ctx.secret_key, token, now()),
                    tz_now=render.localtime(now(), v.timezone), max_pause=prefs.MAX_PAUSE_DAYS)

    async def prefs_get(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            sub_id = links.read_prefs_token(ctx.secret_key, token, now())
        except links.InvalidLink as e:
            return invalid(e.reason)
        flash = FLASH.get(request.query_params.get("done", ""))
        return await run_in_threadpool(prefs_page, token, sub_id, flash=flash)

    async def prefs_post(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            sub_id = links.read_prefs_token(ctx.secret_key, token, now())
            form = await form_of(request, token)
        except links.InvalidLink as e:
            return invalid(e.reason)
        action = form.get("action") or "save"

        def apply() -> str:
            with Session(ctx.engine) as s, s.begin():
                if action == "save":
                    changed = prefs.save(s, ctx.config(), sub_id, now(), topics=list(form.get("topics") or []),
                                         cadence=str(form.get("cadence") or ""),
                                         daily_at=str(form.get("daily_at") or ""),
                                         timezone=str(form.get("timezone") or ""))
                    return "saved" if changed else "unchanged"
                if action == "pause":
                    try:
                        days = int(str(form.get("days") or "0"))
                    except ValueError:
                        raise prefs.PrefsError("Pause for a whole number of days.") from None
                    return "paused" if prefs.pause(s, sub_id, days, now()) else "resumed"
                if action == "resume":
                    prefs.pause(s, sub_id, 0, now())
                    return "resumed"
                if action == "unsubscribe":
                    prefs.unsubscribe(s, sub_id, now())
                    return "unsubscribed"
                if action == "resubscribe":
                    prefs.resubscribe(s, sub_id, now())
                    return "resubscribed"
                raise prefs.PrefsError("Unknown action.")

        try:
            done = await run_in_threadpool(apply)
        except prefs.PrefsError as e:
            return await run_in_threadpool(prefs_page, token, sub_id, error=str(e), status=422)
        return RedirectResponse(f"/preferences/{token}?done={done}", status_code=303, headers=HEADERS)

    # --- feedback ---------------------------------------------------------------------------------------

    async def feedback_get(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            claim = links.read_feedback_token(ctx.secret_key, token, now())
        except links.InvalidLink as e:
            return invalid(e.reason)

        def load() -> feedback.FeedbackTarget:
            with Session(ctx.engine) as s:
                return feedback.target(s, claim.subscription_id, claim.alert_id, claim.kind)

        try:
            t = await run_in_threadpool(load)
        except MonitorError as e:
            return invalid(str(e), 404)
        return page("feedback", title=links.FEEDBACK_LABELS[claim.kind], t=t, label=links.FEEDBACK_LABELS[claim.kind],
                    topic_name=_topic_name(ctx, t.topic_id), form_token=links.form_token(ctx.secret_key, token, now()))

    async def feedback_post(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            claim = links.read_feedback_token(ctx.secret_key, token, now())
            await form_of(request, token)
        except links.InvalidLink as e:
            return invalid(e.reason)

        def apply() -> tuple[bool, feedback.FeedbackTarget]:
            with Session(ctx.engine) as s, s.begin():
                new = feedback.record(s, claim.subscription_id, claim.alert_id, claim.kind, now())
                return new, feedback.target(s, claim.subscription_id, claim.alert_id, claim.kind)

        try:
            new, t = await run_in_threadpool(apply)
        except MonitorError as e:
            return invalid(str(e), 404)
        return page("feedback_done", title="Thank you", t=t, new=new, label=links.FEEDBACK_LABELS[claim.kind],
                    topic_name=_topic_name(ctx, t.topic_id))

    # --- story pages ------------------------------------------------------------------------------------

    async def story_get(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            story_id = links.read_story_token(ctx.secret_key, token, now())
        except links.InvalidLink as e:
            return invalid(e.reason)
        config = ctx.config()
        if config.settings.story_pages == "admin" and not ctx.is_admin(request):
            return page("invalid", 403, title="Sign in to see this story",
                        reason="Story pages are for administrators here. Sign in, then open this link again.",
                        login=f"/admin/login?next={quote(request.url.path)}")

        def load() -> storypage.StoryPage | None:
            with Session(ctx.engine) as s:
                return storypage.story_page(s, config, story_id)

        st = await run_in_threadpool(load)
        if st is None:
            return invalid("This story no longer exists.", 404)
        return page("story", title=st.title, st=st, tz=config.settings.timezone)

    # --- alert feeds ------------------------------------------------------------------------------------

    async def alert_feed(request: Request) -> Response:
        topic_id, fmt = request.path_params["topic"], request.path_params["fmt"]
        config = ctx.config()
        mode = config.settings.alert_feeds
        if mode == "off" or fmt not in ("atom", "json"):
            return Response("not found\n", status_code=404, media_type="text/plain")
        token = request.query_params.get("token", "")
        if mode == "token":
            try:
                if links.read_feed_token(ctx.secret_key, token) != topic_id:
                    raise links.InvalidLink("wrong topic")
            except links.InvalidLink:
                return Response("This feed address is not valid; ask the administrator for the current one.\n",
                                status_code=403, media_type="text/plain")
        topic = next((t for t in config.topics if t.id == topic_id), None)
        if topic is None:
            return Response("no such topic\n", status_code=404, media_type="text/plain")

        def load() -> list[alertfeeds.FeedEntry]:
            with Session(ctx.engine) as s:
                return alertfeeds.entries(s, topic_id)

        items = await run_in_threadpool(load)
        base = config.settings.base_url.rstrip("/")
        at = now()
        feed_url = f"{base}/feeds/{topic_id}.{fmt}" + (f"?token={token}" if mode == "token" else "")

        def story_url(story_id: int) -> str:
            return f"{base}/story/{links.story_token(ctx.secret_key, story_id, at)}"

        headers = {"Cache-Control": "private, max-age=60", "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer"}
        if fmt == "atom":
            body = alertfeeds.atom(topic_id, topic.name, feed_url, base, items, story_url, at)
            return Response(body, media_type="application/atom+xml; charset=utf-8", headers=headers)
        body = alertfeeds.json_feed(topic_id, topic.name, feed_url, base, items, story_url)
        return Response(body, media_type="application/feed+json; charset=utf-8", headers=headers)

    # --- self sign-up -----------------------------------------------------------------------------------

    async def signup_get(request: Request) -> Response:
        config = ctx.config()
        if not config.settings.self_signup:
            return invalid("Sign-up is not open here. Ask the administrators to add you.", 404)
        return page("signup", title="Sign up", topics=[(t.id, t.name) for t in config.enabled_topics], error=None,
                    form_token=links.signup_form_token(ctx.secret_key, now()), values={})

    async def signup_post(request: Request) -> Response:
        config = ctx.config()
        if not config.settings.self_signup:
            return invalid("Sign-up is not open here. Ask the administrators to add you.", 404)
        if ctx.send_mail is None:
            return invalid("Sign-up cannot send its confirmation e-mail right now; please try later.", 503)
        form = await request.form()
        try:
            nonce = links.read_signup_form_token(ctx.secret_key, form.get("form_token"), now())  # type: ignore[arg-type]
        except links.InvalidLink as e:
            return invalid(e.reason)
        address = str(form.get("email") or "").strip()
        topics = [str(t) for t in form.getlist("topics")]
        client = request.client.host if request.client else "unknown"

        def apply() -> signup.SignupResult:
            return signup.request_signup(ctx.engine, config, ctx.secret_key, address, topics, client, now(),
                                         form_nonce=nonce)

        try:
            result = await run_in_threadpool(apply)
        except signup.SignupError as e:
            return page("signup", e.status, title="Sign up", topics=[(t.id, t.name) for t in config.enabled_topics],
                        error=str(e), form_token=links.signup_form_token(ctx.secret_key, now()),
                        values={"email": address, "topics": topics})
        if result.message is not None:
            try:
                await ctx.send_mail(result.address, result.message)
            except Exception:
                log.exception("sign-up confirmation could not be sent", extra={"channel": "email"})
                return invalid("The confirmation e-mail could not be sent; please try again later.", 503)
        # The same answer whether or not the address was known: the page never tells who subscribes.
        return page("signup_sent", title="Check your inbox", address=address)

    async def confirm_get(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            links.read_confirm_token(ctx.secret_key, token, now())
        except links.InvalidLink as e:
            return invalid(e.reason)
        return page("confirm", title="Confirm your subscription",
                    form_token=links.form_token(ctx.secret_key, token, now()))

    async def confirm_post(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            sub_id = links.read_confirm_token(ctx.secret_key, token, now())
            await form_of(request, token)
        except links.InvalidLink as e:
            return invalid(e.reason)

        def apply() -> str:
            with Session(ctx.engine) as s, s.begin():
                signup.confirm(s, sub_id, now())
                return links.prefs_token(ctx.secret_key, sub_id, now())

        try:
            prefs_token = await run_in_threadpool(apply)
        except MonitorError as e:
            return invalid(str(e), 404)
        return page("confirmed", title="Subscribed", prefs_url=f"/preferences/{prefs_token}")

    # --- the stylesheet ---------------------------------------------------------------------------------

    css = Path(CSS_FILE).read_bytes()

    async def stylesheet(_: Request) -> Response:
        return Response(css, media_type="text/css; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

    return [
        Route("/preferences/{token}", prefs_get, methods=["GET"]),
        Route("/preferences/{token}", prefs_post, methods=["POST"]),
        Route("/feedback/{token}", feedback_get, methods=["GET"]),
        Route("/feedback/{token}", feedback_post, methods=["POST"]),
        Route("/story/{token}", story_get, methods=["GET"]),
        Route("/feeds/{topic}.{fmt}", alert_feed, methods=["GET"]),
        Route("/signup", signup_get, methods=["GET"]),
        Route("/signup", signup_post, methods=["POST"]),
        Route("/signup/confirm/{token}", confirm_get, methods=["GET"]),
        Route("/signup/confirm/{token}", confirm_post, methods=["POST"]),
        Route(CSS_PATH, stylesheet, methods=["GET"]),
    ]


def _topic_name(ctx: SubscriberContext, topic_id: str) -> str:
    return next((t.name for t in ctx.config().topics if t.id == topic_id), topic_id)


def pause_days_left(until: datetime | None, now: datetime) -> int:
    return 0 if until is None else max(0, (until - now + timedelta(hours=23)).days)
