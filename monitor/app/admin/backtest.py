"""The live backtest of the topic editor: what an edited topic would have matched over the last N days, from
the stored item vectors (nothing stored is re-encoded), grouped into stories with the alerts it would have
sent, and the difference from the saved version of the topic.

Scoring and story decisions are the pipeline's own: `monitor.signal.match.compile_topics` / `match_texts`
and `monitor.signal.novelty.cluster`. Speed comes from three caches held by `Backtester`:

* the window of stored items (ids, texts, one float32 matrix of vectors), loaded once and reconciled with the
  stored rows every `refresh_s` (rows added, including out of id order, and rows gone or stored again under a
  reused id, are compared by id and content hash: the window is then what a fresh load gives);
* the topic texts' vectors: an example typed into the editor is encoded once (`CachedEncoder`);
* the facts novelty reads from each item (figures, names), extracted once per item.

`match.raw_scores` (one matrix product) picks the candidates that can reach the threshold on their own evidence;
`match_texts` then gives each candidate its exact verdict and reason, so the backtest says what the matcher says.

Closest misses (`Result.misses`): the items scoring highest below the threshold, with the matcher's exact score
and reason, for an admin to find on-topic items the topic does not reach yet (the editor's *example* button).
The candidates that did not match are scored exactly already; of the other items only those whose upper bound
(the prefilter's bound, raised by the most a close lender could lift it) reaches the K-th miss found are scored
exactly, own evidence and lift (19 rows on the 100,000-item bench: about 0.1 s of a 3 s keystroke).

Story-level evidence is counted as the service counts it (`relevance.neighbour_lift`, through `match_texts`'
`times` / `recent`): an item's lenders are the window's items published strictly earlier, within 72 h, that are
on the topic by their own evidence, so the backtest lists what `match.match_items(window, ...,
match.Recent.empty(dim))` matches. An item below the own-score bound can still be lifted, so the candidates
are the prefiltered items plus the items close enough to a lender to be lifted to the threshold. Which items
are close to which is a property of the window alone (vectors and times, not the topic): each lender's close
later items are found once per window (`LenderNeighbours`, kept across keystrokes and refreshes), and the
lenders themselves come from an own-evidence pass over the prefiltered items.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
import weakref
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
from monitor.signal import match, novelty, relevance
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
# Lender neighbours are kept with their cosine as float16 (about 1e-3 apart near 0.6..1): the candidates are
# taken with this much slack, and `match_texts` recomputes every cosine it uses.
_COS_SLACK = 2e-3
# ... and published up to 72 h and this much after the lender (the matcher compares differences of times).
_TIME_SLACK_S = 1.0
# Edges (lender, close later item) remembered per window (6 bytes each); beyond this the memory keeps only the
# lenders of the backtest that asked.
MAX_NEIGHBOUR_EDGES = 16_000_000
# Rows are scored in time-ordered chunks: lenders are looked for in bands of this many rows of falling own
# log-odds (each band against the lenders above it), and `match_texts` is given this many rows at a time.
_LIFT_CHUNK = 1024
_BAND = 256
_VERDICT_CHUNK = 512
# Ids per query when a refresh loads the rows its cached window lacks (bound parameters: SQLite allows 32,766).
_IDS_PER_QUERY = 500
# Topics whose last lenders are remembered (`_LiftState`).
LIFT_STATES = 4
# Closest misses listed per backtest (`Result.misses`), and rows scored per step while looking for them.
CLOSEST_MISSES = 20
_MISS_STEP = 256
# A score is rounded to 4 decimals: a row whose bound is this much under the K-th miss's score cannot pass it.
_MISS_MARGIN = 5e-5
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


class LenderNeighbours:
    """For each window row that has been a lender (on some topic by its own evidence): the window's rows
    published after it, within `relevance.NEIGHBOUR_WINDOW_H`, whose cosine to it is at least
    `relevance.NEIGHBOUR_MIN_COS` (less `_COS_SLACK`), with that cosine. It depends on the window's vectors and
    times only, so it is computed once per lender and kept for every topic and keystroke; a refreshed window
    carries it over (`carried`). Thread-safe."""

    def __init__(self) -> None:
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # lender row -> (rows int32, cosines float16)
        self._edges = 0
        self._lock = threading.Lock()

    @property
    def edges(self) -> int:
        return self._edges

    def close_to(self, corpus: Corpus, lenders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosines) of every (lender, close later row) pair of `lenders` (sorted window rows)."""
        wanted = lenders.tolist()
        with self._lock:
            have = {r: self._rows[r] for r in wanted if r in self._rows}
        missing = np.array([r for r in wanted if r not in have], dtype=np.int64)
        if missing.size:
            found = _close_later(corpus.vectors, corpus.times, missing)
            have.update(found)
            with self._lock:
                if self._edges + sum(len(f[0]) for f in found.values()) > MAX_NEIGHBOUR_EDGES:
                    self._rows = dict(have)  # bounded memory: the lenders asked for now are kept
                else:
                    self._rows.update(found)
                self._edges = sum(len(v[0]) for v in self._rows.values())
        if not wanted:
            return np.zeros(0, np.int32), np.zeros(0, np.float16)
        return np.concatenate([have[r][0] for r in wanted]), np.concatenate([have[r][1] for r in wanted])

    def carried(self, new_row: np.ndarray, vectors: np.ndarray, times: np.ndarray, added: np.ndarray
                ) -> LenderNeighbours:
        """This memory for a refreshed window: `new_row[old row]` is the row's new index (-1: dropped out of
        the window), `added` the new window's rows that were not in the old one (their closeness to the kept
        lenders is computed here)."""
        out = LenderNeighbours()
        with self._lock:
            entries = list(self._rows.items())
        kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for r, (rows, cos) in entries:
            nr = int(new_row[r])
            if nr < 0:
                continue
            moved = new_row[rows]
            keep = moved >= 0
            kept[nr] = (moved[keep].astype(np.int32), cos[keep])
        if kept and added.size:
            lenders = np.array(sorted(kept), dtype=np.int64)
            extra: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
            for lo in range(0, added.size, 256):
                block = added[lo:lo + 256]
                sims = vectors[block] @ vectors[lenders].T  # (block, lenders)
                dt = times[block][:, None] - times[lenders][None, :]
                ok = (sims >= relevance.NEIGHBOUR_MIN_COS - _COS_SLACK) & (dt > 0) \
                    & (dt <= relevance.NEIGHBOUR_WINDOW_H * 3600.0 + _TIME_SLACK_S)
                for b in np.flatnonzero(ok.any(axis=0)).tolist():
                    a = np.flatnonzero(ok[:, b])
                    extra.setdefault(int(lenders[b]), []).append((block[a].astype(np.int32),
                                                                  sims[a, b].astype(np.float16)))
            for r, parts in extra.items():
                rows, cos = kept[r]
                kept[r] = (np.concatenate([rows, *(x[0] for x in parts)]), np.concatenate([cos, *(x[1] for x in parts)]))
        out._rows = kept
        out._edges = sum(len(v[0]) for v in kept.values())
        return out


