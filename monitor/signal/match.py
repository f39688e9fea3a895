"""Matching stage (pure): item vectors x topic prototypes + keyword evidence -> scored matches with a reason.

A topic is compiled once (`compile_topics`, again on hot reload): its description and example headlines
are encoded into *prototypes*, its counterexamples into *anti-prototypes*, its keywords into regexes, and
its label-free reference points (`relevance.profile`) are taken from those texts.

Score of an item for a topic: the probability given by a small topic-agnostic combiner
(`monitor.signal.relevance`) over features relative to the topic: similarity to the nearest example, how
much closer a counterexample is, and the share of keyword groups with a hit. Keywords are *evidence* by
default (`keyword_mode = "evidence"`): a hit raises the score, a miss lowers it; `keyword_mode = "gate"`
restores hard gates (every `require_any` / `require_all` group must have a hit). `exclude` is always a veto.
The combiner's weights are `SHIPPED_COMBINER` (how they were fitted and measured: docs/topic-relevance.md).

Thresholds. `TopicConfig.threshold` (a probability) wins when set. Otherwise the label-free rule of
`relevance.example_threshold`: the 10th percentile of the probabilities of the topic's own examples, each
scored leave-one-out, so an admin's new topic gets a threshold from its definition alone. The examples that
miss one of the topic's keyword groups (`missed_groups`) are left out of it (`threshold_sample`;
`example_warnings` tells the admin), unless fewer than MIN_THRESHOLD_EXAMPLES would remain.

Story-level evidence (`relevance.neighbour_lift`). Given the items' publication times, an item close
(cosine >= 0.6) to an item of the previous 72 hours that is on the topic by its OWN evidence inherits part
of that item's log-odds, weighted by how close they are: the vocabulary of a story drifts ("ceasefire deal",
"phase one", a freed hostage's name) while its items stay near one another. The candidates are the batch's
own earlier items and the recent matches of the topic (`recent_matches`), each rescored on its own evidence,
so evidence never travels in chains.

Every verdict carries a reason: score and threshold (and where the threshold came from), the nearest
example, a closer counterexample if any, the keyword evidence, the similar recent item that lifted it,
and the features that weighed most.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.config import TopicConfig
from monitor.records import ItemRecord, TopicMatch, item_text
from monitor.signal import relevance
from monitor.signal.relevance import Combiner
from monitor.storage.db import naive_utc
from monitor.storage.tables import Item, ItemVector, Match

# Fitted by `monitor eval topics --calibrate --fit` (docs/topic-relevance.md) on the 4,669 labelled items of
# the shared dev set and bench/data/topics/extra_* (all dated before 2023-11-16), pooled over the three default
# topics. Nothing in it names a topic. The features (margin, kw), the penalty (l2 = 10) and the label-free
# quantile (0.10) were chosen on the 1,505 dev items before the extra labels existed; the extra set then
# measured that choice (it stayed the best of the seven feature sets tried, docs/topic-relevance.md).
# Refitted whenever the shipped topics' texts change (their features change): last in session 6, with feeds.toml's
# R1/R2 examples and keywords.
SHIPPED_COMBINER = Combiner(
    names=("margin", "kw"),
    mean=(0.259719, -0.119822),
    scale=(0.207495, 0.335529),
    weights=(1.886184, 2.018811),
    bias=-7.595086,
)

# The label-free threshold is taken over at least this many examples: with fewer that meet the topic's
# keyword requirement, every example counts (`threshold_sample`).
MIN_THRESHOLD_EXAMPLES = 3

_EVIDENCE_LABELS = {"best": "similarity", "top3": "agreeing examples", "desc": "description",
                    "anti": "counterexample", "hinge": "counterexample", "margin": "similarity",
                    "rel": "similarity", "kw": "keywords"}


@dataclass(frozen=True, slots=True)
class KeywordGate:
    """Compiled keywords of one topic (`compile_gate`). Each pattern matches whole words, case-insensitively."""

    require_any: re.Pattern[str] | None
    require_all: tuple[re.Pattern[str], ...]
    exclude: re.Pattern[str] | None
    names: tuple[str, ...]  # how the config names each of `groups`, in order ("require_any", "require_all[1]")

    def __post_init__(self) -> None:
        if len(self.names) != len(self.groups):
            raise ValueError(f"a keyword gate needs one name per group: {len(self.names)} names for "
                             f"{len(self.groups)} groups")

    @property
    def groups(self) -> tuple[re.Pattern[str], ...]:
        """Keyword groups as evidence: `require_any` as one group, then each `require_all` group."""
        return ((self.require_any,) if self.require_any is not None else ()) + self.require_all

    def evidence(self, text: str) -> tuple[int, list[str], str | None]:
        """(groups with a hit, keyword hits, the excluded keyword found or None)."""
        veto = m.group(0) if self.exclude is not None and (m := self.exclude.search(text)) else None
        hits: list[str] = []
        hit_groups = 0
        for pattern in self.groups:
            first = pattern.search(text)
            if first is not None:  # go on from the first hit: each text is scanned once per group
                hit_groups += 1
                hits += [m.group(0) for m in pattern.finditer(text, first.start())]
        return hit_groups, list(dict.fromkeys(hits)), veto

    def check(self, text: str) -> tuple[bool, list[str], str]:
        """As a hard gate: (passes, keyword hits, why it failed or '')."""
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
    threshold_source: str  # "config" | "label-free" (with which examples it left out: `threshold_sample`)
    prototypes: np.ndarray  # (1 + n_examples, dim): description then examples
    prototype_texts: tuple[str, ...]
    counters: np.ndarray  # (n_counterexamples, dim)
    counter_texts: tuple[str, ...]
    gate: KeywordGate
    keyword_mode: str = "evidence"  # "evidence" | "gate"
    profile: relevance.TopicProfile = relevance.TopicProfile(1.0, 0.75)
    combiner: Combiner = SHIPPED_COMBINER


@dataclass(frozen=True, slots=True)
class Recent:
    """Items of the last hours that matched some topic: candidates for story-level evidence
    (`relevance.neighbour_lift`). `topics[i]` are the topic ids item i matched; `times` in epoch seconds."""

    texts: tuple[str, ...]
    vectors: np.ndarray  # (m, dim), L2-normalised
    times: np.ndarray  # (m,)
    topics: tuple[frozenset[str], ...]

    @staticmethod
    def empty(dim: int) -> Recent:
        return Recent((), np.zeros((0, dim), dtype=np.float32), np.zeros(0), ())


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
    """The topic's keywords; a group without a term is no group, and each group keeps its config name."""
    any_ = keyword_pattern(topic.require_any)
    named = [(f"require_all[{i}]", p) for i, p in enumerate(keyword_pattern(g) for g in topic.require_all)
             if p is not None]
    return KeywordGate(any_, tuple(p for _, p in named), keyword_pattern(topic.exclude),
                       names=(("require_any",) if any_ is not None else ()) + tuple(n for n, _ in named))


