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

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

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
# match_texts rounds a score to 4 decimals before comparing it with the threshold, so a raw score up to
# this much below the threshold can still match: such items are candidates too.
_ROUNDING_MARGIN = 1e-4


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
    story_key: int
    decision: str  # new_story | update | repeat
    why: str  # novelty's reason
    what_is_new: str | None

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
    stories: tuple[StoryGroup, ...]  # newest story first
    seconds: float

    @property
    def alerts(self) -> int:
        return sum(h.alert for h in self.hits)

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
    """Edited topic against the saved one, over the same items."""

    gained: tuple[Hit, ...]  # matched now, not before
    lost: tuple[Hit, ...]  # matched before, not now (as the saved version saw them)
    alerts_gained: tuple[Hit, ...]
    alerts_lost: tuple[Hit, ...]

    @property
    def unchanged(self) -> bool:
        return not (self.gained or self.lost or self.alerts_gained or self.alerts_lost)


def diff(saved: Result | None, edited: Result) -> Diff:
    if saved is None:  # a new topic: everything is gained
        return Diff(edited.hits, (), tuple(h for h in edited.hits if h.alert), ())
    before = {h.item.id: h for h in saved.hits}
    after = {h.item.id: h for h in edited.hits}
    return Diff(
        gained=tuple(h for i, h in after.items() if i not in before),
        lost=tuple(h for i, h in before.items() if i not in after),
        alerts_gained=tuple(h for i, h in after.items() if h.alert and not (i in before and before[i].alert)),
        alerts_lost=tuple(h for i, h in before.items() if h.alert and not (i in after and after[i].alert)),
    )


class Backtester:
    """Runs backtests for the admin pages and API. One per process, built by the composition root with the
    service's engine and embedder; thread-safe (pages run it in the thread pool)."""

    def __init__(self, engine: Engine, embedder: Embedder, settings: Settings, *, refresh_s: float = REFRESH_S,
                 monotonic=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.encoder = CachedEncoder(embedder)
        self.params = params_for(settings)
        self.refresh_s = refresh_s
        self._monotonic = monotonic
        self._corpora: dict[int, Corpus] = {}
        self._results: OrderedDict[tuple[str, int, int, int], Result] = OrderedDict()
        self._lock = threading.Lock()

    def corpus(self, days: int, now: datetime) -> Corpus:
        """The window's items, loaded once and topped up with newer rows at most every `refresh_s`."""
        since = now - timedelta(days=days)
        with self._lock:
            c = self._corpora.get(days)
            if c is not None and c.model_id == self.encoder.model_id and \
                    self._monotonic() - c.loaded_at < self.refresh_s:
                return c
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
            self._corpora[days] = c
            return c

    def run(self, topic: TopicConfig, *, days: int = DEFAULT_DAYS, now: datetime) -> Result:
        """What `topic` would have matched among the window's stored items, with the stories and alerts."""
        corpus = self.corpus(days, now)
        key = (topic.model_dump_json(), days, id(corpus), corpus.version)
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
        started = time.perf_counter()
        topic_set = match.compile_topics([topic], self.encoder)
        compiled = topic_set.topics[0]
        hits: list[Hit] = []
        if corpus.size:
            scores = match.raw_scores(corpus.vectors, compiled.prototypes, compiled.counters)[0]
            cand = np.nonzero(scores >= compiled.threshold - _ROUNDING_MARGIN)[0]
            items = [corpus.items[i] for i in cand]
            verdicts = match.match_texts([it.id for it in items], [it.text for it in items],
                                         corpus.vectors[cand], topic_set)
            matched = [(it, v, corpus.vectors[i]) for it, v, i in zip(items, verdicts, cand, strict=True)
                       if v.matched]
            nitems = [novelty.NoveltyItem(it, topic.id, vec, self._facts(corpus, it)) for it, _v, vec in matched]
            for (it, v, _vec), (story_key, a) in zip(matched, novelty.cluster(nitems, self.params), strict=True):
                hits.append(Hit(it, v.score, v.reason, story_key, a.decision, a.reason, a.what_is_new))
        groups: dict[int, list[Hit]] = {}
        for h in hits:
            groups.setdefault(h.story_key, []).append(h)
        stories = sorted((StoryGroup(k, g[0].item.title, tuple(g)) for k, g in groups.items()),
                         key=lambda sg: sg.hits[-1].item.published_at, reverse=True)
        result = Result(topic.id, compiled.threshold, compiled.threshold_source, days, corpus.size, tuple(hits),
                        tuple(stories), time.perf_counter() - started)
        with self._lock:
            self._results[key] = result
            while len(self._results) > 64:
                self._results.popitem(last=False)
        return result

    def compare(self, edited: TopicConfig, saved: TopicConfig | None, *, days: int = DEFAULT_DAYS,
                now: datetime) -> tuple[Result, Result | None, Diff]:
        """The edited topic's backtest, the saved version's (cached: it does not change while typing) and
        the difference."""
        new = self.run(edited, days=days, now=now)
        old = self.run(saved, days=days, now=now) if saved is not None else None
        return new, old, diff(old, new)

    def _facts(self, corpus: Corpus, item: ItemRecord) -> novelty.Facts:
        f = corpus.facts.get(item.id)
        if f is None:
            f = novelty.extract_facts(item.title, item.summary, item.outlet)
            corpus.facts[item.id] = f
        return f
