"""The digest stage: who receives what, when, and exactly which alerts.

* `sync_subscriptions` mirrors `[[subscribers]]` and `[[channels]]` of feeds.toml into the subscriptions
  table. The database owns the cursor, the schedule and unsubscribes: a subscriber who unsubscribed stays
  unsubscribed even while still listed in the file.
* `effective_specs` is what is in force: feeds.toml, overridden by what a subscriber chose on the preferences
  page (topics, cadence, time, timezone, pause; table subscriber_prefs), plus confirmed self-sign-ups;
  suppressed addresses (bounces, complaints) receive nothing.
* `next_due` computes the cadence's next digest time (hourly on the hour; daily at a local time in a named
  timezone, DST-aware). `immediate` is due whenever there are new alerts.
* `group_alerts` (pure) turns alerts into topic -> story groups; a story that several topics matched (the
  same items) is shown once, under its first topic, tagged with every topic.
* `build_due_digests` writes, per due subscription and in ONE transaction, the digest row, its rendered
  delivery rows (the outbox) and the advanced cursor. The cursor is an alert id: a digest holds exactly the
  alerts with cursor < id <= new cursor of the subscription's topics, so nothing is sent twice and nothing
  skipped, even across restarts. An empty digest is not written (the schedule moves on, the cursor stays).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, and_, func, or_, select, text
from sqlalchemy.orm import Session

from monitor.config import ChannelConfig, Config, SubscriberConfig
from monitor.delivery import links, outbox, render, unsubscribe
from monitor.errors import MonitorError
from monitor.records import ALERT_DECISIONS, AlertView, DigestContent, DigestStory, DigestTopic
from monitor.storage.db import aware_utc, is_sqlite, naive_utc, serialize, write_transaction
from monitor.storage.tables import (
    Alert,
    Delivery,
    DeliveryAttempt,
    Digest,
    Match,
    Story,
    SubscriberPrefs,
    Subscription,
    Suppression,
)

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
    paused_until: datetime | None = None  # aware UTC; nothing is sent before, and what came meanwhile is skipped
    paused_from: datetime | None = None  # aware UTC; alerts from before it are sent after the pause
    source: str = "config"  # config (feeds.toml) | signup (self sign-up, confirmed)
    suppressed: bool = False  # the address bounced or complained: nothing is sent

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


def effective_specs(session: Session, config: Config) -> list[SubscriptionSpec]:
    """The subscriptions in force: feeds.toml's, each overridden by its subscriber's own preferences, plus the
    confirmed self-sign-ups. Suppressed e-mail addresses are marked (never due). Channels stay as feeds.toml
    says."""
    known = {t.id for t in config.topics}
    all_topics = tuple(t.id for t in config.topics)
    default_tz = config.settings.timezone
    prefs = {(sub.kind, sub.target): (sub, p) for sub, p in session.execute(
        select(Subscription, SubscriberPrefs).join(SubscriberPrefs, SubscriberPrefs.subscription_id == Subscription.id))}
    suppressed = set(session.scalars(select(Suppression.address)))
    out = []
    seen = set()
    for spec in subscription_specs(config):
        seen.add((spec.kind, spec.target))
        if spec.kind == "email" and spec.target in suppressed:
            spec = replace(spec, suppressed=True)
        found = prefs.get((spec.kind, spec.target))
        out.append(_with_prefs(spec, found[1], known) if found and spec.kind == "email" else spec)
    for (kind, target), (_sub, p) in sorted(prefs.items()):
        if (kind, target) in seen or p.source != "signup" or p.confirmed_at is None:
            continue
        base = SubscriptionSpec(kind=kind, target=target, name=None, topics=all_topics, cadence="daily",
                                daily_at=time(8, 0), timezone=default_tz, source="signup",
                                suppressed=target in suppressed)
        out.append(_with_prefs(base, p, known))
    return out


def _with_prefs(spec: SubscriptionSpec, p: SubscriberPrefs, known: set[str]) -> SubscriptionSpec:
    topics = spec.topics
    if p.topics is not None:
        topics = tuple(t for t in p.topics if t in known)
    daily_at = spec.daily_at
    if p.daily_at:
        hh, _, mm = p.daily_at.partition(":")
        daily_at = time(int(hh), int(mm or 0))
    return SubscriptionSpec(kind=spec.kind, target=spec.target, name=spec.name, topics=topics,
                            cadence=p.cadence or spec.cadence, daily_at=daily_at,
                            timezone=p.timezone or spec.timezone, paused_until=aware_utc(p.paused_until),
                            paused_from=aware_utc(p.paused_from),
                            source=spec.source, suppressed=spec.suppressed)


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
    if row.unsubscribed_at is not None or row.disabled_at is not None or spec.suppressed:
        return False
    if spec.paused_until is not None and spec.paused_until > now:
        return False
    if spec.cadence == "immediate":
        return True
    due_at = aware_utc(row.next_digest_at)
    return due_at is not None and due_at <= now


# --- subscriptions ---------------------------------------------------------------------------------------


def sync_subscriptions(session: Session, config: Config, now: datetime) -> list[Subscription]:
    """Create the rows of subscriptions new in feeds.toml and recompute the schedule of those whose cadence
    changed (in feeds.toml or on the preferences page). Never touches cursors or unsubscribes. Returns the
    rows of the subscriptions in force."""
    serialize(session, "sync_subscriptions")
    specs = effective_specs(session, config)  # another process may be adding the same rows right now
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
                   limit: int = MAX_ALERTS_PER_DIGEST,
                   skip: tuple[datetime | None, datetime] | None = None) -> list[AlertView]:
    """The alerts (new stories and updates) after `cursor` for the subscription's topics, oldest first;
    `skip` (a pause: from, until) leaves out those created in [from, until) (from None: all before until)."""
    names = {t.id: t.name for t in config.topics}
    query = (
        select(Alert, Story, Match.reason)
        .join(Story, Story.id == Alert.story_id)
        .outerjoin(Match, and_(Match.item_id == Alert.item_id, Match.topic_id == Alert.topic_id))
        .where(Alert.id > cursor, Alert.topic_id.in_(spec.topics), Alert.decision.in_(ALERT_DECISIONS)))
    if skip is not None:
        after_pause = Alert.created_at >= naive_utc(skip[1])
        query = query.where(or_(Alert.created_at < naive_utc(skip[0]), after_pause) if skip[0] else after_pause)
    rows = session.execute(
        query
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
            item_id=a.item_id,
            match_reason=reason,
            story_link=st.link,
        )
        for a, st, reason in rows
    ]


def group_alerts(alerts: Iterable[AlertView], topic_order: Sequence[str] = ()) -> tuple[DigestTopic, ...]:
    """Topic -> story -> alerts. Topics follow `topic_order` (then first appearance), stories and alerts
    their first alert id. A story is `is_new` when its new_story alert is part of these alerts.

    Each topic keeps its own stories, so one event matched by two topics is two story rows holding the same
    items: those are shown once (stories that share an item are one), under the first topic in
    `topic_order`, tagged with every topic's name, each item once."""
    ordered_alerts = sorted(alerts, key=lambda a: a.alert_id)
    names: dict[str, str] = {}
    first_seen_topic: dict[str, int] = {}
    groups: dict[tuple[str, int], list[AlertView]] = {}
    parent: dict[tuple[str, int], tuple[str, int]] = {}
    owner: dict[int, tuple[str, int]] = {}

    def root(k: tuple[str, int]) -> tuple[str, int]:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a in ordered_alerts:
        key = (a.topic_id, a.story_id)
        names[a.topic_id] = a.topic_name
        first_seen_topic.setdefault(a.topic_id, len(first_seen_topic))
        groups.setdefault(key, []).append(a)
        parent.setdefault(key, key)
        if a.item_id is not None:
            if a.item_id in owner:
                r1, r2 = root(key), root(owner[a.item_id])
                if r1 != r2:
                    parent[max(r1, r2)] = min(r1, r2)
            else:
                owner[a.item_id] = key
    rank = {t: i for i, t in enumerate(topic_order)}

    def topic_rank(topic_id: str) -> tuple[int, int]:
        return (rank.get(topic_id, len(rank)), first_seen_topic[topic_id])

    clusters: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for key in groups:
        clusters.setdefault(root(key), []).append(key)
    by_topic: dict[str, list[DigestStory]] = {}
    for keys in clusters.values():
        keys.sort(key=lambda k: (topic_rank(k[0]), groups[k][0].alert_id))
        primary = groups[keys[0]]
        seen_items: set[int] = set()
        merged: list[AlertView] = []
        for k in keys:  # the primary topic's alert wins for an item that several topics alerted on
            for a in groups[k]:
                if a.item_id is not None and a.item_id in seen_items:
                    continue
                if a.item_id is not None:
                    seen_items.add(a.item_id)
                merged.append(a)
        merged.sort(key=lambda a: a.alert_id)
        first = primary[0]
        new = next((a for a in primary if a.decision == "new_story"), None)
        lead = new or first
        topic_ids = list(dict.fromkeys(k[0] for k in keys))
        story = DigestStory(
            story_id=first.story_id,
            title=first.story_title,
            # The title is the story's first headline: link to that article, not to whichever item came later.
            link=first.story_link or lead.link,
            first_seen=min(a.first_seen for a in merged),
            sources_count=max(a.sources_count for a in merged),
            is_new=new is not None,
            alerts=tuple(merged),
            topics=tuple(names[t] for t in topic_ids),
            reason=new.match_reason if new is not None else None,
        )
        by_topic.setdefault(keys[0][0], []).append(story)
    topics = []
    for topic_id in sorted(by_topic, key=topic_rank):
        stories = sorted(by_topic[topic_id], key=lambda st: st.alerts[0].alert_id)
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
        subscribed_topics=tuple(t.name for t in config.topics if t.id in spec.topics),
    )


