"""Fit and measure the alert model (monitor.signal.newsworthy) on development labels read by hand
(`monitor eval alerts`).

The labels (bench/data/stories/development_labels.jsonl) are the (item, topic) candidates of 2023-10-07..11-15
that the shipped topics matched or came close to (score >= 0.6 x threshold), each read in time order: on topic
or not, and which development it reports (an id shared by every report of the same development), or none for
commentary, reactions and recaps. From them:

* the development model learns from the candidates the topics matched (does it report a development on topic?);
* the same-development model learns from every pair of development reports of one topic at most `memory_h`
  apart (the same id or not);
* a policy is simulated per topic in time order over the candidates the topics matched: an item alerts when
  p(new) clears the threshold, and then joins what the topic told. An alert is right when it reports a
  development no earlier alert of its topic reported (JUDGING.md, with labels instead of a second reading).

Figures are reported fitted on all labels (optimistic), across topics (fit on prisoner-exchange, measured on
the others, and the reverse) and across time (fit before 11-01, measured on 11-01..15): the product meets topics
and weeks nobody labelled. The threshold is chosen on the cross-topic folds (the best lower development F1 of the
two measured halves), so those folds are not blind to the threshold, only to the weights; the time split is not
blind to it either (its weeks sit in those halves). The replay of the same weeks (`eval replay --labels`) scores
items the models were fitted on: an in-sample figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from monitor.lab.story_eval import EvalError, read_development_rows
from monitor.lab.topic_eval import FIT_CUTOFF as _CUTOFF_DAY
from monitor.records import ItemRecord
from monitor.signal.logistic import Logistic, fit_logistic
from monitor.signal.newsworthy import (
    DEVELOPMENT_FEATURES,
    SAME_FEATURES,
    AlertModel,
    Headline,
    Told,
    another_occurrence,
    development_features,
    same_features,
)

# labels from here on are for reporting only, never fitted (the same day as `monitor eval topics`)
FIT_CUTOFF = datetime.fromisoformat(_CUTOFF_DAY).replace(tzinfo=UTC)
TIME_SPLIT = datetime(2023, 11, 1, tzinfo=UTC)


AlertEvalError = EvalError  # a labels file that cannot be read or fitted on, named with its line


@dataclass(frozen=True, slots=True)
class Candidate:
    """A labelled (item, topic) candidate, with what the models need."""

    item: ItemRecord
    topic: str
    on_topic: bool
    dev: str | None  # development id; None for commentary, reactions, recaps and off-topic items
    kd: str | None
    headline: Headline
    vector: np.ndarray | None = None
    margin: float | None = None  # match score minus the topic's threshold
    matched: bool = True


def read_candidates(path: str | Path) -> list[Candidate]:
    """The labelled candidates of a development-labels file (`story_eval.read_development_rows`), by topic and
    date."""
    out = [Candidate(item=item, topic=lab.topic, on_topic=lab.on_topic, dev=lab.dev, kd=lab.kd,
                     headline=Headline.of(item.title)) for item, lab in read_development_rows(path)]
    out.sort(key=lambda c: (c.topic, c.item.published_at))
    return out


def development_rows(cands: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([development_features(c.headline, c.margin) for c in cands], dtype=np.float64)
    y = np.array([1.0 if c.dev else 0.0 for c in cands])
    return x, y


def same_rows(cands: Sequence[Candidate], memory_h: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of development reports of one topic at most `memory_h` hours apart (later, earlier)."""
    xs, ys = [], []
    for topic in sorted({c.topic for c in cands}):
        devs = [c for c in cands if c.topic == topic and c.dev and c.vector is not None]
        for j, c in enumerate(devs):
            for e in devs[:j]:
                gap_h = (c.item.published_at - e.item.published_at).total_seconds() / 3600.0
                if gap_h > memory_h or another_occurrence(c.headline, e.headline, gap_h):
                    continue  # too old to be remembered, or a rule already tells them apart
                xs.append(same_features(c.headline, e.headline, float(c.vector @ e.vector), gap_h))  # type: ignore[operator]
                ys.append(1.0 if c.dev == e.dev else 0.0)
    return np.array(xs, dtype=np.float64).reshape(-1, len(SAME_FEATURES)), np.array(ys)