def missed_groups(gate: KeywordGate, texts: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Per text, the names of the keyword groups it has no hit in (`KeywordGate.names`); empty: the text meets
    the topic's keyword requirement (a topic without keywords: every text)."""
    return tuple(tuple(name for name, pattern in zip(gate.names, gate.groups, strict=True)
                       if pattern.search(text) is None) for text in texts)


def keyword_features(gate: KeywordGate, texts: Sequence[str]) -> np.ndarray:
    """The `kw` feature of each text (share of keyword groups with a hit, centred; see relevance)."""
    n = len(gate.groups)
    return np.array([relevance.keyword_feature(gate.evidence(t)[0], n) for t in texts], dtype=np.float64)


def raw_scores(vectors: np.ndarray, prototypes: np.ndarray, counters: np.ndarray,
               combiner: Combiner = SHIPPED_COMBINER
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(score bound, best prototype index, best prototype similarity, best counterexample index, its
    similarity) for each row of `vectors`, from the vectors alone. The score is the combiner's
    probability with the keyword evidence at its most favourable (every group hit), so it is an upper
    bound of the final score when the keyword weight is positive: a cheap prefilter (one matrix product)
    before `match_texts` gives exact verdicts. Pure numpy; deterministic."""
    prof = relevance.profile(prototypes, counters)
    kw = np.full(vectors.shape[0], 0.5 if combiner.weights[list(combiner.names).index("kw")] >= 0 else -0.5) \
        if "kw" in combiner.names else np.zeros(vectors.shape[0])
    sc = relevance.features(vectors, prototypes, counters, prof, kw)
    best = sc.column("best")
    anti = sc.column("anti") + best if counters.shape[0] else np.full(vectors.shape[0], -1.0)
    return (combiner.probability(sc.x), sc.best_idx, best, np.maximum(sc.counter_idx, 0), anti)


def label_free_threshold(prototypes: np.ndarray, counters: np.ndarray, example_kw: Sequence[float] | None = None,
                         combiner: Combiner = SHIPPED_COMBINER, *, keep: Sequence[bool] | None = None) -> float:
    """The label-free threshold of `relevance.example_threshold` (example keyword features default to
    neutral; `keep`: the examples it is taken over, `threshold_sample`); 0.5 when the topic has no example."""
    kw = list(example_kw) if example_kw is not None else [0.0] * (prototypes.shape[0] - 1)
    th = relevance.example_threshold(combiner, prototypes, counters, kw, keep=keep)
    return 0.5 if th is None else float(round(th, 4))


@dataclass(frozen=True, slots=True)
class ThresholdSample:
    """The examples a topic's label-free threshold is taken over (`threshold_sample`)."""

    keep: tuple[bool, ...]  # one flag per example
    source: str  # the threshold's source in a verdict's reason: "label-free", and which examples it left out
    missed: tuple[tuple[str, ...], ...]  # per example, the keyword groups it misses (`missed_groups`)


def threshold_sample(gate: KeywordGate, examples: Sequence[str]) -> ThresholdSample:
    """The label-free threshold is taken over the examples that meet the topic's own keyword requirement (a
    hit in every keyword group: `require_any`, each `require_all` group). An example that misses a group gets
    strongly negative keyword evidence and scores near 0: it says nothing about where the topic's matches lie
    but drags the 10th percentile down (two such examples of ten set a threshold of 0.001, docs/
    topic-relevance.md), so it is left out, as if the topic did not have it (it stays a prototype: items are
    still compared with it). With fewer than MIN_THRESHOLD_EXAMPLES examples meeting the requirement every
    example counts, and the source says so. A topic without keywords keeps every example."""
    missed = missed_groups(gate, examples)
    hits = tuple(not m for m in missed)
    n, kept = len(hits), sum(hits)
    if kept == n:
        return ThresholdSample(hits, "label-free", missed)
    if kept < MIN_THRESHOLD_EXAMPLES:
        return ThresholdSample((True,) * n, f"label-free from every example: only {kept} of {n} contain the keywords",
                               missed)
    return ThresholdSample(hits, f"label-free, {n - kept} of {n} examples without the keywords left out", missed)


def example_warnings(topic: TopicConfig) -> list[str]:
    """Valid but probably unintended, in words for the admin (`monitor config check`, the topic editor, the
    admin API): each example that contains no keyword of one of the topic's keyword groups, and what that does
    to the label-free threshold (`threshold_sample`). None when the topic's threshold is configured."""
    if topic.threshold is not None:
        return []
    sample = threshold_sample(compile_gate(topic), topic.examples)
    n_with = sum(not m for m in sample.missed)
    out = []
    for i, (text, missing, kept) in enumerate(zip(topic.examples, sample.missed, sample.keep, strict=True)):
        if not missing:
            continue
        effect = ("it is left out of the label-free threshold" if not kept else
                  f"only {n_with} of {len(topic.examples)} examples contain the keywords, too few to leave it "
                  "out, so it lowers the label-free threshold")
        if topic.keyword_mode == "gate":
            effect += " (and with keyword_mode = \"gate\" no item like it can match)"
        out.append(f"topics[{topic.id!r}].examples[{i}] ({_short(text, 60)!r}) contains none of "
                   f"{' and none of '.join(missing)}: {effect}; add a keyword to it or to {' and '.join(missing)}")
    return out


def compile_topics(topics: Sequence[TopicConfig], embedder, *,  # type: ignore[no-untyped-def]
                   combiner: Combiner = SHIPPED_COMBINER) -> TopicSet:
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
    return TopicSet(model_id=embedder.model_id, topics=tuple(
        compile_topic(t, vecs[start:mid], vecs[mid:end], combiner=combiner)
        for t, (start, mid, end) in zip(topics, spans, strict=True)))


def compile_topic(t: TopicConfig, prototypes: np.ndarray, counters: np.ndarray, *,
                  combiner: Combiner = SHIPPED_COMBINER) -> CompiledTopic:
    """One topic from its already encoded texts (`prototypes`: description then examples)."""
    gate = compile_gate(t)
    if t.threshold is not None:
        threshold, source = float(t.threshold), "config"
    else:
        sample = threshold_sample(gate, t.examples)
        threshold = label_free_threshold(prototypes, counters, keyword_features(gate, t.examples), combiner,
                                         keep=sample.keep)
        source = sample.source
    return CompiledTopic(
        id=t.id, name=t.name, threshold=threshold, threshold_source=source,
        prototypes=prototypes, prototype_texts=(t.description, *t.examples),
        counters=counters, counter_texts=tuple(t.counterexamples), gate=gate, keyword_mode=t.keyword_mode,
        profile=relevance.profile(prototypes, counters), combiner=combiner)


def score_topic(t: CompiledTopic, texts: Sequence[str], vectors: np.ndarray
                ) -> tuple[np.ndarray, relevance.Scored, list[tuple[int, list[str], str | None]]]:
    """(probabilities, features, keyword evidence per text) of `texts` for one compiled topic, before the
    keyword gate / veto is applied."""
    ev = [t.gate.evidence(x) for x in texts]
    n_groups = len(t.gate.groups)
    kw = np.array([relevance.keyword_feature(e[0], n_groups) for e in ev], dtype=np.float64)
    sc = relevance.features(vectors, t.prototypes, t.counters, t.profile, kw)
    return t.combiner.probability(sc.x), sc, ev


def allowed(t: CompiledTopic, evidence: Sequence[tuple[int, list[str], str | None]]) -> np.ndarray:
    """Per text of `evidence` (`score_topic`'s keyword evidence): whether the topic's keywords let it match at
    all: no `exclude` veto and, with `keyword_mode = "gate"`, a hit in every group."""
    n_groups = len(t.gate.groups)
    return np.array([e[2] is None and (t.keyword_mode != "gate" or e[0] == n_groups) for e in evidence], dtype=bool)


def _logit(p: np.ndarray | float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(q / (1 - q))


def own_logits(t: CompiledTopic, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    """Log-odds of `texts` for topic `t` on their own evidence; -inf where the keyword veto (or, with
    `keyword_mode = "gate"`, a missing group) rules the text out: such a text lends no evidence."""
    if len(texts) == 0:
        return np.zeros(0)
    prob, _sc, ev = score_topic(t, texts, vectors)
    ok = allowed(t, ev)
    return np.where(ok, _logit(prob), -np.inf)


def story_lift(t: CompiledTopic, logits: np.ndarray, vectors: np.ndarray, times: np.ndarray, texts: Sequence[str],
               recent: Recent | None) -> tuple[relevance.Lift, list[str]]:
    """`relevance.neighbour_lift` of a batch for one topic: the candidates are the batch's own items (their
    own evidence: an earlier item of the batch can lift a later one) and the recent items that matched the
    topic, rescored on their own evidence. Returns the lift and the candidates' texts (for the reason)."""
    pool_texts = list(texts)
    pool_vecs, pool_logits, pool_times = [vectors], [logits], [np.asarray(times, dtype=np.float64)]
    if recent is not None and recent.texts:
        keep = [i for i, tops in enumerate(recent.topics) if t.id in tops]
        if keep:
            r_texts = [recent.texts[i] for i in keep]
            r_vecs = recent.vectors[keep]
            pool_texts += r_texts
            pool_vecs.append(r_vecs)
            pool_logits.append(own_logits(t, r_texts, r_vecs))
            pool_times.append(np.asarray(recent.times, dtype=np.float64)[keep])
    pool = relevance.Neighbours(np.vstack(pool_vecs), np.concatenate(pool_logits), np.concatenate(pool_times))
    lift = relevance.neighbour_lift(vectors, times, logits, pool, threshold_logit=float(_logit(t.threshold)))
    return lift, pool_texts


def match_texts(ids: Sequence[int], texts: Sequence[str], vectors: np.ndarray, topics: TopicSet,
                *, use_gates: bool = True, times: Sequence[float] | np.ndarray | None = None,
                recent: Recent | None = None) -> list[TopicMatch]:
    """One TopicMatch per (text, topic), in input order then topic order. `use_gates=False` ignores the
    keyword veto and gates (for evaluation); keyword evidence still counts. With `times` (epoch seconds of
    publication) story-level evidence counts too: from the batch's earlier items and from `recent`."""
    out: list[TopicMatch] = []
    if len(ids) == 0:
        return out
    per_topic = []
    for t in topics.topics:
        prob, sc, ev = score_topic(t, texts, vectors)
        lifted = None
        if times is not None:
            ok = allowed(t, ev)
            own = np.where(ok, _logit(prob), -np.inf)
            lift, pool_texts = story_lift(t, own, vectors, np.asarray(times, dtype=np.float64), texts, recent)
            prob = np.where(lift.logits > 0, relevance.sigmoid(_logit(prob) + lift.logits), prob)
            lifted = [(float(v), pool_texts[j] if j >= 0 else "", float(c))
                      for v, j, c in zip(lift.logits, lift.source, lift.cosine, strict=True)]
        labels = [_EVIDENCE_LABELS.get(n, n) for n in t.combiner.names]
        cols = (sc.column("best").tolist(), sc.column("anti").tolist(), sc.column("hinge").tolist(),
                sc.best_idx.tolist(), sc.counter_idx.tolist(), t.combiner.contributions(sc.x).tolist())
        per_topic.append((prob.tolist(), ev, labels, cols, lifted))
    for row, item_id in enumerate(ids):
        for t, (prob, ev, labels, cols, lifted) in zip(topics.topics, per_topic, strict=True):
            s = round(prob[row], 4)
            hit_groups, hits, veto = ev[row]
            why = ""
            if use_gates and veto is not None:
                why = f"excluded keyword {veto!r}"
            elif use_gates and t.keyword_mode == "gate" and hit_groups < len(t.gate.groups):
                why = "not every keyword group has a hit"
            matched = not why and s >= t.threshold
            out.append(TopicMatch(item_id=item_id, topic_id=t.id, score=s, matched=matched,
                                  reason=_reason(t, labels, [c[row] for c in cols], s, hits, hit_groups, why,
                                                 lifted[row] if lifted is not None else None)))
    return out


def _reason(t: CompiledTopic, labels: list[str], row: list, s: float, hits: list[str],  # type: ignore[type-arg]
            hit_groups: int, why: str, lifted: tuple[float, str, float] | None = None) -> str:
    best, anti, hinge, best_idx, counter_idx, contrib = row
    parts = [f"score {s:.3f} {'>=' if s >= t.threshold else '<'} threshold {t.threshold:.3f} ({t.threshold_source})",
             f"nearest example {_short(t.prototype_texts[best_idx])!r} ({best:.2f})"]
    if counter_idx >= 0 and hinge > 0:
        parts.append(f"closer to counterexample {_short(t.counter_texts[counter_idx])!r} ({best + anti:.2f})")
    n_groups = len(t.gate.groups)
    if n_groups:
        parts.append(f"keywords {hit_groups}/{n_groups} groups" + (": " + ", ".join(hits) if hits else ""))
    merged: dict[str, float] = {}
    for label, v in zip(labels, contrib, strict=True):
        merged[label] = merged.get(label, 0.0) + v
    if lifted is not None and lifted[0] > 0:
        parts.append(f"similar recent item on topic {_short(lifted[1])!r} ({lifted[2]:.2f})")
        merged["similar recent item"] = lifted[0]
    parts.append("evidence vs an average item (log-odds) "
                 + ", ".join(f"{k} {v:+.1f}" for k, v in sorted(merged.items(), key=lambda kv: -abs(kv[1]))))
    if why:
        parts.append(f"gate: {why}")
    return "; ".join(parts)


def match_items(items: Sequence[ItemRecord], vectors: np.ndarray, topics: TopicSet,
                recent: Recent | None = None) -> list[TopicMatch]:
    """Every (item, topic) verdict; `vectors` is aligned with `items` (from `embed.ensure_vectors`).
    With `recent` (`recent_matches`; `Recent.empty(dim)` for none) story-level evidence counts too, from
    the batch's earlier items and from `recent`, as the service matches; without it, own evidence only
    (what the admin backtest's prefilter bounds)."""
    times = np.array([it.published_at.timestamp() for it in items], dtype=np.float64) if recent is not None else None
    return match_texts([it.id for it in items], [it.text for it in items], vectors, topics, times=times,
                       recent=recent)


def recent_matches(session: Session, model_id: str, dim: int, items: Sequence[ItemRecord],
                   window_h: float = relevance.NEIGHBOUR_WINDOW_H) -> Recent:
    """The stored items that matched any topic and were published in the `window_h` hours before the
    latest of `items` (and after the earliest minus `window_h`), with their vectors for `model_id`:
    the candidates of story-level evidence for a batch. Items without a stored vector are left out."""
    if not items:
        return Recent.empty(dim)
    lo = naive_utc(min(it.published_at for it in items) - timedelta(hours=window_h))
    hi = naive_utc(max(it.published_at for it in items))
    batch = {it.id for it in items}  # filtered here, not in SQL: a batch has up to 1,024 ids
    rows = session.execute(
        select(Item.id, Item.title, Item.summary, Item.published_at, Match.topic_id, ItemVector.vector)
        .join(Match, Match.item_id == Item.id)
        .join(ItemVector, (ItemVector.item_id == Item.id) & (ItemVector.model_id == model_id))
        .where(Item.published_at >= lo, Item.published_at < hi)).all()
    by_id: dict[int, tuple[str, float, bytes, set[str]]] = {}
    for item_id, title, summary, published, topic_id, blob in rows:
        if item_id in batch:
            continue
        if item_id not in by_id:
            when = published.replace(tzinfo=UTC) if published.tzinfo is None else published
            by_id[item_id] = (item_text(title, summary or ""), when.timestamp(), blob, set())
        by_id[item_id][3].add(topic_id)
    if not by_id:
        return Recent.empty(dim)
    vals = [by_id[k] for k in sorted(by_id)]
    vecs = np.stack([np.frombuffer(v[2], dtype=np.float32) for v in vals])
    if vecs.shape[1] != dim:
        return Recent.empty(dim)
    return Recent(tuple(v[0] for v in vals), vecs, np.array([v[1] for v in vals]),
                  tuple(frozenset(v[3]) for v in vals))


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
