"""The admin JSON API under /api/v1 (FastAPI; its OpenAPI document at /openapi.json), for scripting what the
pages do. Auth: `Authorization: Bearer $MONITOR_ADMIN_TOKEN`, or a logged-in admin session whose requests
that change something carry the `X-CSRF-Token` header. Invalid input answers 422 naming the field; no or a
wrong token answers 401. Bodies are the same pydantic models as feeds.toml (`TopicConfig`, `FeedConfig`).
What is valid but probably unintended (an example without its topic's keywords) is saved and listed in the
answer's `warnings`, as `monitor config check` and the topic editor say it. A topic's GET lists them too; its
answer may be sent back as it is in a PUT (`warnings` is read-only: ignored in a body).
"""

from __future__ import annotations

from datetime import time
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import BaseRoute, Route

from monitor.app.admin import AdminContext, backtest, configfile, forms, operations
from monitor.app.admin.auth import CSRF_HEADER, token_matches
from monitor.config import Cadence, FeedConfig, SubscriberConfig, TopicConfig
from monitor.errors import ConfigError
from monitor.signal import match

API_PREFIX = "/api/v1"


class Problem(BaseModel):
    detail: str


class FeedSwitch(BaseModel):
    url: str
    enabled: bool


class TopicSwitch(BaseModel):
    enabled: bool = Field(description="False: the topic stays in feeds.toml but matches nothing.")


class SubscriberOut(BaseModel):
    email: str
    name: str | None
    topics: list[str] = Field(description="Topic ids; empty means every topic.")
    cadence: str
    daily_at: str = Field(description="Local time of the daily digest (HH:MM).")
    timezone: str | None = Field(description="Timezone of daily_at; None means settings.timezone.")
    state: str = Field(description="active, unsubscribed, disabled or `not synced yet` (the service adds it "
                                   "to the database within seconds of a save).")
    subscription_id: int | None