def fit_model(cands: Sequence[Candidate], memory_h: float, threshold: float, l2: float = 5.0) -> AlertModel:
    late = [c for c in cands if c.item.published_at >= FIT_CUTOFF]
    if late:
        raise AlertEvalError(f"{len(late)} labels are dated {FIT_CUTOFF:%Y-%m-%d} or later: they are for reporting "
                             "only and are never fitted on")
    # the service judges only what its topics matched: the development model learns from that population
    xa, ya = development_rows([c for c in cands if c.matched])
    xb, yb = same_rows(cands, memory_h)
    return AlertModel(fit_logistic(xa, ya, DEVELOPMENT_FEATURES, l2=l2), fit_logistic(xb, yb, SAME_FEATURES, l2=l2),
                      threshold)


@dataclass(frozen=True, slots=True)
class PolicyResult:
    alerts: int
    right: int
    developments: int  # distinct (topic, development) among the matched candidates
    developments_alerted: int
    kd_pairs: int  # (kd, topic) pairs among the matched candidates
    kd_alerted: int

    @property
    def precision(self) -> float:
        return self.right / self.alerts if self.alerts else 0.0

    @property
    def recall(self) -> float:
        return self.developments_alerted / self.developments if self.developments else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"alerts": self.alerts, "right": self.right, "precision": round(self.precision, 4),
                "developments": self.developments, "developments_alerted": self.developments_alerted,
                "recall": round(self.recall, 4), "f1": round(self.f1, 4), "kd_pairs": self.kd_pairs,
                "kd_alerted": self.kd_alerted}


def simulate(cands: Sequence[Candidate], model: AlertModel, memory_h: float) -> PolicyResult:
    """Run the policy per topic in time order over the matched candidates and score it with the labels."""
    alerts = right = 0
    devs: set[tuple[str, str]] = set()
    alerted_devs: set[tuple[str, str]] = set()
    kds: set[tuple[str, str]] = set()
    kd_alerted: set[tuple[str, str]] = set()
    for topic in sorted({c.topic for c in cands}):
        told: list[tuple[Told, Candidate]] = []
        for c in (c for c in cands if c.topic == topic and c.matched and c.vector is not None):
            at = c.item.published_at.timestamp()
            if c.dev:
                devs.add((topic, c.dev))
                if c.kd:
                    kds.add((c.kd, topic))
            recent = [t for t, _c in told if at - t.at < memory_h * 3600.0]
            j = model.judge(c.headline, c.vector, at, c.margin, recent)  # type: ignore[arg-type]
            if j.p_new < model.threshold:
                continue
            alerts += 1
            if c.dev and (topic, c.dev) not in alerted_devs:
                right += 1
                alerted_devs.add((topic, c.dev))
            if c.dev and c.kd:
                kd_alerted.add((c.kd, topic))
            told.append((Told(c.vector, at, c.headline), c))  # type: ignore[arg-type]
    return PolicyResult(alerts, right, len(devs), len(alerted_devs), len(kds), len(kd_alerted & kds))


def development_auc(cands: Sequence[Candidate], model: AlertModel) -> float:
    """AUC of p(development) on the matched candidates: how well the development model ranks reports of a
    development above the rest (0.5 when one kind is missing). A feature can lift it and still not help the
    policy, which needs the *first* report of a development above commentary and off-topic news."""
    x, y = development_rows([c for c in cands if c.matched])
    p = np.array([model.development.probability(r) for r in x])
    pos, neg = p[y == 1.0], p[y == 0.0]
    if not len(pos) or not len(neg):
        return 0.5
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


def _key(c: Candidate) -> tuple[str, str]:
    return " ".join(c.item.title.split()).lower(), c.item.published_at.strftime("%Y-%m-%d %H:%M")


def _cross_topic(cands: Sequence[Candidate], analogs: Sequence[Candidate]) -> dict[str, tuple[list[Candidate], list[Candidate]]]:
    """The largest topic against the rest, both ways (analogs in every fit half)."""
    topics = sorted({c.topic for c in cands}, key=lambda t: -sum(c.topic == t for c in cands))
    big = topics[0] if topics else ""
    one = [c for c in cands if c.topic == big]
    rest = [c for c in cands if c.topic != big]
    return {f"{big} -> others": (one + list(analogs), rest), f"others -> {big}": (rest + list(analogs), one)}


