"""The operations pages: feeds (health, add with a test fetch, disable, OPML), deliveries (recent digests and
attempts, retry, re-enable a channel, test message) and subscribers (list, add, edit, resubscribe). Changes
to feeds.toml go through `configfile` (validated, comments kept, audited); database-only changes are
audited with `configfile.record_audit`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from monitor.app.admin import AdminContext, configfile, forms
from monitor.app.admin.auth import WebSession
from monitor.app.subscriber import prefs
from monitor.config import Config, FeedConfig, SubscriberConfig
from monitor.delivery import Outgoing, outbox
from monitor.delivery.outbox import open_senders
from monitor.errors import ConfigError, DeliveryError, MonitorError
from monitor.ingest import opml
from monitor.ingest.fetch import Fetcher
from monitor.ingest.parse import parse_feed
from monitor.records import FetchRequest
from monitor.storage import db, store
from monitor.storage.tables import Delivery, DeliveryAttempt, Digest, Item, Subscription

FEED_FIELDS = [f for f in forms.form_fields(FeedConfig) if f.name != "enabled"]
SUBSCRIBER_FIELDS = forms.form_fields(SubscriberConfig)


def _str(form: dict[str, Any], key: str) -> str:
    v = form.get(key, "")
    return v if isinstance(v, str) else ""


def test_fetch(settings: Any, url: str, now: datetime) -> dict[str, Any]:
    """Fetch and parse a feed once, as the poller would (same client, same guards); what it returns, in words."""

    async def go() -> Any:
        async with Fetcher(settings) as f:
            return await f.fetch(FetchRequest(feed_id=0, url=url))

    result = asyncio.run(go())
    out: dict[str, Any] = {"status": result.status, "http_status": result.http_status, "error": result.error,
                           "title": None, "items": [], "warnings": []}
    if result.status == "ok":
        try:
            parsed = parse_feed(result.body, result.headers, feed_url=url, now=now,
                                fast_path=settings.fast_feed_reader)
        except MonitorError as e:
            out["error"] = str(e)
            out["status"] = "error"
            return out
        out["title"] = parsed.title
        out["items"] = [{"title": it.title, "published_at": it.published_at, "link": it.link}
                        for it in parsed.items[:10]]
        out["count"] = len(parsed.items)
        out["warnings"] = list(parsed.warnings)
    return out


def send_test_message(config: Config, channel: str, now: datetime) -> str:
    """Send a short test message to a channel with the real sender (same URL, signature, address guard) and
    say what the receiver answered, in words."""
    ch = next((c for c in config.channels if c.name == channel), None)
    if ch is None:
        return f"no channel {channel!r} in the configuration"
    text = f"monitor: a test message to the channel {channel!r}, sent from the admin pages at {now:%Y-%m-%d %H:%M} UTC."
    body = {"text": text} if ch.kind == "slack" else {"type": "monitor.test", "channel": channel, "text": text,
                                                      "sent_at": now.isoformat()}
    message = Outgoing(delivery_id=0, kind=ch.kind, target=channel, idempotency_key=f"test-{uuid.uuid4().hex}",
                       payload=json.dumps(body).encode(), attempt=1)

    async def go() -> str:
        async with open_senders(config) as senders:
            try:
                code = await senders[ch.kind].send(message)
            except DeliveryError as e:
                return f"not delivered: {e}" + (f" (answer code {e.code})" if getattr(e, "code", None) else "")
            return f"delivered: the receiver answered {code}"

    return asyncio.run(go())


# --- operations shared by the pages and the API ----------------------------------------------------------


def add_feed(ctx: AdminContext, feed: FeedConfig, *, actor: str, expected_sha: str | None = None) -> None:
    """Append a [[feeds]] entry to feeds.toml (validated, comments kept, audited)."""
    config, _sha = configfile.current_config(ctx.config_path)
    if any(f.url == feed.url for f in config.feeds):
        raise configfile.FieldErrors({"url": "this feed is configured already"})
    text = configfile.read_text(ctx.config_path)
    new_text = configfile.upsert_entry(text, "feeds", "url", feed.url, feed)
    configfile.save_config_text(ctx.engine, ctx.config_path, new_text, actor=actor, action="feed.add",
                                target=feed.url, diff=configfile.entry_diff(None, feed),
                                expected_sha=expected_sha or configfile.sha256(text))


def set_feed_enabled(ctx: AdminContext, url: str, enabled: bool, *, actor: str) -> bool:
    """Enable or disable a configured feed; False when there is no such feed."""
    config, _sha = configfile.current_config(ctx.config_path)
    old = next((f for f in config.feeds if f.url == url), None)
    if old is None:
        return False
    new = old.model_copy(update={"enabled": enabled})
    text = configfile.read_text(ctx.config_path)
    new_text = configfile.upsert_entry(text, "feeds", "url", url, new)
    configfile.save_config_text(ctx.engine, ctx.config_path, new_text, actor=actor,
                                action="feed.enable" if enabled else "feed.disable", target=url,
                                diff=configfile.entry_diff(old, new), expected_sha=configfile.sha256(text))
    return True


def retry_delivery(ctx: AdminContext, delivery_id: int, *, actor: str) -> bool:
    """Send a failed (or cancelled) delivery again at the next outbox tick, with the same idempotency key;
    False when it is not failed."""
    with db.write_transaction(ctx.engine) as s:
        # The same requeue as `monitor deliveries retry`: a fresh retry span, so an old failure is not given
        # up on again at its first transient error.
        n = len(outbox.requeue(s, ctx.clock(), delivery_ids=[delivery_id],
                               where=Delivery.status.in_(("failed", "cancelled"))))
    if n:
        configfile.record_audit(ctx.engine, actor=actor, action="delivery.retry", target=f"delivery {delivery_id}",
                                now=ctx.clock())
    return bool(n)


def enable_subscription(ctx: AdminContext, sub_id: int, *, resubscribe: bool, actor: str) -> str | None:
    """Re-enable a disabled channel or address (and undo an unsubscribe when `resubscribe`); returns what
    was done, None when there is no such subscription."""
    with db.write_transaction(ctx.engine) as s:
        row = s.get(Subscription, sub_id)
        if row is None:
            return None
        what = "re-enabled" if row.disabled_at else "resubscribed" if row.unsubscribed_at and resubscribe \
            else "unchanged"
        # As `monitor digest enable` and `subscribers resubscribe` do: held-back deliveries go out again, and
        # a resubscribed address starts from now (what was alerted meanwhile is not sent), recorded.
        requeued = outbox.reenable(s, row, ctx.clock()) if row.disabled_at else 0
        if resubscribe and row.unsubscribed_at is not None:
            prefs.resubscribe(s, row.id, ctx.clock())
        target = f"{row.kind} {row.target}"
    configfile.record_audit(ctx.engine, actor=actor, action=f"subscription.{what}", target=target, now=ctx.clock())
    return f"{target}: {what}" + (f" ({requeued} held-back deliveries queued again)" if requeued else "")


class NoSuchEntry(ConfigError):
    """The entry to edit is not in feeds.toml (deleted meanwhile, or a typo)."""


def subscription_states(engine: Any) -> dict[str, Subscription]:
    """The database state of each e-mail subscription (unsubscribed, disabled...), by lower-case address."""
    with Session(engine) as s:
        return {r.target: r for r in s.scalars(select(Subscription).where(Subscription.kind == "email"))}


def subscription_state(row: Subscription | None) -> str:
    """A subscriber's state in one word, as the Subscribers page shows it."""
    if row is None:
        return "not synced yet"
    return "disabled" if row.disabled_at else "unsubscribed" if row.unsubscribed_at else "active"


