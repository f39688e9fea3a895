"""Evaluation metrics, the keyword baseline, threshold calibration and `monitor eval topics` on a tiny
fixture whose figures are computed by hand below."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.config import TopicConfig, load_config
from monitor.lab.topic_eval import (
    FIT_CUTOFF,
    EvalDataError,
    EvalItem,
    FitOnly,
    RulingCount,
    Stream,
    _label_free,
    calibrate_threshold,
    checked_topics,
    evaluate,
    fit_only_pairs,
    item_time,
    keyword_baseline,
    merge,
    neighbourhood,
    parse_checks,
    parse_items,
    parse_labels,
    probabilities,
    protocols,
    ruling_counts,
    scores,
    shipped,
    topic_pairs,
)
from monitor.signal import embed, match

FIX = Path(__file__).resolve().parent / "fixtures"


def test_scores_by_hand() -> None:
    s = scores({"a", "b", "c"}, {"a", "d"})  # tp=1, 3 predicted, 2 gold
    assert (s.precision, s.recall, s.support) == (pytest.approx(1 / 3), 0.5, 2)
    assert s.f1 == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert scores(set(), {"a"}).f1 == 0.0


def test_evaluate_macro_f1_over_labelled_items_only() -> None:
    labels = {"1": {"t": 1, "u": 0}, "2": {"t": 0, "u": 1}}
    r = evaluate({"t": {"1", "99"}, "u": set()}, labels, ["t", "u"])
    assert r["topics"]["t"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert r["topics"]["u"]["f1"] == 0.0
    assert r["macro_f1"] == 0.5


def test_calibrate_threshold_maximises_f1_and_sits_between_scores() -> None:
    # Sorted: 0.9(1) 0.8(1) 0.7(0) 0.6(1) 0.2(0). Cut at 0.8 -> F1 0.8; at 0.6 -> P 3/4 R 1 -> F1 0.857.
    th = calibrate_threshold([(0.9, 1), (0.8, 1), (0.7, 0), (0.6, 1), (0.2, 0)])
    assert th == pytest.approx(0.4)  # midpoint of 0.6 and the next lower score 0.2
    assert calibrate_threshold([(0.5, 0), (0.4, 0)]) == 1.0


def test_bad_eval_lines_are_named() -> None:
    with pytest.raises(EvalDataError, match="items:2"):
        parse_items(['{"id": "a", "title": "x"}', "not json"], "items")
    with pytest.raises(EvalDataError, match="labels:1"):
        parse_labels(['{"id": "a"}'], "labels")


def test_keyword_baseline_uses_gates_or_the_topic_name() -> None:
    config = load_config(FIX / "topics_config.toml")
    items = parse_items((FIX / "topics_items.jsonl").read_text().splitlines())
    base = keyword_baseline(items, config.topics)
    assert base["icc-warrants"] == {"a1", "a2", "a4"}  # a3 excluded: "cricket" (found after HTML stripping)
    assert base["doha-talks"] == {"a5"}  # no gates: name words "Doha" AND "talks"


def test_eval_topics_command_gives_the_hand_computed_figures(embedder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    result = CliRunner().invoke(main, [
        "eval", "topics", "--items", str(FIX / "topics_items.jsonl"), "--labels", str(FIX / "topics_labels.jsonl"),
        "--config", str(FIX / "topics_config.toml"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    # icc-warrants: threshold 0, so the gates decide: predicted {a1, a2, a4}, gold {a1, a4} ("zz" has no item).
    assert out["topics"]["icc-warrants"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2}
    # doha-talks: threshold 1.0 matches nothing; gold {a5}.
    assert out["topics"]["doha-talks"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["macro_f1"] == 0.4
    assert out["baseline"]["topics"]["doha-talks"]["f1"] == 1.0
    assert out["baseline"]["macro_f1"] == 0.9
    assert "macro-F1" in result.output


def test_merge_keeps_labelled_items_once_and_refuses_conflicts() -> None:
    a = parse_items(['{"id": "1", "title": "x"}', '{"id": "2", "title": "y"}'])
    b = parse_items(['{"id": "2", "title": "y"}', '{"id": "3", "title": "z"}'])
    la, lb = {"1": {"t": 1}, "2": {"t": 0}}, {"2": {"t": 0}, "3": {"t": 1}}
    items, labels = merge([(a, la), (b, lb), (b[:1], {})])
    assert [it.id for it in items] == ["1", "2", "3"] and labels["3"] == {"t": 1}
    with pytest.raises(EvalDataError, match="different labels"):
        merge([(a, la), (b, {"2": {"t": 1}})])


def _synthetic(n: int = 240, seed: int = 1):  # type: ignore[no-untyped-def]
    """Two topics on 3-d unit vectors: items near a topic's examples are (mostly) its positives."""
    rng = np.random.default_rng(seed)
    axes = np.eye(3)
    topics = []
    for i, tid in enumerate(("alpha", "beta")):
        cfg = TopicConfig(id=tid, name=tid, description=tid, examples=[f"{tid} one", f"{tid} two", f"{tid} three"])
        protos = axes[[i, i, i, i]] + rng.normal(0, 0.1, (4, 3))
        topics.append(match.compile_topic(cfg, protos / np.linalg.norm(protos, axis=1, keepdims=True), np.zeros((0, 3))))
    topic_set = match.TopicSet("synthetic", tuple(topics))
    vecs = rng.normal(0, 0.6, (n, 3)) + axes[rng.integers(0, 3, n)]
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    days = ["2023-10-20", "2023-11-05", "2023-11-20"]  # before the split, after it, after the cut-off
    items = [EvalItem(id=str(k), date=days[k % 3], feed="f", title=f"item {k}", summary="") for k in range(n)]
    labels = {str(k): {"alpha": int(vecs[k, 0] > 0.7), "beta": int(vecs[k, 1] > 0.7)} for k in range(n)}
    return items, labels, vecs, topic_set


