"""Readers' feedback turned into topic changes an admin approves.

Per topic, every *not relevant* item is a proposed counterexample and every *more like this* item a proposed
example (one proposal per item, however many readers said it). `with_effects` gives each proposal its
backtest effect over the last 7 days (items and alerts gained / lost), computed by the admin editor's
backtest (monitor.app.admin.backtest: the pipeline's own matcher and novelty over stored vectors), and
`apply` edits the topic the way the admin editor saves one (monitor.app.admin.configfile: feeds.toml
rewritten with its comments kept, a config revision and an audit entry), so the running service picks the
change up like any other edit."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from monitor.config import Config, TopicConfig
from monitor.errors import MonitorError
from monitor.storage.db import naive_utc
from monitor.storage.tables import Feedback

FIELD_FOR = {"not_relevant": "counterexamples", "more_like_this": "examples"}
DAYS = 7
ALERTS_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class Effect:
    """What adding the proposal would have changed over the last `days` days of stored items."""

    days: int
    items_gained: int
    items_lost: int
    alerts_gained: int
    alerts_lost: int
    lost_titles: tuple[str, ...]  # a few of the items that would no longer match
    gained_titles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Suggestion:
    id: int  # the first feedback row's id: what `apply` takes
    topic_id: str
    field: str  # counterexamples | examples
    text: str  # the headline to add
    votes: int  # readers who said so
    first_at: datetime
    effect: Effect | None = None

    @property
    def action(self) -> str:
        return "add counterexample" if self.field == "counterexamples" else "add example"


def suggestions(session: Session, config: Config, topic_id: str) -> list[Suggestion]:
    """Open proposals for a topic, most votes first; a headline already in the topic is not proposed."""
    topic = config.topic(topic_id)
    present = {t.strip().lower() for t in (*topic.examples, *topic.counterexamples)}
    rows = session.scalars(select(Feedback).where(Feedback.topic_id == topic_id, Feedback.applied_at.is_(None),
                                                  Feedback.kind.in_(list(FIELD_FOR))).order_by(Feedback.id)).all()
    groups: dict[tuple[str, str], list[Feedback]] = {}
    for r in rows:
        groups.setdefault((FIELD_FOR[r.kind], r.item_key), []).append(r)
    out = []
    for (field, _key), fb in groups.items():
        text = fb[0].title.strip()
        if text.lower() in present:
            continue
        out.append(Suggestion(id=fb[0].id, topic_id=topic_id, field=field, text=text,
                              votes=len({f.subscription_id for f in fb}), first_at=fb[0].created_at))
    return sorted(out, key=lambda s: (-s.votes, s.id))


def edited_topic(topic: TopicConfig, s: Suggestion) -> TopicConfig:
    values = list(getattr(topic, s.field))
    return topic.model_copy(update={s.field: [*values, s.text]})


def with_effects(found: Sequence[Suggestion], topic: TopicConfig, backtester, now: datetime,  # type: ignore[no-untyped-def]
                 days: int = DAYS) -> list[Suggestion]:
    """Each proposal with its backtest effect (`backtester`: monitor.app.admin.backtest.Backtester)."""
    # The admin backtest answers matches at once and stories/alerts when ready: wait for them here.
    wait = {"wait_s": ALERTS_WAIT_S} if "wait_s" in inspect.signature(backtester.compare).parameters else {}
    out = []
    for s in found:
        _new, _old, diff = backtester.compare(edited_topic(topic, s), topic, days=days, now=now, **wait)
        out.append(Suggestion(s.id, s.topic_id, s.field, s.text, s.votes, s.first_at, Effect(
            days=days, items_gained=len(diff.gained), items_lost=len(diff.lost),
            alerts_gained=len(diff.alerts_gained), alerts_lost=len(diff.alerts_lost),
            lost_titles=tuple(h.item.title for h in diff.lost[:5]),
            gained_titles=tuple(h.item.title for h in diff.gained[:5]))))
    return out


def apply(engine: Engine, config_path: Path, config: Config, topic_id: str, suggestion_id: int, *, actor: str,
          now: datetime) -> str:
    """Add the proposal to the topic in feeds.toml (validated, comments kept, audited) and mark its feedback
    applied. Returns the change as the audit log shows it."""
    from monitor.app.admin import configfile

    with Session(engine) as s:
        found = {x.id: x for x in suggestions(s, config, topic_id)}
    sug = found.get(suggestion_id)
    if sug is None:
        raise MonitorError(f"no open suggestion #{suggestion_id} for topic {topic_id!r}; "
                           f"see `monitor topics suggest {topic_id}`")
    current, sha = configfile.current_config(config_path)
    topic = current.topic(topic_id)
    new_topic = edited_topic(topic, sug)
    text = configfile.read_text(config_path)
    new_text = configfile.set_entry_key(text, "topics", "id", topic_id, sug.field, getattr(new_topic, sug.field))
    diff = configfile.entry_diff(topic, new_topic)
    configfile.save_config_text(engine, config_path, new_text, actor=actor, action=f"topic.{sug.action.replace(' ', '_')}",
                                target=f"topic {topic_id}", diff=f"{diff}\n(from reader feedback #{sug.id}, "
                                f"{sug.votes} reader{'s' if sug.votes != 1 else ''})", expected_sha=sha, now=now)
    with Session(engine) as s, s.begin():
        keys = s.scalars(select(Feedback.item_key).where(Feedback.id == sug.id)).all()
        s.execute(update(Feedback).where(Feedback.topic_id == topic_id, Feedback.item_key.in_(keys),
                                         Feedback.kind.in_([k for k, f in FIELD_FOR.items() if f == sug.field]),
                                         Feedback.applied_at.is_(None))
                  .values(applied_at=naive_utc(now)))
    return diff
