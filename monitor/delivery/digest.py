"""The digest stage: who receives what, when, and exactly which alerts.

* `sync_subscriptions` mirrors `[[subscribers]]` and `[[channels]]` of feeds.toml into the subscriptions
  table. The database owns the cursor, the schedule and unsubscribes: a subscriber who unsubscribed stays
  unsubscribed even while still listed in the file.
* `next_due` computes the cadence's next digest time (hourly on the hour; daily at a local time in a named
  timezone, DST-aware). `immediate` is due whenever there are new alerts.
* `group_alerts` (pure) turns alerts into topic -> story groups.
* `build_due_digests` writes, per due subscription and in ONE transaction, the digest row, its rendered
  delivery rows (the outbox) and the advanced cursor. The cursor is an alert id: a digest holds exactly the
  alerts with cursor < id <= new cursor of the subscription's topics, so nothing is sent twice and nothing
  skipped, even across restarts. An empty digest is not written (the schedule moves on, the cursor stays).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from monitor.config import ChannelConfig, Config, SubscriberConfig
from monitor.delivery import render, unsubscribe
from monitor.errors import MonitorError
from monitor.records import ALERT_DECISIONS, AlertView, DigestContent, DigestStory, DigestTopic
from monitor.storage.db import aware_utc, is_sqlite, naive_utc, serialize, write_transaction
from monitor.storage.tables import Alert, Delivery, Digest, Story, Subscription

log = logging.getLogger(__name__)

# A subscription added to feeds.toml starts with the alerts of the last day, not the whole history.
NEW_SUBSCRIPTION_BACKFILL = timedelta(hours=24)
# One digest holds at most this many alerts; the rest go into the next one (immediately due).
MAX_ALERTS_PER_DIGEST = 500


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """One subscription as feeds.toml describes it (kind + target identify its database row)."""

    kind: str  # email | slack | webhook
    target: str  # lower-case e-mail address or channel name
    name: str | None
    topics: tuple[str, ...]  # resolved: empty in the file means every topic
    cadence: str
    daily_at: time
    timezone: str

    @property
    def schedule(self) -> str:
        if self.cadence == "daily":
            return f"daily {self.daily_at.strftime('%H:%M')} {self.timezone}"
        return self.cadence


def subscription_specs(config: Config) -> list[SubscriptionSpec]:
    all_topics = tuple(t.id for t in config.topics)
    default_tz = config.settings.timezone
    specs = []
    for s in config.subscribers:
        specs.append(_spec("email", s.email.lower(), s.name, s, all_topics, default_tz))
    for c in config.channels:
        specs.append(_spec(c.kind, c.name, c.name, c, all_topics, default_tz))
    return specs


def _spec(kind: str, target: str, name: str | None, s: SubscriberConfig | ChannelConfig,
          all_topics: tuple[str, ...], default_tz: str) -> SubscriptionSpec:
    return SubscriptionSpec(kind=kind, target=target, name=name, topics=tuple(s.topics) or all_topics,
                            cadence=s.cadence, daily_at=s.daily_at, timezone=s.timezone or default_tz)


def find_spec(config: Config, *, subscriber: str | None = None, channel: str | None = None) -> SubscriptionSpec:
    for spec in subscription_specs(config):
        if subscriber is not None and spec.kind == "email" and spec.target == subscriber.strip().lower():
            return spec
        if channel is not None and spec.kind != "email" and spec.target == channel:
            return spec
    who = f"subscriber {subscriber!r}" if subscriber is not None else f"channel {channel!r}"
    raise MonitorError(f"no {who} in the configuration; check [[subscribers]] / [[channels]] in feeds.toml")


# --- schedule (pure) -------------------------------------------------------------------------------------


def next_due(spec: SubscriptionSpec, after: datetime) -> datetime | None:
    """The first digest time strictly after `after` (aware UTC), or None for `immediate`."""
    after = after.astimezone(UTC)
    if spec.cadence == "immediate":
        return None
    if spec.cadence == "hourly":
        return after.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    tz = ZoneInfo(spec.timezone)
    local_day = after.astimezone(tz).date()
    for offset in range(0, 3):
        day = local_day + timedelta(days=offset)
        # A local time skipped by a DST jump resolves to the instant just after the gap (fold=0 semantics).
        candidate = datetime.combine(day, spec.daily_at, tzinfo=tz).astimezone(UTC)
        if candidate > after:
            return candidate
    raise AssertionError("unreachable: a daily time occurs within three days")


def is_due(row: Subscription, spec: SubscriptionSpec, now: datetime) -> bool:
    if row.unsubscribed_at is not None or row.disabled_at is not None:
        return False
    if spec.cadence == "immediate":
        return True
    due_at = aware_utc(row.next_digest_at)
    return due_at is not None and due_at <= now


# --- subscriptions ---------------------------------------------------------------------------------------


def sync_subscriptions(session: Session, config: Config, now: datetime) -> list[Subscription]:
    """Create the rows of subscriptions new in feeds.toml and recompute the schedule of those whose cadence
    changed. Never touches cursors or unsubscribes. Returns the rows of the configured subscriptions."""
    specs = subscription_specs(config)
    serialize(session, "sync_subscriptions")  # another process may be adding the same rows right now
    existing = {(r.kind, r.target): r for r in session.scalars(select(Subscription))}
    rows = []
    backfill_from: int | None = None
    for spec in specs:
        row = existing.get((spec.kind, spec.target))
        if row is None:
            if backfill_from is None:
                backfill_from = session.scalar(
                    select(func.coalesce(func.max(Alert.id), 0)).where(
                        Alert.created_at <= naive_utc(now - NEW_SUBSCRIPTION_BACKFILL))
                ) or 0
            row = Subscription(kind=spec.kind, target=spec.target, cursor_alert_id=backfill_from,
                               created_at=naive_utc(now))
            session.add(row)
            log.info("subscription added", extra={"channel": spec.kind, "target": spec.target,
                                                  "cursor_alert_id": backfill_from})
        if row.schedule != spec.schedule:
            row.schedule = spec.schedule
            due = next_due(spec, now)
            row.next_digest_at = naive_utc(due) if due else None
        rows.append(row)
    session.flush()
    return rows


# --- reading and grouping alerts -------------------------------------------------------------------------


def pending_alerts(session: Session, config: Config, spec: SubscriptionSpec, cursor: int,
                   limit: int = MAX_ALERTS_PER_DIGEST) -> list[AlertView]:
    """The alerts (new stories and updates) after `cursor` for the subscription's topics, oldest first."""
    names = {t.id: t.name for t in config.topics}
    rows = session.execute(
        select(Alert, Story)
        .join(Story, Story.id == Alert.story_id)
        .where(Alert.id > cursor, Alert.topic_id.in_(spec.topics), Alert.decision.in_(ALERT_DECISIONS))
        .order_by(Alert.id)
        .limit(limit)
    ).all()
    return [
        AlertView(
            alert_id=a.id,
            topic_id=a.topic_id,
            topic_name=names.get(a.topic_id, a.topic_id),
            story_id=st.id,
            story_title=st.title,
            decision=a.decision,  # type: ignore[arg-type]
            title=a.title,
            link=a.link,
            outlet=a.outlet,
            published_at=aware_utc(a.published_at),  # type: ignore[arg-type]
            what_is_new=a.what_is_new,
            sources_count=max(len(st.sources or []), 1),
            first_seen=aware_utc(st.first_seen),  # type: ignore[arg-type]
        )
        for a, st in rows
    ]


