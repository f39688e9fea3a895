"""workers: the processes sharing the work, their heartbeats, their leases, and the queues they drain.

Every `monitor run` process registers a row in `workers` (id = host:pid, the lease owner it writes on the
feeds, items and deliveries it claims) and beats every few seconds. A worker whose last beat is older than
its `dead_after_s` is presumed dead and is *reaped* by whichever process notices first: its row is removed
and its leases are given back at once (feeds and items become claimable, a delivery it was sending goes
back to `pending` and its attempt will read `lost`), so others finish its work without waiting for the
leases to lapse.

Fencing: a worker records a result only while it still owns the lease it claimed with (`fence_feeds`,
`store.mark_processed(owner=...)`, the outbox's owner guard). A worker that stalled (a long GC pause, a
SIGSTOP, a frozen VM) past its lease and was reaped, or whose lease was taken over by another worker, finds
the owner changed and its late commit is refused; the newer holder's result stands.

Times here are real time (`db.utcnow()`), whatever clock the service runs its schedule on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from monitor.storage.db import aware_utc, naive_utc
from monitor.storage.tables import Delivery, Feed, Item, Worker

ROLES = ("scheduler", "worker", "web")


@dataclass(frozen=True, slots=True)
class Leases:
    feeds: int = 0  # feeds being fetched
    items: int = 0  # items being encoded / matched
    deliveries: int = 0  # deliveries being sent


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    id: str
    roles: tuple[str, ...]
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    alive: bool  # beat within dead_after_s
    leases: Leases
    stats: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class QueueDepths:
    due_feeds: int  # enabled, due now, not leased
    leased_feeds: int
    unprocessed_items: int  # not encoded/matched yet (claimed or not)
    claimed_items: int
    pending_deliveries: int  # waiting to be sent (due now or retrying later)
    due_deliveries: int  # of which due now
    sending_deliveries: int
    failed_deliveries: int


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What `monitor status` and the admin status page show."""

    at: datetime
    workers: tuple[WorkerStatus, ...]
    queues: QueueDepths
    unowned: Leases  # leases held by no registered worker (a `monitor poll --once`, or a worker reaped meanwhile)

    @property
    def live_workers(self) -> tuple[WorkerStatus, ...]:
        return tuple(w for w in self.workers if w.alive)


# --- registration and heartbeats -------------------------------------------------------------------------


def register(session: Session, worker_id: str, *, roles: Iterable[str], host: str, pid: int, now: datetime,
             dead_after_s: float) -> None:
    """Insert (or refresh) this process's row. Call inside a write transaction."""
    row = session.get(Worker, worker_id)
    values = {"roles": ",".join(roles), "host": host[:255], "pid": pid, "heartbeat_at": naive_utc(now),
              "dead_after_s": dead_after_s}
    if row is None:
        session.add(Worker(id=worker_id, started_at=naive_utc(now), stats={}, **values))
    else:
        for k, v in values.items():
            setattr(row, k, v)
    session.flush()


def beat(session: Session, worker_id: str, now: datetime, stats: Mapping[str, object] | None = None) -> bool:
    """Record a heartbeat. False when this worker's row is gone: it was presumed dead (it stalled longer
    than dead_after_s) and reaped; the caller registers again (its old leases are gone, its late writes
    were refused)."""
    values: dict[str, object] = {"heartbeat_at": naive_utc(now)}
    if stats is not None:
        values["stats"] = dict(stats)
    res = session.execute(update(Worker).where(Worker.id == worker_id).values(**values)
                          .execution_options(synchronize_session=False))
    return bool(res.rowcount)  # type: ignore[attr-defined]


def unregister(session: Session, worker_id: str) -> None:
    """A clean stop: give back whatever this worker still holds and remove its row."""
    release_leases(session, [worker_id])
    session.execute(delete(Worker).where(Worker.id == worker_id))


def reap(session: Session, now: datetime) -> list[str]:
    """Remove the workers whose heartbeat is older than their dead_after_s and give their leases back.
    Returns their ids. Call inside a write transaction (any process may; it is idempotent)."""
    n = naive_utc(now)
    rows = session.execute(select(Worker.id, Worker.heartbeat_at, Worker.dead_after_s)).all()
    dead = [r.id for r in rows if r.heartbeat_at < n - timedelta(seconds=r.dead_after_s)]
    if not dead:
        return []
    q = select(Worker.id).where(Worker.id.in_(dead))
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)  # two reapers at once: each takes what the other did not
    dead = list(session.scalars(q))
    if dead:
        release_leases(session, dead)
        session.execute(delete(Worker).where(Worker.id.in_(dead)))
    return dead


def release_leases(session: Session, owners: list[str]) -> Leases:
    """Give back every lease held by `owners`: feeds and items become claimable at once, a delivery being
    sent goes back to pending (claim_one then marks its attempt `lost` and sends it again, with the same
    idempotency key)."""
    if not owners:
        return Leases()
    opts = {"synchronize_session": False}
    feeds = session.execute(update(Feed).where(Feed.lease_owner.in_(owners))
                            .values(lease_owner=None, lease_until=None).execution_options(**opts))
    items = session.execute(update(Item).where(Item.claimed_by.in_(owners), Item.processed_at.is_(None))
                            .values(claimed_by=None, claimed_until=None).execution_options(**opts))
    deliveries = session.execute(update(Delivery).where(Delivery.status == "sending", Delivery.lease_owner.in_(owners))
                                 .values(status="pending", lease_owner=None, lease_until=None)
                                 .execution_options(**opts))
    return Leases(feeds=int(feeds.rowcount or 0), items=int(items.rowcount or 0),  # type: ignore[attr-defined]
                  deliveries=int(deliveries.rowcount or 0))  # type: ignore[attr-defined]


