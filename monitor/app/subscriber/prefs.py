"""A subscriber's preferences (the page behind the signed link at the foot of every digest): topics, cadence,
daily time, timezone, a pause of N days, unsubscribe and resubscribe. E-mail subscribers only: Slack and
webhook channels stay admin-managed.

State lives in `subscriber_prefs` (overriding feeds.toml for that address; monitor.delivery.digest reads it
through `effective_specs`, so a change applies to the next digest) and every change is recorded in
`subscriber_events` with the values before and after."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.config import Config
from monitor.delivery import digest
from monitor.errors import MonitorError
from monitor.storage.db import aware_utc, naive_utc
from monitor.storage.tables import Alert, SubscriberEvent, SubscriberPrefs, Subscription, Suppression

log = logging.getLogger(__name__)

CADENCES = ("immediate", "hourly", "daily")
MAX_PAUSE_DAYS = 90


class PrefsError(MonitorError):
    """A preference that cannot be applied; the message is shown beside the form."""


@dataclass(frozen=True, slots=True)
class PrefsView:
    """What the preferences page shows."""

    subscription_id: int
    address: str
    topics: tuple[str, ...]  # chosen topic ids
    all_topics: tuple[tuple[str, str], ...]  # (id, name) of every topic
    cadence: str
    daily_at: str  # HH:MM
    timezone: str
    paused_until: datetime | None
    unsubscribed: bool
    suppressed: bool
    managed: bool  # False: a channel (admin-managed), not editable here


def _row(session: Session, subscription_id: int) -> Subscription:
    row = session.get(Subscription, subscription_id)
    if row is None:
        raise PrefsError("This subscription no longer exists.")
    return row


def _spec(session: Session, config: Config, row: Subscription) -> digest.SubscriptionSpec | None:
    for spec in digest.effective_specs(session, config):
        if spec.kind == row.kind and spec.target == row.target:
            return spec
    return None


def view(session: Session, config: Config, subscription_id: int, now: datetime) -> PrefsView:
    row = _row(session, subscription_id)
    spec = _spec(session, config, row)
    prefs = session.get(SubscriberPrefs, row.id)
    all_topics = tuple((t.id, t.name) for t in config.enabled_topics)  # a disabled topic is not offered
    if spec is None:  # removed from feeds.toml, unconfirmed sign-up, or suppressed: show what is stored
        topics = tuple(prefs.topics or ()) if prefs else ()
        cadence = (prefs.cadence if prefs else None) or "daily"
        daily_at = (prefs.daily_at if prefs else None) or "08:00"
        tz = (prefs.timezone if prefs else None) or config.settings.timezone
        paused = aware_utc(prefs.paused_until) if prefs else None
    else:
        topics, cadence, daily_at, tz = spec.topics, spec.cadence, spec.daily_at.strftime("%H:%M"), spec.timezone
        paused = spec.paused_until
    suppressed = session.get(Suppression, row.target) is not None
    return PrefsView(subscription_id=row.id, address=row.target, topics=tuple(topics), all_topics=all_topics,
                     cadence=cadence, daily_at=daily_at, timezone=tz,
                     paused_until=paused if paused and paused > now else None,
                     unsubscribed=row.unsubscribed_at is not None, suppressed=suppressed,
                     managed=row.kind == "email")


def _prefs_row(session: Session, row: Subscription, now: datetime) -> SubscriberPrefs:
    prefs = session.get(SubscriberPrefs, row.id)
    if prefs is None:
        prefs = SubscriberPrefs(subscription_id=row.id, source="config", updated_at=naive_utc(now))
        session.add(prefs)
    return prefs


def _record(session: Session, row: Subscription, action: str, detail: dict[str, object], now: datetime) -> None:
    session.add(SubscriberEvent(subscription_id=row.id, at=naive_utc(now), action=action, detail=detail))
    log.info("subscriber preferences changed", extra={"subscription_id": row.id, "channel": "email",
                                                      "action": action})


def validate(config: Config, topics: list[str], cadence: str, daily_at: str, timezone: str) -> tuple[list[str], time]:
    known = {t.id for t in config.enabled_topics}
    unknown = [t for t in topics if t not in known]
    if unknown:
        raise PrefsError(f"Unknown topic(s): {', '.join(unknown)}.")
    if not topics:
        raise PrefsError("Choose at least one topic (or unsubscribe below).")
    if cadence not in CADENCES:
        raise PrefsError("Choose how often: as news breaks, hourly or daily.")
    try:
        hh, mm = daily_at.split(":")[:2]
        at = time(int(hh), int(mm))
    except ValueError:
        raise PrefsError("The daily time must look like 08:00.") from None
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise PrefsError(f"Unknown timezone {timezone!r}; choose one from the list.") from None
    return topics, at


def save(session: Session, config: Config, subscription_id: int, now: datetime, *, topics: list[str],
         cadence: str, daily_at: str, timezone: str) -> bool:
    """Store topics, cadence, time and timezone. Returns False when nothing changed."""
    row = _row(session, subscription_id)
    if row.kind != "email":
        raise PrefsError("Channels are managed by the administrators.")
    topics, at = validate(config, topics, cadence, daily_at, timezone)
    before = view(session, config, subscription_id, now)
    # A disabled topic chosen before is not shown, and kept: it comes back if the admin enables it again.
    kept = {t.id for t in config.topics if not t.enabled and t.id in before.topics}
    after = {"topics": [t.id for t in config.topics if t.id in topics or t.id in kept], "cadence": cadence,
             "daily_at": at.strftime("%H:%M"), "timezone": timezone}
    old = {"topics": list(before.topics), "cadence": before.cadence, "daily_at": before.daily_at,
           "timezone": before.timezone}
    if old == after:
        return False
    prefs = _prefs_row(session, row, now)
    prefs.topics, prefs.cadence, prefs.daily_at, prefs.timezone = (after["topics"], cadence, after["daily_at"],
                                                                   timezone)
    prefs.updated_at = naive_utc(now)
    _record(session, row, "prefs", {"before": old, "after": after}, now)
    return True


def pause(session: Session, subscription_id: int, days: int, now: datetime) -> datetime | None:
    """Pause for `days` days (0 resumes now). Nothing is sent while paused; what is alerted during the pause is
    skipped, and what was already waiting when it began comes in the first digest after it."""
    row = _row(session, subscription_id)
    if not 0 <= days <= MAX_PAUSE_DAYS:
        raise PrefsError(f"Pause for 1 to {MAX_PAUSE_DAYS} days (0 resumes now).")
    prefs = _prefs_row(session, row, now)
    until = now + timedelta(days=days) if days else None
    before = aware_utc(prefs.paused_until)
    if until and not (before and before > now and prefs.paused_from):
        prefs.paused_from = naive_utc(now)  # a new pause (extending a running one keeps its start)
    prefs.paused_until = naive_utc(until) if until else (naive_utc(now) if before and before > now else None)
    prefs.updated_at = naive_utc(now)
    _record(session, row, "pause" if days else "resume",
            {"until": until.isoformat() if until else None, "before": before.isoformat() if before else None}, now)
    return until


def unsubscribe(session: Session, subscription_id: int, now: datetime) -> bool:
    row = _row(session, subscription_id)
    if row.unsubscribed_at is not None:
        return False
    row.unsubscribed_at = naive_utc(now)
    _record(session, row, "unsubscribe", {}, now)
    return True


def resubscribe(session: Session, subscription_id: int, now: datetime) -> bool:
    """Subscribe again from now on: what was alerted while unsubscribed is not sent."""
    row = _row(session, subscription_id)
    if row.unsubscribed_at is None:
        return False
    row.unsubscribed_at = None
    row.cursor_alert_id = max(row.cursor_alert_id, session.scalar(select(func.coalesce(func.max(Alert.id), 0))) or 0)
    _record(session, row, "resubscribe", {}, now)
    return True


def events(session: Session, subscription_id: int) -> list[SubscriberEvent]:
    return list(session.scalars(select(SubscriberEvent).where(SubscriberEvent.subscription_id == subscription_id)
                                .order_by(SubscriberEvent.id)))