def test_protocols_never_use_labels_from_the_cutoff_on() -> None:
    items, labels, vecs, topic_set = _synthetic()
    flipped = {k: ({t: 1 - v for t, v in lab.items()} if items[int(k)].date >= FIT_CUTOFF else lab)
               for k, lab in labels.items()}
    none: dict[str, set[str]] = {"alpha": set(), "beta": set()}
    runs = [protocols(items, topic_pairs(items, lab, vecs, topic_set), none, names=("best", "hinge", "kw"), l2=1.0)
            for lab in (labels, flipped)]
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"dev", "time_split", "no_label", "fitted"}
    # the split measures only the later weeks: a third of the items here
    assert runs[0]["time_split"]["items"] == len(items) // 3
    assert runs[0]["dev"]["calibrated"]["macro_f1"] > 0.5  # the informative direction was found


def test_other_topics_labels_join_each_fit_only_when_dated_before_its_cut_off() -> None:
    items, labels, vecs, topic_set = _synthetic()
    pairs = topic_pairs(items, labels, vecs, topic_set)
    none: dict[str, set[str]] = {"alpha": set(), "beta": set()}

    def run(fit_only: FitOnly | None) -> dict[str, object]:
        return protocols(items, pairs, none, names=("best", "hinge", "kw"), l2=1.0, fit_only=fit_only)

    def contrary(day: str) -> FitOnly:  # three times as many pairs as labelled, each labelled the wrong way round
        n = 3 * len(items)
        rng = np.random.default_rng(7)
        v = vecs[rng.integers(0, len(items), n)]
        return fit_only_pairs([f"x {k}" for k in range(n)], v, ["alpha"] * n, (v[:, 0] <= 0.7).astype(int),
                              [day] * n, topic_set)

    plain = run(None)
    # dated on the cut-off day, on the split day, the day before the split
    after_cutoff, after_split, before_split = (run(contrary(d)) for d in (FIT_CUTOFF, "2023-11-01", "2023-10-31"))
    assert after_cutoff == plain  # never fitted on, like the labels of those days

    def weights(out: dict[str, object]) -> tuple[float, ...]:
        return out["fitted"].weights  # type: ignore[attr-defined]

    def split_thresholds(out: dict[str, object]) -> object:
        return out["time_split"]["label_free"]["thresholds"]  # type: ignore[index]

    # dated between the split and the cut-off: the dev / no-label fits take them, the time split's does not
    assert weights(after_split) != weights(plain) and split_thresholds(after_split) == split_thresholds(plain)
    # dated before the split: every fit takes them (here they turn the similarity's weight around)
    assert split_thresholds(before_split) != split_thresholds(plain)
    assert weights(before_split)[0] < 0 < weights(plain)[0]
    # never measured: every protocol scores the same topics with the same positives in every run
    for name in ("dev", "time_split", "no_label"):
        support = [{t: v["support"] for t, v in out[name]["label_free"]["topics"].items()}  # type: ignore[index]
                   for out in (plain, before_split)]
        assert support[0] == support[1] and set(support[0]) == {"alpha", "beta"}
    with pytest.raises(EvalDataError, match="gamma"):
        fit_only_pairs(["x"], vecs[:1], ["gamma"], [1], ["2023-10-20"], topic_set)


