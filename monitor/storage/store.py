"""store: feeds and items in the database. Inserting a batch answers with only the items that are new, and
only those flow on to embed/match/novelty.

Claims: `due_feeds` must run inside `monitor.storage.db.write_transaction(engine)`. On SQLite that transaction is
BEGIN IMMEDIATE (the write lock is taken before the SELECT, so two processes cannot pick the same feed) and
the UPDATE that sets the lease is guarded by the same "not leased" condition; on PostgreSQL the SELECT uses
FOR UPDATE SKIP LOCKED. A lease expires by itself (`lease_s`), so a worker that dies loses nothing.

Times go in as aware UTC and are stored naive UTC (see monitor.storage.db).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from monitor.config import FeedConfig
from monitor.records import FetchRequest, FetchResult, ItemRecord, ParsedFeed, ParsedItem
from monitor.storage import workers
from monitor.storage.db import aware_utc, naive_utc, serialize, storable_text
from monitor.storage.tables import Alert, Feed, Item, ItemVector, Match, Story

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 300
UNHEALTHY_ERRORS = 3  # consecutive failures after which a feed is shown as unhealthy
PUBLISH_SMOOTHING = 0.3  # weight of the newest observation in the smoothed publishing gap
_INSERT_CHUNK = 200  # rows per INSERT statement (SQLite's bound-parameter limit)


@dataclass(frozen=True, slots=True)
class SyncReport:
    added: int
    updated: int
    disabled: int


@dataclass(frozen=True, slots=True)
class FeedSchedule:
    """A feed's scheduling state after a fetch was recorded: what schedule.next_check needs."""

    interval_s: int | None
    publish_interval_s: float | None
    last_new_item_at: datetime | None
    error_count: int


@dataclass(frozen=True, slots=True)
class FeedHealth:
    feed_id: int
    url: str
    name: str | None
    title: str | None
    enabled: bool
    last_status: str | None
    last_error: str | None
    error_count: int
    last_checked_at: datetime | None
    last_success_at: datetime | None
    next_check_at: datetime | None
    publish_interval_s: float | None
    item_count: int

    @property
    def healthy(self) -> bool:
        return self.error_count < UNHEALTHY_ERRORS

    @property
    def state(self) -> str:
        """One word that never contradicts last_status: disabled | new (never fetched) | ok | deferred (the
        server asked to come back later) | failing (the last fetch failed) | UNHEALTHY (UNHEALTHY_ERRORS or
        more failures in a row)."""
        if not self.enabled:
            return "disabled"
        if self.last_status is None:
            return "new"
        if self.error_count >= UNHEALTHY_ERRORS:
            return "UNHEALTHY"
        if self.last_status == "deferred":
            return "deferred"
        if self.error_count > 0 or self.last_status.startswith("error"):
            return "failing"
        return "ok"

    @property
    def display_name(self) -> str:
        return self.name or self.title or self.url


# --- feeds from the configuration ------------------------------------------------------------------------


def sync_feeds(session: Session, feeds: Sequence[FeedConfig], now: datetime) -> SyncReport:
    """Make the feeds table follow feeds.toml: insert new feeds (due at once), update name/enabled/interval/aggregator,
    disable feeds no longer in the file (their items and history are kept; re-adding re-enables them)."""
    serialize(session, "sync_feeds")  # another process may be adding the same feeds right now
    existing = {f.config_url: f for f in session.scalars(select(Feed))}
    by_url = {f.url: f for f in existing.values()}
    added = updated = disabled = 0
    wanted = set()
    for fc in feeds:
        wanted.add(fc.url)
        feed = existing.get(fc.url) or by_url.get(fc.url)
        if feed is None:
            session.add(Feed(url=fc.url, config_url=fc.url, name=fc.name, enabled=fc.enabled, interval_s=fc.interval,
                             aggregator=fc.aggregator, next_check_at=naive_utc(now), error_count=0,
                             created_at=naive_utc(now)))
            added += 1
            continue
        changes = {"config_url": fc.url, "name": fc.name, "enabled": fc.enabled, "interval_s": fc.interval,
                   "aggregator": fc.aggregator}
        if any(getattr(feed, k) != v for k, v in changes.items()):
            if fc.enabled and not feed.enabled:
                feed.next_check_at = naive_utc(now)
            for k, v in changes.items():
                setattr(feed, k, v)
            updated += 1
    for url, feed in existing.items():
        if url not in wanted and feed.enabled and feed.url not in wanted:
            feed.enabled = False
            disabled += 1
    session.flush()
    return SyncReport(added=added, updated=updated, disabled=disabled)


