"""Topic relevance (pure): a small TOPIC-AGNOSTIC combiner over similarity and keyword evidence.

Every feature is measured *relative to the topic's own texts*, so one set of weights serves every topic,
including a new one that nobody has labelled (all cosine similarities of L2-normalised vectors):

    best     highest similarity of the item to a prototype (the description or an example)
    top3     mean of the three highest prototype similarities (how many examples agree)
    desc     similarity to the description alone
    anti     highest similarity to a counterexample (a near miss) minus `best`
    hinge    max(0, anti): how much closer the item is to a near miss than to any example
    margin   clip(best - COUNTER_WEIGHT * hinge, 0, 1) (the former matcher's score)
    rel      (best - neg_ref) / (pos_ref - neg_ref): where the item sits between the topic's own near misses
             (0) and its own examples (1); both references come from the topic's texts (`profile`)
    kw       soft keyword evidence: share of the topic's keyword groups (`require_any` as one group, each
             `require_all` group) with a hit, centred: -0.5 none .. +0.5 all; 0 for a topic with no keywords

    probability = sigmoid(bias + sum_i w_i * (x_i - mean_i) / scale_i)   over the combiner's chosen features

The weights are fitted (`fit`) by L2-regularised logistic regression on (item, topic) pairs pooled over
topics: a handful of weights over thousands of pairs with a strong penalty, so nothing is fitted to a few
items, and nothing in them names a topic.

Label-free threshold (`example_threshold`): each of the topic's own examples is scored as if it were an
item, against the *other* prototypes (leave-one-out) and the topic's counterexamples, with its own keyword
evidence; the threshold is the EXAMPLE_QUANTILE (10th percentile) of those probabilities: an item must look
at least as much like the topic as nine in ten of the admin's own examples do when each is held out. The
caller may leave some examples out (`keep`): the matcher leaves out those that miss the topic's own keyword
groups (`match.threshold_sample`), whose strongly negative keyword evidence would drag the quantile to ~0.
Story-level evidence (`neighbour_lift`): an item close to a recent item that is on the topic by its own
evidence inherits part of that item's log-odds (the closer, the more), so a story's later items whose words
drifted ("ceasefire deal", "phase one", a freed hostage's name) are carried by its earlier, explicit ones.
How the shipped weights were fitted and measured is in docs/topic-relevance.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitor.signal.logistic import fit_logistic

FEATURES: tuple[str, ...] = ("best", "top3", "desc", "anti", "hinge", "margin", "rel", "kw")
TOP_N = 3
COUNTER_WEIGHT = 5.0
EXAMPLE_QUANTILE = 0.10
NEIGHBOUR_MIN_COS = 0.6
NEIGHBOUR_SHARE = 1.0
NEIGHBOUR_WINDOW_H = 72.0
_CHUNK = 512


@dataclass(frozen=True, slots=True)
class TopicProfile:
    """Label-free reference points of one topic, from its own texts (see `profile`)."""

    pos_ref: float  # median leave-one-out best similarity of an example to the other prototypes
    neg_ref: float  # median best similarity of a counterexample to the prototypes


@dataclass(frozen=True, slots=True)
class Scored:
    """Features of n items for one topic: `x` is (n, len(FEATURES)); the indices name the nearest example
    (into description + examples) and the nearest counterexample (-1 when the topic has none)."""

    x: np.ndarray
    best_idx: np.ndarray
    counter_idx: np.ndarray

    def column(self, name: str) -> np.ndarray:
        return self.x[:, FEATURES.index(name)]


@dataclass(frozen=True, slots=True)
class Combiner:
    """A fitted logistic combiner over some of `FEATURES` (standardised by `mean` and `scale`)."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def _z(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != len(FEATURES):
            raise ValueError(f"expected (n, {len(FEATURES)}) features, got {x.shape}")
        cols = [FEATURES.index(n) for n in self.names]
        return (x[:, cols] - np.asarray(self.mean)) / np.asarray(self.scale)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(on topic) for each row of the full feature matrix `x`."""
        return _sigmoid(self.bias + self._z(x) @ np.asarray(self.weights))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature log-odds contributions (n, len(names)): what an explanation cites."""
        return self._z(x) * np.asarray(self.weights)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


_sigmoid = sigmoid