def _close_later(vectors: np.ndarray, times: np.ndarray, lenders: np.ndarray
                 ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """`LenderNeighbours`' entries for `lenders` (window rows; the window is in published order, so each
    lender's later rows within the time window are one slice: [first, last) below)."""
    lenders = np.sort(lenders)
    first = np.searchsorted(times, times[lenders], side="right")  # published strictly after the lender
    last = np.searchsorted(times, times[lenders] + relevance.NEIGHBOUR_WINDOW_H * 3600.0 + _TIME_SLACK_S,
                           side="right")
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for lo in range(0, lenders.size, 128):
        block, a, b = lenders[lo:lo + 128], first[lo:lo + 128], last[lo:lo + 128]
        start, end = int(a.min()), int(b.max())
        sims = vectors[block] @ vectors[start:end].T
        col = np.arange(start, end)
        ok = (sims >= relevance.NEIGHBOUR_MIN_COS - _COS_SLACK) & (col >= a[:, None]) & (col < b[:, None])
        for k, r in enumerate(block.tolist()):
            cols = np.flatnonzero(ok[k])
            out[r] = ((start + cols).astype(np.int32), sims[k, cols].astype(np.float16))
    return out


@dataclass
class Corpus:
    """Stored items published since `since` that have a vector for `model_id`, in published order."""

    model_id: str
    since: datetime
    loaded_at: float
    # this load of the window, unique within its Backtester (a refresh that changes the rows is a new load): the
    # cache key of results (not the object's address, which a load dropped from memory hands to a later one)
    version: int
    items: list[ItemRecord]
    vectors: np.ndarray  # (n, dim) float32
    facts: dict[int, novelty.Facts] = field(default_factory=dict)
    neighbours: LenderNeighbours = field(default_factory=LenderNeighbours)
    times: np.ndarray = field(init=False)  # (n,) publication, epoch seconds (what the matcher compares)

    def __post_init__(self) -> None:
        self.times = np.array([it.published_at.timestamp() for it in self.items], dtype=np.float64)

    @property
    def size(self) -> int:
        return len(self.items)


def load_rows(session: Session, model_id: str, since: datetime, ids: Sequence[int] | None = None
              ) -> tuple[list[ItemRecord], list[bytes]]:
    """The stored items published since `since` that have a vector for `model_id` (only those of `ids` when
    given), in published order (ties by id), and their vectors."""
    q = (select(Item.id, Item.feed_id, Item.outlet, Item.title, Item.summary, Item.link, Item.published_at,
                Item.content_hash, ItemVector.vector)
         .join(ItemVector, ItemVector.item_id == Item.id)
         .where(ItemVector.model_id == model_id, Item.published_at >= naive_utc(since))
         .order_by(Item.published_at, Item.id))
    items, blobs = [], []
    wanted = sorted(ids) if ids is not None else None
    for lo in range(0, 1 if wanted is None else len(wanted), _IDS_PER_QUERY):
        part = q if wanted is None else q.where(Item.id.in_(wanted[lo:lo + _IDS_PER_QUERY]))
        for r in session.execute(part):
            items.append(ItemRecord(id=r[0], feed_id=r[1], outlet=r[2], title=r[3], summary=r[4] or "", link=r[5],
                                    published_at=aware_utc(r[6]), content_hash=r[7]))  # type: ignore[arg-type]
            blobs.append(r[8])
    if wanted is not None:
        order = sorted(range(len(items)), key=lambda i: (items[i].published_at, items[i].id))
        items, blobs = [items[i] for i in order], [blobs[i] for i in order]
    return items, blobs


def window_ids(session: Session, model_id: str, since: datetime) -> dict[int, str]:
    """The rows `load_rows` would return now, as id -> content hash: what a refresh compares with its cache (an id
    alone is not enough: SQLite hands a deleted newest row's id to the next item stored)."""
    rows = session.execute(select(Item.id, Item.content_hash).join(ItemVector, ItemVector.item_id == Item.id)
                           .where(ItemVector.model_id == model_id, Item.published_at >= naive_utc(since)))
    return {item_id: content_hash for item_id, content_hash in rows}


def _before(corpus: Corpus, lenders: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The `lenders` (sorted window rows) that can lend to some of `rows` (sorted): published from
    `relevance.NEIGHBOUR_WINDOW_H` before the first of them, in rows before the last of them."""
    start = np.searchsorted(corpus.times, corpus.times[rows[0]] - relevance.NEIGHBOUR_WINDOW_H * 3600.0)
    return lenders[np.searchsorted(lenders, start):np.searchsorted(lenders, rows[-1])]


def _logit(p: np.ndarray | float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(q / (1 - q))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _miss_hits(corpus: Corpus, compiled: match.CompiledTopic, missed: list[tuple[int, match.TopicMatch]]
               ) -> tuple[Hit, ...]:
    """Closest misses as hits, each with its `shortfall` in words (`match.score_topic`'s features of the row:
    the same the matcher's reason is made from)."""
    if not missed:
        return ()
    rows = [r for r, _v in missed]
    texts = [corpus.items[r].text for r in rows]
    _prob, sc, ev = match.score_topic(compiled, texts, corpus.vectors[rows])
    hinge, best, counter = sc.column("hinge"), sc.column("best"), sc.counter_idx
    out = []
    for i, (r, v) in enumerate(missed):
        why = []
        absent = [name for name, pattern in zip(compiled.gate.names, compiled.gate.groups, strict=True)
                  if pattern.search(texts[i]) is None]
        if absent:
            why.append("no keyword of " + " or ".join(absent))
        if counter[i] >= 0 and hinge[i] > 0:
            why.append(f"closer to counterexample {_short(compiled.counter_texts[counter[i]])!r}")
        if not why:
            why.append(f"not close enough to the examples (nearest {float(best[i]):.2f})")
        out.append(Hit(corpus.items[r], v.score, v.reason, shortfall="; ".join(why)))
    return tuple(out)


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
    # a closest miss only (`Result.misses`): why it fell short, in words (keyword groups without a hit, a closer
    # counterexample, or too far from every example); the matcher's full reason is `reason`
    shortfall: str = ""

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
    # the items scoring highest below the threshold (keyword vetoes left out), highest first, at most
    # `CLOSEST_MISSES`; exact scores and reasons as for `hits`, never stories (they do not match)
    misses: tuple[Hit, ...] = ()
    misses_off: bool = False  # closest misses are not looked for (`Backtester.closest_misses` 0)
    keyword_mode: str = "evidence"  # the topic's: with "gate", a keyword group without a hit rules an item out

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
class Scored:
    """Phase 1: the matcher's verdicts (exact) for one topic over one window."""

    key: str
    topic: TopicConfig
    threshold: float
    threshold_source: str
    scanned: int
    hits: tuple[Hit, ...]  # without story fields
    vectors: np.ndarray  # (len(hits), dim)
    seconds: float
    misses: tuple[Hit, ...] = ()  # `Result.misses`
    misses_asked: int = 0  # how many were looked for (0: closest misses off)


@dataclass(frozen=True, slots=True)
class _LiftState:
    """What the last backtest of a topic found over one window (`Corpus`, by weak reference): each row's own
    log-odds (NaN where not computed), which rows lent (own log-odds >= the threshold's), and, for the rows
    scored, the lender that gives each its story-level evidence (-1: none). A later version of the topic
    reuses a row's lender when neither the row's own log-odds nor that lender's changed."""

    corpus: weakref.ref[Corpus]
    own: np.ndarray
    lender: np.ndarray
    scored: np.ndarray
    source: np.ndarray


class _Stale(Exception):
    """A story computation nobody waits for any more (the admin typed on)."""


class Backtester:
    """Runs backtests for the admin pages and API: one per process, built by the composition root with the
    service's engine and embedder; thread-safe (pages run it in the thread pool). One-shot callers
    (`monitor backtest`, `monitor topics suggest`) build their own and use `matches` or `run` once.

    Two phases: the matcher's verdicts over every stored item (one matrix product, then `match_texts` on
    the candidates) come back at once; the stories and alerts (`novelty.cluster` over the matched items,
    about 4 ms per matched item on 2 cores) are computed in one background thread and cached, so a page
    shows matches and the item diff within the keystroke and the stories as soon as they are ready. A
    computation for a version the admin has typed past is abandoned."""

    def __init__(self, engine: Engine, embedder: Embedder, settings: Settings, *, refresh_s: float = REFRESH_S,
                 monotonic=time.monotonic, closest_misses: int = CLOSEST_MISSES) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.closest_misses = closest_misses  # 0: none (`Result.misses` empty)
        self.encoder = CachedEncoder(embedder)
        self.params = params_for(settings)
        self.refresh_s = refresh_s
        self._monotonic = monotonic
        self._corpora: OrderedDict[int, Corpus] = OrderedDict()  # by window (days), least recently used first
        self._scored: OrderedDict[str, Scored] = OrderedDict()
        self._gate_memos: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lifts: OrderedDict[str, _LiftState] = OrderedDict()  # by topic id
        self._clustered: OrderedDict[str, tuple[Hit, ...]] = OrderedDict()
        self._jobs: dict[str, Future[tuple[Hit, ...]]] = {}
        self._wanted: OrderedDict[str, None] = OrderedDict()  # the versions asked for most recently
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backtest-stories")
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # held while a window is read from the database
        self._loads = itertools.count(1)  # `Corpus.version`

    def corpus(self, days: int, now: datetime) -> Corpus:
        """The window's items, loaded once and reconciled with the stored rows at most every `refresh_s`. At most
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
                    c = self._load(s, since)
                else:
                    # The rows the window holds now, compared by id with the cached ones: not only the rows
                    # above the highest id cached, since workers store vectors out of id order (an older batch
                    # encoded after a newer one) and rows leave (retention, `reembed --all`). The window is then
                    # what a fresh load would give (`load_rows`): the result depends on the stored items and the
                    # window, not on when this process happened to read them.
                    listed = window_ids(s, self.encoder.model_id, since)
                    cached = {it.id: it.content_hash for it in c.items}
                    items, blobs = load_rows(s, self.encoder.model_id, since,
                                             ids=sorted(i for i, h in listed.items() if cached.get(i) != h))
                    keep = [i for i, it in enumerate(c.items) if listed.get(it.id) == it.content_hash]
                    changed = bool(items) or len(keep) != len(c.items)
                    if changed:
                        merged = [c.items[i] for i in keep] + items
                        vecs = np.vstack([c.vectors[keep], _stack(blobs, self.encoder.dim)])
                        order = sorted(range(len(merged)), key=lambda i: (merged[i].published_at, merged[i].id))
                        position = np.empty(len(merged), dtype=np.int64)  # merged index -> new row
                        position[order] = np.arange(len(merged))
                        new_row = np.full(c.size, -1, dtype=np.int64)
                        new_row[keep] = position[:len(keep)]
                        old = c
                        kept = {c.items[i].id for i in keep}  # an id stored again is another item: new facts
                        c = Corpus(c.model_id, since, self._monotonic(), next(self._loads),
                                   [merged[i] for i in order], vecs[order],
                                   {k: f for k, f in c.facts.items() if k in kept})
                        c.neighbours = old.neighbours.carried(new_row, c.vectors, c.times, position[len(keep):])
                    else:
                        c.loaded_at, c.since = self._monotonic(), since
            with self._lock:
                self._corpora[days] = c
                self._corpora.move_to_end(days)
                while len(self._corpora) > MAX_WINDOWS:
                    self._corpora.popitem(last=False)
            return c

    def _load(self, session: Session, since: datetime) -> Corpus:
        """A new load of the stored rows published since `since` (a version of its own)."""
        items, blobs = load_rows(session, self.encoder.model_id, since)
        return Corpus(self.encoder.model_id, since, self._monotonic(), next(self._loads), items,
                      _stack(blobs, self.encoder.dim))

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

    def _score(self, topic: TopicConfig, days: int, now: datetime) -> Scored:
        corpus = self.corpus(days, now)
        return self._scan(topic, corpus, f"{days}:{corpus.version}")

    def matches(self, topic: TopicConfig, *, since: datetime) -> Scored:
        """The matcher's verdicts for `topic` over the stored items published since `since` (phase 1 only: no
        stories): what `match.match_items(window, vectors, topic_set, match.Recent.empty(dim))` matches, found
        through the editor's prefilter. The window is read once and not kept (for one-shot callers such as
        `monitor backtest`; the editor's windows are `corpus(days, now)`)."""
        with self._loading, Session(self.engine) as s:
            corpus = self._load(s, since)
        return self._scan(topic, corpus, f"since {since.isoformat()}:{corpus.version}", keep=False)

    def _scan(self, topic: TopicConfig, corpus: Corpus, window: str, *, keep: bool = True) -> Scored:
        """`topic`'s verdicts over `corpus`, cached under `window` (a key naming the load) unless not `keep`."""
        misses = self.closest_misses if keep else 0
        # the misses asked for are part of the key: a scan cached with them off never answers one with them on
        key = f"{window}:misses={misses}:{topic.model_dump_json()}"
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
        verdicts, missed = self._verdicts(corpus, compiled, topic_set, misses=misses)
        for i, v in verdicts:
            if v.matched:
                hits.append(Hit(corpus.items[i], v.score, v.reason))
                rows.append(i)
        scored = Scored(key, topic, compiled.threshold, compiled.threshold_source, corpus.size, tuple(hits),
                        corpus.vectors[rows] if rows else np.zeros((0, self.encoder.dim), np.float32),
                        time.perf_counter() - started, _miss_hits(corpus, compiled, missed), misses)
        if keep:
            with self._lock:
                self._scored[key] = scored
                while len(self._scored) > 32:
                    self._scored.popitem(last=False)
        return scored

    def _verdicts(self, corpus: Corpus, compiled: match.CompiledTopic, topic_set: match.TopicSet, *, misses: int = 0
                  ) -> tuple[list[tuple[int, match.TopicMatch]], list[tuple[int, match.TopicMatch]]]:
        """(window row, the matcher's verdict) for every row that can match, in published order: what
        `match.match_items(window, vectors, topic_set, match.Recent.empty(dim))` says of them (the rows left
        out cannot match); and the `misses` rows scoring highest below the threshold (`_closest_misses`).

        1. `raw_scores` bounds each row's own score from above: the rows that can reach the threshold on their
           own evidence; their own log-odds (`match.own_logits`) tell the lenders (on topic on their own).
        2. A row below that bound is lifted to the threshold only by a lender published in the 72 h before it
           at a cosine of at least `min_cos + (1 - min_cos) * (t - u) / (share * (l - u))` (u: the row's bound
           in log-odds, t: the threshold's, l: the best lender's), since the lift moves its log-odds at most
           that share of the way to the lender's: such rows are candidates too (`LenderNeighbours`).
        3. Each candidate's lender (`_sources`: `relevance.neighbour_lift` over the lenders that can lift it).
        4. `match_texts` with the rows' times scores the candidates in time-ordered chunks, each batch with the
           chunk's lenders from step 3: each row's pool holds the lender that lifts it most, and only rows of
           the window, so the lift, the verdict and the reason are the matcher's own."""
        if not corpus.size:
            return [], []
        bound = match.raw_scores(corpus.vectors, compiled.prototypes, compiled.counters, compiled.combiner)[0]
        near = bound >= compiled.threshold - _ROUNDING_MARGIN
        cand = np.flatnonzero(near)
        floor = float(_logit(compiled.threshold - _ROUNDING_MARGIN))  # at or below every lender's log-odds
        own = np.full(corpus.size, np.nan)
        own[cand] = match.own_logits(compiled, [corpus.items[i].text for i in cand], corpus.vectors[cand])
        lenders = cand[own[cand] >= floor]
        rows, cos = np.zeros(0, np.int32), np.zeros(0, np.float16)
        if lenders.size:
            rows, cos = corpus.neighbours.close_to(corpus, lenders)
            u = _logit(bound)
            share = relevance.NEIGHBOUR_SHARE * np.maximum(float(own[lenders].max()) - u, 1e-12)
            needed = relevance.NEIGHBOUR_MIN_COS + (1 - relevance.NEIGHBOUR_MIN_COS) * (floor - u) / share
            needed = np.clip(needed - _COS_SLACK, 0.0, 2.0).astype(np.float16)  # over 1: cannot be lifted
            near[rows[cos >= needed[rows]]] = True
            more = np.flatnonzero(near & np.isnan(own))
            own[more] = match.own_logits(compiled, [corpus.items[i].text for i in more], corpus.vectors[more])
            cand = np.flatnonzero(near)
        # A keyword veto (or a failed gate) rules an item out whatever its neighbours: own log-odds -inf.
        cand = cand[np.isfinite(own[cand])]
        source = self._sources(corpus, compiled, cand, own)
        out: list[tuple[int, match.TopicMatch]] = []
        # Chunks of equal size (no short last one) and the chunk's lenders in the batch, not in `recent`: a few
        # rows multiplied at a time can differ from the same rows in a large batch in the last bits (BLAS
        # kernels), which could move a score rounded to 4 decimals. The lenders' own verdicts are dropped.
        for chunk in np.array_split(cand, max(1, -(-cand.size // _VERDICT_CHUNK))):
            batch = np.union1d(chunk, source[chunk][source[chunk] >= 0])
            items = [corpus.items[i] for i in batch]
            verdicts = match.match_texts([it.id for it in items], [it.text for it in items], corpus.vectors[batch],
                                         topic_set, times=corpus.times[batch], recent=None)
            wanted = np.isin(batch, chunk)
            out += [(int(r), v) for r, v, w in zip(batch, verdicts, wanted, strict=True) if w]
        if misses <= 0:
            return out, []
        return out, self._closest_misses(corpus, compiled, topic_set, misses, out, bound, own, lenders, rows, cos)

    def _closest_misses(self, corpus: Corpus, compiled: match.CompiledTopic, topic_set: match.TopicSet, k: int,
                        verdicts: list[tuple[int, match.TopicMatch]], bound: np.ndarray, own: np.ndarray,
                        lenders: np.ndarray, rows: np.ndarray, cos: np.ndarray) -> list[tuple[int, match.TopicMatch]]:
        """The `k` rows scoring highest below the threshold, highest first (ties: the newer first), one per headline
        (copies of a headline, compared in lower case with spaces collapsed, are one miss: its best-scoring copy),
        with the matcher's verdicts: what `match.match_items` over the window says of them. Rows ruled out by a keyword
        veto (own log-odds -inf) are left out. `verdicts` are the candidates' (exact); `bound` the prefilter's
        score bound of every row, `own` the own log-odds computed so far (NaN elsewhere; updated here), `lenders`
        the rows that may lend and (`rows`, `cos`) every row close after one of them (`LenderNeighbours`).

        The candidates that did not match are scored already. A floor F is the K-th best score found (when they
        are fewer than K, the other rows are scored in falling order of their own-evidence bound until K are
        found). A row left can reach F only if its bound `u` does, or, close to a lender, if `u + share * w(cos)
        * (l - u)` does (`l`: the best lender's own log-odds; the lift grows with the row's own log-odds, so `u`
        bounds it too): one pass over the close pairs, as `_verdicts` makes for the threshold. Those rows are
        scored exactly, best bound first, F rising as better misses are found and the rows left filtered again."""
        threshold = compiled.threshold
        theta = float(_logit(threshold))
        found: dict[int, tuple[float, match.TopicMatch | None]] = {
            r: (v.score, v) for r, v in verdicts if not v.matched and v.score < threshold}
        u = _logit(bound)
        true_lenders = lenders[own[lenders] >= theta] if lenders.size else lenders
        lends = bool(true_lenders.size and rows.size)
        top = float(own[true_lenders].max()) if lends else 0.0
        lender_vectors: list[np.ndarray] = []  # taken once, when a row is scored
        source: dict[int, int] = {}  # row scored here -> the lender row that lifts it
        left = np.ones(corpus.size, dtype=bool)
        left[[r for r, _v in verdicts]] = False
        left &= ~np.isneginf(own)

        def headline(r: int) -> str:  # copies of one headline (syndicated, or one outlet's feeds) are one miss
            return " ".join(corpus.items[r].title.lower().split())

        def distinct() -> dict[str, float]:  # each headline's best score found
            best: dict[str, float] = {}
            for r, (sc, _v) in found.items():
                h = headline(r)
                best[h] = max(sc, best.get(h, -np.inf))
            return best

        def kth() -> float:  # the K-th best score among distinct headlines (rounded), -inf while fewer than K
            per_headline = distinct()
            if len(per_headline) < k:
                return -np.inf
            return heapq.nlargest(k, per_headline.values())[-1]

        def score(step: np.ndarray) -> None:  # exact scores (own evidence and lift) of `step` (sorted rows)
            left[step] = False
            todo = step[np.isnan(own[step])]
            if todo.size:
                own[todo] = match.own_logits(compiled, [corpus.items[i].text for i in todo], corpus.vectors[todo])
            step = step[np.isfinite(own[step])]
            logit = own[step].copy()
            if step.size and lends:
                if not lender_vectors:
                    lender_vectors.append(corpus.vectors[true_lenders])
                # the lenders close to one of them (the others lend nothing: `neighbour_lift` recomputes every
                # cosine it uses, and the slack covers float32 against its float64)
                close = corpus.vectors[step] @ lender_vectors[0].T >= relevance.NEIGHBOUR_MIN_COS - _COS_SLACK
                near = close.any(axis=1)
                pool = true_lenders[close[near].any(axis=0)]
                if pool.size:
                    lift = relevance.neighbour_lift(
                        corpus.vectors[step[near]], corpus.times[step[near]], own[step[near]],
                        relevance.Neighbours(corpus.vectors[pool], own[pool], corpus.times[pool]), threshold_logit=theta)
                    logit[near] += lift.logits
                    source.update((int(r), int(pool[j])) for r, j in zip(step[near], lift.source, strict=True) if j >= 0)
            for r, x in zip(step.tolist(), logit.tolist(), strict=True):
                p = round(float(relevance.sigmoid(np.float64(x))), 4)
                if p < threshold:
                    found[r] = (p, None)

        def could(floor: float, pairs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
            """The rows left that can reach `floor` (a score), and the close pairs that can lift one to it."""
            x = float(_logit(max(floor - _MISS_MARGIN, 1e-12)))
            ok = left & (u >= x)
            er, ec = pairs
            if er.size:
                reach = (relevance.NEIGHBOUR_SHARE * np.maximum(top - u, 1e-12))
                needed = relevance.NEIGHBOUR_MIN_COS + (1 - relevance.NEIGHBOUR_MIN_COS) * (x - u) / reach
                needed = np.clip(needed - _COS_SLACK, 0.0, 2.0).astype(np.float16)  # over 1: cannot be lifted
                # pairs of rows scored already go (most of them, at first: the candidates); cosines compared as
                # the bits of non-negative float16 (the same order), which numpy does far faster
                keep = left[er] & (ec.view(np.uint16) >= needed.view(np.uint16)[er])
                er, ec = er[keep], ec[keep]
                ok[er] = True
            return np.flatnonzero(ok), (er, ec)

        if len(distinct()) < k:  # too few candidates missed: the best rows by their own bound until K are found
            order = np.flatnonzero(left)
            order = order[np.argsort(-u[order], kind="stable")]
            for lo in range(0, order.size, _MISS_STEP):
                if len(distinct()) >= k:
                    break
                score(np.sort(order[lo:lo + _MISS_STEP]))
        pairs = (rows, cos) if lends else (np.zeros(0, np.int64), np.zeros(0, np.float16))
        while (floor := kth()) > -np.inf:  # K distinct headlines found: only rows that can beat the K-th
            wanted, pairs = could(floor, pairs)
            if not wanted.size:
                break
            score(np.sort(wanted[np.argsort(-u[wanted], kind="stable")][:_MISS_STEP]))
        best, seen = [], set()
        for r in sorted(found, key=lambda r: (-found[r][0], -r)):  # the best copy of each headline
            if headline(r) not in seen and len(best) < k:
                seen.add(headline(r))
                best.append(r)
        # The rows scored here get the matcher's own verdicts (with their lenders in the batch, as `_verdicts`).
        fresh = np.array(sorted(r for r in best if found[r][1] is None), dtype=np.int64)
        if fresh.size:
            batch = np.union1d(fresh, np.array([source[r] for r in fresh.tolist() if r in source], dtype=np.int64))
            items = [corpus.items[i] for i in batch]
            got = match.match_texts([it.id for it in items], [it.text for it in items], corpus.vectors[batch],
                                    topic_set, times=corpus.times[batch], recent=None)
            for r, v in zip(batch.tolist(), got, strict=True):
                if r in found and found[r][1] is None:
                    found[r] = (v.score, v)
        out = [(r, found[r][1]) for r in best]
        out = [(r, v) for r, v in out if v is not None and not v.matched]
        return sorted(out, key=lambda rv: (-rv[1].score, -rv[0]))

    def _sources(self, corpus: Corpus, compiled: match.CompiledTopic, cand: np.ndarray, own: np.ndarray
                 ) -> np.ndarray:
        """For each window row in `cand` (sorted), the row of the lender whose evidence lifts it most
        (`relevance.neighbour_lift`, as `match.story_lift` calls it), -1 for none; other rows -1.

        The topic's previous backtest over the same window is reused: a row whose own log-odds are unchanged
        and whose lender still lends with unchanged log-odds keeps that lender unless a lender that is new or
        changed does better (only those are tried); the other rows are tried against every lender of the 72 h
        before them whose own log-odds are above theirs (a lower one gives no lift)."""
        theta = float(_logit(compiled.threshold))
        lender = own >= theta  # NaN: False
        source = np.full(corpus.size, -1, dtype=np.int64)
        with self._lock:
            old = self._lifts.get(compiled.id)
        if old is not None and old.corpus() is corpus:
            same = own == old.own  # NaN: False
            changed = (lender != old.lender) | ((lender | old.lender) & ~same)
            up = np.flatnonzero(lender & changed)  # lends now, and did not or with other log-odds
            was = old.source[cand]
            dirty = ~old.scored[cand] | ~same[cand] | ((was >= 0) & changed[np.maximum(was, 0)])
            clean = cand[~dirty]
            source[clean] = old.source[clean]
            if up.size:
                def pool(rows: np.ndarray) -> np.ndarray:
                    kept = source[rows]
                    return np.union1d(_before(corpus, up, rows), kept[kept >= 0])

                self._lend(corpus, clean, own, theta, source, pool)
            todo = cand[dirty]
        else:
            todo = cand
        lenders = np.flatnonzero(lender)
        for lo in range(0, todo.size, _LIFT_CHUNK):
            chunk = todo[lo:lo + _LIFT_CHUNK]
            span = _before(corpus, lenders, chunk)
            by_own = chunk[np.argsort(-own[chunk], kind="stable")]
            for b in range(0, by_own.size, _BAND):
                band = np.sort(by_own[b:b + _BAND])
                self._lend(corpus, band, own, theta, source, lambda rows, span=span: span[own[span] > own[rows].min()],
                           chunk=band.size)
        scored = np.zeros(corpus.size, dtype=bool)
        scored[cand] = True
        state = _LiftState(weakref.ref(corpus), own, lender, scored, source)
        with self._lock:
            self._lifts[compiled.id] = state
            self._lifts.move_to_end(compiled.id)
            while len(self._lifts) > LIFT_STATES:
                self._lifts.popitem(last=False)
        return source

    @staticmethod
    def _lend(corpus: Corpus, rows: np.ndarray, own: np.ndarray, theta: float, source: np.ndarray,
              pool_of: Any, chunk: int = _LIFT_CHUNK) -> None:
        """Set `source[rows]` from `relevance.neighbour_lift` against `pool_of(chunk rows)` (lender rows, sorted:
        ties go to the earliest lender, as in the service's pool)."""
        for lo in range(0, rows.size, chunk):
            part = rows[lo:lo + chunk]
            pool = pool_of(part)
            if not pool.size:
                source[part] = -1
                continue
            lift = relevance.neighbour_lift(
                corpus.vectors[part], corpus.times[part], own[part],
                relevance.Neighbours(corpus.vectors[pool], own[pool], corpus.times[pool]), threshold_logit=theta)
            source[part] = np.where(lift.source >= 0, pool[np.maximum(lift.source, 0)], -1)

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

    def _stories_job(self, scored: Scored, corpus_facts: dict[int, novelty.Facts]) -> tuple[Hit, ...]:
        key = scored.key

        def items() -> Iterator[novelty.NoveltyItem]:
            for h, vec in zip(scored.hits, scored.vectors, strict=True):
                if key not in self._wanted:
                    raise _Stale(key)
                f = corpus_facts.get(h.item.id)
                if f is None:
                    f = novelty.extract_facts(h.item.title, h.item.summary, h.item.outlet)
                    corpus_facts[h.item.id] = f
                # the match margin, as the service's `stories.assign` gives it: how clearly the item is on topic
                # is a feature of the development model, and a weak match that is news waits for a second outlet
                yield novelty.NoveltyItem(h.item, scored.topic.id, vec, f, h.score - scored.threshold)

        decided = novelty.cluster(items(), self.params)
        out = tuple(replace(h, story_key=k, decision=a.decision, why=a.reason, what_is_new=a.what_is_new)
                    for h, (k, a) in zip(scored.hits, decided, strict=True))
        with self._lock:
            self._clustered[key] = out
            while len(self._clustered) > 32:
                self._clustered.popitem(last=False)
        return out

    def _stories(self, scored: Scored, days: int, now: datetime) -> Future[tuple[Hit, ...]]:
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

    def _result(self, scored: Scored, hits: tuple[Hit, ...] | None, days: int, seconds: float) -> Result:
        if hits is None:
            return Result(scored.topic.id, scored.threshold, scored.threshold_source, days, scored.scanned,
                          scored.hits, (), seconds, pending=True, misses=scored.misses,
                          misses_off=not scored.misses_asked, keyword_mode=scored.topic.keyword_mode)
        groups: dict[int, list[Hit]] = {}
        for h in hits:
            groups.setdefault(h.story_key or 0, []).append(h)
        stories = sorted((StoryGroup(k, g[0].item.title, tuple(g)) for k, g in groups.items()),
                         key=lambda sg: sg.hits[-1].item.published_at, reverse=True)
        return Result(scored.topic.id, scored.threshold, scored.threshold_source, days, scored.scanned, hits,
                      tuple(stories), seconds, misses=scored.misses, misses_off=not scored.misses_asked,
                      keyword_mode=scored.topic.keyword_mode)

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