def test_ranking_ceiling_is_the_best_cut_of_the_measured_items_own_scores() -> None:
    items, labels, vecs, topic_set = _synthetic(seed=3)
    pairs = topic_pairs(items, labels, vecs, topic_set)
    usable = np.array([it.date < FIT_CUTOFF for it in items])
    # a keyword veto on alpha's best-scoring usable positive: never matched, whatever the cut
    a = pairs[0]
    top = int(np.argmax(np.where((a.gold == 1) & usable, a.x[:, 0], -np.inf)))
    pairs[0] = replace(a, allowed=np.arange(len(items)) != top)
    out = protocols(items, pairs, {"alpha": set(), "beta": set()}, names=("best", "hinge", "kw"), l2=1.0)
    for p in pairs:  # dev: the shipped fit's scores on every usable item, every possible cut tried
        s = probabilities(p, out["fitted"], 0.5, None)[usable]  # type: ignore[arg-type]
        ok, gold = p.allowed[usable], p.gold[usable]
        f1s = [2 * int((ok & (s >= c))[gold == 1].sum()) / (int((ok & (s >= c)).sum()) + int(gold.sum())) for c in s]
        got = out["dev"]["ceiling"]["topics"][p.topic.id]  # type: ignore[index]
        assert got["f1"] == pytest.approx(max(f1s), abs=1e-4)
    assert out["dev"]["ceiling"]["topics"]["alpha"]["recall"] < 1.0  # type: ignore[index]  # the vetoed positive
    for name in ("dev", "time_split", "no_label"):  # no threshold rule beats it on the same items
        block = out[name]
        for tid, best in block["ceiling"]["topics"].items():  # type: ignore[index]
            assert all(best["f1"] >= block[v]["topics"][tid]["f1"]  # type: ignore[index]
                       for v in ("calibrated", "label_free") if v in block)


def test_protocols_need_both_sides_of_the_split() -> None:
    items, labels, vecs, topic_set = _synthetic()
    early = [it for it in items if it.date < "2023-11-01"]
    pairs = topic_pairs(early, labels, vecs[[int(it.id) for it in early]], topic_set)
    with pytest.raises(EvalDataError, match="time split needs"):
        protocols(early, pairs, {"alpha": set(), "beta": set()}, names=("best",), l2=1.0)