def profile(prototypes: np.ndarray, counters: np.ndarray) -> TopicProfile:
    """pos_ref: median over the examples of the best similarity to the *other* prototypes (leave-one-out;
    1.0 for a description alone); neg_ref: median over the counterexamples of their best similarity to the
    prototypes (pos_ref - 0.25 without counterexamples). The gap is kept >= 0.05 so `rel` stays finite."""
    n = prototypes.shape[0]
    if n >= 2:
        sims = prototypes @ prototypes.T
        np.fill_diagonal(sims, -np.inf)
        pos_ref = float(np.median(sims[1:].max(axis=1)))
    else:
        pos_ref = 1.0
    neg_ref = float(np.median((counters @ prototypes.T).max(axis=1))) if counters.shape[0] else pos_ref - 0.25
    neg_ref = min(neg_ref, pos_ref - 0.05)
    return TopicProfile(pos_ref=pos_ref, neg_ref=neg_ref)


def keyword_feature(hit_groups: int, groups: int) -> float:
    """Centred share of keyword groups with a hit: -0.5 (none) .. +0.5 (all); 0 when the topic has none."""
    return 0.0 if groups == 0 else hit_groups / groups - 0.5


def features(vectors: np.ndarray, prototypes: np.ndarray, counters: np.ndarray, prof: TopicProfile,
             kw: np.ndarray) -> Scored:
    """Every feature of `FEATURES` for each row of `vectors` (kw: the rows' `keyword_feature` values)."""
    n = vectors.shape[0]
    sims = vectors @ prototypes.T
    best_idx = np.argmax(sims, axis=1)
    best = sims[np.arange(n), best_idx]
    k = min(TOP_N, sims.shape[1])
    top = -np.sort(-sims, axis=1)[:, :k].mean(axis=1)
    if counters.shape[0]:
        csims = vectors @ counters.T
        c_idx = np.argmax(csims, axis=1)
        anti = csims[np.arange(n), c_idx] - best
    else:
        c_idx = np.full(n, -1, dtype=np.int64)
        anti = np.full(n, prof.neg_ref - prof.pos_ref, dtype=np.float64)
    hinge = np.maximum(0.0, anti)
    margin = np.clip(best - COUNTER_WEIGHT * hinge, 0.0, 1.0)
    rel = (best - prof.neg_ref) / (prof.pos_ref - prof.neg_ref)
    x = np.stack([best, top, sims[:, 0], anti, hinge, margin, rel, np.asarray(kw, dtype=np.float64)], axis=1)
    return Scored(x.astype(np.float64), best_idx, c_idx)


def example_threshold(combiner: Combiner, prototypes: np.ndarray, counters: np.ndarray,
                      example_kw: Sequence[float], quantile: float = EXAMPLE_QUANTILE, *,
                      keep: Sequence[bool] | None = None) -> float | None:
    """The label-free threshold (module docstring): the `quantile` of the leave-one-out probabilities of
    the examples (rows 1.. of `prototypes`; `example_kw` their keyword features). An example held out is
    still compared with the description, so one example is enough; None without any. `keep` (one flag per
    example) leaves the examples marked False out entirely, as if the topic did not have them: the
    threshold is the one the topic would get without them (`match.threshold_sample` says which)."""
    if keep is not None:
        if len(keep) != prototypes.shape[0] - 1:
            raise ValueError(f"keep needs one flag per example ({prototypes.shape[0] - 1}), got {len(keep)}")
        rows_kept = [0] + [i + 1 for i, k in enumerate(keep) if k]
        prototypes = prototypes[rows_kept]
        example_kw = [kw for kw, k in zip(example_kw, keep, strict=True) if k]
    n_ex = prototypes.shape[0] - 1
    if n_ex < 1:
        return None
    rows = []
    for i in range(1, prototypes.shape[0]):
        others = np.delete(prototypes, i, axis=0)
        rows.append(features(prototypes[i:i + 1], others, counters, profile(others, counters),
                             np.array([example_kw[i - 1]])).x[0])
    p = combiner.probability(np.array(rows))
    return float(np.quantile(p, quantile))


