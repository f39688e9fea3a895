"""The orchestration: the one module that passes data from stage to stage.

    poll (fetch -> parse -> store)  ->  process (embed -> match -> novelty)  ->  digest  ->  deliver

Stages do not import each other; this module does. It holds no resources of its own: the composition root
(`monitor.app.service` or the demo) builds the engine, the embedder and the clock and hands them in as a
`Runtime`. Every step takes `now` from the runtime's clock, so the same code runs in real time, on the
demo's simulated clock and in tests.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from monitor.app.metrics import Metrics
from monitor.clock import Clock
from monitor.config import Config
from monitor.delivery import digest, outbox, unsubscribe
from monitor.ingest import poll
from monitor.records import ALERT_DECISIONS, ItemRecord, MatchedItem
from monitor.signal import embed, match, stories
from monitor.storage import db, store

log = logging.getLogger(__name__)

PROCESS_BATCH = 1024  # items per embed+match+stories transaction: large batches pad less when encoding
# A batch's claim. Encoding 1,024 items takes ~10 s on 2 cores; a process killed mid-batch delays that batch
# by at most this long (its claim must lapse first); a holder slower than this is overtaken harmlessly.
PROCESS_LEASE_S = 120.0


@dataclass
class Runtime:
    """Everything a pipeline step needs, built once by the composition root. `config` and `topics` are
    swapped together on hot reload."""

    engine: Engine
    config: Config
    embedder: embed.Embedder
    topics: match.TopicSet
    clock: Clock
    metrics: Metrics
    signing_key: str  # signs unsubscribe links; fixed for the process so links and routes always agree
    worker_id: str = "main"
    # When digests' links are signed; None = `clock`. A replay on a simulated clock (the demo) signs at the
    # real time, so its e-mails' links work when opened.
    link_clock: Callable[[], datetime] | None = None

    def reload(self, config: Config, topics: match.TopicSet | None = None, *, sync: bool = True) -> None:
        """Apply a new, validated configuration: its enabled topics recompiled (a disabled one matches
        nothing) and, with `sync` (the process that owns the configuration: the scheduler role), feeds and
        subscriptions in the database."""
        topics = topics if topics is not None else match.compile_topics(config.enabled_topics, self.embedder)
        if sync:
            sync_config(self.engine, config, self.clock.now())
        self.config, self.topics = config, topics


def sync_config(engine: Engine, config: Config, now: datetime) -> None:
    """Bring feeds and subscriptions in the database in line with the configuration (the scheduler's job;
    safe to run from several processes at once)."""
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, config.feeds, now)
        digest.sync_subscriptions(s, config, now)


@dataclass(frozen=True)
class ProcessReport:
    items: int = 0
    matches: int = 0
    decisions: dict[str, int] = field(default_factory=dict)

    @property
    def alerts(self) -> int:
        return sum(n for d, n in self.decisions.items() if d in ALERT_DECISIONS)


def build_runtime(engine: Engine, config: Config, embedder: embed.Embedder, clock: Clock,
                  metrics: Metrics | None = None, worker_id: str = "main",
                  topics: match.TopicSet | None = None, signing_key: str | None = None, *,
                  sync: bool = True) -> Runtime:
    """Compile the enabled topics (unless given) and, with `sync`, bring feeds and subscriptions in the database in
    line with the configuration."""
    topics = topics if topics is not None else match.compile_topics(config.enabled_topics, embedder)
    rt = Runtime(engine=engine, config=config, embedder=embedder, topics=topics, clock=clock,
                 metrics=metrics or Metrics(), worker_id=worker_id,
                 signing_key=signing_key or unsubscribe.signing_key(config.settings))
    rt.reload(config, topics, sync=sync)
    return rt


async def poll_feeds(rt: Runtime, *, fetcher: Any = None, all_feeds: bool = False) -> poll.PollReport:
    """Fetch the feeds that are due (or every enabled one), store what is new."""
    report = await poll.poll_once(rt.engine, rt.config.settings, now=rt.clock.now(), fetcher=fetcher,
                                  all_feeds=all_feeds, lease_owner=rt.worker_id)
    for row in report.rows:
        rt.metrics.polls.labels(status=row.status).inc()
        rt.metrics.fetch_seconds.observe(row.seconds)
    rt.metrics.new_items.inc(len(report.new_items))
    return report


def process_pending(rt: Runtime, *, limit: int | None = None, should_stop: Callable[[], bool] = lambda: False,
                    lease_s: float = PROCESS_LEASE_S, batch: int = PROCESS_BATCH) -> ProcessReport:
    """Embed, match and decide novelty for stored items not processed yet, batch by batch.

    Each batch is first claimed for `lease_s` seconds of real time (another process takes the next batch
    instead of encoding the same one). Encoding (seconds of CPU) happens outside any transaction; the
    batch's writes (vectors, matches, stories, alerts, processed marks) then go in one short write
    transaction (BEGIN IMMEDIATE on SQLite, which waits for other writers instead of failing), so a crash
    redoes at most one batch, once its claim lapses. Should a claim lapse while its holder still encodes,
    the newer holder's write stands and the overtaken one writes nothing (its claim is fenced by
    `rt.worker_id`; so is a worker presumed dead and reaped). `batch`: items per claim (smaller batches
    spread the encoding over more workers). `should_stop` is checked between batches (graceful shutdown)."""
    total_items = total_matches = stale = 0
    decisions: Counter[str] = Counter()
    while (limit is None or total_items < limit) and not should_stop():
        with db.write_transaction(rt.engine) as s:
            items = store.claim_unprocessed(s, batch, now=db.utcnow(), lease_s=lease_s, owner=rt.worker_id)
        if not items:
            break
        try:
            report = _process_batch(rt, items)
        except BaseException:
            ids = [it.id for it in items]  # retried on the next tick, not after the claim lapses
            db.try_write(rt.engine, partial(store.release_items, item_ids=ids),
                         "could not release claimed items (their claim lapses by itself)")
            raise
        total_items += report.items
        total_matches += report.matches
        stale += report.stale
        decisions.update(report.decisions)
    if total_items:
        log.info("processed new items", extra={"items": total_items, "matches": total_matches,
                                               "stale_matches": stale, "decisions": dict(decisions)})
    return ProcessReport(items=total_items, matches=total_matches, decisions=dict(decisions))


@dataclass(frozen=True)
class _BatchReport:
    items: int
    matches: int
    stale: int
    decisions: dict[str, int]


def _process_batch(rt: Runtime, items: list[ItemRecord]) -> _BatchReport:
    """Encode (outside any transaction), match, and write one claimed batch."""
    settings = rt.config.settings
    decisions: Counter[str] = Counter()
    with Session(rt.engine) as s:
        stored = embed.load_vectors(s, rt.embedder.model_id, [it.id for it in items])
        recent = match.recent_matches(s, rt.embedder.model_id, rt.embedder.dim, items)  # story-level evidence
    missing = [it for it in items if it.id not in stored]
    fresh = embed.encode_items(rt.embedder, [it.title for it in missing], [it.text for it in missing])
    stored.update(zip((it.id for it in missing), fresh, strict=True))
    vectors = np.stack([stored[it.id] for it in items])
    results = match.match_items(items, vectors, rt.topics, recent)
    matched = [m for m in results if m.matched]
    now = rt.clock.now()
    # An item published long before its story window (a new feed's back catalogue, a feed back from an
    # outage) is matched and stored but is not news: it goes to no story and raises no alert.
    horizon = now - timedelta(hours=settings.story_window_h)
    index = {it.id: i for i, it in enumerate(items)}
    by_id = {it.id: it for it in items}
    todo = [MatchedItem(item=by_id[m.item_id], topic_id=m.topic_id, score=m.score,
                        vector=vectors[index[m.item_id]], threshold=rt.topics.get(m.topic_id).threshold)
            for m in matched
            if by_id[m.item_id].published_at >= horizon]
    stale = len(matched) - len(todo)
    todo.sort(key=lambda x: (x.item.published_at, x.item.id))
    with db.write_transaction(rt.engine) as s:
        # Marking first claims the batch: items another process finished while we encoded are left to
        # its writes (no duplicate matches or alerts, no unique-constraint failure).
        mine = store.mark_processed(s, [it.id for it in items], now, owner=rt.worker_id)
        if len(mine) < len(items):
            keep = [i for i, it in enumerate(missing) if it.id in mine]
            fresh, missing = fresh[keep], [missing[i] for i in keep]
            matched = [m for m in matched if m.item_id in mine]
            todo = [t for t in todo if t.item.id in mine]
            log.info("items processed meanwhile by another process (or no longer ours) were skipped",
                     extra={"skipped": len(items) - len(mine)})
        embed.store_vectors(s, rt.embedder, [it.id for it in missing], fresh)
        match.save_matches(s, matched, now)
        made = stories.assign(s, todo, now, settings) if todo else []
    for m in matched:
        rt.metrics.matches.labels(topic=m.topic_id).inc()
    for d in made:
        decisions[d.decision] += 1
        rt.metrics.alerts.labels(topic=d.topic_id, decision=d.decision).inc()
    return _BatchReport(items=len(mine), matches=len(matched), stale=stale, decisions=dict(decisions))


def build_digests(rt: Runtime) -> list[int]:
    """Build the digests that are due (runs every tick; takes no write lock when nothing is due)."""
    return digest.build_due_digests(rt.engine, rt.config, rt.clock.now(), secret_key=rt.signing_key,
                                    links_signed_at=rt.link_clock() if rt.link_clock else None)


async def deliver(rt: Runtime, *, limit: int = 50, senders: Any = None) -> outbox.DeliveryReport:
    report = await outbox.deliver_due(rt.engine, rt.config, rt.clock.now(), worker_id=rt.worker_id,
                                      limit=limit, senders=senders)
    for outcome, n in report.by_outcome().items():
        rt.metrics.deliveries.labels(channel="all", outcome=outcome).inc(n)
    return report


def housekeeping(rt: Runtime, now: datetime | None = None) -> int:
    """Hourly: close stories past their window (novelty already ignores them; closing keeps the set it loads
    small) and prune items and vectors past retention. Returns the number of items pruned."""
    now = now or rt.clock.now()
    cutoff = now - timedelta(days=rt.config.settings.retention_days)
    with db.write_transaction(rt.engine) as s:
        stories.close_expired(s, now, rt.config.settings.story_window_h)
        pruned = store.prune_items(s, cutoff)
    if pruned:
        log.info("retention pruned old items", extra={"items": pruned, "older_than": cutoff.isoformat()})
    return pruned