def preview(session: Session, config: Config, spec: SubscriptionSpec, now: datetime) -> DigestContent | None:
    """What the subscription's next digest would hold now (None when there is nothing); writes nothing. The
    subscriber's own preferences (topics...) apply, as they will for the real digest."""
    spec = next((e for e in effective_specs(session, config) if (e.kind, e.target) == (spec.kind, spec.target)), spec)
    row = session.scalar(select(Subscription).where(Subscription.kind == spec.kind, Subscription.target == spec.target))
    cursor = row.cursor_alert_id if row is not None else 0
    alerts = pending_alerts(session, config, spec, cursor)
    return digest_content(spec, alerts, config, now) if alerts else None


# --- building digests into the outbox --------------------------------------------------------------------


def build_due_digests(engine: Engine, config: Config, now: datetime, *, secret_key: str | None = None,
                      renderer: render.Renderer | None = None, links_signed_at: datetime | None = None) -> list[int]:
    """Build every due, non-empty digest. Per subscription, one transaction writes the digest, its delivery
    rows and the advanced cursor (a crash leaves either all of it or none). Returns the new digest ids.
    One subscription's failure is logged and does not stop the others. The digests' signed links carry
    `links_signed_at` (default `now`): a replay on a simulated clock signs them at the real time, so they
    do not read as expired when someone opens them."""
    due = _due_specs(engine, config, now)
    if not due:
        return []
    renderer = renderer or render.Renderer()
    key = secret_key or unsubscribe.signing_key(config.settings)
    built: list[int] = []
    for spec in due:
        try:
            digest_id = _build_one(engine, config, spec, now, key, renderer, links_signed_at or now)
        except Exception:
            log.exception("building a digest failed; it will be retried on the next tick",
                          extra={"channel": spec.kind, "target": spec.target})
            continue
        if digest_id is not None:
            built.append(digest_id)
    return built