def find_subscriber(config: Config, email: str) -> SubscriberConfig | None:
    return next((x for x in config.subscribers if x.email.lower() == email.lower()), None)


def save_subscriber(ctx: AdminContext, sub: SubscriberConfig, *, editing: str | None, actor: str,
                    expected_sha: str | None = None) -> configfile.Saved:
    """Add a subscriber (`editing` None) or replace the one whose address is `editing`, in feeds.toml
    (validated as a whole configuration, comments kept, audited as subscriber.add / subscriber.update).
    Raises NoSuchEntry, or FieldErrors naming the field."""
    config, _sha = configfile.current_config(ctx.config_path)
    old = find_subscriber(config, editing or sub.email)
    if editing and old is None:
        raise NoSuchEntry(f"no subscriber {editing!r}")
    if not editing and old is not None:
        raise configfile.FieldErrors({"email": "this address is already subscribed"})
    known = {t.id for t in config.topics}
    unknown = [t for t in sub.topics if t not in known]
    if unknown:
        raise configfile.FieldErrors({"topics": f"unknown topic(s) {', '.join(unknown)}; known: "
                                                f"{', '.join(sorted(known)) or 'none'}"})
    text = configfile.read_text(ctx.config_path)
    new_text = configfile.upsert_entry(text, "subscribers", "email", old.email if old else sub.email, sub)
    return configfile.save_config_text(ctx.engine, ctx.config_path, new_text, actor=actor,
                                       action="subscriber.update" if old else "subscriber.add", target=sub.email,
                                       diff=configfile.entry_diff(old, sub),
                                       expected_sha=expected_sha or configfile.sha256(text))