# --- claiming due feeds ----------------------------------------------------------------------------------


def due_feeds(
    session: Session,
    now: datetime,
    limit: int,
    *,
    urls: Sequence[str] | None = None,
    ignore_schedule: bool = False,
    lease_s: float = DEFAULT_LEASE_S,
    lease_owner: str | None = None,
    after_id: int | None = None,
) -> list[FetchRequest]:
    """Claim up to `limit` enabled feeds whose next check is due (or, with `ignore_schedule`, any enabled
    feed; with `urls`, only those feeds, matched on the current or the configured URL, enabled or not) and
    lease them for `lease_s`. With `after_id`, only feeds with a larger id, in id order (a pass that claims
    in rounds and has no schedule to tell it what it already polled). Call inside
    `db.write_transaction(engine)`."""
    n_now = naive_utc(now)
    free = or_(Feed.lease_until.is_(None), Feed.lease_until < n_now)
    q: Select[tuple[Feed]] = select(Feed).where(free)
    if urls:
        q = q.where(or_(Feed.url.in_(list(urls)), Feed.config_url.in_(list(urls))))
    else:
        q = q.where(Feed.enabled.is_(True))
        if not ignore_schedule:
            q = q.where(or_(Feed.next_check_at.is_(None), Feed.next_check_at <= n_now))
    if after_id is not None:
        q = q.where(Feed.id > after_id).order_by(Feed.id).limit(limit)
    else:
        q = q.order_by(Feed.next_check_at.is_not(None), Feed.next_check_at, Feed.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = session.execute(q.with_only_columns(
        Feed.id, Feed.url, Feed.etag, Feed.last_modified, Feed.body_hash, Feed.name, Feed.title, Feed.interval_s,
        Feed.publish_interval_s, Feed.last_new_item_at, Feed.error_count, Feed.aggregator,
    )).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    claimed: set[int] = set()
    for chunk in _chunks(ids, 500):
        res = session.execute(
            # `lease_owner` (a worker id) is what record_fetches checks before writing (fencing).
            update(Feed).where(Feed.id.in_(chunk), free)
            .values(lease_until=naive_utc(now + timedelta(seconds=lease_s)), lease_owner=lease_owner)
            .returning(Feed.id)
        )
        claimed.update(res.scalars())
    return [
        FetchRequest(
            feed_id=r.id, url=r.url, etag=r.etag, last_modified=r.last_modified, body_hash=r.body_hash,
            name=r.name or r.title,  # for display: the configured name, else the feed's own title
            interval_s=r.interval_s, publish_interval_s=r.publish_interval_s,
            last_new_item_at=aware_utc(r.last_new_item_at), error_count=r.error_count or 0,
            aggregator=bool(r.aggregator),
        )
        for r in rows
        if r.id in claimed
    ]


def release_feeds(session: Session, feed_ids: Iterable[int]) -> None:
    """Give claimed feeds back without recording a fetch (shutdown)."""
    ids = list(feed_ids)
    for chunk in _chunks(ids, 500):
        session.execute(update(Feed).where(Feed.id.in_(chunk)).values(lease_until=None))


# --- recording a fetch -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """One fetch to record (see record_fetch for the fields)."""

    result: FetchResult
    parsed: ParsedFeed | None
    next_check_at: datetime | Callable[[FeedSchedule], datetime]
    now: datetime
    request: FetchRequest | None = None
    not_before: datetime | None = None


def record_fetch(
    session: Session,
    result: FetchResult,
    parsed: ParsedFeed | None,
    next_check_at: datetime | Callable[[FeedSchedule], datetime],
    now: datetime,
    *,
    request: FetchRequest | None = None,
    not_before: datetime | None = None,
) -> list[ItemRecord]:
    """Save a fetch's outcome on its feed, insert the parsed items and return only the new ones.

    `next_check_at` is an instant or a function of the feed's updated FeedSchedule (so the caller can base
    it on what this fetch found). `request` (the claim) saves a read of the feed row. Items published
    before `not_before` (the retention horizon) are ignored, so pruned items that are still in a feed do not
    come back as new. An item already stored under the same (outlet, key) is never stored again, whichever
    feed carries it and however long it was absent from the feed."""
    return record_fetches(session, [FetchOutcome(result, parsed, next_check_at, now, request, not_before)])[0]


def record_fetches(session: Session, outcomes: Sequence[FetchOutcome], *,
                   lease_owner: str | None = None) -> list[list[ItemRecord]]:
    """record_fetch for many feeds at once: one multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING for all
    their items and one executemany UPDATE for the feeds. Returns the new items of each outcome, in order.

    With `lease_owner` (the worker that claimed the feeds), a fetch is recorded only if that worker still
    holds its feed (fencing, see monitor.storage.workers): a worker that stalled past its lease, was presumed
    dead and lost the feed to another worker cannot overwrite the newer result; its outcome is dropped
    (logged, and answered with no new items)."""
    if not outcomes:
        return []
    if lease_owner is not None:
        held = workers.fence_feeds(session, [o.result.feed_id for o in outcomes], lease_owner)
        if len(held) < len(outcomes):
            for o in outcomes:
                if o.result.feed_id not in held:
                    log.warning("fetch result dropped: this worker no longer holds the feed's lease (it stalled "
                                "past it and another worker took the feed over)",
                                extra={"feed_id": o.result.feed_id, "feed_url": o.result.url, "worker": lease_owner})
            kept = iter(record_fetches(session, [o for o in outcomes if o.result.feed_id in held]))
            return [next(kept) if o.result.feed_id in held else [] for o in outcomes]
    states = _states(session, outcomes)
    new_by_feed = _insert_items(session, outcomes)
    updates: list[dict[str, object]] = []
    for o in outcomes:
        new = new_by_feed.get(o.result.feed_id, [])
        updates.append(_feed_values(session, o, states[o.result.feed_id], new))
    conn = session.connection()
    for keys, group in _group_by_keys(updates).items():
        stmt = update(Feed).where(Feed.id == bindparam("b_id")).values({k: bindparam("b_" + k) for k in keys})
        conn.execute(stmt, [{"b_" + k: v for k, v in row.items()} for row in group])
    return [new_by_feed.get(o.result.feed_id, []) for o in outcomes]


def _states(session: Session, outcomes: Sequence[FetchOutcome]) -> dict[int, FeedSchedule]:
    states: dict[int, FeedSchedule] = {}
    missing = []
    for o in outcomes:
        r = o.request
        if r is None:
            missing.append(o.result.feed_id)
        else:
            states[r.feed_id] = FeedSchedule(r.interval_s, r.publish_interval_s, r.last_new_item_at, r.error_count)
    for chunk in _chunks(missing, 500):
        q = select(Feed.id, Feed.interval_s, Feed.publish_interval_s, Feed.last_new_item_at, Feed.error_count)
        for row in session.execute(q.where(Feed.id.in_(chunk))):
            states[row.id] = FeedSchedule(row.interval_s, row.publish_interval_s, aware_utc(row.last_new_item_at),
                                          row.error_count or 0)
    unknown = [o.result.feed_id for o in outcomes if o.result.feed_id not in states]
    if unknown:
        raise LookupError(f"no feed with id {unknown[0]} in the database")
    return states


def _feed_values(session: Session, o: FetchOutcome, state: FeedSchedule, new: list[ItemRecord]) -> dict[str, object]:
    result, parsed, now = o.result, o.parsed, o.now
    feed_id = result.feed_id
    values: dict[str, object] = {"id": feed_id, "last_checked_at": naive_utc(now), "lease_until": None,
                                 "last_status": result.status}
    if result.ok:
        values.update(error_count=0, last_error=None, last_success_at=naive_utc(now))
        state = FeedSchedule(state.interval_s, state.publish_interval_s, state.last_new_item_at, 0)
        # Validators longer than their column are dropped, not cut (a cut one would never match): the next
        # fetch is simply unconditional. PostgreSQL would reject the whole write; SQLite would store them.
        if result.etag is not None or result.status == "ok":
            values["etag"] = _fitting(result.etag, Feed.etag)
        if result.last_modified is not None or result.status == "ok":
            values["last_modified"] = _fitting(result.last_modified, Feed.last_modified)
        if result.status == "ok" and parsed is not None:
            values["body_hash"] = result.body_hash
            if parsed.title:
                values["title"] = parsed.title[:1024]
        if parsed is not None and parsed.warnings:
            values["last_error"] = storable_text("; ".join(parsed.warnings)[:2000])
        if result.permanent_url and result.permanent_url != result.url and _fitting(result.permanent_url, Feed.url):
            taken = session.scalar(select(Feed.id).where(Feed.url == result.permanent_url, Feed.id != feed_id))
            if taken is None:
                values["url"] = result.permanent_url
                log.info("feed moved permanently", extra={"feed_id": feed_id, "feed_url": result.url,
                                                          "new_url": result.permanent_url})
    else:
        errors = state.error_count + 1
        values.update(error_count=errors, last_error=storable_text(result.error),
                      last_status="deferred" if result.status == "deferred" else f"error:{result.error_kind or 'unknown'}")
        state = FeedSchedule(state.interval_s, state.publish_interval_s, state.last_new_item_at, errors)
    if new:
        gap = _observed_gap(state, [i.published_at for i in new], now)
        smoothed = state.publish_interval_s
        if gap is not None:
            smoothed = gap if smoothed is None else (1 - PUBLISH_SMOOTHING) * smoothed + PUBLISH_SMOOTHING * gap
        state = FeedSchedule(state.interval_s, smoothed, now, state.error_count)
        values.update(last_new_item_at=naive_utc(now), publish_interval_s=smoothed)
    when = o.next_check_at(state) if callable(o.next_check_at) else o.next_check_at
    values["next_check_at"] = naive_utc(when)
    return values


def _fitting(value: str | None, column) -> str | None:  # type: ignore[no-untyped-def]
    """`value` if it fits the String column, else None."""
    return value if value is None or len(value) <= column.type.length else None


def _group_by_keys(rows: list[dict[str, object]]) -> dict[tuple[str, ...], list[dict[str, object]]]:
    groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for row in rows:
        keys = tuple(sorted(k for k in row if k != "id"))
        groups.setdefault(keys, []).append(row)
    return groups


def _observed_gap(state: FeedSchedule, published: list[datetime], now: datetime) -> float | None:
    """Seconds between new items: since the last new item divided by how many arrived; on a feed's first
    fetch, the average gap between the dates of the items it shows."""
    if state.last_new_item_at is not None:
        return max(1.0, (now - state.last_new_item_at).total_seconds() / len(published))
    if len(published) >= 2:
        span = (max(published) - min(published)).total_seconds()
        if span > 0:
            return span / (len(published) - 1)
    return None


def _insert_items(session: Session, outcomes: Sequence[FetchOutcome]) -> dict[int, list[ItemRecord]]:
    rows: list[dict[str, object]] = []
    pending: dict[tuple[str, str], tuple[int, ParsedItem]] = {}
    for o in outcomes:
        if o.parsed is None:
            continue
        n_now = naive_utc(o.now)
        feed_id = o.result.feed_id
        for it in o.parsed.items:
            ident = (it.outlet[:255], it.key[:512])
            if ident in pending or (o.not_before is not None and it.published_at < o.not_before):
                continue
            pending[ident] = (feed_id, it)
            rows.append({
                "feed_id": feed_id, "outlet": ident[0], "key": ident[1], "guid": it.guid, "link": it.link,
                "title": it.title, "summary": it.summary, "author": it.author[:512] if it.author else None,
                "published_at": naive_utc(it.published_at), "fetched_at": n_now, "content_hash": it.content_hash,
            })
    if not rows:
        return {}
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Item).on_conflict_do_nothing(index_elements=["outlet", "key"]).returning(Item.id, Item.outlet, Item.key)
    out: dict[int, list[ItemRecord]] = {}
    # executemany + RETURNING: SQLAlchemy's "insertmanyvalues" sends multi-row INSERTs in batches; rows that hit
    # the unique (outlet, key) constraint are skipped and not returned, so what comes back is exactly the new.
    for item_id, outlet, key in session.connection().execute(stmt, rows):
        feed_id, it = pending[(outlet, key)]
        out.setdefault(feed_id, []).append(ItemRecord(
            id=item_id, feed_id=feed_id, outlet=outlet, title=it.title, summary=it.summary, link=it.link,
            published_at=it.published_at, content_hash=it.content_hash))
    for items in out.values():
        items.sort(key=lambda i: i.id)
    return out