def test_eval_topics_accepts_several_files(embedder, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    lines = (FIX / "topics_items.jsonl").read_text().splitlines()
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[3:]) + "\n")
    labels = str(FIX / "topics_labels.jsonl")
    args = ["eval", "topics", "--items", str(tmp_path / "a.jsonl"), "--labels", labels,
            "--items", str(tmp_path / "b.jsonl"), "--labels", labels, "--config", str(FIX / "topics_config.toml"),
            "--json", "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["topics"]["icc-warrants"]["f1"] == 0.8 and out["macro_f1"] == 0.4  # as with one file
    assert list((tmp_path / "cache").glob("eval-items-*.npy"))
    again = CliRunner().invoke(main, args)  # from the cache: same figures
    assert json.loads(again.output.strip().splitlines()[-1])["macro_f1"] == 0.4
    odd = CliRunner().invoke(main, args[:6] + ["--items", str(tmp_path / "b.jsonl")])
    assert odd.exit_code == 2 and "one --labels file per --items file" in odd.output


def test_eval_topics_fits_on_other_topics_labels_named_by_their_own_config(embedder, monkeypatch,  # type: ignore[no-untyped-def]
                                                                           tmp_path) -> None:
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    rows = [json.loads(line) for line in (FIX / "topics_items.jsonl").read_text().splitlines()]
    for r in rows[3:]:  # the time split needs labelled items on both sides of 2023-11-01
        r["date"] = "2023-11-05 10:00:00"
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "analogs").mkdir()
    (tmp_path / "analogs" / "topics.toml").write_text(
        '[[topics]]\nid = "sudan-talks"\nname = "Sudan talks"\ndescription = "Talks to end the war in Sudan."\n'
        'examples = ["Sudan army and RSF sign truce in Jeddah", "Jeddah talks on Sudan resume"]\n')

    def label(topic: str, day: str, title: str, on: int) -> str:
        return json.dumps({"topic": topic, "date": f"{day} 09:00:00", "source": "example.org", "title": title,
                           "summary": "", "on_topic": on, "role": "development" if on else "off",
                           "dev": "s1" if on else None, "kd": None}) + "\n"

    analogs = tmp_path / "analogs" / "development_labels.jsonl"
    analogs.write_text(label("sudan-talks", "2023-05-06", "Sudan truce talks open in Jeddah", 1)
                       + label("sudan-talks", "2023-05-07", "Fighting rages in Khartoum", 0)
                       + label("sudan-talks", "2023-05-20", "Sudan's warring sides agree week-long truce", 1))
    args = ["eval", "topics", "--items", str(items), "--labels", str(FIX / "topics_labels.jsonl"), "--config",
            str(FIX / "topics_config.toml"), "--calibrate", "--cache-dir", str(tmp_path / "cache"), "--json"]
    plain = CliRunner().invoke(main, args)
    with_analogs = CliRunner().invoke(main, [*args, "--analogs", str(analogs)])
    assert plain.exit_code == 0 and with_analogs.exit_code == 0, with_analogs.output
    assert f"{analogs}: 3 labelled pairs of 1 other topics (2 on topic), fitted on only" in with_analogs.output
    fitted = [json.loads(r.output.strip().splitlines()[-1])["fitted"]["weights"] for r in (plain, with_analogs)]
    assert fitted[0] != fitted[1]  # they joined the shipped fit
    # each protocol shows its ranking ceiling beside its figures, and it is never below them
    shown = json.loads(plain.output.strip().splitlines()[-1])["protocols"]
    assert plain.output.count("[ranking ceiling]") == 3
    assert all(shown[k]["ceiling"]["macro_f1"] >= shown[k]["label_free"]["macro_f1"]
               for k in ("dev", "time_split", "no_label"))
    # a configured topic's labels are not another topic's: refused, naming it
    analogs.write_text(label("doha-talks", "2023-05-06", "Talks resume in Doha", 1))
    (tmp_path / "analogs" / "topics.toml").write_text(
        '[[topics]]\nid = "doha-talks"\nname = "Doha talks"\ndescription = "Talks in Doha."\n'
        'examples = ["Talks resume in Doha"]\n')
    clash = CliRunner().invoke(main, [*args, "--analogs", str(analogs)])
    assert clash.exit_code != 0 and "doha-talks" in clash.output and "configured topics" in clash.output
    alone = CliRunner().invoke(main, [a for a in args if a != "--calibrate"] + ["--analogs", str(analogs)])
    assert alone.exit_code == 2 and "--calibrate" in alone.output  # without it nothing would be fitted
    (tmp_path / "analogs" / "topics.toml").unlink()
    lost = CliRunner().invoke(main, [*args, "--analogs", str(analogs)])
    assert lost.exit_code != 0 and "no topics.toml beside it" in lost.output