def folds(cands: Sequence[Candidate], analogs: Sequence[Candidate] = ()) -> dict[str, tuple[list[Candidate], list[Candidate]]]:
    """(fit on, measure on) for each protocol: all, across topics (the largest topic against the rest, both
    ways) and across time. `analogs` (labels of other topics and months, bench/data/analogs) join every fit half
    (those dated from the time split on left out of the time protocol; an analog row whose item is also a
    labelled candidate is dropped, so no item is both fitted and measured); two more protocols fit on the
    analogs alone and measure every candidate (three topics the models never saw), and fit on every candidate
    and measure the analogs (five stories nobody looked at while designing the features and rules)."""
    seen = {_key(c) for c in cands}
    extra = [c for c in analogs if _key(c) not in seen]
    early = [c for c in cands if c.item.published_at < TIME_SPLIT]
    late = [c for c in cands if c.item.published_at >= TIME_SPLIT]
    out = {"all -> all": (list(cands) + extra, list(cands)), **_cross_topic(cands, extra),
           "before 11-01 -> 11-01..15": (early + [c for c in extra if c.item.published_at < TIME_SPLIT], late)}
    if extra:
        out["analogs only -> all"] = (extra, list(cands))
        out["all -> analogs"] = (list(cands), extra)
    return out


def choose_threshold(cands: Sequence[Candidate], memory_h: float, grid: Sequence[float],
                     analogs: Sequence[Candidate] = ()) -> float:
    """The threshold with the best lower development F1 of the two cross-topic folds (measured on each fold's
    held-out half: those figures, and any other measured on the same candidates, are then not blind to the
    threshold; only a protocol measured on the analogs is)."""
    seen = {_key(c) for c in cands}
    cross = list(_cross_topic(cands, [c for c in analogs if _key(c) not in seen]).values())
    best, best_t = -1.0, grid[0]
    for t in grid:
        worst = min(simulate(te, fit_model(tr, memory_h, t), memory_h).f1 for tr, te in cross)
        if worst > best:
            best, best_t = worst, t
    return best_t


def dump_model(model: AlertModel) -> str:
    """The Python literal of `model`, for monitor.signal.newsworthy.SHIPPED_ALERT_MODEL."""
    def logistic(m: Logistic, names: str) -> str:
        return (f"Logistic(\n        names={names},\n        mean={m.mean},\n        scale={m.scale},\n"
                f"        weights={m.weights},\n        bias={m.bias})")
    return (f"AlertModel(\n    development={logistic(model.development, 'DEVELOPMENT_FEATURES')},\n"
            f"    same={logistic(model.same, 'SAME_FEATURES')},\n    threshold={model.threshold},\n)")


def with_matches(cands: Sequence[Candidate], embedder, topic_set, cache_dir: Path | None,  # type: ignore[no-untyped-def]
                 stream: Path | None = None) -> tuple[list[Candidate], int]:
    """The candidates with their vectors, match margins and whether their topic matched them. With `stream`,
    each labelled item is looked up in the captured stream (headline and minute published) and matched there,
    with story-level evidence from the items around it, as the service and `eval replay` match; items not
    found, and every item without `stream`, are matched on their own evidence. Returns (candidates, found)."""
    from datetime import timedelta

    from monitor.lab.story_eval import cached_vectors, read_stream
    from monitor.signal import match

    items = [c.item for c in cands]
    vectors = cached_vectors(embedder, items, cache_dir)
    own = {(m.item_id, m.topic_id): m for m in match.match_items(items, vectors, topic_set)}
    hit: dict[tuple[int, str], tuple[np.ndarray, object]] = {}
    if stream is not None and cands:
        start = min(c.item.published_at for c in cands) - timedelta(days=3)
        end = max(c.item.published_at for c in cands) + timedelta(minutes=1)
        s_items = read_stream(stream, start, end)
        s_vectors = cached_vectors(embedder, s_items, cache_dir)
        s_verdicts = {(m.item_id, m.topic_id): m for m in match.match_items(
            s_items, s_vectors, topic_set, recent=match.Recent.empty(s_vectors.shape[1]))}
        where = {(" ".join(it.title.split()).lower(), it.published_at.strftime("%Y-%m-%d %H:%M")): k
                 for k, it in enumerate(s_items)}
        for c in cands:
            k = where.get((" ".join(c.item.title.split()).lower(), c.item.published_at.strftime("%Y-%m-%d %H:%M")))
            if k is not None:
                hit[(c.item.id, c.topic)] = (s_vectors[k], s_verdicts[(s_items[k].id, c.topic)])
    out = []
    for i, c in enumerate(cands):
        vec, verdict = hit.get((c.item.id, c.topic), (vectors[i], own[(c.item.id, c.topic)]))
        out.append(replace(c, vector=vec, margin=verdict.score - topic_set.get(c.topic).threshold,  # type: ignore[attr-defined]
                           matched=verdict.matched))  # type: ignore[attr-defined]
    return out, len(hit)
