"""The topic-agnostic relevance combiner on tiny hand-made vectors: reference points, features, fitting,
cut-offs and the label-free threshold. No figure here is a tuned one."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.signal import relevance as R


def _unit(*rows: list[float]) -> np.ndarray:
    v = np.array(rows, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# description, two examples (all close to axis 0) and one counterexample (between axes 0 and 1)
PROTOS = _unit([1, 0, 0], [1, 0.1, 0], [1, 0, 0.1])
COUNTERS = _unit([1, 1, 0])


def test_profile_reference_points_by_hand() -> None:
    prof = R.profile(PROTOS, COUNTERS)
    sims = PROTOS @ PROTOS.T
    assert prof.pos_ref == pytest.approx(np.median([max(sims[1, 0], sims[1, 2]), max(sims[2, 0], sims[2, 1])]))
    assert prof.neg_ref == pytest.approx(float((COUNTERS @ PROTOS.T).max()))
    alone = R.profile(PROTOS, COUNTERS[:0])  # no counterexamples: a quarter of cosine scale below
    assert alone.neg_ref == pytest.approx(alone.pos_ref - 0.25)
    same = R.profile(PROTOS, PROTOS[1:2])  # a counterexample equal to an example: the gap stays >= 0.05
    assert same.pos_ref - same.neg_ref == pytest.approx(0.05)


def test_features_by_hand() -> None:
    items = _unit([1, 0, 0], [1, 1, 0.02], [0, 0, 1])
    prof = R.profile(PROTOS, COUNTERS)
    sc = R.features(items, PROTOS, COUNTERS, prof, np.array([0.5, 0.0, -0.5]))
    sims, csims = items @ PROTOS.T, items @ COUNTERS.T
    assert sc.column("best") == pytest.approx(sims.max(axis=1))
    assert sc.column("desc") == pytest.approx(sims[:, 0])
    assert sc.column("anti") == pytest.approx(csims[:, 0] - sims.max(axis=1))
    assert list(sc.column("hinge") > 0) == [False, True, False]  # only the second is nearer the near miss
    assert sc.column("margin")[1] == pytest.approx(max(0.0, sims[1].max() - R.COUNTER_WEIGHT * sc.column("hinge")[1]))
    assert sc.column("rel")[0] == pytest.approx((1.0 - prof.neg_ref) / (prof.pos_ref - prof.neg_ref))
    assert list(sc.column("kw")) == [0.5, 0.0, -0.5]
    assert list(sc.best_idx) == [0, 1, 2] and list(sc.counter_idx) == [0, 0, 0]
    none = R.features(items, PROTOS, COUNTERS[:0], prof, np.zeros(3))
    assert list(none.counter_idx) == [-1, -1, -1] and not none.column("hinge").any()


def test_keyword_feature() -> None:
    assert [R.keyword_feature(h, 2) for h in (0, 1, 2)] == [-0.5, 0.0, 0.5]
    assert R.keyword_feature(0, 0) == 0.0  # a topic without keywords: neutral


def _toy(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(R.FEATURES)))
    y = (x[:, R.FEATURES.index("best")] + 0.5 * x[:, R.FEATURES.index("kw")] + rng.normal(0, 0.5, n) > 1).astype(int)
    return x, y


def test_fit_finds_the_informative_features_and_the_penalty_shrinks_them() -> None:
    x, y = _toy()
    names = ("best", "kw", "desc")
    weak = R.fit(x, y, names, l2=0.01)
    strong = R.fit(x, y, names, l2=1000.0)
    assert weak.weights[0] > weak.weights[1] > abs(weak.weights[2])  # best > kw > noise
    assert abs(strong.weights[0]) < abs(weak.weights[0])
    p = weak.probability(x)
    assert ((p >= 0.5) == y).mean() > 0.85
    assert weak.contributions(x).shape == (len(x), 3)
    assert np.allclose(weak.contributions(x).sum(axis=1) + weak.bias, np.log(p / (1 - p)), atol=1e-6)


def test_fit_refuses_what_it_cannot_fit() -> None:
    x, y = _toy()
    with pytest.raises(ValueError, match="both positive and negative"):
        R.fit(x, np.zeros(len(x)), ("best",))
    with pytest.raises(ValueError, match="unknown features"):
        R.fit(x, y, ("colour",))
    with pytest.raises(ValueError, match="features"):
        R.fit(x, y, ("best",)).probability(x[:, :2])


def test_best_cut_maximises_f1_between_scores() -> None:
    # 0.9(1) 0.8(1) 0.7(0) 0.6(1) 0.2(0): best F1 cutting below 0.6 -> midpoint with 0.2
    cut = R.best_cut(np.array([0.9, 0.8, 0.7, 0.6, 0.2]), np.array([1, 1, 0, 1, 0]))
    assert cut == pytest.approx(0.4)
    assert R.best_cut(np.array([0.3, 0.2]), np.array([0, 0])) == 1.0


def test_example_threshold_is_label_free_and_follows_the_examples() -> None:
    x, y = _toy()
    comb = R.fit(x, y, ("best", "hinge", "kw"))
    th = R.example_threshold(comb, PROTOS, COUNTERS, [0.5, 0.5])
    assert th is not None and 0.0 < th < 1.0
    # keyword evidence in the examples raises what an item must reach: the rule scores examples as items
    assert R.example_threshold(comb, PROTOS, COUNTERS, [-0.5, -0.5]) < th
    # one example: held out, it is still compared with the description; no example: no rule
    one = R.example_threshold(comb, PROTOS[:2], COUNTERS, [0.5])
    assert one is not None and 0.0 < one < 1.0
    assert R.example_threshold(comb, PROTOS[:1], COUNTERS, []) is None


def test_examples_left_out_of_the_threshold_count_as_if_the_topic_did_not_have_them() -> None:
    x, y = _toy()
    comb = R.fit(x, y, ("best", "hinge", "kw"))
    protos = np.vstack([PROTOS, _unit([1, 0.05, 0.05])])  # a third example, next to the other two
    without = R.example_threshold(comb, PROTOS, COUNTERS, [0.5, 0.5])
    # the third example misses the keywords: its own score is low and would drag the 10th percentile down
    dragged = R.example_threshold(comb, protos, COUNTERS, [0.5, 0.5, -0.5])
    assert dragged < without
    left_out = R.example_threshold(comb, protos, COUNTERS, [0.5, 0.5, -0.5], keep=[True, True, False])
    assert left_out == pytest.approx(without)
    assert R.example_threshold(comb, protos, COUNTERS, [0.5, 0.5, -0.5], keep=[True] * 3) == pytest.approx(dragged)
    assert R.example_threshold(comb, protos, COUNTERS, [0.5, 0.5, -0.5], keep=[False] * 3) is None
    with pytest.raises(ValueError, match="one flag per example"):
        R.example_threshold(comb, protos, COUNTERS, [0.5, 0.5, -0.5], keep=[True])


# --- story-level evidence: neighbour_lift -----------------------------------------------------------------

HOUR = 3600.0


def _pool(vectors: np.ndarray, logits: list[float], hours_ago: list[float], now: float = 100 * HOUR) -> R.Neighbours:
    return R.Neighbours(vectors, np.array(logits), now - np.array(hours_ago) * HOUR)


def test_a_near_duplicate_of_an_on_topic_item_inherits_its_evidence_by_closeness() -> None:
    source = _unit([1, 0, 0])
    close, far = _unit([1, 0.2, 0]), _unit([1, 1.2, 0])  # cosines ~0.98 and ~0.64 to the source
    pool = _pool(source, [4.0], [5])
    items = np.vstack([close, far])
    lift = R.neighbour_lift(items, np.full(2, 100 * HOUR), np.array([-2.0, -2.0]), pool, threshold_logit=0.0,
                            min_cos=0.6, share=1.0)
    cos = (items @ source.T)[:, 0]
    w = (cos - 0.6) / 0.4
    assert lift.logits == pytest.approx(w * 6.0)  # share of the gap (4 - -2) weighted by closeness
    assert lift.logits[0] > lift.logits[1] > 0
    assert list(lift.source) == [0, 0] and lift.cosine == pytest.approx(cos)
    assert all(-2.0 + lift.logits < 4.0)  # never passes its source
    half = R.neighbour_lift(items, np.full(2, 100 * HOUR), np.array([-2.0, -2.0]), pool, threshold_logit=0.0,
                            min_cos=0.6, share=0.5)
    assert half.logits == pytest.approx(lift.logits / 2)


@pytest.mark.parametrize(("why", "logit", "hours_ago", "vector"), [
    ("the neighbour is not on topic by itself", -1.0, 5, [1, 0.1, 0]),
    ("the neighbour is later than the item", 4.0, -1, [1, 0.1, 0]),
    ("the neighbour is older than the window", 4.0, 80, [1, 0.1, 0]),
    ("the neighbour is not similar enough", 4.0, 5, [0, 1, 0]),
])
def test_no_lift_when(why: str, logit: float, hours_ago: float, vector: list[float]) -> None:
    pool = _pool(_unit(vector), [logit], [hours_ago])
    lift = R.neighbour_lift(_unit([1, 0, 0]), np.array([100 * HOUR]), np.array([-2.0]), pool, threshold_logit=0.0,
                            window_h=72)
    assert lift.logits[0] == 0.0 and lift.source[0] == -1, why


def test_the_strongest_gain_wins_and_stronger_items_or_vetoed_ones_get_none() -> None:
    pool = _pool(_unit([1, 0.05, 0], [1, 0.3, 0]), [1.0, 5.0], [2, 2])
    items = _unit([1, 0, 0], [1, 0, 0], [1, 0, 0])
    lift = R.neighbour_lift(items, np.full(3, 100 * HOUR), np.array([-2.0, 6.0, -np.inf]), pool,
                            threshold_logit=0.0)
    sims = (items[0] @ pool.vectors.T)
    w = (sims - R.NEIGHBOUR_MIN_COS) / (1 - R.NEIGHBOUR_MIN_COS)
    assert lift.source[0] == int(np.argmax(w * (np.array([1.0, 5.0]) + 2.0)))
    assert lift.logits[1] == 0.0  # already above every neighbour: nothing to inherit
    assert lift.logits[2] == 0.0 and lift.source[2] == -1  # ruled out by a keyword veto: stays out


def test_no_neighbours_no_lift() -> None:
    empty = R.Neighbours(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    lift = R.neighbour_lift(_unit([1, 0, 0]), np.array([0.0]), np.array([0.0]), empty, threshold_logit=0.0)
    assert lift.logits.tolist() == [0.0] and lift.source.tolist() == [-1]