# --- fencing ---------------------------------------------------------------------------------------------


def fence_feeds(session: Session, feed_ids: Iterable[int], owner: str) -> set[int]:
    """Inside the write transaction that records fetches: the feeds of `feed_ids` that `owner` still holds,
    locked until the transaction ends (so no reaper or claimer can take them between this check and the
    write). A feed whose lease was taken back (its worker presumed dead) or taken over by another worker is
    not returned: its result must be dropped."""
    ids = list(feed_ids)
    held: set[int] = set()
    for i in range(0, len(ids), 500):
        q = select(Feed.id).where(Feed.id.in_(ids[i:i + 500]), Feed.lease_owner == owner,
                                  Feed.lease_until.is_not(None))
        if session.get_bind().dialect.name == "postgresql":
            q = q.with_for_update()
        held.update(session.scalars(q))
    return held


# --- what the status page shows -------------------------------------------------------------------------


def queue_depths(session: Session, now: datetime, schedule_now: datetime | None = None) -> QueueDepths:
    """Queue depths. `now` is real time (leases on items and deliveries); `schedule_now` the service's
    clock for which feeds are due (default: `now`)."""
    n, sn = naive_utc(now), naive_utc(schedule_now or now)
    free = or_(Feed.lease_until.is_(None), Feed.lease_until < sn)
    due_feeds = session.scalar(select(func.count()).select_from(Feed).where(
        Feed.enabled.is_(True), free, or_(Feed.next_check_at.is_(None), Feed.next_check_at <= sn))) or 0
    leased_feeds = session.scalar(select(func.count()).select_from(Feed).where(Feed.lease_until >= sn)) or 0
    unprocessed = session.scalar(select(func.count()).select_from(Item).where(Item.processed_at.is_(None))) or 0
    claimed = session.scalar(select(func.count()).select_from(Item).where(
        Item.processed_at.is_(None), Item.claimed_until >= n)) or 0
    by_status = dict(session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all())
    due_deliveries = session.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.status == "pending", Delivery.next_attempt_at <= sn)) or 0
    return QueueDepths(due_feeds=due_feeds, leased_feeds=leased_feeds, unprocessed_items=unprocessed,
                       claimed_items=claimed, pending_deliveries=by_status.get("pending", 0),
                       due_deliveries=due_deliveries, sending_deliveries=by_status.get("sending", 0),
                       failed_deliveries=by_status.get("failed", 0))


def _leases_by_owner(session: Session) -> dict[str | None, Leases]:
    feeds = dict(session.execute(select(Feed.lease_owner, func.count()).where(Feed.lease_until.is_not(None))
                                 .group_by(Feed.lease_owner)).all())
    items = dict(session.execute(select(Item.claimed_by, func.count()).where(
        Item.processed_at.is_(None), Item.claimed_until.is_not(None)).group_by(Item.claimed_by)).all())
    deliveries = dict(session.execute(select(Delivery.lease_owner, func.count()).where(Delivery.status == "sending")
                                      .group_by(Delivery.lease_owner)).all())
    owners = set(feeds) | set(items) | set(deliveries)
    return {o: Leases(feeds=feeds.get(o, 0), items=items.get(o, 0), deliveries=deliveries.get(o, 0)) for o in owners}


def cluster_status(session: Session, now: datetime, schedule_now: datetime | None = None) -> ClusterStatus:
    """Workers (live or presumed dead, not yet reaped) with their leases, and the queue depths."""
    n = naive_utc(now)
    leases = _leases_by_owner(session)
    workers = []
    for w in session.scalars(select(Worker).order_by(Worker.started_at, Worker.id)):
        age = (n - w.heartbeat_at).total_seconds()
        workers.append(WorkerStatus(
            id=w.id, roles=tuple(r for r in w.roles.split(",") if r), host=w.host, pid=w.pid,
            started_at=aware_utc(w.started_at), heartbeat_at=aware_utc(w.heartbeat_at),  # type: ignore[arg-type]
            heartbeat_age_s=max(age, 0.0), alive=age <= w.dead_after_s, leases=leases.pop(w.id, Leases()),
            stats=dict(w.stats or {})))
    unowned = Leases(feeds=sum(v.feeds for v in leases.values()), items=sum(v.items for v in leases.values()),
                     deliveries=sum(v.deliveries for v in leases.values()))
    return ClusterStatus(at=aware_utc(n), workers=tuple(workers),  # type: ignore[arg-type]
                         queues=queue_depths(session, now, schedule_now), unowned=unowned)


__all__ = ["ROLES", "ClusterStatus", "Leases", "QueueDepths", "WorkerStatus", "beat", "cluster_status",
           "fence_feeds", "queue_depths", "reap", "register", "release_leases", "unregister"]