def test_items_from_the_cutoff_on_are_reported_with_the_shipped_configuration_only() -> None:
    items, labels, vecs, topic_set = _synthetic()
    pairs = topic_pairs(items, labels, vecs, topic_set)
    late = np.array([it.date >= FIT_CUTOFF for it in items])
    base = {"alpha": {it.id for it in items if vecs[int(it.id), 0] > 0.7}, "beta": set()}
    r = shipped(items, pairs, base, late)
    assert r["items"] == int(late.sum())
    assert r["thresholds"] == {t.id: t.threshold for t in topic_set.topics}  # the configured ones, nothing fitted
    assert r["baseline"]["topics"]["alpha"]["f1"] == 1.0  # baseline built from the gold rule: perfect by construction


def test_item_time_reads_the_eval_dates_as_utc() -> None:
    it = EvalItem(id="1", date="2023-10-20 01:00:00", feed="f", title="t", summary="")
    assert item_time(it) == 1697763600.0
    assert item_time(EvalItem(id="1", date="2023-10-20T03:00:00+02:00", feed="f", title="t", summary="")) == 1697763600.0


def _stream_near(items, vecs, topic_set, lag_h: float):  # type: ignore[no-untyped-def]
    """A stream holding a copy of every labelled item's vector, published `lag_h` hours before it."""
    times = np.array([item_time(it) for it in items]) - lag_h * 3600
    stream = Stream(tuple(it.title for it in items), vecs.copy(), times)
    return neighbourhood(items, vecs, stream, topic_set)


def test_story_evidence_lifts_items_whose_earlier_neighbours_are_on_topic() -> None:
    items, labels, vecs, topic_set = _synthetic()
    pairs = topic_pairs(items, labels, vecs, topic_set)
    p = pairs[0]
    t = p.topic
    own = probabilities(p, t.combiner, t.threshold, None)
    before = probabilities(p, t.combiner, t.threshold, _stream_near(items, vecs, topic_set, lag_h=1))
    after = probabilities(p, t.combiner, t.threshold, _stream_near(items, vecs, topic_set, lag_h=-1))
    assert np.array_equal(after, own)  # a later twin lends nothing
    assert (before >= own - 1e-12).all() and (before > own).any()  # an earlier twin lifts, never lowers
    assert ((before >= t.threshold) >= (own >= t.threshold)).all()  # what matched on its own still does

def test_protocols_with_story_evidence_never_use_labels_from_the_cutoff_on() -> None:
    items, labels, vecs, topic_set = _synthetic()
    flipped = {k: ({t: 1 - v for t, v in lab.items()} if items[int(k)].date >= FIT_CUTOFF else lab)
               for k, lab in labels.items()}
    near = _stream_near(items, vecs, topic_set, lag_h=1)
    none: dict[str, set[str]] = {"alpha": set(), "beta": set()}
    runs = [protocols(items, topic_pairs(items, lab, vecs, topic_set), none, names=("best", "hinge", "kw"), l2=1.0,
                      near=near) for lab in (labels, flipped)]
    assert runs[0] == runs[1]
    # the dev ceiling with story-level evidence: the best cut of the scores lifted by neighbours on topic at the
    # label-free threshold (as measured), every cut tried
    pairs, usable = topic_pairs(items, labels, vecs, topic_set), np.array([it.date < FIT_CUTOFF for it in items])
    for p in pairs:
        c = runs[0]["fitted"]
        s = probabilities(p, c, _label_free(p, c), near)[usable]  # type: ignore[arg-type]
        gold = p.gold[usable]
        best = max(2 * int((s >= cut)[gold == 1].sum()) / (int((s >= cut).sum()) + int(gold.sum())) for cut in s)
        assert runs[0]["dev"]["ceiling"]["topics"][p.topic.id]["f1"] == pytest.approx(best, abs=1e-4)  # type: ignore[index]