def fit(x: np.ndarray, y: np.ndarray, names: Sequence[str], *, l2: float = 10.0, iterations: int = 50) -> Combiner:
    """L2-regularised logistic regression by Newton's method on the standardised columns `names` of the
    full feature matrix `x` (the bias is not penalised; `l2` is the penalty on the sum of squared weights:
    strong by default, so the combiner leans on what the fitting topics share, not on their quirks)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[1] != len(FEATURES):
        raise ValueError(f"x must be (n, {len(FEATURES)}) and y (n,)")
    if not (0 < y.sum() < len(y)):
        raise ValueError("fitting needs both positive and negative pairs")
    unknown = [n for n in names if n not in FEATURES]
    if unknown or not names:
        raise ValueError(f"unknown features {unknown}; choose among {FEATURES}")
    m = fit_logistic(x[:, [FEATURES.index(n) for n in names]], y, names, l2=l2, iterations=iterations)
    return Combiner(names=m.names, mean=m.mean, scale=m.scale, weights=m.weights, bias=m.bias)


def best_cut(scores: np.ndarray, gold: np.ndarray) -> float:
    """The F1-maximising cut-off for (score, gold 0|1) pairs, placed midway to the next lower distinct
    score (1.0 when there is no positive)."""
    scores = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if gold.sum() == 0:
        return 1.0
    order = np.argsort(-scores, kind="stable")
    s, g = scores[order], gold[order]
    f1 = 2 * np.cumsum(g) / (np.arange(1, len(s) + 1) + g.sum())
    f1 = np.where(np.r_[s[1:] != s[:-1], True], f1, -1.0)  # cut only between distinct scores
    i = int(np.argmax(f1))
    lower = s[i + 1] if i + 1 < len(s) else s[i]
    return float((s[i] + lower) / 2)


@dataclass(frozen=True, slots=True)
class Neighbours:
    """Recent items an item may inherit topic evidence from (one topic): their vectors (L2-normalised), their
    OWN log-odds for the topic (never a score that was itself lifted: evidence does not travel in chains) and
    their times (seconds since the epoch)."""

    vectors: np.ndarray  # (m, dim)
    logits: np.ndarray  # (m,)
    times: np.ndarray  # (m,)


@dataclass(frozen=True, slots=True)
class Lift:
    """What `neighbour_lift` found for each item: the log-odds added (>= 0), the neighbour that gave it (an
    index into `Neighbours`, -1 for none) and its cosine to the item."""

    logits: np.ndarray
    source: np.ndarray
    cosine: np.ndarray


def neighbour_lift(vectors: np.ndarray, times: np.ndarray, logits: np.ndarray, pool: Neighbours, *,
                   threshold_logit: float, min_cos: float = NEIGHBOUR_MIN_COS, share: float = NEIGHBOUR_SHARE,
                   window_h: float = NEIGHBOUR_WINDOW_H) -> Lift:
    """Story-level evidence: an item close to a recent item that is on topic on its own inherits part of
    that item's evidence. Among the neighbours published in the `window_h` hours before the item (strictly
    earlier), with cosine >= `min_cos` and own log-odds >= `threshold_logit` (on topic by themselves), the
    lift is  share * max_j w_j * (logit_j - logit_i),  w_j = (cos_j - min_cos) / (1 - min_cos),  never
    negative: a near duplicate of an on-topic item inherits almost `share` of the gap, an item that merely
    shares the war's vocabulary (cosine near `min_cos`) almost nothing; the item never passes its source.
    An item whose own log-odds are -inf (ruled out by a keyword veto) gets no lift and lends none."""
    n = vectors.shape[0]
    lift = np.zeros(n, dtype=np.float64)
    source = np.full(n, -1, dtype=np.int64)
    cosine = np.zeros(n, dtype=np.float64)
    on = np.flatnonzero(np.asarray(pool.logits) >= threshold_logit)
    if n == 0 or on.size == 0:
        return Lift(lift, source, cosine)
    pv = np.asarray(pool.vectors, dtype=np.float64)[on]
    pl = np.asarray(pool.logits, dtype=np.float64)[on]
    pt = np.asarray(pool.times, dtype=np.float64)[on]
    vecs = np.asarray(vectors, dtype=np.float64)
    own = np.asarray(logits, dtype=np.float64)
    when = np.asarray(times, dtype=np.float64)
    for lo in range(0, n, _CHUNK):  # bounded memory: a replay scores a month of items at once
        hi = min(n, lo + _CHUNK)
        sims = vecs[lo:hi] @ pv.T
        dt = when[lo:hi, None] - pt[None, :]
        ok = (sims >= min_cos) & (dt > 0) & (dt <= window_h * 3600.0) & np.isfinite(own[lo:hi, None])
        w = np.clip((sims - min_cos) / (1.0 - min_cos), 0.0, 1.0)
        with np.errstate(invalid="ignore"):
            gain = np.where(ok, w * (pl[None, :] - own[lo:hi, None]), 0.0)
        best = np.argmax(gain, axis=1)
        rows = np.arange(hi - lo)
        g = gain[rows, best]
        has = np.flatnonzero(g > 0)
        lift[lo + has] = share * g[has]
        source[lo + has] = on[best[has]]
        cosine[lo + has] = sims[rows, best][has]
    return Lift(lift, source, cosine)
