"""Readers' feedback on an alert: *not relevant*, *already knew this*, *more like this*.

Recorded once per (who, item, kind) with the item, the topic, the story and the alert it came from; a second
click of the same link changes nothing. *Already knew this* also counts against the story
(`stories.known_marks`), which raises its bar for updates (monitor.signal.stories). *Not relevant* and *more
like this* become suggestions for the topic (monitor.app.subscriber.suggest)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.delivery.links import FEEDBACK_KINDS
from monitor.errors import MonitorError
from monitor.storage.db import naive_utc
from monitor.storage.tables import Alert, Feedback, Item, Story, Subscription

log = logging.getLogger(__name__)


class FeedbackError(MonitorError):
    pass


@dataclass(frozen=True, slots=True)
class FeedbackTarget:
    """What a feedback link is about, as the confirmation page shows it."""

    alert_id: int
    title: str
    outlet: str
    topic_id: str
    kind: str
    already: bool  # this person already said this about this item


def _item_key(alert: Alert) -> str:
    return str(alert.item_id) if alert.item_id is not None else f"a{alert.id}"


def target(session: Session, subscription_id: int, alert_id: int, kind: str) -> FeedbackTarget:
    if kind not in FEEDBACK_KINDS:
        raise FeedbackError("Unknown kind of feedback.")
    alert = session.get(Alert, alert_id)
    if alert is None or session.get(Subscription, subscription_id) is None:
        raise FeedbackError("This alert or subscription no longer exists.")
    already = session.scalar(select(Feedback.id).where(
        Feedback.subscription_id == subscription_id, Feedback.item_key == _item_key(alert), Feedback.kind == kind))
    return FeedbackTarget(alert.id, alert.title, alert.outlet, alert.topic_id, kind, already is not None)


def record(session: Session, subscription_id: int, alert_id: int, kind: str, now: datetime) -> bool:
    """Record the feedback; True if new, False if this person had already said so about this item."""
    t = target(session, subscription_id, alert_id, kind)
    if t.already:
        return False
    alert = session.get_one(Alert, alert_id)
    summary = ""
    if alert.item_id is not None:
        item = session.get(Item, alert.item_id)
        summary = item.summary if item is not None else ""
    try:
        with session.begin_nested():
            session.add(Feedback(subscription_id=subscription_id, alert_id=alert.id, item_key=_item_key(alert),
                                 item_id=alert.item_id, topic_id=alert.topic_id, story_id=alert.story_id, kind=kind,
                                 title=alert.title, summary=summary or "", created_at=naive_utc(now)))
    except IntegrityError:  # the same click arrived twice at once: the other one recorded it
        return False
    if kind == "known" and alert.story_id is not None:
        # One mark per person and story: the same reader clicking on two alerts of a story (or a forwarded
        # digest clicked twice) must not raise the story's bar for every subscriber.
        marks_by_this_reader = session.scalar(select(func.count()).select_from(Feedback).where(
            Feedback.subscription_id == subscription_id, Feedback.story_id == alert.story_id,
            Feedback.kind == "known"))
        if marks_by_this_reader == 1:
            session.execute(update(Story).where(Story.id == alert.story_id)
                            .values(known_marks=Story.known_marks + 1))
    log.info("feedback recorded", extra={"subscription_id": subscription_id, "topic": alert.topic_id,
                                         "alert_id": alert.id, "kind": kind})
    return True