def _record(r) -> ItemRecord:  # type: ignore[no-untyped-def]
    return ItemRecord(id=r.id, feed_id=r.feed_id, outlet=r.outlet, title=r.title, summary=r.summary or "",
                      link=r.link, published_at=aware_utc(r.published_at), content_hash=r.content_hash)  # type: ignore[arg-type]


# --- reading back ----------------------------------------------------------------------------------------


def feed_health(session: Session) -> list[FeedHealth]:
    """Every feed with its fetch state, for `monitor feeds list`, /metrics and the health endpoints."""
    counts = dict(session.execute(select(Item.feed_id, func.count()).group_by(Item.feed_id)).all())
    out = []
    for f in session.scalars(select(Feed).order_by(Feed.id)):
        out.append(FeedHealth(
            feed_id=f.id, url=f.url, name=f.name, title=f.title, enabled=f.enabled, last_status=f.last_status,
            last_error=f.last_error, error_count=f.error_count or 0, last_checked_at=aware_utc(f.last_checked_at),
            last_success_at=aware_utc(f.last_success_at), next_check_at=aware_utc(f.next_check_at),
            publish_interval_s=f.publish_interval_s, item_count=counts.get(f.id, 0),
        ))
    return out


_RECORD_COLUMNS = (Item.id, Item.feed_id, Item.outlet, Item.title, Item.summary, Item.link, Item.published_at,
                   Item.content_hash)