def group_alerts(alerts: Iterable[AlertView], topic_order: Sequence[str] = ()) -> tuple[DigestTopic, ...]:
    """Topic -> story -> alerts. Topics follow `topic_order` (then first appearance), stories and alerts
    their first alert id. A story is `is_new` when its new_story alert is part of these alerts."""
    by_topic: dict[str, dict[int, list[AlertView]]] = {}
    names: dict[str, str] = {}
    for a in sorted(alerts, key=lambda a: a.alert_id):
        by_topic.setdefault(a.topic_id, {}).setdefault(a.story_id, []).append(a)
        names[a.topic_id] = a.topic_name
    rank = {t: i for i, t in enumerate(topic_order)}
    ordered = sorted(by_topic, key=lambda t: (rank.get(t, len(rank)), min(min(x.alert_id for x in v) for v in by_topic[t].values())))
    topics = []
    for topic_id in ordered:
        stories = []
        for story_alerts in by_topic[topic_id].values():
            first = story_alerts[0]
            new = next((a for a in story_alerts if a.decision == "new_story"), None)
            lead = new or first
            stories.append(DigestStory(
                story_id=first.story_id,
                title=first.story_title,
                link=lead.link,
                first_seen=first.first_seen,
                sources_count=max(a.sources_count for a in story_alerts),
                is_new=new is not None,
                alerts=tuple(story_alerts),
            ))
        topics.append(DigestTopic(topic_id=topic_id, name=names[topic_id], stories=tuple(stories)))
    return tuple(topics)