def suppress_refused_recipients(engine: Engine, now: datetime) -> list[str]:
    """A sweep of the outbox for addresses whose mail server refused them permanently at send (an SMTP 5xx to
    RCPT TO recorded as a failed attempt) that are not suppressed yet. The outbox suppresses such an address
    when it records the refusal (outbox.suppress_address), so digest ticks do not run this; it is for rows
    recorded otherwise (an older version). Returns the addresses suppressed now."""
    query = (select(Delivery.target, DeliveryAttempt.code, DeliveryAttempt.error)
             .join(DeliveryAttempt, DeliveryAttempt.delivery_id == Delivery.id)
             .where(Delivery.channel == "email", Delivery.status == "failed", DeliveryAttempt.outcome == "failed",
                    DeliveryAttempt.code.like("5%"), DeliveryAttempt.error.like("%recipient refused%"),
                    Delivery.target.not_in(select(Suppression.address))))
    with Session(engine) as s:
        found = {target: f"{code} {error}" for target, code, error in s.execute(query)}
    if not found:
        return []
    with write_transaction(engine) as s:
        done = set(s.scalars(select(Suppression.address).where(Suppression.address.in_(found))))
        for address, why in found.items():
            if address in done or not outbox.suppress_address(s, address, why, now):
                continue
            log.warning("address suppressed: the mail server refused it permanently",
                        extra={"channel": "email", "target": address})
    return sorted(set(found) - done)


