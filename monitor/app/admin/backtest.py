"""The live backtest of the topic editor: what an edited topic would have matched over the last N days, from
the stored item vectors (nothing stored is re-encoded), grouped into stories with the alerts it would have
sent, and the difference from the saved version of the topic.

Scoring and story decisions are the pipeline's own: `monitor.signal.match.compile_topics` / `match_texts`
and `monitor.signal.novelty.cluster`. Speed comes from three caches held by `Backtester`:

* the window of stored items (ids, texts, one float32 matrix of vectors), loaded once and topped up with
  newer rows every `refresh_s`;
* the topic texts' vectors: an example typed into the editor is encoded once (`CachedEncoder`);
* the facts novelty reads from each item (figures, names), extracted once per item.

`match.raw_scores` (one matrix product) picks the candidates that can reach the threshold; `match_texts` then
gives each candidate its exact verdict and reason, so the backtest says what the matcher says.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.config import Settings, TopicConfig
from monitor.records import ALERT_DECISIONS, ItemRecord
from monitor.signal import match, novelty
from monitor.signal.embed import Embedder
from monitor.signal.stories import params_for
from monitor.storage.db import aware_utc, naive_utc
from monitor.storage.tables import Item, ItemVector

DEFAULT_DAYS = 7
REFRESH_S = 30.0
# Windows (a `days` value each) whose items are kept in memory; each holds every item's vector of the window,
# so the 1..90 days the editor offers must not each keep one.
MAX_WINDOWS = 3
# match_texts rounds a score to 4 decimals before comparing it with the threshold, so a raw score up to
# this much below the threshold can still match: such items are candidates too.
_ROUNDING_MARGIN = 1e-4
# Story computations are kept going for the versions asked for most recently (several admins, or the saved
# and the edited version of one topic); older ones are abandoned.
WANTED_VERSIONS = 6


class CachedEncoder:
    """An Embedder that encodes each distinct text once (LRU of `max_entries` texts): topic texts are
    re-compiled on every keystroke, but only a new example costs an encoding."""

    def __init__(self, inner: Embedder, max_entries: int = 20_000) -> None:
        self.inner, self.model_id, self.dim = inner, inner.model_id, inner.dim
        self.max_entries = max_entries
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0  # texts actually sent to the model (tests and the page's timing line read it)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vecs = self.inner.encode(missing)
            with self._lock:
                for t, v in zip(missing, vecs, strict=True):
                    self._cache[t] = v
                self.encoded += len(missing)
        with self._lock:
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for i, t in enumerate(texts):
                v = self._cache.get(t)
                if v is None:  # evicted meanwhile by another thread's burst: encode again
                    v = self.inner.encode([t])[0]
                    self._cache[t] = v
                self._cache.move_to_end(t)
                out[i] = v
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return out


class _MemoGate:
    """A topic's keyword gate whose per-text evidence is remembered across backtests of the same keyword
    rules: editing examples or counterexamples then re-runs no regex over the window. The evidence itself
    is the gate's own (a pure function of the text); everything else is delegated to the gate."""

    def __init__(self, gate: match.KeywordGate, memo: dict[str, Any]) -> None:
        self._gate, self._memo = gate, memo

    @property
    def groups(self) -> Any:
        return self._gate.groups

    def evidence(self, text: str) -> Any:
        got = self._memo.get(text)
        if got is None:
            got = self._gate.evidence(text)
            self._memo[text] = got
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gate, name)


@dataclass
class Corpus:
    """Stored items published since `since` that have a vector for `model_id`, in published order."""

    model_id: str
    since: datetime
    loaded_at: float
    version: int  # bumped on every change of the rows, part of the cache key of results
    items: list[ItemRecord]
    vectors: np.ndarray  # (n, dim) float32
    max_item_id: int
    facts: dict[int, novelty.Facts] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.items)


def load_rows(session: Session, model_id: str, since: datetime, after_id: int = 0
              ) -> tuple[list[ItemRecord], list[bytes]]:
    q = (select(Item.id, Item.feed_id, Item.outlet, Item.title, Item.summary, Item.link, Item.published_at,
                Item.content_hash, ItemVector.vector)
         .join(ItemVector, ItemVector.item_id == Item.id)
         .where(ItemVector.model_id == model_id, Item.published_at >= naive_utc(since), Item.id > after_id)
         .order_by(Item.published_at, Item.id))
    items, blobs = [], []
    for r in session.execute(q):
        items.append(ItemRecord(id=r[0], feed_id=r[1], outlet=r[2], title=r[3], summary=r[4] or "", link=r[5],
                                published_at=aware_utc(r[6]), content_hash=r[7]))  # type: ignore[arg-type]
        blobs.append(r[8])
    return items, blobs


