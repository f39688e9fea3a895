"""Matching stage (pure): item vectors x topic prototypes (+ keyword gates) -> scored matches with a reason.

A topic is compiled once (`compile_topics`, again on hot reload): its description and example headlines
are encoded into *prototypes*, its counterexamples into *anti-prototypes*, its keyword gates into regexes.

Score of an item for a topic (cosine similarities of L2-normalised vectors):

    pos   = mean of the TOP_K highest similarities to the prototypes (description + examples)
    best  = the highest similarity to a prototype
    anti  = the highest similarity to a counterexample
    score = clip(pos - COUNTER_WEIGHT * max(0, anti - best), 0, 1)

so an item that is closer to a near miss (a counterexample) than to any example is pushed out in proportion
to how much closer it is (five times the gap), while items far from every counterexample are scored by their
nearest example alone. TOP_K = 1 was chosen on the dev set among TOP_K in {1, 2, 3, 5}. COUNTER_WEIGHT was
chosen among {0, 0.5, 1, 2, 3, 4, 5, 6, 8} once the topics carried counterexamples for every ruling of
GUIDE.md (R1-R6): with gates, macro-F1 full dev / time split (calibrated on October, measured on November)
is 0.840/0.865 at 1, 0.845/0.884 at 2, 0.858/0.878 at 3, then a plateau 0.860-0.864/0.896-0.910 from 4 to 8;
5 is the middle of the plateau. Global constants, not per-item tuning.
Item vectors come from `monitor.signal.embed.encode_items` (headline and headline + teaser).

An item matches when every keyword gate passes (`require_any`: at least one term; `require_all`: at least
one term of every group; `exclude`: no term; whole-word, case-insensitive) and score >= threshold.

Thresholds. `TopicConfig.threshold` wins when set. Otherwise a label-free rule computed at compile time
from the topic's own texts: each example is scored against the *other* prototypes (leave-one-out) and each
counterexample against the prototypes; the threshold is the midpoint between the median example score and
the median counterexample score (`label_free_threshold`). The shipped topics carry a threshold in
feeds.toml calibrated on the labelled dev set by `monitor eval topics --calibrate` (the F1-maximising
cut-off, procedure in `monitor.lab.topic_eval.calibrate_threshold`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.config import TopicConfig
from monitor.records import ItemRecord, TopicMatch
from monitor.storage.db import naive_utc
from monitor.storage.tables import Match

TOP_K = 1
COUNTER_WEIGHT = 5.0


@dataclass(frozen=True, slots=True)
class KeywordGate:
    """Compiled keyword gates of one topic. Each pattern matches whole words, case-insensitively."""

    require_any: re.Pattern[str] | None
    require_all: tuple[re.Pattern[str], ...]
    exclude: re.Pattern[str] | None

    def check(self, text: str) -> tuple[bool, list[str], str]:
        """(passes, keyword hits, why it failed or '')."""
        hits: list[str] = []
        if self.exclude is not None and (m := self.exclude.search(text)):
            return False, hits, f"excluded keyword {m.group(0)!r}"
        if self.require_any is not None:
            found = _found(self.require_any, text)
            if not found:
                return False, hits, "no require_any keyword"
            hits += found
        for i, pattern in enumerate(self.require_all):
            found = _found(pattern, text)
            if not found:
                return False, hits, f"no keyword of require_all group {i + 1}"
            hits += found
        return True, list(dict.fromkeys(hits)), ""


@dataclass(frozen=True, slots=True)
class CompiledTopic:
    id: str
    name: str
    threshold: float
    threshold_source: str  # "config" | "label-free"
    prototypes: np.ndarray  # (1 + n_examples, dim): description then examples
    prototype_texts: tuple[str, ...]
    counters: np.ndarray  # (n_counterexamples, dim)
    counter_texts: tuple[str, ...]
    gate: KeywordGate


@dataclass(frozen=True, slots=True)
class TopicSet:
    model_id: str
    topics: tuple[CompiledTopic, ...]

    def get(self, topic_id: str) -> CompiledTopic:
        for t in self.topics:
            if t.id == topic_id:
                return t
        raise KeyError(topic_id)


def keyword_pattern(terms: Sequence[str]) -> re.Pattern[str] | None:
    """A case-insensitive whole-word alternation of `terms` (None when there are none)."""
    terms = [t.strip() for t in terms if t.strip()]
    if not terms:
        return None
    alternation = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


def _found(pattern: re.Pattern[str], text: str) -> list[str]:
    return list(dict.fromkeys(m.group(0) for m in pattern.finditer(text)))


def compile_gate(topic: TopicConfig) -> KeywordGate:
    groups = tuple(p for p in (keyword_pattern(g) for g in topic.require_all) if p is not None)
    return KeywordGate(keyword_pattern(topic.require_any), groups, keyword_pattern(topic.exclude))


def raw_scores(vectors: np.ndarray, prototypes: np.ndarray, counters: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(score, best prototype index, best prototype similarity, best counterexample index, its similarity)
    for each row of `vectors`. Pure numpy; deterministic."""
    n = vectors.shape[0]
    sims = vectors @ prototypes.T  # (n, p)
    k = min(TOP_K, sims.shape[1])
    top = -np.sort(-sims, axis=1)[:, :k]
    pos = top.mean(axis=1)
    best_idx = np.argmax(sims, axis=1)
    best = sims[np.arange(n), best_idx]
    if counters.shape[0]:
        csims = vectors @ counters.T
        c_idx = np.argmax(csims, axis=1)
        anti = csims[np.arange(n), c_idx]
    else:
        c_idx = np.zeros(n, dtype=np.int64)
        anti = np.full(n, -1.0, dtype=np.float32)
    score = np.clip(pos - COUNTER_WEIGHT * np.maximum(0.0, anti - best), 0.0, 1.0)
    return score.astype(np.float64), best_idx, best, c_idx, anti