def _due_specs(engine: Engine, config: Config, now: datetime) -> list[SubscriptionSpec]:
    """A read-only pass (no write lock on every tick): the subscriptions that are due and, for `immediate`,
    have something new. Syncs the subscriptions table first when feeds.toml (or a subscriber's preferences)
    changed."""
    with Session(engine) as s:
        rows = {(r.kind, r.target): r for r in s.scalars(select(Subscription))}
        specs = effective_specs(s, config)
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
               renderer: render.Renderer, signed_at: datetime) -> int | None:
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
        pause = (spec.paused_from, spec.paused_until) if spec.paused_until is not None else None
        alerts = pending_alerts(s, config, spec, row.cursor_alert_id, skip=pause)
        skip_to = row.cursor_alert_id
        if pause is not None and len(alerts) < MAX_ALERTS_PER_DIGEST:
            skip_to = _end_pause(s, row, pause[1])  # all that waited before the pause goes out in this digest
        if spec.cadence != "immediate" and len(alerts) < MAX_ALERTS_PER_DIGEST:
            # A full digest leaves the schedule where it is: the overflow goes out on the next tick,
            # not a whole hour or day later.
            due = next_due(spec, now)
            row.next_digest_at = naive_utc(due) if due else None
        if not alerts:
            row.cursor_alert_id = max(row.cursor_alert_id, skip_to)
            return None
        content = digest_content(spec, alerts, config, now)
        digest = Digest(subscription_id=row.id, from_alert_id=row.cursor_alert_id, to_alert_id=content.last_alert_id,
                        alert_count=len(alerts), created_at=naive_utc(now))
        s.add(digest)
        s.flush()
        payloads = _payloads(renderer, config, spec, row, content, digest.id, now, key, signed_at)
        for part, (key_, payload) in enumerate(payloads, 1):
            s.add(Delivery(digest_id=digest.id, subscription_id=row.id, channel=spec.kind, target=spec.target,
                           part=part, idempotency_key=key_, payload=payload, status="pending", attempts=0,
                           next_attempt_at=naive_utc(now), created_at=naive_utc(now)))
        row.cursor_alert_id = max(content.last_alert_id, skip_to)
        row.last_digest_at = naive_utc(now)
        log.info("digest built", extra={"channel": spec.kind, "target": spec.target, "digest_id": digest.id,
                                        "alerts": len(alerts), "stories": content.story_count})
        return digest.id


def _end_pause(s: Session, row: Subscription, paused_until: datetime) -> int:
    """A pause is over: what was alerted during it is skipped (the subscriber asked not to get it; what was
    waiting before it began is in the digest being built), and the pause is cleared so this happens once.
    Returns the alert id the cursor may skip to."""
    during = s.scalar(select(func.max(Alert.id)).where(Alert.created_at < naive_utc(paused_until))) or 0
    prefs = s.get(SubscriberPrefs, row.id)
    if prefs is not None:
        prefs.paused_until = prefs.paused_from = None
    return max(row.cursor_alert_id, during)


def digest_links(settings_base_url: str, key: str, subscription_id: int, content: DigestContent,
                 now: datetime) -> render.DigestLinks:
    """The signed links one digest carries: preferences, a story page per story, feedback per alert."""
    base = settings_base_url.rstrip("/")
    stories = {s.story_id: f"{base}/story/{links.story_token(key, s.story_id, now)}"
               for t in content.topics for s in t.stories}
    feedback = {a.alert_id: {kind: f"{base}/feedback/{links.feedback_token(key, subscription_id, a.alert_id, kind, now)}"
                             for kind in links.FEEDBACK_KINDS}
                for t in content.topics for s in t.stories for a in s.alerts}
    return render.DigestLinks(prefs_url=f"{base}/preferences/{links.prefs_token(key, subscription_id, now)}",
                              story_urls=stories, feedback_urls=feedback)


def _payloads(renderer: render.Renderer, config: Config, spec: SubscriptionSpec, row: Subscription,
              content: DigestContent, digest_id: int, now: datetime, key: str,
              signed_at: datetime) -> list[tuple[str, bytes]]:
    settings = config.settings
    if spec.kind == "email":
        message_id = f"<{uuid.uuid4().hex}.{digest_id}@{render.message_id_domain(settings.mail_from)}>"
        url = unsubscribe.unsubscribe_url(settings.base_url, key, row.id, signed_at)
        mail = renderer.email(content, mail_from=settings.mail_from, message_id=message_id, now=now,
                              cadence=spec.cadence, unsubscribe_url=url,
                              links=digest_links(settings.base_url, key, row.id, content, signed_at))
        return [(message_id, mail.message)]
    if spec.kind == "slack":
        return [(f"slack_{uuid.uuid4().hex}", render.json_bytes(m))
                for m in renderer.slack_messages(content, digest_id=digest_id,
                                                 links=digest_links(settings.base_url, key, row.id, content, signed_at))]
    if spec.kind == "webhook":
        body = renderer.webhook_payload(content, digest_id=digest_id, now=now, cadence=spec.cadence,
                                        links=digest_links(settings.base_url, key, row.id, content, signed_at))
        return [(f"msg_{uuid.uuid4().hex}", render.json_bytes(body))]
    raise MonitorError(f"unknown subscription kind {spec.kind!r}")