def unprocessed_items(session: Session, limit: int) -> list[ItemRecord]:
    """Stored items that embed/match/novelty have not finished (oldest first)."""
    q = select(*_RECORD_COLUMNS).where(Item.processed_at.is_(None)).order_by(Item.id).limit(limit)
    return [_record(r) for r in session.execute(q)]


def _items_by_id(session: Session, ids: list[int]) -> list[ItemRecord]:
    rows = []
    for chunk in _chunks(ids, 500):
        rows.extend(session.execute(select(*_RECORD_COLUMNS).where(Item.id.in_(chunk))))
    return sorted((_record(r) for r in rows), key=lambda r: r.id)


def claim_unprocessed(session: Session, limit: int, *, now: datetime, lease_s: float,
                      owner: str | None = None) -> list[ItemRecord]:
    """Inside a write transaction: the oldest unprocessed items nobody else holds, held by this process for
    `lease_s` seconds (then another process may take them: the holder died). On PostgreSQL rows another
    process is claiming right now are skipped, not waited for. `owner` (a worker id) is recorded with the
    claim, for `mark_processed(owner=...)` (fencing) and for the status page."""
    n = naive_utc(now)
    q = (select(Item.id).where(Item.processed_at.is_(None), or_(Item.claimed_until.is_(None), Item.claimed_until < n))
         .order_by(Item.id).limit(limit))
    if session.get_bind().dialect.name != "sqlite":
        q = q.with_for_update(skip_locked=True)
    ids = list(session.scalars(q))
    if not ids:
        return []
    until = n + timedelta(seconds=lease_s)
    for chunk in _chunks(ids, 500):
        session.execute(update(Item).where(Item.id.in_(chunk)).values(claimed_until=until, claimed_by=owner))
    return _items_by_id(session, ids)