class SubscriberEdit(BaseModel):
    """The fields to change; those left out keep their value (`timezone: null` goes back to the default)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    topics: list[str] | None = None
    cadence: Cadence | None = None
    daily_at: time | None = Field(None, description="HH:MM")
    timezone: str | None = None


class SavedOut(BaseModel):
    revision: int = Field(description="The config revision written (services on other hosts apply it).")
    diff: str = Field(description="What changed, field by field.")


_WARNINGS = ("Valid but probably unintended, in words (as `monitor config check` says them): e.g. an example "
             "that contains none of the topic's keywords, left out of the label-free threshold.")


class TopicSavedOut(SavedOut):
    warnings: list[str] = Field(default_factory=list, description=_WARNINGS)


class TopicDoc(TopicConfig):
    """A topic as GET answers it: feeds.toml's fields and the warnings about them. A PUT, POST or backtest body
    may be such an answer sent back as it is: its `warnings` are ignored (`config`)."""

    warnings: list[str] = Field(default_factory=list, description=_WARNINGS + " Read-only: ignored in a body.")

    @classmethod
    def of(cls, topic: TopicConfig) -> TopicDoc:
        return cls.model_validate({**topic.model_dump(), "warnings": match.example_warnings(topic)})

    def config(self) -> TopicConfig:
        """The topic alone, as feeds.toml has it (the warnings are never saved)."""
        return TopicConfig.model_validate(self.model_dump(exclude={"warnings"}))


class HitOut(BaseModel):
    item_id: int
    title: str
    outlet: str
    link: str | None
    published_at: str
    score: float
    reason: str
    story: int | None = Field(description="Story number within this backtest (None while pending).")
    decision: str | None = Field(description="new_story, update, repeat, or held (a new story on a weak match "
                                             "waiting for a second outlet; it alerts only if one comes); None "
                                             "while pending.")
    why: str


class MissOut(BaseModel):
    """A closest miss: an item scoring below the threshold, as the matcher scored it (story-level evidence
    included, as for the matches)."""

    item_id: int
    title: str
    outlet: str
    link: str | None
    published_at: str
    score: float = Field(description="Below the threshold (exact, rounded as for the matches).")
    reason: str = Field(description="The matcher's reason, as for the matches.")
    shortfall: str = Field(description="Why it fell short, in words: keyword groups without a hit, a closer "
                                       "counterexample, or too far from every example.")


class BacktestIn(BaseModel):
    topic: TopicDoc
    days: int = Field(backtest.DEFAULT_DAYS, ge=1, le=90, description="How many days back.")


class BacktestOut(BaseModel):
    topic_id: str
    days: int
    scanned: int = Field(description="Stored items in the window (with a vector).")
    threshold: float
    matches: int
    alerts: int
    stories: int
    saved_matches: int | None = Field(description="What the saved version matches (None for a new topic).")
    saved_alerts: int | None
    items_gained: list[HitOut]
    items_lost: list[HitOut]
    alerts_gained: list[int]
    alerts_lost: list[int]
    hits: list[HitOut]
    closest_misses: list[MissOut] = Field(description=f"The items scoring highest below the threshold, highest "
                                                      f"first, at most {backtest.CLOSEST_MISSES} (items ruled "
                                                      "out by an exclude keyword are left out): candidates for "
                                                      "the topic's examples.")
    pending: bool = Field(description="True when the stories and alerts took too long and are not included.")
    seconds: float
    warnings: list[str] = Field(default_factory=list, description=_WARNINGS)


def _hit(h: backtest.Hit) -> HitOut:
    return HitOut(item_id=h.item.id, title=h.item.title, outlet=h.item.outlet, link=h.item.link,
                  published_at=h.item.published_at.isoformat(), score=h.score, reason=h.reason, story=h.story_key,
                  decision=h.decision, why=h.why)


def _miss(h: backtest.Hit) -> MissOut:
    return MissOut(item_id=h.item.id, title=h.item.title, outlet=h.item.outlet, link=h.item.link,
                   published_at=h.item.published_at.isoformat(), score=h.score, reason=h.reason,
                   shortfall=h.shortfall)


def create_api(ctx: AdminContext) -> FastAPI:
    # No Swagger UI or ReDoc pages: they load their assets from a CDN, and the service runs offline.
    # /openapi.json is served below, behind the same authentication as the API (it maps every endpoint).
    api = FastAPI(title="monitor admin API", version="1", openapi_url=None, docs_url=None,
                  redoc_url=None, swagger_ui_oauth2_redirect_url=None,
                  description="Script what the admin pages do. Authenticate with `Authorization: Bearer <token>` "
                              "(the MONITOR_ADMIN_TOKEN environment variable of the service).")

    def actor(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token and token_matches(token.strip(), ctx.env):
            return "api-token"
        session = ctx.sessions.read(request)
        safe = request.method in ("GET", "HEAD")
        if session.user and not session.fresh and (safe or ctx.sessions.csrf_ok(session, request.headers.get(CSRF_HEADER))):
            return session.user
        raise HTTPException(401, "a valid `Authorization: Bearer <token>` header is needed",
                            headers={"WWW-Authenticate": "Bearer"})


    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_schema(who: str = Depends(actor)) -> Any:
        return api.openapi()

    def config_error(e: ConfigError) -> HTTPException:
        if isinstance(e, configfile.FieldErrors):
            return HTTPException(422, [{"loc": ["body", k] if k else ["body"], "msg": v, "type": "value_error"}
                                       for k, v in e.errors.items()])
        if isinstance(e, configfile.StaleEdit):
            return HTTPException(409, str(e))
        return HTTPException(422, [{"loc": ["body"], "msg": str(e), "type": "value_error"}])

    def load() -> Any:
        return configfile.current_config(ctx.config_path)[0]

    @api.get(f"{API_PREFIX}/topics", response_model=list[TopicConfig], tags=["topics"])
    async def list_topics(who: str = Depends(actor)) -> Any:
        return (await run_in_threadpool(load)).topics

    @api.get(f"{API_PREFIX}/topics/{{topic_id}}", response_model=TopicDoc, tags=["topics"],
             responses={404: {"model": Problem}})
    async def get_topic(topic_id: str, response: Response, who: str = Depends(actor)) -> Any:
        """The topic, with its `warnings`; the `ETag` header is feeds.toml's hash: send it back as `If-Match`
        with a PUT or DELETE and the change is refused (409) if someone saved feeds.toml meanwhile."""
        config, sha = await run_in_threadpool(configfile.current_config, ctx.config_path)
        topic = forms.find_topic(config, topic_id)
        if topic is None:
            raise HTTPException(404, f"no topic {topic_id!r}")
        response.headers["ETag"] = f'"{sha}"'
        return TopicDoc.of(topic)

    @api.post(f"{API_PREFIX}/topics", response_model=TopicSavedOut, status_code=201, tags=["topics"])
    async def create_topic(body: TopicDoc, who: str = Depends(actor)) -> Any:
        topic = body.config()
        try:
            saved = await run_in_threadpool(forms.save_topic, ctx.engine, ctx.config_path, topic, original_id=None,
                                            actor=who)
        except ConfigError as e:
            raise config_error(e) from None
        return TopicSavedOut(revision=saved.revision_id, diff=saved.diff, warnings=match.example_warnings(topic))

    @api.put(f"{API_PREFIX}/topics/{{topic_id}}", response_model=TopicSavedOut, tags=["topics"],
             responses={404: {"model": Problem}})
    async def replace_topic(topic_id: str, body: TopicDoc, who: str = Depends(actor),
                            if_match: str | None = Header(None)) -> Any:
        topic = body.config()
        if forms.find_topic(await run_in_threadpool(load), topic_id) is None:
            raise HTTPException(404, f"no topic {topic_id!r}")
        try:
            saved = await run_in_threadpool(forms.save_topic, ctx.engine, ctx.config_path, topic,
                                            original_id=topic_id, actor=who, expected_sha=_etag(if_match))
        except ConfigError as e:
            raise config_error(e) from None
        return TopicSavedOut(revision=saved.revision_id, diff=saved.diff, warnings=match.example_warnings(topic))

    @api.delete(f"{API_PREFIX}/topics/{{topic_id}}", status_code=204, tags=["topics"],
                responses={404: {"model": Problem}})
    async def delete_topic(topic_id: str, who: str = Depends(actor), if_match: str | None = Header(None)) -> Response:
        if forms.find_topic(await run_in_threadpool(load), topic_id) is None:
            raise HTTPException(404, f"no topic {topic_id!r}")
        try:
            await run_in_threadpool(forms.delete_topic, ctx.engine, ctx.config_path, topic_id, actor=who,
                                    expected_sha=_etag(if_match))
        except ConfigError as e:
            raise config_error(e) from None
        return Response(status_code=204)

    @api.put(f"{API_PREFIX}/topics/{{topic_id}}/enabled", tags=["topics"], responses={404: {"model": Problem}})
    async def topic_enabled(topic_id: str, body: TopicSwitch, who: str = Depends(actor)) -> Any:
        """Enable or disable a topic (a disabled topic matches nothing); a full PUT of the topic with
        `enabled` does the same."""
        try:
            found = await run_in_threadpool(forms.set_topic_enabled, ctx.engine, ctx.config_path, topic_id,
                                            body.enabled, actor=who)
        except ConfigError as e:
            raise config_error(e) from None
        if not found:
            raise HTTPException(404, f"no topic {topic_id!r}")
        return {"topic_id": topic_id, "enabled": body.enabled}

    @api.post(f"{API_PREFIX}/topics/{{topic_id}}/backtest", response_model=BacktestOut, tags=["topics"])
    async def backtest_topic(topic_id: str, body: BacktestIn, who: str = Depends(actor)) -> Any:
        """What `body.topic` would have matched over the last `days` days, against the saved `topic_id`
        (use an id that does not exist, e.g. `new`, for a new topic)."""
        tester = ctx.backtester()
        if tester is None:
            raise HTTPException(503, "the embedding model is still loading; try again in a moment")
        topic = body.topic.config()
        saved_topic = forms.find_topic(await run_in_threadpool(load), topic_id)
        result, saved, d = await run_in_threadpool(
            lambda: tester.compare(topic, saved_topic, days=body.days, now=ctx.clock(), wait_s=300.0))
        return BacktestOut(
            topic_id=result.topic_id, days=result.days, scanned=result.scanned, threshold=result.threshold,
            matches=len(result.hits), alerts=result.alerts, stories=len(result.stories),
            saved_matches=len(saved.hits) if saved else None, saved_alerts=saved.alerts if saved else None,
            items_gained=[_hit(h) for h in d.gained], items_lost=[_hit(h) for h in d.lost],
            alerts_gained=[h.item.id for h in d.alerts_gained], alerts_lost=[h.item.id for h in d.alerts_lost],
            hits=[_hit(h) for h in result.hits], closest_misses=[_miss(h) for h in result.misses],
            pending=result.pending, seconds=round(result.seconds, 4),
            warnings=match.example_warnings(topic))

    @api.get(f"{API_PREFIX}/feeds", response_model=list[FeedConfig], tags=["feeds"])
    async def list_feeds(who: str = Depends(actor)) -> Any:
        return (await run_in_threadpool(load)).feeds

    @api.post(f"{API_PREFIX}/feeds", status_code=201, tags=["feeds"], responses={422: {"model": Problem}})
    async def add_feed(feed: FeedConfig, who: str = Depends(actor)) -> Any:
        """Add a feed to feeds.toml (validated, comments kept, audited)."""
        try:
            await run_in_threadpool(operations.add_feed, ctx, feed, actor=who)
        except ConfigError as e:
            raise config_error(e) from None
        return {"url": feed.url}

    @api.post(f"{API_PREFIX}/feeds/test", tags=["feeds"])
    async def test_feed(feed: FeedConfig, who: str = Depends(actor)) -> Any:
        """Fetch and parse the feed once, as the poller would; nothing is written."""
        probe = await run_in_threadpool(operations.test_fetch, ctx.config().settings, feed.url, ctx.clock())
        probe["items"] = [{**it, "published_at": it["published_at"].isoformat()} for it in probe["items"]]
        return probe

    @api.put(f"{API_PREFIX}/feeds/enabled", tags=["feeds"], responses={404: {"model": Problem}})
    async def feed_enabled(body: FeedSwitch, who: str = Depends(actor)) -> Any:
        try:
            found = await run_in_threadpool(operations.set_feed_enabled, ctx, body.url, body.enabled, actor=who)
        except ConfigError as e:
            raise config_error(e) from None
        if not found:
            raise HTTPException(404, f"no feed {body.url!r} in the configuration")
        return {"url": body.url, "enabled": body.enabled}

    @api.post(f"{API_PREFIX}/deliveries/{{delivery_id}}/retry", tags=["deliveries"],
              responses={409: {"model": Problem}})
    async def retry(delivery_id: int, who: str = Depends(actor)) -> Any:
        if not await run_in_threadpool(operations.retry_delivery, ctx, delivery_id, actor=who):
            raise HTTPException(409, f"delivery {delivery_id} is not failed (or does not exist): nothing to retry")
        return {"delivery_id": delivery_id, "status": "pending"}

    @api.post(f"{API_PREFIX}/subscriptions/{{sub_id}}/enable", tags=["deliveries"],
              responses={404: {"model": Problem}})
    async def enable(sub_id: int, resubscribe: bool = False, who: str = Depends(actor)) -> Any:
        """Re-enable a disabled channel or address; with `resubscribe=true` also undo an unsubscribe."""
        done = await run_in_threadpool(operations.enable_subscription, ctx, sub_id, resubscribe=resubscribe,
                                       actor=who)
        if done is None:
            raise HTTPException(404, f"no subscription {sub_id}")
        return {"subscription_id": sub_id, "done": done}

    @api.post(f"{API_PREFIX}/channels/{{name}}/test", tags=["deliveries"])
    async def channel_test(name: str, who: str = Depends(actor)) -> Any:
        """Send a test message with the real sender; the receiver's answer in words."""
        answer = await run_in_threadpool(operations.send_test_message, ctx.config(), name, ctx.clock())
        await run_in_threadpool(lambda: configfile.record_audit(ctx.engine, actor=who, action="channel.test",
                                                                target=name, diff=answer[:2000], now=ctx.clock()))
        return {"channel": name, "answer": answer}

    def subscriber_out(sub: SubscriberConfig, row: Any) -> SubscriberOut:
        return SubscriberOut(email=sub.email, name=sub.name, topics=sub.topics, cadence=sub.cadence,
                             daily_at=sub.daily_at.strftime("%H:%M"), timezone=sub.timezone,
                             state=operations.subscription_state(row), subscription_id=row.id if row else None)

    @api.get(f"{API_PREFIX}/subscribers", response_model=list[SubscriberOut], tags=["subscribers"])
    async def list_subscribers(who: str = Depends(actor)) -> Any:
        """The subscribers of feeds.toml with their state (as the Subscribers page lists them)."""
        config = await run_in_threadpool(load)
        states = await run_in_threadpool(operations.subscription_states, ctx.engine)
        return [subscriber_out(sub, states.get(sub.email.lower())) for sub in config.subscribers]

    @api.post(f"{API_PREFIX}/subscribers", response_model=SavedOut, status_code=201, tags=["subscribers"])
    async def add_subscriber(sub: SubscriberConfig, who: str = Depends(actor)) -> Any:
        """Add a subscriber to feeds.toml (validated, comments kept, audited as subscriber.add)."""
        try:
            saved = await run_in_threadpool(lambda: operations.save_subscriber(ctx, sub, editing=None, actor=who))
        except ConfigError as e:
            raise config_error(e) from None
        return SavedOut(revision=saved.revision_id, diff=saved.diff)

    @api.patch(f"{API_PREFIX}/subscribers/{{email}}", response_model=SavedOut, tags=["subscribers"],
               responses={404: {"model": Problem}})
    async def edit_subscriber(email: str, changes: SubscriberEdit, who: str = Depends(actor)) -> Any:
        """Change a subscriber's topics, cadence, daily_at, timezone or name (audited as subscriber.update)."""
        try:
            saved = await run_in_threadpool(operations.edit_subscriber, ctx, email,
                                            changes.model_dump(exclude_unset=True), actor=who)
        except operations.NoSuchEntry as e:
            raise HTTPException(404, str(e)) from None
        except ConfigError as e:
            raise config_error(e) from None
        return SavedOut(revision=saved.revision_id, diff=saved.diff)

    @api.post(f"{API_PREFIX}/subscribers/{{email}}/resubscribe", tags=["subscribers"],
              responses={404: {"model": Problem}})
    async def resubscribe(email: str, who: str = Depends(actor)) -> Any:
        """Undo an unsubscribe (and re-enable a disabled address), audited, as the page's Resubscribe does."""
        done = await run_in_threadpool(lambda: operations.resubscribe(ctx, email, actor=who))
        if done is None:
            raise HTTPException(404, f"no subscription for {email!r} (not in feeds.toml, or not synced yet)")
        return {"email": email, "done": done}

    @api.get(f"{API_PREFIX}/audit", tags=["audit"])
    async def audit(who: str = Depends(actor), limit: int = Query(100, ge=1, le=1000)) -> Any:
        rows = await run_in_threadpool(configfile.audit_log, ctx.engine, limit)
        return [{"id": r.id, "at": r.at.isoformat(), "actor": r.actor, "action": r.action, "target": r.target,
                 "diff": r.diff} for r in rows]

    @api.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        detail = exc.detail if isinstance(exc, HTTPException) else "not found"
        return JSONResponse({"detail": detail}, status_code=404)

    return api


def _etag(value: str | None) -> str | None:
    """The feeds.toml hash of an `If-Match` header (quoted or not, weak prefix dropped); None for `*`/absent."""
    tag = (value or "").strip().removeprefix("W/").strip('"')
    return None if tag in ("", "*") else tag


def routes(ctx: AdminContext) -> list[BaseRoute]:
    """/openapi.json and everything under /api/v1, handed to the FastAPI app as is."""
    api = create_api(ctx)
    return [Route("/openapi.json", api, methods=["GET", "HEAD"]),
            Route(API_PREFIX + "/{rest:path}", api, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])]