def _stack(blobs: list[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1).copy()


@dataclass(frozen=True, slots=True)
class Hit:
    item: ItemRecord
    score: float
    reason: str
    story_key: int | None = None  # None while the stories are still being computed
    decision: str | None = None  # new_story | update | repeat
    why: str = ""  # novelty's reason
    what_is_new: str | None = None

    @property
    def alert(self) -> bool:
        return self.decision in ALERT_DECISIONS


@dataclass(frozen=True, slots=True)
class StoryGroup:
    key: int
    title: str
    hits: tuple[Hit, ...]

    @property
    def alerts(self) -> int:
        return sum(h.alert for h in self.hits)


@dataclass(frozen=True, slots=True)
class Result:
    topic_id: str
    threshold: float
    threshold_source: str
    days: int
    scanned: int  # items in the window with a vector
    hits: tuple[Hit, ...]  # matched items, published order
    stories: tuple[StoryGroup, ...]  # newest story first; empty while pending
    seconds: float
    pending: bool = False  # matches are final; stories and alerts still being computed

    @property
    def alerts(self) -> int:
        return sum(h.alert for h in self.hits)

    def recent(self, n: int = 60) -> tuple[Hit, ...]:
        return tuple(reversed(self.hits[-n:]))

    def per_day(self, now: datetime) -> list[tuple[str, int, int]]:
        """(day, matches, alerts) for each of the `days` days up to `now`, oldest first."""
        days = [(now - timedelta(days=i)).strftime("%Y-%m-%d") for i in range(self.days - 1, -1, -1)]
        m = dict.fromkeys(days, 0)
        a = dict.fromkeys(days, 0)
        for h in self.hits:
            d = h.item.published_at.strftime("%Y-%m-%d")
            if d in m:
                m[d] += 1
                a[d] += h.alert
        return [(d, m[d], a[d]) for d in days]


@dataclass(frozen=True, slots=True)
class Diff:
    """Edited topic against the saved one, over the same items. The alert lists are empty and `alerts_known`
    False while either side's stories are still being computed."""

    gained: tuple[Hit, ...]  # matched now, not before
    lost: tuple[Hit, ...]  # matched before, not now (as the saved version saw them)
    alerts_gained: tuple[Hit, ...]
    alerts_lost: tuple[Hit, ...]
    alerts_known: bool = True

    @property
    def unchanged(self) -> bool:
        return self.alerts_known and not (self.gained or self.lost or self.alerts_gained or self.alerts_lost)


def diff(saved: Result | None, edited: Result) -> Diff:
    if saved is None:  # a new topic: everything is gained
        return Diff(edited.hits, (), tuple(h for h in edited.hits if h.alert), (), not edited.pending)
    before = {h.item.id: h for h in saved.hits}
    after = {h.item.id: h for h in edited.hits}
    known = not (saved.pending or edited.pending)
    return Diff(
        gained=tuple(h for i, h in after.items() if i not in before),
        lost=tuple(h for i, h in before.items() if i not in after),
        alerts_gained=tuple(h for i, h in after.items() if h.alert and not (i in before and before[i].alert))
        if known else (),
        alerts_lost=tuple(h for i, h in before.items() if h.alert and not (i in after and after[i].alert))
        if known else (),
        alerts_known=known,
    )


@dataclass(frozen=True, slots=True)
class _Scored:
    """Phase 1: the matcher's verdicts (exact) for one topic over one window."""

    key: str
    topic: TopicConfig
    threshold: float
    threshold_source: str
    scanned: int
    hits: tuple[Hit, ...]  # without story fields
    vectors: np.ndarray  # (len(hits), dim)
    seconds: float


class _Stale(Exception):
    """A story computation nobody waits for any more (the admin typed on)."""


class Backtester:
    """Runs backtests for the admin pages and API. One per process, built by the composition root with the
    service's engine and embedder; thread-safe (pages run it in the thread pool).

    Two phases: the matcher's verdicts over every stored item (one matrix product, then `match_texts` on
    the candidates) come back at once; the stories and alerts (`novelty.cluster` over the matched items,
    about 4 ms per matched item on 2 cores) are computed in one background thread and cached, so a page
    shows matches and the item diff within the keystroke and the stories as soon as they are ready. A
    computation for a version the admin has typed past is abandoned."""

    def __init__(self, engine: Engine, embedder: Embedder, settings: Settings, *, refresh_s: float = REFRESH_S,
                 monotonic=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.encoder = CachedEncoder(embedder)
        self.params = params_for(settings)
        self.refresh_s = refresh_s
        self._monotonic = monotonic
        self._corpora: OrderedDict[int, Corpus] = OrderedDict()  # by window (days), least recently used first
        self._scored: OrderedDict[str, _Scored] = OrderedDict()
        self._gate_memos: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._clustered: OrderedDict[str, tuple[Hit, ...]] = OrderedDict()
        self._jobs: dict[str, Future[tuple[Hit, ...]]] = {}
        self._wanted: OrderedDict[str, None] = OrderedDict()  # the versions asked for most recently
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backtest-stories")
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # held while a window is read from the database

    def corpus(self, days: int, now: datetime) -> Corpus:
        """The window's items, loaded once and topped up with newer rows at most every `refresh_s`. At most
        `MAX_WINDOWS` windows are kept (the least recently used one is dropped), and the database is read
        outside the cache lock: a backtest whose window is cached never waits for another window's load."""
        since = now - timedelta(days=days)
        with self._lock:
            c = self._fresh_corpus(days)
            if c is not None:
                return c
        with self._loading:  # one load at a time (each reads many rows); cached windows stay served meanwhile
            with self._lock:
                c = self._fresh_corpus(days)  # loaded by another thread while this one waited
                if c is not None:
                    return c
                c = self._corpora.get(days)
            with Session(self.engine) as s:
                if c is None or c.model_id != self.encoder.model_id:
                    items, blobs = load_rows(s, self.encoder.model_id, since)
                    c = Corpus(self.encoder.model_id, since, self._monotonic(), 0, items,
                               _stack(blobs, self.encoder.dim), max((it.id for it in items), default=0))
                else:
                    items, blobs = load_rows(s, self.encoder.model_id, since, after_id=c.max_item_id)
                    keep = [i for i, it in enumerate(c.items) if it.published_at >= since]
                    changed = bool(items) or len(keep) != len(c.items)
                    if changed:
                        merged = [c.items[i] for i in keep] + items
                        vecs = np.vstack([c.vectors[keep], _stack(blobs, self.encoder.dim)])
                        order = sorted(range(len(merged)), key=lambda i: (merged[i].published_at, merged[i].id))
                        c = Corpus(c.model_id, since, self._monotonic(), c.version + 1,
                                   [merged[i] for i in order], vecs[order],
                                   max(c.max_item_id, max((it.id for it in items), default=0)), c.facts)
                    else:
                        c.loaded_at, c.since = self._monotonic(), since
            with self._lock:
                self._corpora[days] = c
                self._corpora.move_to_end(days)
                while len(self._corpora) > MAX_WINDOWS:
                    self._corpora.popitem(last=False)
            return c

    def _fresh_corpus(self, days: int) -> Corpus | None:
        """The cached window when it needs no refresh (call with the lock held)."""
        c = self._corpora.get(days)
        if c is not None and c.model_id == self.encoder.model_id and self._monotonic() - c.loaded_at < self.refresh_s:
            self._corpora.move_to_end(days)
            return c
        return None

    def cached_windows(self) -> list[int]:
        """The windows (days) whose items are held in memory, least recently used first."""
        with self._lock:
            return list(self._corpora)

    # --- phase 1: the matcher ---------------------------------------------------------------------------

    def _score(self, topic: TopicConfig, days: int, now: datetime) -> _Scored:
        corpus = self.corpus(days, now)
        key = f"{days}:{id(corpus)}:{corpus.version}:{topic.model_dump_json()}"
        with self._lock:
            if key in self._scored:
                self._scored.move_to_end(key)
                return self._scored[key]
        started = time.perf_counter()
        topic_set = match.compile_topics([topic], self.encoder)
        compiled = replace(topic_set.topics[0], gate=_MemoGate(topic_set.topics[0].gate, self._gate_memo(topic)))
        topic_set = replace(topic_set, topics=(compiled,))
        hits: list[Hit] = []
        rows: list[int] = []
        if corpus.size:
            # raw_scores bounds match_texts' score from above: only items that can reach the threshold are
            # given to match_texts, whose verdict (and reason) is the matcher's own.
            bound = match.raw_scores(corpus.vectors, compiled.prototypes, compiled.counters)[0]
            cand = np.nonzero(bound >= compiled.threshold - _ROUNDING_MARGIN)[0]
            items = [corpus.items[i] for i in cand]
            verdicts = match.match_texts([it.id for it in items], [it.text for it in items],
                                         corpus.vectors[cand], topic_set)
            for it, v, i in zip(items, verdicts, cand, strict=True):
                if v.matched:
                    hits.append(Hit(it, v.score, v.reason))
                    rows.append(int(i))
        scored = _Scored(key, topic, compiled.threshold, compiled.threshold_source, corpus.size, tuple(hits),
                         corpus.vectors[rows] if rows else np.zeros((0, self.encoder.dim), np.float32),
                         time.perf_counter() - started)
        with self._lock:
            self._scored[key] = scored
            while len(self._scored) > 32:
                self._scored.popitem(last=False)
        return scored

    def _gate_memo(self, topic: TopicConfig) -> dict[str, Any]:
        key = json.dumps([topic.require_any, topic.require_all, topic.exclude])
        with self._lock:
            memo = self._gate_memos.get(key)
            if memo is None:
                memo = self._gate_memos[key] = {}
                while len(self._gate_memos) > 4:
                    self._gate_memos.popitem(last=False)
            self._gate_memos.move_to_end(key)
            return memo

    # --- phase 2: stories and alerts --------------------------------------------------------------------

    def _stories_job(self, scored: _Scored, corpus_facts: dict[int, novelty.Facts]) -> tuple[Hit, ...]:
        key = scored.key

        def items() -> Iterator[novelty.NoveltyItem]:
            for h, vec in zip(scored.hits, scored.vectors, strict=True):
                if key not in self._wanted:
                    raise _Stale(key)
                f = corpus_facts.get(h.item.id)
                if f is None:
                    f = novelty.extract_facts(h.item.title, h.item.summary, h.item.outlet)
                    corpus_facts[h.item.id] = f
                yield novelty.NoveltyItem(h.item, scored.topic.id, vec, f)

        decided = novelty.cluster(items(), self.params)
        out = tuple(replace(h, story_key=k, decision=a.decision, why=a.reason, what_is_new=a.what_is_new)
                    for h, (k, a) in zip(scored.hits, decided, strict=True))
        with self._lock:
            self._clustered[key] = out
            while len(self._clustered) > 32:
                self._clustered.popitem(last=False)
        return out

    def _stories(self, scored: _Scored, days: int, now: datetime) -> Future[tuple[Hit, ...]]:
        facts = self.corpus(days, now).facts  # before taking the lock: corpus() takes it too (not reentrant)
        with self._lock:
            done = self._clustered.get(scored.key)
            if done is not None:
                f: Future[tuple[Hit, ...]] = Future()
                f.set_result(done)
                return f
            job = self._jobs.get(scored.key)
            if job is None or job.cancelled() or (job.done() and job.exception() is not None):
                job = self._pool.submit(self._stories_job, scored, facts)
                self._jobs[scored.key] = job
                job.add_done_callback(lambda _f, k=scored.key: self._forget(k))
            return job

    def _forget(self, key: str) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def _result(self, scored: _Scored, hits: tuple[Hit, ...] | None, days: int, seconds: float) -> Result:
        if hits is None:
            return Result(scored.topic.id, scored.threshold, scored.threshold_source, days, scored.scanned,
                          scored.hits, (), seconds, pending=True)
        groups: dict[int, list[Hit]] = {}
        for h in hits:
            groups.setdefault(h.story_key or 0, []).append(h)
        stories = sorted((StoryGroup(k, g[0].item.title, tuple(g)) for k, g in groups.items()),
                         key=lambda sg: sg.hits[-1].item.published_at, reverse=True)
        return Result(scored.topic.id, scored.threshold, scored.threshold_source, days, scored.scanned, hits,
                      tuple(stories), seconds)

    def compare(self, edited: TopicConfig, saved: TopicConfig | None, *, days: int = DEFAULT_DAYS,
                now: datetime, wait_s: float = 0.5) -> tuple[Result, Result | None, Diff]:
        """The edited topic's backtest, the saved version's, and the difference. Matches are always final;
        stories and alerts are included when they are ready within `wait_s` (else `Result.pending`: ask
        again, the computation goes on in the background and is cached)."""
        started = time.perf_counter()
        new = self._score(edited, days, now)
        old = self._score(saved, days, now) if saved is not None else None
        with self._lock:
            for k in ([old.key] if old else []) + [new.key]:
                self._wanted[k] = None
                self._wanted.move_to_end(k)
            while len(self._wanted) > WANTED_VERSIONS:
                self._wanted.popitem(last=False)
        jobs = [self._stories(new, days, now)] + ([self._stories(old, days, now)] if old else [])
        wait(jobs, timeout=max(0.0, wait_s - (time.perf_counter() - started)))
        clustered = [j.result() if j.done() and not j.cancelled() and j.exception() is None else None
                     for j in jobs]
        elapsed = time.perf_counter() - started
        new_r = self._result(new, clustered[0], days, elapsed)
        old_r = self._result(old, clustered[1], days, elapsed) if old else None
        return new_r, old_r, diff(old_r, new_r)

    def run(self, topic: TopicConfig, *, days: int = DEFAULT_DAYS, now: datetime,
            wait_s: float = 600.0) -> Result:
        """One topic's complete backtest (stories and alerts included unless that takes over `wait_s`)."""
        return self.compare(topic, None, days=days, now=now, wait_s=wait_s)[0]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