def test_ruling_counts_by_hand() -> None:
    checks = parse_checks((FIX / "rulings_check.jsonl").read_text().splitlines())
    assert [c.ruling for c in checks] == ["R6", "R6", "R6", "R1", "R1", "-"]  # no "ruling": "-"
    assert checks[2].item.summary == "A cricket triumph." and checks[4].item.summary == ""
    counts = ruling_counts(checks, {"icc-warrants": {"r1", "r2"}, "doha-talks": {"r4", "zz"}},
                           ["icc-warrants", "doha-talks"])
    assert list(counts) == ["-", "R1", "R6"]
    assert counts["R6"]["icc-warrants"] == RulingCount(positives=1, matched=1, negatives=2, wrongly_matched=1)
    assert counts["R1"]["doha-talks"] == RulingCount(positives=2, matched=1, negatives=0, wrongly_matched=0)
    assert counts["R1"]["icc-warrants"] == RulingCount(positives=0, matched=0, negatives=2, wrongly_matched=0)
    assert counts["-"]["doha-talks"].as_dict() == {"positives": 0, "matched": 0, "negatives": 1,
                                                   "wrongly_matched": 0}
    with pytest.raises(EvalDataError, match="checks:2"):
        parse_checks(['{"id": "a", "title": "x", "labels": {"t": 1}}', '{"id": "b", "title": "y"}'], "checks")
    with pytest.raises(EvalDataError, match="checks:1.*not 0 or 1"):
        parse_checks(['{"id": "a", "title": "x", "labels": {"t": 2}}'], "checks")
    assert checked_topics(checks, ["doha-talks", "other", "icc-warrants"]) == (["doha-talks", "icc-warrants"], [])


def test_eval_rulings_command_reports_each_ruling_beside_the_keyword_baseline(embedder, monkeypatch,  # type: ignore[no-untyped-def]
                                                                             tmp_path) -> None:
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    path = str(FIX / "rulings_check.jsonl")
    result = CliRunner().invoke(main, ["eval", "rulings", path, "--config", str(FIX / "topics_config.toml"),
                                       "--json", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])[path]
    # icc-warrants: the gates decide (threshold 0): r1 and r2 (Putin) match, r3 is excluded by "cricket".
    assert out["topics"]["icc-warrants"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    # doha-talks matches nothing (threshold 1); its keyword query (Doha AND talks) finds r4 and r5.
    assert out["macro_f1"] == pytest.approx(0.3333) and out["baseline"]["macro_f1"] == pytest.approx(0.8333)
    assert out["rulings"]["R1"]["doha-talks"] == {
        "matcher": {"positives": 2, "matched": 0, "negatives": 0, "wrongly_matched": 0},
        "keywords": {"positives": 2, "matched": 2, "negatives": 0, "wrongly_matched": 0}}
    assert out["rulings"]["R6"]["icc-warrants"]["matcher"]["wrongly_matched"] == 1
    assert "R1       doha-talks" in result.output and "0 of 2 (2)" in result.output
    # a configured topic the file does not label is not measured (it would count every item as a negative),
    # and a labelled topic that is not configured is named
    only_icc = tmp_path / "only_icc.jsonl"
    only_icc.write_text("".join(json.dumps({**json.loads(line), "labels": {"icc-warrants": json.loads(line)["labels"]
                                            ["icc-warrants"], "icc-warant": 0}}) + "\n"
                                for line in (FIX / "rulings_check.jsonl").read_text().splitlines()))
    one = CliRunner().invoke(main, ["eval", "rulings", str(only_icc), "--config", str(FIX / "topics_config.toml"),
                                    "--json", "--cache-dir", str(tmp_path)])
    assert one.exit_code == 0, one.output
    measured = json.loads(one.output.strip().splitlines()[-1])[str(only_icc)]
    assert list(measured["topics"]) == ["icc-warrants"] and measured["macro_f1"] == pytest.approx(0.6667)
    assert measured["not_measured"] == {"not_labelled": ["doha-talks"], "not_configured": ["icc-warant"]}
    assert "configured, not labelled here: doha-talks" in one.output and "icc-warant" in one.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "title": "no labels"}\n')
    failed = CliRunner().invoke(main, ["eval", "rulings", str(bad), "--config", str(FIX / "topics_config.toml")])
    assert failed.exit_code != 0 and "bad.jsonl:1" in failed.output