def edit_subscriber(ctx: AdminContext, email: str, changes: dict[str, Any], *, actor: str) -> configfile.Saved:
    """Change some fields of a subscriber (the others kept) through `save_subscriber`."""
    from pydantic import ValidationError

    config, _sha = configfile.current_config(ctx.config_path)
    old = find_subscriber(config, email)
    if old is None:
        raise NoSuchEntry(f"no subscriber {email!r}")
    try:
        sub = SubscriberConfig.model_validate({**old.model_dump(), **changes})
    except ValidationError as e:
        raise configfile.FieldErrors(configfile.field_errors(e)) from None
    return save_subscriber(ctx, sub, editing=old.email, actor=actor)


def resubscribe(ctx: AdminContext, email: str, *, actor: str) -> str | None:
    """Undo a subscriber's unsubscribe (and re-enable a disabled address), audited; what was done, or None
    when the address has no subscription (not in feeds.toml, or not synced yet)."""
    row = subscription_states(ctx.engine).get(email.lower())
    if row is None:
        return None
    return enable_subscription(ctx, row.id, resubscribe=True, actor=actor)


def routes(ctx: AdminContext, pages: Any, page: Callable[..., Any]) -> list[BaseRoute]:
    # --- feeds ------------------------------------------------------------------------------------------

    def feeds_view(session: WebSession, *, status: int = 200, values: dict[str, str] | None = None,
                   errors: dict[str, str] | None = None, probe: dict[str, Any] | None = None,
                   notice: str = "") -> Response:
        config, sha = configfile.current_config(ctx.config_path)
        now = ctx.clock()
        with Session(ctx.engine) as s:
            health = {h.url: h for h in store.feed_health(s)}
            day_ago = db.naive_utc(now - timedelta(days=7))
            per_feed = dict(s.execute(select(Item.feed_id, func.count()).where(Item.fetched_at >= day_ago)
                                      .group_by(Item.feed_id)).all())
        rows = []
        for f in config.feeds:
            h = health.get(f.url)
            rows.append({"feed": f, "health": h, "per_day": (per_feed.get(h.feed_id, 0) / 7.0) if h else 0.0})
        return pages.render("admin/feeds.html", session, status, title="Feeds", nav="feeds", rows=rows,
                            fields=FEED_FIELDS, values=values or {}, errors=errors or {}, probe=probe,
                            base_sha=sha, notice=notice)

    def feeds_page(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        return feeds_view(session, notice=request.query_params.get("notice", ""))

    def feed_add(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        values = {f.name: _str(form, f.name) for f in FEED_FIELDS}
        try:
            feed = FeedConfig.model_validate(forms.parse_form(form, FEED_FIELDS))
        except Exception as e:  # pydantic ValidationError
            from pydantic import ValidationError

            if isinstance(e, ValidationError):
                return feeds_view(session, status=422, values=values, errors=configfile.field_errors(e))
            raise
        settings = ctx.config().settings
        probe = test_fetch(settings, feed.url, ctx.clock())
        if _str(form, "action") != "add":  # "Test fetch": show what the feed returns, change nothing
            return feeds_view(session, values=values, probe=probe)
        try:
            add_feed(ctx, feed, actor=session.user or "?", expected_sha=_str(form, "base_sha") or None)
        except configfile.FieldErrors as e:
            return feeds_view(session, status=422, values=values, errors=e.errors, probe=probe)
        except ConfigError as e:
            return feeds_view(session, status=409 if isinstance(e, configfile.StaleEdit) else 422, values=values,
                              errors={"": str(e)}, probe=probe)
        return RedirectResponse("/admin/feeds?notice=" + quote(f"Added {feed.url}"), status_code=303)

    def feed_enable(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        url, enabled = _str(form, "url"), _str(form, "enabled") == "true"
        try:
            found = set_feed_enabled(ctx, url, enabled, actor=session.user or "?")
        except ConfigError as e:
            return feeds_view(session, status=409 if isinstance(e, configfile.StaleEdit) else 422, errors={"": str(e)})
        if not found:
            return feeds_view(session, status=404, errors={"": f"no feed {url!r} in {ctx.config_path.name}"})
        return RedirectResponse("/admin/feeds?notice=" + quote(f"{'Enabled' if enabled else 'Disabled'} {url}"),
                                status_code=303)

    def opml_export(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        config, _sha = configfile.current_config(ctx.config_path)
        with Session(ctx.engine) as s:
            titles = {h.url: h.title for h in store.feed_health(s) if h.title}
        data = opml.write_opml([opml.OpmlFeed(url=f.url, title=f.name or titles.get(f.url)) for f in config.feeds],
                               now=ctx.clock())
        return Response(data, media_type="text/x-opml; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="monitor-feeds.opml"'})

    def opml_import(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        data = form.get("opml")
        if not isinstance(data, bytes) or not data.strip():
            return feeds_view(session, status=422, errors={"opml": "choose an OPML file to import"})
        try:
            imported = opml.read_opml(data, "uploaded OPML")
        except MonitorError as e:
            return feeds_view(session, status=422, errors={"opml": str(e)})
        config, _sha = configfile.current_config(ctx.config_path)
        fresh = opml.new_feeds(imported, [f.url for f in config.feeds])
        if not fresh:
            return feeds_view(session, notice=f"All {len(imported)} feeds of the file are configured already.")
        text = base = configfile.read_text(ctx.config_path)
        for f in fresh:
            text = configfile.upsert_entry(text, "feeds", "url", f.url,
                                           FeedConfig(url=f.url, name=f.title or None))
        try:
            configfile.save_config_text(ctx.engine, ctx.config_path, text, actor=session.user or "?",
                                        action="feed.import", target=f"{len(fresh)} feeds from OPML",
                                        diff="\n".join(f"+ {f.url}" for f in fresh),
                                        expected_sha=configfile.sha256(base))
        except ConfigError as e:
            return feeds_view(session, status=409 if isinstance(e, configfile.StaleEdit) else 422,
                              errors={"opml": str(e)})
        return RedirectResponse("/admin/feeds?notice=" + quote(f"Imported {len(fresh)} new feeds "
                                                                f"({len(imported) - len(fresh)} already there)"),
                                status_code=303)

    # --- deliveries -------------------------------------------------------------------------------------

    def deliveries_view(session: WebSession, *, notice: str = "", answer: str = "", status: int = 200) -> Response:
        with Session(ctx.engine) as s:
            rows = s.execute(select(Delivery, Digest.alert_count).join(Digest, Digest.id == Delivery.digest_id)
                             .order_by(Delivery.id.desc()).limit(100)).all()
            ids = [d.id for d, _n in rows]
            attempts: dict[int, list[DeliveryAttempt]] = {}
            if ids:
                for a in s.scalars(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(ids))
                                   .order_by(DeliveryAttempt.id)):
                    attempts.setdefault(a.delivery_id, []).append(a)
            subs = s.scalars(select(Subscription).order_by(Subscription.kind, Subscription.target)).all()
        channels = [c.name for c in ctx.config().channels]
        return pages.render("admin/deliveries.html", session, status, title="Deliveries", nav="deliveries",
                            rows=[(d, n, attempts.get(d.id, [])) for d, n in rows], subs=subs,
                            channels=channels, notice=notice, answer=answer, utc=_utc)

    def deliveries_page(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        return deliveries_view(session, notice=request.query_params.get("notice", ""))

    def delivery_retry(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        delivery_id = int(request.path_params["delivery_id"])
        n = retry_delivery(ctx, delivery_id, actor=session.user or "?")
        return RedirectResponse("/admin/deliveries?notice=" + quote(
            f"Delivery {delivery_id} will be sent again at the next outbox tick" if n
            else f"Delivery {delivery_id} is not failed; nothing to retry"), status_code=303)

    def subscription_enable(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        sub_id = int(request.path_params["sub_id"])
        done = enable_subscription(ctx, sub_id, resubscribe=bool(_str(form, "resubscribe")), actor=session.user or "?")
        if done is None:
            return deliveries_view(session, status=404, notice=f"No subscription {sub_id}")
        back = "/admin/subscribers" if _str(form, "back") == "subscribers" else "/admin/deliveries"
        return RedirectResponse(back + "?notice=" + quote(done), status_code=303)

    def channel_test(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        name = _str(form, "channel")
        sender = ctx.test_sender or (lambda n: send_test_message(ctx.config(), n, ctx.clock()))
        try:
            answer = str(sender(name))
        except MonitorError as e:
            answer = f"failed: {e}"
        configfile.record_audit(ctx.engine, actor=session.user or "?", action="channel.test", target=name,
                                diff=answer[:2000], now=ctx.clock())
        return deliveries_view(session, notice=f"Test message to {name}", answer=answer)

    # --- subscribers ------------------------------------------------------------------------------------

    def subscribers_view(session: WebSession, *, status: int = 200, values: dict[str, str] | None = None,
                         errors: dict[str, str] | None = None, notice: str = "", editing: str = "") -> Response:
        config, sha = configfile.current_config(ctx.config_path)
        state = subscription_states(ctx.engine)
        if editing and values is None:
            values = forms.form_values(find_subscriber(config, editing), SUBSCRIBER_FIELDS)
        return pages.render("admin/subscribers.html", session, status, title="Subscribers", nav="subscribers",
                            subscribers=config.subscribers, state=state, fields=SUBSCRIBER_FIELDS,
                            values=values or forms.form_values(None, SUBSCRIBER_FIELDS), errors=errors or {},
                            notice=notice, editing=editing, base_sha=sha, settings=config.settings)

    def subscribers_page(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        return subscribers_view(session, notice=request.query_params.get("notice", ""),
                                editing=request.query_params.get("edit", ""))

    def subscriber_save(request: Request, session: WebSession, form: dict[str, Any]) -> Response:
        from pydantic import ValidationError

        editing = _str(form, "editing")
        values = {f.name: _str(form, f.name) for f in SUBSCRIBER_FIELDS}
        data = forms.parse_form(form, SUBSCRIBER_FIELDS)
        if data.get("daily_at") == "":
            data.pop("daily_at")
        try:
            sub = SubscriberConfig.model_validate(data)
        except ValidationError as e:
            return subscribers_view(session, status=422, values=values, errors=configfile.field_errors(e),
                                    editing=editing)
        try:
            save_subscriber(ctx, sub, editing=editing or None, actor=session.user or "?",
                            expected_sha=_str(form, "base_sha"))
        except NoSuchEntry as e:
            return subscribers_view(session, status=404, errors={"": str(e)})
        except configfile.FieldErrors as e:
            return subscribers_view(session, status=422, values=values, errors=e.errors, editing=editing)
        except ConfigError as e:
            return subscribers_view(session, status=409 if isinstance(e, configfile.StaleEdit) else 422,
                                    values=values, errors={"": str(e)}, editing=editing)
        return RedirectResponse("/admin/subscribers?notice=" + quote(f"Saved {sub.email}"), status_code=303)

    return [
        Route("/admin/feeds", page(feeds_page), methods=["GET"]),
        Route("/admin/feeds", page(feed_add), methods=["POST"]),
        Route("/admin/feeds/enabled", page(feed_enable), methods=["POST"]),
        Route("/admin/feeds/opml", page(opml_export), methods=["GET"]),
        Route("/admin/feeds/opml", page(opml_import), methods=["POST"]),
        Route("/admin/deliveries", page(deliveries_page), methods=["GET"]),
        Route("/admin/deliveries/{delivery_id:int}/retry", page(delivery_retry), methods=["POST"]),
        Route("/admin/subscriptions/{sub_id:int}/enable", page(subscription_enable), methods=["POST"]),
        Route("/admin/channels/test", page(channel_test), methods=["POST"]),
        Route("/admin/subscribers", page(subscribers_page), methods=["GET"]),
        Route("/admin/subscribers", page(subscriber_save), methods=["POST"]),
    ]


def _utc(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt
