"""poll: one polling pass. Claims due feeds, fetches them concurrently, parses what changed, stores the new
items and schedules each feed's next check. One feed's failure never stops the others.

This is the orchestration of fetch -> parse -> store -> schedule for the feed side; the service calls
`poll_once` on its poll tick and hands `report.new_items` to the processing pipeline.

A pass finishes every due feed: feeds are claimed in rounds of `max_concurrency * 32` (each round leased for
as long as its share of the pass can take), the next round is claimed while the last fetches of the
previous one are still running, and the pass ends when nothing due is left. Feeds polled in this pass are
not claimed again by it (their next check lies after the pass's start; with `all_feeds` or a URL filter,
rounds follow the feed id).

Threads: parsing and the database writes run on the event loop itself (or parsing in a process pool passed
as `parse_executor`), not in worker threads. A CPU-bound thread holds the GIL for its whole switch interval
every time the loop releases it for a socket send or a hash, which made a 304 pass ~2x slower in
bench/poll.py. Writes are batched (one transaction per batch of results), so the loop is held briefly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import multiprocessing
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Engine

from monitor.config import Settings
from monitor.errors import ParseError
from monitor.ingest import schedule
from monitor.ingest.fetch import Fetcher
from monitor.ingest.parse import parse_feed
from monitor.records import FetchRequest, FetchResult, ItemRecord, ParsedFeed
from monitor.storage import db, store

log = logging.getLogger(__name__)

_WRITE_BATCH = 256
_WRITE_GATHER_S = 0.2


_CLAIM_ROUND_PER_SLOT = 32  # feeds claimed per round, per concurrent fetch
_REFILL_PER_SLOT = 2  # claim the next round when fewer than this many feeds per slot are still in flight


@dataclass(frozen=True, slots=True)
class Fetched:
    """One feed fetched (and parsed, if it changed) in this pass, waiting to be recorded."""

    request: FetchRequest
    result: FetchResult
    parsed: ParsedFeed | None
    seconds: float  # wall time of fetch + parse


@dataclass(frozen=True, slots=True)
class PollRow:
    feed_id: int
    url: str
    name: str | None
    status: str  # ok | not_modified | unchanged | deferred | error
    http_status: int | None
    new_items: int
    seconds: float
    error: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PollReport:
    rows: tuple[PollRow, ...]
    new_items: tuple[ItemRecord, ...]
    started_at: datetime
    elapsed_s: float

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)

    @property
    def totals(self) -> dict[str, int]:
        """The four numbers of `monitor poll --json`."""
        return {"polled": len(self.rows), "new_items": len(self.new_items),
                "not_modified": self.count("not_modified"), "errors": self.count("error")}


async def poll_once(
    engine: Engine,
    settings: Settings,
    *,
    feeds_filter: Sequence[str] | None = None,
    all_feeds: bool = False,
    now: datetime | None = None,
    fetcher: Fetcher | None = None,
    limit: int | None = None,
    rng: random.Random | None = None,
    parse_executor: Executor | None = None,
    lease_owner: str | None = None,
) -> PollReport:
    """Poll once: every due feed (default), every enabled feed (`all_feeds`), or the feeds whose URL is in
    `feeds_filter`; `limit` caps the number of feeds (default: no cap, the pass finishes every one). `now`
    fixes the time (simulated clocks); otherwise the real clock. `fetcher`, if given, must already be
    entered (`async with`); the service keeps one open across passes to reuse connections.
    `parse_executor`: where feedparser runs (default: inline on the loop; a ProcessPoolExecutor uses more
    cores). `lease_owner`: the worker id written on the feed leases; a fetch is then recorded only while
    this worker still holds its feed (fencing: see monitor.storage.workers)."""
    t0 = time.perf_counter()
    fixed_now = now
    started_at = now or db.utcnow()
    slots = settings.max_concurrency
    by_id = bool(all_feeds or feeds_filter)  # no schedule to exclude what this pass polled: follow the ids
    claimed = 0
    after_id = 0
    seen: set[int] = set()
    pending: set[int] = set()

    async def claim(in_flight: int) -> list[FetchRequest]:
        """The next round of feeds, leased until this pass can have fetched them (plus a minute)."""
        nonlocal claimed, after_id
        n = slots * _CLAIM_ROUND_PER_SLOT
        if limit is not None:
            n = min(n, limit - claimed)
        if n <= 0:
            return []
        lease_s = (time.perf_counter() - t0 + settings.fetch_timeout_s * math.ceil((in_flight + n) / slots) + 60)
        got = await asyncio.to_thread(_claim, engine, started_at, n, feeds_filter, all_feeds, lease_s,
                                      after_id if by_id else None, lease_owner)
        fresh = [r for r in got if r.feed_id not in seen]
        if len(fresh) != len(got):  # cannot happen by the rules above; never poll a feed twice in a pass
            await asyncio.to_thread(db.try_write, engine, partial(
                store.release_feeds, feed_ids=[r.feed_id for r in got if r.feed_id in seen]),
                "could not release feed leases (they expire by themselves)")
        if got:
            after_id = max(after_id, max(r.feed_id for r in got))
        seen.update(r.feed_id for r in fresh)
        pending.update(r.feed_id for r in fresh)
        claimed += len(fresh)
        return fresh

    requests = await claim(0)
    if not requests:
        return PollReport(rows=(), new_items=(), started_at=started_at, elapsed_s=time.perf_counter() - t0)
    rng = rng or random.Random()
    not_before = started_at - timedelta(days=settings.retention_days)
    rows: list[PollRow] = []
    new_items: list[ItemRecord] = []
    queue: asyncio.Queue[Fetched | None] = asyncio.Queue()

    async def one(f: Fetcher, req: FetchRequest) -> None:
        t = time.perf_counter()
        result = await f.fetch(req)
        parsed: ParsedFeed | None = None
        if result.status == "ok":
            at = fixed_now or result.fetched_at
            try:
                parse = partial(parse_feed, result.body, result.headers, feed_url=req.url, now=at,
                                fast_path=settings.fast_feed_reader, aggregator=req.aggregator)
                if parse_executor is None:  # inline: parser threads would starve the loop's I/O of the GIL
                    parsed = parse()
                else:
                    parsed = await asyncio.get_running_loop().run_in_executor(parse_executor, parse)
            except ParseError as e:
                result = dataclasses.replace(result, status="error", error=str(e), error_kind="parse", body=b"")
            except Exception as e:  # a parser bug must not stop the pass
                log.exception("parser crashed", extra={"feed_id": req.feed_id, "feed_url": req.url})
                result = dataclasses.replace(result, status="error", error=f"{req.url}: parser crashed: {e!r}",
                                             error_kind="parse", body=b"")
        await queue.put(Fetched(req, result, parsed, time.perf_counter() - t))

    async def writer() -> None:
        done = False
        while not done:
            first = await queue.get()
            if first is None:
                break
            batch = [first]
            # Let a batch build up (fewer, larger transactions), but not past the end of the fetching.
            until = loop.time() + _WRITE_GATHER_S
            while queue.qsize() < _WRITE_BATCH and not fetched.is_set() and loop.time() < until:
                await asyncio.sleep(0.01)
            while len(batch) < _WRITE_BATCH and not queue.empty():
                nxt = queue.get_nowait()
                if nxt is None:
                    done = True
                    break
                batch.append(nxt)
            out = _write(engine, settings, batch, fixed_now, not_before, rng,  # inline: see module docstring
                         lease_owner=lease_owner)
            for row, items in out:
                rows.append(row)
                new_items.extend(items)
                pending.discard(row.feed_id)

    async def fetch_all(f: Fetcher, first: list[FetchRequest]) -> None:
        """Fetch round after round until nothing is left to claim; the next round is claimed while the
        previous one's last fetches still run, so the connections stay busy."""
        in_flight: set[asyncio.Task[None]] = set()
        batch = first
        try:
            while batch:
                in_flight.update(asyncio.create_task(one(f, r)) for r in batch)
                while len(in_flight) > slots * _REFILL_PER_SLOT:
                    done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                batch = await claim(len(in_flight))
            if in_flight:
                await asyncio.gather(*in_flight)
        finally:
            for task in in_flight:
                task.cancel()

    loop = asyncio.get_running_loop()
    fetched = asyncio.Event()
    writer_task = asyncio.create_task(writer())
    try:
        if fetcher is None:
            async with Fetcher(settings, clock=(lambda: fixed_now) if fixed_now else db.utcnow) as own:
                await fetch_all(own, requests)
        else:
            await fetch_all(fetcher, requests)
        fetched.set()
        await queue.put(None)
        await writer_task
    finally:
        if not writer_task.done():
            writer_task.cancel()
        if pending:  # cancelled or crashed: give the unrecorded feeds back at once instead of at lease expiry
            await asyncio.shield(asyncio.to_thread(
                db.try_write, engine, partial(store.release_feeds, feed_ids=list(pending)),
                "could not release feed leases (they expire by themselves)"))

    elapsed = time.perf_counter() - t0
    report = PollReport(rows=tuple(rows), new_items=tuple(sorted(new_items, key=lambda i: i.id)),
                        started_at=started_at, elapsed_s=elapsed)
    log.info(
        "poll pass: %d feeds, %d new items, %d not modified, %d unchanged, %d deferred, %d errors in %.2f s",
        len(rows), len(new_items), report.count("not_modified"), report.count("unchanged"),
        report.count("deferred"), report.count("error"), elapsed,
        extra={"polled": len(rows), "new_items": len(new_items), "errors": report.count("error"),
               "elapsed_s": round(elapsed, 3)},
    )
    return report


def parse_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """A process pool to pass as `parse_executor`, so parsing runs on more cores. With feedparser alone a
    first pass over 2,000 feeds went from ~130 to ~270 feeds/s on 2 cores in bench/poll.py; with the fast
    reader parsing is cheap enough that inline (the default) already does ~440 feeds/s, and the pool ~590. Uses forkserver, which is safe in a
    process that already runs threads (the scheduler, torch). Create it once, shut it down at exit."""
    return ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 2,
                               mp_context=multiprocessing.get_context("forkserver"))


def _claim(engine: Engine, now: datetime, limit: int, urls: Sequence[str] | None, all_feeds: bool,
           lease_s: float, after_id: int | None, lease_owner: str | None) -> list[FetchRequest]:
    with db.write_transaction(engine) as session:
        return store.due_feeds(session, now, limit, urls=urls, ignore_schedule=all_feeds, lease_s=lease_s,
                               after_id=after_id, lease_owner=lease_owner)


def _write(engine: Engine, settings: Settings, batch: list[Fetched], fixed_now: datetime | None,
           not_before: datetime, rng: random.Random, *,
           lease_owner: str | None = None) -> list[tuple[PollRow, list[ItemRecord]]]:
    """Record a batch of fetches in one transaction; if that fails, one transaction per feed so that one bad
    feed cannot lose the others' results."""
    try:
        with db.write_transaction(engine) as session:
            outcomes = [_outcome(settings, entry, fixed_now, not_before, rng) for entry in batch]
            news = store.record_fetches(session, outcomes, lease_owner=lease_owner)
    except Exception:
        if len(batch) == 1:
            req, result = batch[0].request, batch[0].result
            log.exception("could not record fetch", extra={"feed_id": req.feed_id, "feed_url": req.url})
            return [(PollRow(req.feed_id, req.url, req.name, "error", result.http_status, 0, batch[0].seconds,
                             f"{req.url}: could not save the result: see the log"), [])]
        out = []
        for entry in batch:
            out.extend(_write(engine, settings, [entry], fixed_now, not_before, rng, lease_owner=lease_owner))
        return out
    return [_row(entry, new) for entry, new in zip(batch, news, strict=True)]