def release_items(session: Session, item_ids: Iterable[int]) -> None:
    """Give claimed items back (their batch failed): the next pass takes them at once."""
    for chunk in _chunks(list(item_ids), 500):
        session.execute(update(Item).where(Item.id.in_(chunk)).values(claimed_until=None))


def mark_processed(session: Session, item_ids: Iterable[int], now: datetime, *, owner: str | None = None) -> set[int]:
    """Mark the items processed; returns those this transaction marked, i.e. that no other process had
    finished meanwhile (on PostgreSQL a concurrent marker of the same rows waits for this one to commit
    and then finds them marked). With `owner`, only items whose claim that worker still holds (fencing: a
    worker presumed dead, or overtaken after its claim lapsed, marks nothing and so writes nothing)."""
    ids = list(item_ids)
    mine: set[int] = set()
    held = Item.claimed_by == owner if owner is not None else Item.processed_at.is_(None)
    for chunk in _chunks(ids, 500):
        mine.update(session.scalars(update(Item).where(Item.id.in_(chunk), Item.processed_at.is_(None), held)
                                    .values(processed_at=naive_utc(now)).returning(Item.id)))
    return mine


def prune_items(session: Session, older_than: datetime) -> int:
    """Retention: delete items published before `older_than`, with their vectors and matches. Stories and
    alerts keep their own copies of title/link/outlet (their item reference is cleared). Returns items deleted."""
    cutoff = naive_utc(older_than)
    old = select(Item.id).where(Item.published_at < cutoff).scalar_subquery()
    session.execute(delete(ItemVector).where(ItemVector.item_id.in_(old)))
    session.execute(delete(Match).where(Match.item_id.in_(old)))
    session.execute(update(Alert).where(Alert.item_id.in_(old)).values(item_id=None))
    session.execute(update(Story).where(Story.first_item_id.in_(old)).values(first_item_id=None))
    res = session.execute(delete(Item).where(Item.published_at < cutoff))
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def _chunks(seq: Sequence, n: int):  # type: ignore[no-untyped-def]
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


__all__ = [
    "FeedHealth", "FeedSchedule", "SyncReport", "due_feeds", "feed_health", "mark_processed",
    "prune_items", "record_fetch", "record_fetches", "FetchOutcome", "release_feeds", "sync_feeds", "unprocessed_items", "claim_unprocessed", "release_items",
]
