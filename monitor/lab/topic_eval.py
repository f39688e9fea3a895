"""Evaluation of topic matching against labelled items (pure: no I/O; the CLI reads the files).

Items are in the shape of `shared/data/topics/dev_items.jsonl` (`id, date, feed, title, summary, link`),
labels in the shape of `dev_labels.jsonl` (`id, labels: {topic_id: 0|1}`).

Keyword baseline (a Google-Alerts-style reference): an item matches a topic when the topic's own keyword
gates pass (`require_any`, every `require_all` group, no `exclude` term). A topic without any gate terms
uses a default query: every word of its `name` must occur (e.g. "Doha talks" -> Doha AND talks).

Threshold calibration (`calibrate_threshold`): on a calibration set, take the cut-off that maximises F1;
among equal F1 the highest one; the stored value is the midpoint between that score and the next lower
distinct score, so an unseen item scoring in between is treated like the admitted one.

Honest protocol (`protocols`). Labels are used to fit or calibrate ONLY when the item is dated before
FIT_CUTOFF (2023-11-16); anything later is for final reporting with the shipped configuration only. Every
figure is given three ways, each beside the keyword baseline on the same items:

    dev         the combiner fitted and each topic's threshold calibrated on all labelled items (optimistic)
    time_split  fitted and calibrated on items before the split day (2023-11-01), measured from that day on
    no_label    leave-one-topic-out: the combiner fitted on the OTHER topics only; the measured topic's
                threshold from the label-free rule (its own examples); measured on all its items: what an
                admin's new topic, written from its definition alone, gets

Beside each protocol's figures, `ceiling`: the same scores with each topic's cut chosen on the measured items
themselves (an oracle, not a result). On the items' own evidence no threshold rule can beat it with that ranking,
so a ceiling below a target says only a better ranking (features, texts, model) can reach it. With story-level
evidence the neighbours are lent at the label-free threshold, and the lenders' threshold moves the ranking too, so
there it is the ceiling of that ranking, not of every threshold pair (docs/topic-relevance.md, "Seventh round").

Story-level evidence (`relevance.neighbour_lift`, as the service applies it) needs the items around the
labelled ones: with a `Stream` (unlabelled items of the captured stream, their vectors and times) each
protocol lifts an item by its on-topic neighbours of the 72 hours before it, the neighbours scored by that
protocol's own combiner and threshold. Without one the figures are those of the items' own evidence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from monitor.config import TopicConfig
from monitor.errors import MonitorError
from monitor.ingest.parse import MAX_SUMMARY_CHARS, MAX_TITLE_CHARS, clean_text
from monitor.records import item_text
from monitor.signal import match, relevance
from monitor.signal.match import KeywordGate, compile_gate, keyword_pattern

FIT_CUTOFF = "2023-11-16"
SPLIT_DAY = "2023-11-01"


class EvalDataError(MonitorError):
    """An evaluation file is malformed."""


@dataclass(frozen=True, slots=True)
class EvalItem:
    id: str
    date: str
    feed: str
    title: str
    summary: str

    @property
    def text(self) -> str:
        return item_text(self.title, self.summary)


@dataclass(frozen=True, slots=True)
class Scores:
    precision: float
    recall: float
    f1: float
    support: int

    def as_dict(self) -> dict[str, float | int]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "f1": round(self.f1, 4), "support": self.support}


def _item(d: Mapping[str, object], date_key: str) -> EvalItem:
    """An item from one JSON row (`id`, `title`, optional `summary` and `feed`), its date read from `date_key`;
    texts cleaned as the service cleans them."""
    return EvalItem(id=str(d["id"]), date=str(d.get(date_key, "")), feed=str(d.get("feed", "")),
                    title=clean_text(str(d["title"]), MAX_TITLE_CHARS),
                    summary=clean_text(str(d.get("summary") or ""), MAX_SUMMARY_CHARS))


def parse_items(lines: Iterable[str], source: str = "items") -> list[EvalItem]:
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(_item(json.loads(line), "date"))
        except (ValueError, KeyError, TypeError) as e:
            raise EvalDataError(f"{source}:{n}: not an item line (needs JSON with id and title): {e}") from None
    return out


def parse_labels(lines: Iterable[str], source: str = "labels") -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out[str(d["id"])] = {str(k): int(v) for k, v in d["labels"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EvalDataError(f"{source}:{n}: not a label line (needs id and labels {{topic: 0|1}}): {e}") from None
    return out


def scores(predicted: set[str], gold: set[str]) -> Scores:
    """Precision, recall, F1 of one topic (0 where undefined) and the support (number of gold positives)."""
    tp = len(predicted & gold)
    p = tp / len(predicted) if predicted else 0.0
    r = tp / len(gold) if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return Scores(p, r, f, len(gold))


def evaluate(predicted: Mapping[str, set[str]], labels: Mapping[str, Mapping[str, int]],
             topic_ids: Sequence[str], item_ids: Iterable[str] | None = None) -> dict[str, object]:
    """{"topics": {id: scores}, "macro_f1": m} over `item_ids` (default: every labelled item)."""
    universe = set(labels) if item_ids is None else set(item_ids) & set(labels)
    topics: dict[str, dict[str, float | int]] = {}
    f1s = []
    for tid in topic_ids:
        gold = {i for i in universe if labels[i].get(tid) == 1}
        s = scores(predicted.get(tid, set()) & universe, gold)
        topics[tid] = s.as_dict()
        f1s.append(s.f1)
    return {"topics": topics, "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else 0.0}


def baseline_gate(topic: TopicConfig) -> KeywordGate:
    """The keyword-only matcher of a topic: its own gates, or all words of its name."""
    gate = compile_gate(topic)
    if gate.require_any is None and not gate.require_all:
        words = re.findall(r"\w+", topic.name)
        named = [(f"name word {w!r}", p) for w, p in ((w, keyword_pattern([w])) for w in words) if p is not None]
        gate = KeywordGate(None, tuple(p for _, p in named), gate.exclude, names=tuple(n for n, _ in named))
    return gate


def keyword_baseline(items: Sequence[EvalItem], topics: Sequence[TopicConfig]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for t in topics:
        gate = baseline_gate(t)
        out[t.id] = {it.id for it in items if gate.check(it.text)[0]}
    return out


def calibrate_threshold(scored: Sequence[tuple[float, int]]) -> float:
    """The F1-maximising threshold for (score, gold 0|1) pairs, per the module docstring. 1.0 when there
    are no positives (nothing should match)."""
    if not any(g for _, g in scored):
        return 1.0
    ordered = sorted(scored, key=lambda x: -x[0])
    total_pos = sum(g for _, g in ordered)
    distinct = sorted({s for s, _ in ordered}, reverse=True)
    best_f, best_i = -1.0, 0
    tp = n = 0
    pos = 0
    for i, cut in enumerate(distinct):
        while pos < len(ordered) and ordered[pos][0] >= cut:
            tp += ordered[pos][1]
            n += 1
            pos += 1
        p, r = tp / n, tp / total_pos
        f = 2 * p * r / (p + r) if p + r else 0.0
        if f > best_f + 1e-12:
            best_f, best_i = f, i
    cut = distinct[best_i]
    lower = distinct[best_i + 1] if best_i + 1 < len(distinct) else cut
    return round((cut + lower) / 2, 5)


def before(item: EvalItem, day: datetime) -> bool:
    return item.date[:10] < day.strftime("%Y-%m-%d")


def merge(parts: Sequence[tuple[list[EvalItem], dict[str, dict[str, int]]]]
          ) -> tuple[list[EvalItem], dict[str, dict[str, int]]]:
    """Items and labels of several (items, labels) files: labelled items only, first occurrence of an id
    wins; an id labelled in two files must agree."""
    items: list[EvalItem] = []
    labels: dict[str, dict[str, int]] = {}
    for its, labs in parts:
        for it in its:
            if it.id not in labs:
                continue
            if it.id in labels:
                if labels[it.id] != labs[it.id]:
                    raise EvalDataError(f"item {it.id} has different labels in two label files")
                continue
            labels[it.id] = labs[it.id]
            items.append(it)
    return items, labels


@dataclass(frozen=True, slots=True)
class Stream:
    """Unlabelled items around the labelled ones (the captured stream): candidates of story-level evidence."""

    texts: tuple[str, ...]
    vectors: np.ndarray  # (m, dim)
    times: np.ndarray  # (m,) epoch seconds


@dataclass(frozen=True, slots=True)
class Neighbourhood:
    """What story-level evidence needs besides the features: the labelled items' vectors and times, and for
    each topic the stream items' features and keyword verdicts (`stream_pairs`)."""

    vectors: np.ndarray
    times: np.ndarray
    stream: Stream
    stream_x: Mapping[str, np.ndarray]
    stream_allowed: Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class TopicPairs:
    """Features of every item for one compiled topic, with the gold labels and keyword verdicts."""

    topic: match.CompiledTopic
    x: np.ndarray  # (n, len(relevance.FEATURES))
    gold: np.ndarray  # (n,) 0|1
    allowed: np.ndarray  # (n,) bool: no exclude veto (and every group hit when keyword_mode = "gate")


