"""Stories at the database edge: load the open stories of a topic, run novelty (monitor.signal.novelty, pure) on
each matched item in published order, write Story and Alert rows, close stories the window has passed.

Every matched item gets one Alert row (decision new_story / update / repeat / held) so `monitor stories list` can
explain each decision; digests read only new_story and update. The alert copies the item's title, link,
outlet and date so digests survive item retention."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from monitor.config import Settings
from monitor.records import MatchedItem, NoveltyDecision
from monitor.signal.novelty import (
    Assignment,
    OpenStory,
    StoryParams,
    apply,
    decide,
    headline_parser,
    is_open,
    novelty_item,
)
from monitor.storage.db import aware_utc, naive_utc, serialize
from monitor.storage.tables import Alert, Story

log = logging.getLogger(__name__)

_MAX_REMEMBERED = 20000  # words / hashes kept per story: a bound on the row size, never reached in replays


def params_for(settings: Settings) -> StoryParams:
    return StoryParams(window_h=settings.story_window_h)


# --- Story row <-> OpenStory --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoryState:
    """What novelty remembers about a story besides its vectors, as stored in `stories.state` (JSON). A typed
    record: `from_json` accepts rows written before a field existed (it takes the field's default) and ignores
    keys no longer kept (older rows hold "developments", the developments each headline reported, which no
    decision or page read: ignored, and gone from the row at the story's next write)."""

    dim: int = 384
    times: tuple[float, ...] = ()
    hashes: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    quotes: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    alerted: bool = True
    waiting: bool = False
    alerted_times: tuple[float, ...] = ()  # POSIX seconds of the items in `Story.alerted_vectors`
    alerted_titles: tuple[str, ...] = ()  # and their headlines

    @classmethod
    def of(cls, story: OpenStory) -> StoryState:
        return cls(
            dim=int(story.vectors.shape[1]), times=tuple(story.times),
            hashes=tuple(sorted(story.hashes)[:_MAX_REMEMBERED]), words=tuple(sorted(story.words)[:_MAX_REMEMBERED]),
            names=tuple(sorted(story.names)), numbers=tuple(sorted(story.numbers)), quotes=tuple(sorted(story.quotes)),
            args=tuple(sorted(story.args)), alerted=story.alerted, waiting=story.waiting,
            alerted_times=tuple(story.alerted_times), alerted_titles=tuple(story.alerted_titles),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "dim": self.dim, "times": list(self.times), "hashes": list(self.hashes), "words": list(self.words),
            "names": list(self.names), "numbers": list(self.numbers), "quotes": list(self.quotes),
            "args": list(self.args), "alerted": self.alerted, "waiting": self.waiting,
            "alerted_times": list(self.alerted_times),
            "alerted_titles": list(self.alerted_titles),
        }

    @classmethod
    def from_json(cls, raw: object) -> StoryState:
        st = raw if isinstance(raw, dict) else {}

        def strs(key: str) -> tuple[str, ...]:
            return tuple(str(v) for v in st.get(key) or ())

        return cls(
            dim=int(st.get("dim", 0) or 384), times=tuple(float(t) for t in st.get("times") or ()),
            hashes=strs("hashes"), words=strs("words"), names=strs("names"), numbers=strs("numbers"),
            quotes=strs("quotes"), args=strs("args"), alerted=bool(st.get("alerted", True)),
            waiting=bool(st.get("waiting", False)),
            alerted_times=tuple(float(t) for t in st.get("alerted_times") or ()),
            alerted_titles=strs("alerted_titles"),
        )


def _to_open(row: Story) -> OpenStory:
    st = StoryState.from_json(row.state)
    vecs = np.frombuffer(row.member_vectors or row.centroid or b"", dtype=np.float32)
    vecs = vecs.reshape(-1, st.dim) if vecs.size else np.zeros((0, st.dim), dtype=np.float32)
    times = st.times or (aware_utc(row.last_seen).timestamp(),)  # type: ignore[union-attr]
    told = np.frombuffer(row.alerted_vectors or b"", dtype=np.float32)
    told_times, told_titles = st.alerted_times, st.alerted_titles
    n = min(len(told_times), len(told_titles), told.size // st.dim if st.dim else 0)
    if n != len(told_times) or told.size != n * st.dim or len(told_titles) != n:
        if told.size or told_times:  # rows written before the column existed have neither: nothing to say
            log.warning("story memory truncated: told vectors, times and headlines differ in length",
                        extra={"story_id": row.id, "topic": row.topic_id})
        told, told_times, told_titles = told[:n * st.dim], told_times[:n], told_titles[:n]
    return OpenStory(
        key=row.id, topic_id=row.topic_id, first_seen=aware_utc(row.first_seen),  # type: ignore[arg-type]
        last_seen=aware_utc(row.last_seen), vectors=vecs.copy(), times=times,  # type: ignore[arg-type]
        item_count=row.item_count, sources=tuple(row.sources or ()),
        hashes=frozenset(st.hashes), words=frozenset(st.words), names=frozenset(st.names),
        numbers=frozenset(st.numbers), quotes=frozenset(st.quotes), title=row.title, args=frozenset(st.args),
        alerted=st.alerted, waiting=st.waiting,
        alerted_vectors=told.reshape(-1, st.dim).copy() if len(told_times) else None, alerted_times=told_times,
        alerted_titles=told_titles,
    )


def _write(row: Story, story: OpenStory) -> None:
    row.first_seen = naive_utc(story.first_seen)
    row.last_seen = naive_utc(story.last_seen)
    row.item_count = story.item_count
    row.sources = list(story.sources)
    row.centroid = story.centroid.tobytes()
    row.member_vectors = np.ascontiguousarray(story.vectors, dtype=np.float32).tobytes()
    told = story.alerted_vectors
    row.alerted_vectors = np.ascontiguousarray(told, dtype=np.float32).tobytes() if told is not None and len(told) else None
    row.state = StoryState.of(story).to_json()


# --- the stage entry points -----------------------------------------------------------------------------


def assign(session: Session, matched: Sequence[MatchedItem], now: datetime, settings: Settings,
           params: StoryParams | None = None) -> list[NoveltyDecision]:
    """Decide new_story / update / repeat for each matched item (processed in published order), persist
    stories and one Alert row per decision, and return the decisions. An (item, topic) already decided
    is skipped, so re-running a batch is harmless."""
    p = params or params_for(settings)
    parse = headline_parser(4096)  # the batch's decisions read the same told headlines
    todo = sorted(matched, key=lambda m: (m.item.published_at, m.item.id))
    if not todo:
        return []
    # One novelty decision per topic at a time across processes (PostgreSQL; SQLite's BEGIN IMMEDIATE already
    # admits one writer): otherwise two batches holding the same event each open a new story for it. Taken
    # in sorted order, so two processes never wait on each other's second topic.
    for topic_id in sorted({m.topic_id for m in todo}):
        serialize(session, f"stories:{topic_id}")
    done = {(r[0], r[1]) for r in session.execute(
        select(Alert.item_id, Alert.topic_id).where(Alert.item_id.in_({m.item.id for m in todo})))}
    earliest = todo[0].item.published_at  # memory is measured from each item's time: load from the earliest
    rows: dict[str, dict[int, Story]] = {}
    opened: dict[str, list[OpenStory]] = {}
    out: list[NoveltyDecision] = []
    for m in todo:
        if (m.item.id, m.topic_id) in done:
            continue
        done.add((m.item.id, m.topic_id))
        if m.topic_id not in rows:
            # In id order, as SQLite happens to return them and as evaluation (novelty.cluster) holds them;
            # PostgreSQL returns rows in storage order, which changes as stories are updated.
            # the open stories, and the closed ones still in the topic's memory (what it alerted recently)
            since = naive_utc(earliest - timedelta(hours=p.memory_h))
            found = session.scalars(select(Story).where(
                Story.topic_id == m.topic_id,
                or_(Story.closed.is_(False), and_(Story.last_seen >= since, Story.alerted_vectors.is_not(None))))
                .order_by(Story.id)).all()
            rows[m.topic_id] = {r.id: r for r in found}
            opened[m.topic_id] = [_to_open(r) for r in found]
        at = m.item.published_at
        stories = opened[m.topic_id]
        live_idx = [i for i, s in enumerate(stories)
                    if not rows[m.topic_id][s.key].closed and is_open(s, at, p.window_h)]
        live = [stories[i] for i in live_idx]
        memory = [s for s in stories if is_open(s, at, p.memory_h)]
        margin = None if m.threshold is None else m.score - m.threshold
        x = novelty_item(m.item, m.topic_id, m.vector, margin)
        row: Story
        a = decide(live, x, p, memory, parse)
        if a.story_index is not None:
            a = raise_bar_if_known(a, rows[m.topic_id][live[a.story_index].key].known_marks or 0)
        step = apply(live, x, a, 0, p)
        if step.created:
            row = Story(topic_id=m.topic_id, title=m.item.title, link=m.item.link, first_item_id=m.item.id,
                        first_seen=naive_utc(at), last_seen=naive_utc(at), item_count=1, sources=[],
                        state={}, closed=False)
            session.add(row)
            session.flush()
            story = replace(step.story, key=row.id)
            rows[m.topic_id][row.id] = row
            stories.append(story)
        else:
            idx = live_idx[step.assignment.story_index]  # type: ignore[index]
            story = step.story
            stories[idx] = story
            row = rows[m.topic_id][story.key]
        _write(row, story)
        session.add(Alert(
            item_id=m.item.id, topic_id=m.topic_id, story_id=row.id, decision=a.decision, reason=a.reason,
            what_is_new=a.what_is_new, similarity=a.similarity, title=m.item.title, link=m.item.link,
            outlet=m.item.outlet, published_at=naive_utc(at), created_at=naive_utc(now),
        ))
        out.append(NoveltyDecision(item_id=m.item.id, topic_id=m.topic_id, story_id=row.id, decision=a.decision,
                                   reason=a.reason, what_is_new=a.what_is_new, similarity=a.similarity))
        log.debug("novelty decision", extra={"topic": m.topic_id, "item_id": m.item.id, "story_id": row.id,
                                             "decision": a.decision})
    session.flush()
    return out


def raise_bar_if_known(a: Assignment, known_marks: int) -> Assignment:
    """Readers said "already knew this" about this story's alerts `known_marks` times: from two marks on, an
    update needs two developments (novelty names at most two in `what_is_new`, "; "-separated), so a known
    story still alerts on a big turn; an update below the bar becomes a repeat."""
    need = 2 if known_marks >= 2 else 1
    facts = len(a.what_is_new.split("; ")) if a.what_is_new else 0
    if a.decision != "update" or facts >= need:
        return a
    return replace(a, decision="repeat", what_is_new=None,
                   reason=f"{a.reason}; not enough for this story: readers already knew it ({known_marks} marks), "
                          f"so an update needs {need} new facts")


def close_expired(session: Session, now: datetime, window_h: float) -> int:
    """Close every story whose last item is `window_h` hours or more before `now`; returns how many."""
    cutoff = naive_utc(now - timedelta(hours=window_h))
    res = session.execute(
        update(Story).where(Story.closed.is_(False), Story.last_seen <= cutoff).values(closed=True)
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


# --- reading back (the CLI's `stories list`) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoryItemView:
    alert_id: int
    item_id: int | None
    decision: str
    reason: str
    what_is_new: str | None
    title: str
    link: str | None
    outlet: str
    published_at: datetime


@dataclass(frozen=True, slots=True)
class StoryView:
    story_id: int
    topic_id: str
    title: str
    first_seen: datetime
    last_seen: datetime
    sources: tuple[str, ...]
    closed: bool
    items: tuple[StoryItemView, ...]


def list_stories(session: Session, topic_id: str, since: datetime | None = None) -> list[StoryView]:
    """Stories of a topic seen since `since` (by last item), newest first, each with every decision."""
    q = select(Story).where(Story.topic_id == topic_id)
    if since is not None:
        q = q.where(Story.last_seen >= naive_utc(since))
    stories = session.scalars(q.order_by(Story.last_seen.desc(), Story.id.desc())).all()
    if not stories:
        return []
    alerts = session.scalars(
        select(Alert).where(Alert.story_id.in_([s.id for s in stories]))
        .order_by(Alert.published_at, Alert.id)
    ).all()
    by_story: dict[int, list[StoryItemView]] = {}
    for a in alerts:
        by_story.setdefault(a.story_id, []).append(StoryItemView(
            alert_id=a.id, item_id=a.item_id, decision=a.decision, reason=a.reason, what_is_new=a.what_is_new,
            title=a.title, link=a.link, outlet=a.outlet, published_at=aware_utc(a.published_at),  # type: ignore[arg-type]
        ))
    return [StoryView(
        story_id=s.id, topic_id=s.topic_id, title=s.title, first_seen=aware_utc(s.first_seen),  # type: ignore[arg-type]
        last_seen=aware_utc(s.last_seen), sources=tuple(s.sources or ()), closed=s.closed,  # type: ignore[arg-type]
        items=tuple(by_story.get(s.id, ())),
    ) for s in stories]