def _outcome(settings: Settings, entry: Fetched, fixed_now: datetime | None, not_before: datetime,
             rng: random.Random) -> store.FetchOutcome:
    req, result, parsed = entry.request, entry.result, entry.parsed
    at = fixed_now or result.fetched_at
    # Retry-After was resolved against the fetcher's clock; on a simulated clock keep the same distance.
    retry_after = result.retry_after + (at - result.fetched_at) if result.retry_after else None

    def when(state: store.FeedSchedule) -> datetime:
        return schedule.next_check(
            now=at, settings=settings, interval_s=state.interval_s, publish_interval_s=state.publish_interval_s,
            last_new_item_at=state.last_new_item_at, error_count=state.error_count,
            retry_after=retry_after, max_age_s=result.max_age_s, rng=rng,
        )

    return store.FetchOutcome(result, parsed, when, at, request=req, not_before=not_before)


def _row(entry: Fetched, new: list[ItemRecord]) -> tuple[PollRow, list[ItemRecord]]:
    req, result, parsed, seconds = entry.request, entry.result, entry.parsed, entry.seconds
    extra = {"feed_id": req.feed_id, "feed_url": req.url}
    if result.status in ("error", "deferred"):
        log.warning("feed %s: %s", result.status, result.error, extra={**extra, "error_kind": result.error_kind,
                                                                        "http_status": result.http_status})
    elif parsed is not None and parsed.warnings:
        log.info("feed read with warnings: %s", "; ".join(parsed.warnings)[:500], extra=extra)
    row = PollRow(feed_id=req.feed_id, url=req.url, name=req.name, status=result.status,
                  http_status=result.http_status, new_items=len(new), seconds=seconds, error=result.error,
                  warnings=parsed.warnings if parsed is not None else ())
    return row, new