def _features(t: match.CompiledTopic, texts: Sequence[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _prob, sc, ev = match.score_topic(t, texts, vectors)
    return sc.x, match.allowed(t, ev)


def topic_pairs(items: Sequence[EvalItem], labels: Mapping[str, Mapping[str, int]], vectors: np.ndarray,
                topic_set: match.TopicSet) -> list[TopicPairs]:
    texts = [it.text for it in items]
    out = []
    for t in topic_set.topics:
        x, allowed = _features(t, texts, vectors)
        gold = np.array([labels[it.id].get(t.id, 0) for it in items])
        out.append(TopicPairs(t, x, gold, allowed))
    return out


@dataclass(frozen=True, slots=True)
class FitOnly:
    """Hand-read (item, topic) pairs of OTHER topics (bench/data/analogs*: topics written from their definitions,
    candidates read for `on_topic`): each row's features against its own topic, its label, keyword verdict and
    day. Only ever fitted on, never measured: `protocols(..., fit_only=)` adds the rows dated before each fit's
    cut-off to the combiner's fit (dev and no labels: before FIT_CUTOFF; the time split: before its split day).
    An item may also be a measured item (the stream is shared): its row here is its pair with ANOTHER topic,
    whose features are relative to that topic, so it is kept (unlike `alert_eval.folds`, which drops an analog
    row whose item is measured, because the development model's features are the item's own)."""

    x: np.ndarray  # (n, len(relevance.FEATURES))
    gold: np.ndarray  # (n,) 0|1
    allowed: np.ndarray  # (n,) bool
    days: np.ndarray  # (n,) "YYYY-MM-DD"

    @staticmethod
    def join(parts: Sequence[FitOnly]) -> FitOnly:
        return FitOnly(np.vstack([p.x for p in parts]), np.concatenate([p.gold for p in parts]),
                       np.concatenate([p.allowed for p in parts]), np.concatenate([p.days for p in parts]))


def fit_only_pairs(texts: Sequence[str], vectors: np.ndarray, topic_ids: Sequence[str], gold: Sequence[int],
                   days: Sequence[str], topic_set: match.TopicSet) -> FitOnly:
    """The `FitOnly` rows of labelled (text, topic) pairs, each scored against its own topic of `topic_set`."""
    compiled = {t.id: t for t in topic_set.topics}
    unknown = sorted(set(topic_ids) - set(compiled))
    if unknown:
        raise EvalDataError(f"fit-only labels name topics that are not compiled: {', '.join(unknown)}")
    x = np.zeros((len(texts), len(relevance.FEATURES)))
    allowed = np.zeros(len(texts), dtype=bool)
    for tid, t in compiled.items():
        idx = [i for i, k in enumerate(topic_ids) if k == tid]
        if idx:
            x[idx], allowed[idx] = _features(t, [texts[i] for i in idx], vectors[idx])
    return FitOnly(x, np.asarray(gold, dtype=int), allowed, np.array([d[:10] for d in days]))


def item_time(item: EvalItem) -> float:
    """Epoch seconds of an item's date (UTC when no offset is given)."""
    when = datetime.fromisoformat(item.date.strip().replace(" ", "T", 1))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def neighbourhood(items: Sequence[EvalItem], vectors: np.ndarray, stream: Stream,
                  topic_set: match.TopicSet) -> Neighbourhood:
    """The labelled items' vectors and times with the stream's features for every topic."""
    xs, oks = {}, {}
    for t in topic_set.topics:
        xs[t.id], oks[t.id] = _features(t, stream.texts, stream.vectors)
    return Neighbourhood(np.asarray(vectors), np.array([item_time(it) for it in items]), stream, xs, oks)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(q / (1 - q))


def probabilities(p: TopicPairs, combiner: relevance.Combiner, threshold: float,
                  near: Neighbourhood | None) -> np.ndarray:
    """P(on topic) of the labelled items for one topic: the combiner's, lifted by story-level evidence
    (neighbours scored by the same combiner, on topic by the same threshold) when `near` is given."""
    prob = combiner.probability(p.x)
    if near is None:
        return prob
    own = np.where(p.allowed, _logit(prob), -np.inf)
    pool = np.where(near.stream_allowed[p.topic.id],
                    _logit(combiner.probability(near.stream_x[p.topic.id])), -np.inf)
    lift = relevance.neighbour_lift(near.vectors, near.times, own,
                                    relevance.Neighbours(near.stream.vectors, pool, near.stream.times),
                                    threshold_logit=float(_logit(np.array(threshold))))
    return np.where(lift.logits > 0, relevance.sigmoid(_logit(prob) + lift.logits), prob)


def _f1(pred: np.ndarray, gold: np.ndarray) -> Scores:
    tp = int((pred & (gold == 1)).sum())
    p = tp / int(pred.sum()) if pred.sum() else 0.0
    r = tp / int(gold.sum()) if gold.sum() else 0.0
    return Scores(p, r, 2 * p * r / (p + r) if p + r else 0.0, int(gold.sum()))


def _table(per_topic: Mapping[str, Scores]) -> dict[str, object]:
    f1s = [s.f1 for s in per_topic.values()]
    return {"topics": {k: v.as_dict() for k, v in per_topic.items()},
            "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else 0.0}


def _fit(pairs: Sequence[TopicPairs], mask: np.ndarray, names: Sequence[str], l2: float,
         fit_only: FitOnly | None = None, before_day: str = FIT_CUTOFF) -> relevance.Combiner:
    xs = [p.x[mask & p.allowed] for p in pairs]
    ys = [p.gold[mask & p.allowed] for p in pairs]
    if fit_only is not None:
        keep = fit_only.allowed & (fit_only.days < before_day)
        xs.append(fit_only.x[keep])
        ys.append(fit_only.gold[keep])
    return relevance.fit(np.vstack(xs), np.concatenate(ys), names, l2=l2)


def _oracle(p: TopicPairs, combiner: relevance.Combiner, lender_threshold: float, near: Neighbourhood | None,
            mask: np.ndarray) -> tuple[Scores, float]:
    """The best F1 of one topic's scores on the items in `mask` with the cut chosen on those same items (the
    ranking's ceiling), and that cut. Story-level lenders are on topic by `lender_threshold`, as measured."""
    s = np.where(p.allowed, probabilities(p, combiner, lender_threshold, near), -1.0)
    cut = relevance.best_cut(s[mask], p.gold[mask])
    return _f1((s >= cut) & p.allowed & mask, p.gold * mask), cut


def _label_free(p: TopicPairs, combiner: relevance.Combiner) -> float:
    t = p.topic
    examples = t.prototype_texts[1:]
    th = relevance.example_threshold(combiner, t.prototypes, t.counters, match.keyword_features(t.gate, examples),
                                     keep=match.threshold_sample(t.gate, examples).keep)
    return 0.5 if th is None else th


def protocols(items: Sequence[EvalItem], pairs: Sequence[TopicPairs], baseline: Mapping[str, set[str]], *,
              names: Sequence[str], l2: float, split_day: str = SPLIT_DAY,
              cutoff: str = FIT_CUTOFF, near: Neighbourhood | None = None,
              fit_only: FitOnly | None = None) -> dict[str, object]:
    """The three honest figures (module docstring), each with the keyword baseline on the same items, and
    the combiner fitted on every labelled item before `cutoff` (what `--fit` ships). With `near`, every
    figure counts story-level evidence (thresholds are set on the items' own evidence, as the service's).
    With `fit_only`, other topics' labelled pairs join every fit (those dated before its cut-off)."""
    dates = np.array([it.date[:10] for it in items])
    ids = np.array([it.id for it in items])
    usable = dates < cutoff
    early, late = usable & (dates < split_day), usable & (dates >= split_day)
    if not early.any() or not late.any():
        raise EvalDataError(f"the time split needs labelled items both before and from {split_day} "
                            f"(and before {cutoff})")

    def base(mask: np.ndarray) -> dict[str, object]:
        return _table({p.topic.id: _f1(np.isin(ids, list(baseline[p.topic.id])) & mask, p.gold * mask)
                       for p in pairs})

    def measure(combiner: relevance.Combiner, ths: Mapping[str, float], mask: np.ndarray) -> dict[str, object]:
        res = _table({p.topic.id: _f1((probabilities(p, combiner, ths[p.topic.id], near) >= ths[p.topic.id])
                                      & p.allowed & mask, p.gold * mask) for p in pairs})
        res["thresholds"] = {k: round(v, 4) for k, v in ths.items()}
        return res

    def ceiling(combiners: Mapping[str, relevance.Combiner], ths: Mapping[str, float],
                mask: np.ndarray) -> dict[str, object]:
        best = {p.topic.id: _oracle(p, combiners[p.topic.id], ths[p.topic.id], near, mask) for p in pairs}
        res = _table({k: v[0] for k, v in best.items()})
        res["thresholds"] = {k: round(v[1], 4) for k, v in best.items()}
        return res

    out: dict[str, object] = {}
    for name, fit_mask, eval_mask, day in (("dev", usable, usable, cutoff), ("time_split", early, late, split_day)):
        c = _fit(pairs, fit_mask, names, l2, fit_only, day)
        calibrated = {p.topic.id: relevance.best_cut(np.where(p.allowed, c.probability(p.x), -1.0)[fit_mask],
                                                     p.gold[fit_mask]) for p in pairs}
        free = {p.topic.id: _label_free(p, c) for p in pairs}
        out[name] = {"calibrated": measure(c, calibrated, eval_mask), "label_free": measure(c, free, eval_mask),
                     "ceiling": ceiling({p.topic.id: c for p in pairs}, free, eval_mask),
                     "baseline": base(eval_mask), "items": int(eval_mask.sum())}
    loto: dict[str, Scores] = {}
    ths, loto_fits = {}, {}
    for p in pairs:
        c = loto_fits[p.topic.id] = _fit([q for q in pairs if q is not p], usable, names, l2, fit_only, cutoff)
        ths[p.topic.id] = _label_free(p, c)
        loto[p.topic.id] = _f1((probabilities(p, c, ths[p.topic.id], near) >= ths[p.topic.id]) & p.allowed & usable,
                               p.gold * usable)
    nl = _table(loto)
    nl["thresholds"] = {k: round(v, 4) for k, v in ths.items()}
    out["no_label"] = {"label_free": nl, "ceiling": ceiling(loto_fits, ths, usable), "baseline": base(usable),
                       "items": int(usable.sum())}
    out["fitted"] = _fit(pairs, usable, names, l2, fit_only, cutoff)
    return out


def shipped(items: Sequence[EvalItem], pairs: Sequence[TopicPairs], baseline: Mapping[str, set[str]],
            mask: np.ndarray, near: Neighbourhood | None = None) -> dict[str, object]:
    """The compiled topics as configured (their combiner and thresholds) on the items in `mask`."""
    ids = np.array([it.id for it in items])
    res = _table({p.topic.id: _f1((probabilities(p, p.topic.combiner, p.topic.threshold, near) >= p.topic.threshold)
                                  & p.allowed & mask, p.gold * mask) for p in pairs})
    res["thresholds"] = {p.topic.id: p.topic.threshold for p in pairs}
    res["baseline"] = _table({p.topic.id: _f1(np.isin(ids, list(baseline[p.topic.id])) & mask, p.gold * mask)
                              for p in pairs})
    res["items"] = int(mask.sum())
    return res


# Specification checks (`monitor eval rulings`): invented items written from a topic guide's rulings, each
# labelled for every topic and tagged with the ruling that decides it (bench/data/topics/rulings_check*.jsonl).
# They test whether the topics follow the written specification on the cases it was written for; they are not
# a sample of news (their share of positives is chosen by the writer), so they are reported per ruling, as
# positives matched and negatives wrongly matched, never fitted or calibrated on.

@dataclass(frozen=True, slots=True)
class CheckItem:
    item: EvalItem
    labels: dict[str, int]
    ruling: str


def parse_checks(lines: Iterable[str], source: str = "checks") -> list[CheckItem]:
    """Rows `{id, title, summary, published, labels: {topic: 0|1}, ruling}` (summary and ruling optional)."""
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            item = _item(d, "published")
            labels = {str(k): int(v) for k, v in d["labels"].items()}
            if any(v not in (0, 1) for v in d["labels"].values()):
                raise ValueError("a label is not 0 or 1")
            out.append(CheckItem(item=item, labels=labels, ruling=str(d.get("ruling") or "-")))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EvalDataError(f"{source}:{n}: not a check line (needs JSON with id, title and labels "
                                f"{{topic: 0|1}}): {e}") from None
    return out


def checked_topics(checks: Sequence[CheckItem], configured: Sequence[str]) -> tuple[list[str], list[str]]:
    """(configured topics some check item labels, in configuration order; labelled topics not configured):
    a configured topic the file never labels is not measured (scoring it would count every item as a negative)."""
    labelled = {t for c in checks for t in c.labels}
    return [t for t in configured if t in labelled], sorted(labelled - set(configured))


@dataclass(frozen=True, slots=True)
class RulingCount:
    """One (ruling, topic) cell: gold positives and how many were matched; gold negatives and how many were
    matched anyway."""
    positives: int = 0
    matched: int = 0
    negatives: int = 0
    wrongly_matched: int = 0

    def add(self, gold: int, hit: bool) -> RulingCount:
        if gold:
            return RulingCount(self.positives + 1, self.matched + hit, self.negatives, self.wrongly_matched)
        return RulingCount(self.positives, self.matched, self.negatives + 1, self.wrongly_matched + hit)

    def as_dict(self) -> dict[str, int]:
        return {"positives": self.positives, "matched": self.matched, "negatives": self.negatives,
                "wrongly_matched": self.wrongly_matched}


def ruling_counts(checks: Sequence[CheckItem], predicted: Mapping[str, set[str]],
                  topic_ids: Sequence[str]) -> dict[str, dict[str, RulingCount]]:
    """Per ruling (sorted by name), per topic labelled there: positives matched and negatives
    wrongly matched by `predicted` (topic -> matched item ids)."""
    out: dict[str, dict[str, RulingCount]] = {}
    for c in checks:
        cells = out.setdefault(c.ruling, {})
        for t in topic_ids:
            if t in c.labels:
                cells[t] = cells.get(t, RulingCount()).add(c.labels[t], c.item.id in predicted.get(t, set()))
    return dict(sorted(out.items()))