def digest_content(spec: SubscriptionSpec, alerts: Sequence[AlertView], config: Config, now: datetime) -> DigestContent:
    return DigestContent(
        recipient=spec.target,
        recipient_name=spec.name if spec.kind == "email" else None,
        kind=spec.kind,
        timezone=spec.timezone,
        generated_at=now,
        first_alert_id=alerts[0].alert_id if alerts else 0,
        last_alert_id=alerts[-1].alert_id if alerts else 0,
        topics=group_alerts(alerts, [t.id for t in config.topics]),
    )


def preview(session: Session, config: Config, spec: SubscriptionSpec, now: datetime) -> DigestContent | None:
    """What the subscription's next digest would hold now (None when there is nothing); writes nothing."""
    row = session.scalar(select(Subscription).where(Subscription.kind == spec.kind, Subscription.target == spec.target))
    cursor = row.cursor_alert_id if row is not None else 0
    alerts = pending_alerts(session, config, spec, cursor)
    return digest_content(spec, alerts, config, now) if alerts else None


# --- building digests into the outbox --------------------------------------------------------------------


def build_due_digests(engine: Engine, config: Config, now: datetime, *, secret_key: str | None = None,
                      renderer: render.Renderer | None = None) -> list[int]:
    """Build every due, non-empty digest. Per subscription, one transaction writes the digest, its delivery
    rows and the advanced cursor (a crash leaves either all of it or none). Returns the new digest ids.
    One subscription's failure is logged and does not stop the others."""
    specs = subscription_specs(config)
    due = _due_specs(engine, config, specs, now)
    if not due:
        return []
    renderer = renderer or render.Renderer()
    key = secret_key or unsubscribe.signing_key(config.settings)
    built: list[int] = []
    for spec in due:
        try:
            digest_id = _build_one(engine, config, spec, now, key, renderer)
        except Exception:
            log.exception("building a digest failed; it will be retried on the next tick",
                          extra={"channel": spec.kind, "target": spec.target})
            continue
        if digest_id is not None:
            built.append(digest_id)
    return built


def _due_specs(engine: Engine, config: Config, specs: list[SubscriptionSpec], now: datetime) -> list[SubscriptionSpec]:
    """A read-only pass (no write lock on every tick): the subscriptions that are due and, for `immediate`,
    have something new. Syncs the subscriptions table first when feeds.toml has changed."""
    with Session(engine) as s:
        rows = {(r.kind, r.target): r for r in s.scalars(select(Subscription))}
    if any(rows.get((sp.kind, sp.target)) is None or rows[(sp.kind, sp.target)].schedule != sp.schedule for sp in specs):
        with write_transaction(engine) as s:
            sync_subscriptions(s, config, now)
        with Session(engine) as s:
            rows = {(r.kind, r.target): r for r in s.scalars(select(Subscription))}
    due = []
    with Session(engine) as s:
        for spec in specs:
            row = rows[(spec.kind, spec.target)]
            if not is_due(row, spec, now):
                continue
            if spec.cadence == "immediate" and s.scalar(
                select(Alert.id).where(Alert.id > row.cursor_alert_id, Alert.topic_id.in_(spec.topics),
                                       Alert.decision.in_(ALERT_DECISIONS)).limit(1)
            ) is None:
                continue
            due.append(spec)
    return due