def label_free_threshold(prototypes: np.ndarray, counters: np.ndarray) -> float:
    """Midpoint between the median leave-one-out score of the examples and the median score of the
    counterexamples (see module docstring). Falls back to 0.5 when there is nothing to compare."""
    ex_scores = []
    for i in range(1, prototypes.shape[0]):  # examples only; the description stays in every pool
        others = np.delete(prototypes, i, axis=0)
        ex_scores.append(raw_scores(prototypes[i:i + 1], others, counters)[0][0])
    if not ex_scores or counters.shape[0] == 0:
        return 0.5
    co_scores = raw_scores(counters, prototypes, counters[:0])[0]
    return float(round((np.median(ex_scores) + np.median(co_scores)) / 2, 4))


def compile_topics(topics: Sequence[TopicConfig], embedder) -> TopicSet:  # type: ignore[no-untyped-def]
    """Encode every topic's description, examples and counterexamples once (one batch for all topics)."""
    texts: list[str] = []
    spans = []
    for t in topics:
        start = len(texts)
        texts += [t.description, *t.examples]
        mid = len(texts)
        texts += list(t.counterexamples)
        spans.append((start, mid, len(texts)))
    vecs = embedder.encode(texts) if texts else np.zeros((0, embedder.dim), dtype=np.float32)
    compiled = []
    for t, (start, mid, end) in zip(topics, spans, strict=True):
        protos, counters = vecs[start:mid], vecs[mid:end]
        if t.threshold is not None:
            threshold, source = float(t.threshold), "config"
        else:
            threshold, source = label_free_threshold(protos, counters), "label-free"
        compiled.append(CompiledTopic(
            id=t.id, name=t.name, threshold=threshold, threshold_source=source,
            prototypes=protos, prototype_texts=(t.description, *t.examples),
            counters=counters, counter_texts=tuple(t.counterexamples), gate=compile_gate(t)))
    return TopicSet(model_id=embedder.model_id, topics=tuple(compiled))


def match_texts(ids: Sequence[int], texts: Sequence[str], vectors: np.ndarray, topics: TopicSet,
                *, use_gates: bool = True) -> list[TopicMatch]:
    """One TopicMatch per (text, topic), in input order then topic order. `use_gates=False` scores the
    semantic part alone (for evaluation)."""
    out: list[TopicMatch] = []
    if len(ids) == 0:
        return out
    per_topic = []
    for t in topics.topics:
        per_topic.append(raw_scores(vectors, t.prototypes, t.counters))
    for row, (item_id, text) in enumerate(zip(ids, texts, strict=True)):
        for t, (score, b_idx, best, c_idx, anti) in zip(topics.topics, per_topic, strict=True):
            s = round(float(score[row]), 4)
            ok, hits, why = t.gate.check(text) if use_gates else (True, [], "")
            parts = [f"nearest example {_short(t.prototype_texts[b_idx[row]])!r} ({best[row]:.2f})"]
            if t.counters.shape[0] and anti[row] > best[row]:
                parts.append(f"closer to counterexample {_short(t.counter_texts[c_idx[row]])!r} "
                             f"({anti[row]:.2f})")
            if hits:
                parts.append("keywords: " + ", ".join(hits))
            if not ok:
                parts.append(f"gate: {why}")
            matched = ok and s >= t.threshold
            parts.insert(0, f"score {s:.3f} {'>=' if s >= t.threshold else '<'} threshold {t.threshold:.3f}")
            out.append(TopicMatch(item_id=item_id, topic_id=t.id, score=s, matched=matched,
                                  reason="; ".join(parts)))
    return out


def match_items(items: Sequence[ItemRecord], vectors: np.ndarray, topics: TopicSet) -> list[TopicMatch]:
    """Every (item, topic) verdict; `vectors` is aligned with `items` (from `embed.ensure_vectors`)."""
    return match_texts([it.id for it in items], [it.text for it in items], vectors, topics)


def save_matches(session: Session, matches: Sequence[TopicMatch], now: datetime) -> int:
    """Store the matched verdicts (idempotent: an (item, topic) pair already stored is kept).
    Returns how many rows were inserted."""
    wanted = {(m.item_id, m.topic_id): m for m in matches if m.matched}
    if not wanted:
        return 0
    item_ids = sorted({k[0] for k in wanted})
    existing: set[tuple[int, str]] = set()
    for start in range(0, len(item_ids), 500):
        rows = session.execute(select(Match.item_id, Match.topic_id)
                               .where(Match.item_id.in_(item_ids[start:start + 500])))
        existing.update((r[0], r[1]) for r in rows)
    created = naive_utc(now)
    rows_in = [{"item_id": m.item_id, "topic_id": m.topic_id, "score": m.score, "reason": m.reason,
                "created_at": created} for k, m in wanted.items() if k not in existing]
    if rows_in:
        session.execute(Match.__table__.insert(), rows_in)
    return len(rows_in)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