def _build_one(engine: Engine, config: Config, spec: SubscriptionSpec, now: datetime, key: str,
               renderer: render.Renderer) -> int | None:
    with write_transaction(engine) as s:
        # FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes other writers): a second process
        # building this subscription's digest waits here and then sees the advanced cursor, instead of
        # reading the same cursor and sending the same alerts again.
        row = s.scalar(select(Subscription).where(Subscription.kind == spec.kind, Subscription.target == spec.target)
                       .with_for_update())
        if row is None or not is_due(row, spec, now):
            return None
        if not is_sqlite(engine):
            # Alert ids come from a sequence and may commit out of order on PostgreSQL: wait for in-flight
            # alert writers so no lower id can appear behind the cursor (SQLite serialises writers anyway).
            s.execute(text("LOCK TABLE alerts IN SHARE MODE"))
        alerts = pending_alerts(s, config, spec, row.cursor_alert_id)
        if spec.cadence != "immediate" and len(alerts) < MAX_ALERTS_PER_DIGEST:
            # A full digest leaves the schedule where it is: the overflow goes out on the next tick,
            # not a whole hour or day later.
            due = next_due(spec, now)
            row.next_digest_at = naive_utc(due) if due else None
        if not alerts:
            return None
        content = digest_content(spec, alerts, config, now)
        digest = Digest(subscription_id=row.id, from_alert_id=row.cursor_alert_id, to_alert_id=content.last_alert_id,
                        alert_count=len(alerts), created_at=naive_utc(now))
        s.add(digest)
        s.flush()
        for part, (key_, payload) in enumerate(_payloads(renderer, config, spec, row, content, digest.id, now, key), 1):
            s.add(Delivery(digest_id=digest.id, subscription_id=row.id, channel=spec.kind, target=spec.target,
                           part=part, idempotency_key=key_, payload=payload, status="pending", attempts=0,
                           next_attempt_at=naive_utc(now), created_at=naive_utc(now)))
        row.cursor_alert_id = content.last_alert_id
        row.last_digest_at = naive_utc(now)
        log.info("digest built", extra={"channel": spec.kind, "target": spec.target, "digest_id": digest.id,
                                        "alerts": len(alerts), "stories": content.story_count})
        return digest.id


def _payloads(renderer: render.Renderer, config: Config, spec: SubscriptionSpec, row: Subscription,
              content: DigestContent, digest_id: int, now: datetime, key: str) -> list[tuple[str, bytes]]:
    settings = config.settings
    if spec.kind == "email":
        message_id = f"<{uuid.uuid4().hex}.{digest_id}@{render.message_id_domain(settings.mail_from)}>"
        url = unsubscribe.unsubscribe_url(settings.base_url, key, row.id, spec.target, now)
        mail = renderer.email(content, mail_from=settings.mail_from, message_id=message_id, now=now,
                              cadence=spec.cadence, unsubscribe_url=url)
        return [(message_id, mail.message)]
    if spec.kind == "slack":
        return [(f"slack_{uuid.uuid4().hex}", render.json_bytes(m))
                for m in renderer.slack_messages(content, digest_id=digest_id)]
    if spec.kind == "webhook":
        body = renderer.webhook_payload(content, digest_id=digest_id, now=now, cadence=spec.cadence)
        return [(f"msg_{uuid.uuid4().hex}", render.json_bytes(body))]
    raise MonitorError(f"unknown subscription kind {spec.kind!r}")
