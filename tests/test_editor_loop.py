"""The topic editor's loop, simulated (`monitor.lab.editor_loop`, `monitor eval editor`): what the reader reads,
what a click adds, and that a topic measured on items the reader never saw improves when the clicks are right.
Hand-built unit vectors and a hand-written combiner, so every verdict below follows from the geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.config import TopicConfig
from monitor.lab import editor_loop
from monitor.lab.topic_eval import EvalDataError, EvalItem, topic_pairs
from monitor.signal import embed, match, relevance

FIX = Path(__file__).resolve().parent / "fixtures"
# p = sigmoid(10 * margin - 7): a margin of 0.7 is even odds
MARGIN_ONLY = relevance.Combiner(names=("margin",), mean=(0.0,), scale=(1.0,), weights=(10.0,), bias=-7.0)


def _unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float64)
    return v / np.linalg.norm(v)


# The topic sits on axis 0, its two examples spread along axis 1 (leave-one-out best 0.78: threshold ~0.69).
TEXTS = {
    "desc": _unit(1, 0, 0, 0, 0),
    "ex one": _unit(1, 0.8, 0, 0, 0),
    "ex two": _unit(1, -0.8, 0, 0, 0),
    # read items (before the split): an on-topic item in another wording (axis 2) scores below the threshold,
    # an off-topic one near the topic (axis 3) above it
    "read on": _unit(0.6, 0, 0.8, 0, 0),
    "read off": _unit(1, 0, 0, 0.6, 0),
    # measured items (from the split): their look-alikes
    "later on": _unit(0.6, 0, 0.8, 0, 0.05),
    "later off": _unit(1, 0, 0, 0.6, 0.05),
}
TITLES = ["read on", "read off", "later on", "later off"]
GOLD = np.array([1, 0, 1, 0])
READ = np.array([True, True, False, False])
MEASURE = ~READ
TIMES = np.arange(4, dtype=np.float64)


def _encode(texts) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([TEXTS[t] for t in texts], dtype=np.float32)


def _topic(**kw: object) -> TopicConfig:
    return TopicConfig(id="t", name="T", description="desc", examples=["ex one", "ex two"], **kw)  # type: ignore[arg-type]


def _simulate(topic: TopicConfig, rounds: int, reader: editor_loop.Reader = editor_loop.Reader(),
              gold: np.ndarray = GOLD) -> list[editor_loop.Round]:
    return editor_loop.simulate(topic, TITLES, TITLES, _encode(TITLES), TIMES, gold, READ, MEASURE, _encode,
                                MARGIN_ONLY, rounds, reader)


def test_the_right_clicks_fix_the_look_alikes_the_reader_never_saw() -> None:
    r0, r1 = _simulate(_topic(), rounds=1)
    # as written: the later off-topic look-alike matches, the later on-topic one does not
    assert (r0.scores.precision, r0.scores.recall, r0.read) == (0.0, 0.0, 0)
    # one round: "read off" (a match, off topic) became a near miss, "read on" (a miss, on topic) an example
    assert (r1.read, r1.examples_added, r1.counterexamples_added) == (2, 1, 1)
    assert (r1.scores.precision, r1.scores.recall, r1.scores.f1) == (1.0, 1.0, 1.0)
    assert r1.scores.support == 1  # measured on the later items only


def test_wrong_labels_make_the_same_clicks_hurt() -> None:
    # the reader follows the labels: flip the read items' labels and nothing is added where it would help
    flipped = np.array([0, 1, 1, 0])
    r0, r1 = _simulate(_topic(), rounds=1, gold=flipped)
    assert (r1.examples_added, r1.counterexamples_added) == (0, 0)  # a match on topic, a miss off topic
    assert r1.scores == r0.scores


def test_a_headline_already_in_the_topic_is_read_but_not_added_again() -> None:
    r = _simulate(_topic(counterexamples=["read off"]), rounds=1)
    assert r[1].counterexamples_added == 0 and r[1].read >= 1


def test_the_reader_stops_when_nothing_is_left_to_read() -> None:
    rounds = _simulate(_topic(), rounds=5)
    assert [r.read for r in rounds] == [0, 2]  # two readable items, read in the first round


def test_a_vetoed_item_is_never_offered_as_a_miss() -> None:
    rounds = _simulate(_topic(exclude=["read"]), rounds=1)
    assert rounds[-1].read == 0  # both read items carry the excluded word "read"


def test_choose_reads_lists_matches_newest_first_or_weakest_first_and_misses_closest_first() -> None:
    prob = np.array([0.9, 0.6, 0.95, 0.3, 0.4, 0.1])
    matched = prob >= 0.5
    readable = np.array([True, True, True, True, True, False])
    times = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    newest = editor_loop.choose_reads(prob, matched, readable, times, editor_loop.Reader(2, 1))
    assert newest.tolist() == [2, 1, 4]  # matches from the newest; the closest miss (0.4, not the unreadable 0.1)
    weakest = editor_loop.choose_reads(prob, matched, readable, times, editor_loop.Reader(2, 2, weakest_first=True))
    assert weakest.tolist() == [1, 0, 4, 3]


def test_the_combiner_never_sees_the_simulated_topics_labels() -> None:
    rng = np.random.default_rng(3)
    vecs = rng.normal(0, 1, (60, 3))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    topics = []
    for i, tid in enumerate(("a", "b")):
        cfg = TopicConfig(id=tid, name=tid, description=tid, examples=[f"{tid} 1", f"{tid} 2"])
        protos = np.eye(3)[[i, i, i]] + rng.normal(0, 0.1, (3, 3))
        topics.append(match.compile_topic(cfg, protos / np.linalg.norm(protos, axis=1, keepdims=True),
                                          np.zeros((0, 3))))
    topic_set = match.TopicSet("synthetic", tuple(topics))
    items = [EvalItem(id=str(k), date="2023-10-20", feed="f", title=f"x {k}", summary="") for k in range(60)]
    labels = {str(k): {"a": int(vecs[k, 0] > 0.5), "b": int(vecs[k, 1] > 0.5)} for k in range(60)}
    scrambled = {k: {"a": 1 - v["a"], "b": v["b"]} for k, v in labels.items()}
    mask = np.ones(60, dtype=bool)
    fits = [editor_loop.leave_one_out_combiner(topic_pairs(items, lab, vecs, topic_set), "a", mask, ["best"], 1.0)
            for lab in (labels, scrambled)]
    assert fits[0] == fits[1]  # topic a's own labels changed, its combiner did not
    other = editor_loop.leave_one_out_combiner(topic_pairs(items, scrambled, vecs, topic_set), "b", mask, ["best"],
                                               1.0)
    assert other != editor_loop.leave_one_out_combiner(topic_pairs(items, labels, vecs, topic_set), "b", mask,
                                                       ["best"], 1.0)
    with pytest.raises(EvalDataError, match="at least one other"):
        editor_loop.leave_one_out_combiner(topic_pairs(items, labels, vecs, match.TopicSet("s", (topics[0],))),
                                           "a", mask, ["best"], 1.0)


def test_macro_keeps_a_topic_that_stopped_early_at_its_last_round() -> None:
    short = _simulate(_topic(), rounds=5)  # stops after round 1 (F1 0 then 1)
    assert editor_loop.macro({"t": short, "u": short}) == [0.0, 1.0]
    assert editor_loop.macro({"t": short[:1], "u": short}) == [0.0, 0.5]


def test_eval_editor_command_reads_before_the_split_and_measures_after(embedder, monkeypatch,  # type: ignore[no-untyped-def]
                                                                       tmp_path) -> None:
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    args = ["eval", "editor", "--items", str(FIX / "topics_items.jsonl"), "--labels",
            str(FIX / "topics_labels.jsonl"), "--config", str(FIX / "topics_config.toml"), "--rounds", "2",
            "--json", "--cache-dir", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert (out["read_items"], out["measured_items"]) == (3, 3)  # a1-a3 before 2023-11-01, a4-a6 from it
    icc = out["topics"]["icc-warrants"]
    # icc-warrants (threshold 0, the gates decide) lists a1 and a2 and never a3, vetoed by "cricket": the reader
    # marks a2 ("ICC issues warrant for Putin", off topic) as a near miss in the first round, then has nothing left
    assert [(r["read"], r["counterexamples_added"], r["examples_added"]) for r in icc["rounds"]] == [(0, 0, 0),
                                                                                                     (2, 1, 0)]
    assert icc["rounds"][0]["support"] == 1  # a4, measured; a1 (on topic, read) is not
    # measured as written: icc-warrants' gate keeps a4 alone (on topic), doha-talks (threshold 1) matches nothing;
    # the keyword queries find a4 and a5 ("Doha" and "talks", doha-talks' name words), the two measured positives
    assert icc["keyword_baseline"]["f1"] == 1.0 and out["keyword_macro_f1"] == 1.0
    assert out["macro_f1"][0] == 0.5 and out["topics"]["doha-talks"]["rounds"][0]["f1"] == 0.0
    assert "closest misses a round" in result.output and "macro-F1 per round" in result.output
    one = tmp_path / "one.toml"
    text = (FIX / "topics_config.toml").read_text()
    one.write_text(text[:text.index("[[topics]]", text.index("[[topics]]") + 1)])
    alone = CliRunner().invoke(main, ["eval", "editor", *args[2:6], "--config", str(one)])
    assert alone.exit_code != 0 and "at least two enabled" in alone.output
    # a labelled item dated from 2023-11-16 on is neither read nor measured
    late_items, late_labels = tmp_path / "late.jsonl", tmp_path / "late_labels.jsonl"
    late_items.write_text((FIX / "topics_items.jsonl").read_text() + json.dumps(
        {"id": "late", "date": "2023-11-20 10:00:00", "feed": "https://example.org/a",
         "title": "ICC prosecutor seeks arrest warrants over Gaza", "summary": ""}) + "\n")
    late_labels.write_text((FIX / "topics_labels.jsonl").read_text()
                           + '{"id": "late", "labels": {"icc-warrants": 1, "doha-talks": 0}}\n')
    late = CliRunner().invoke(main, ["eval", "editor", "--items", str(late_items), "--labels", str(late_labels),
                                     *args[6:]])
    assert late.exit_code == 0, late.output
    late_out = json.loads(late.output.strip().splitlines()[-1])
    assert (late_out["read_items"], late_out["measured_items"]) == (3, 3)
    assert late_out["topics"]["icc-warrants"]["rounds"][0]["support"] == 1
    odd_day = CliRunner().invoke(main, [*args, "--split-date", "2023-11-1"])
    assert odd_day.exit_code == 2 and "--split-date" in odd_day.output
    too_late = CliRunner().invoke(main, [*args, "--split-date", "2023-12-01"])  # nothing to measure before 11-16
    assert too_late.exit_code != 0 and "both before and from 2023-12-01" in too_late.output


def test_the_reader_can_click_one_kind_of_button_only() -> None:
    only_examples = _simulate(_topic(), rounds=1, reader=editor_loop.Reader(examples=True, near_misses=False))[1]
    only_misses = _simulate(_topic(), rounds=1, reader=editor_loop.Reader(examples=False, near_misses=True))[1]
    assert (only_examples.examples_added, only_examples.counterexamples_added) == (1, 0)
    assert (only_misses.examples_added, only_misses.counterexamples_added) == (0, 1)
    assert only_examples.scores.recall == 1.0  # the example brings its look-alike in
    assert only_misses.scores.recall == 0.0 and only_misses.scores.precision == 0.0  # nothing matched any more


def test_a_careful_reader_undoes_a_near_miss_whose_diff_loses_an_on_topic_item() -> None:
    texts = {**TEXTS, "read on too": _unit(1, 0, 0, 0.6, -0.05)}  # on topic, a look-alike of "read off"
    titles = ["read on too", "read off", "later on", "later off"]
    gold = np.array([1, 0, 1, 0])

    def encode(batch):  # type: ignore[no-untyped-def]
        return np.array([texts[t] for t in batch], dtype=np.float32)

    def run(careful: bool) -> editor_loop.Round:
        reader = editor_loop.Reader(examples=False, careful=careful)
        return editor_loop.simulate(_topic(), titles, titles, encode(titles), TIMES, gold, READ, MEASURE, encode,
                                    MARGIN_ONLY, 1, reader)[-1]

    hasty, careful = run(False), run(True)
    assert hasty.counterexamples_added == 1 and hasty.diff_read == 0
    # the diff of "read off" as a near miss: it loses itself (right) and "read on too" (wrong): not kept
    assert careful.counterexamples_added == 0 and careful.diff_read == 2
    window = np.ones(4, dtype=bool)
    gold4 = np.array([0, 1, 1, 1])
    everything = np.ones(4, dtype=bool)
    assert editor_loop.click_helps(everything, np.array([False, True, True, True]), gold4, window) == (True, 1)
    # dropping the off-topic item with an on-topic one: one wrong change, undone whatever it fixes
    assert editor_loop.click_helps(everything, np.array([False, False, True, True]), gold4, window) == (False, 2)
    assert editor_loop.click_helps(everything, everything, gold4, window) == (False, 0)  # nothing changed


def test_a_careful_reader_judges_a_click_by_the_items_of_its_diff_only() -> None:
    before, after = np.array([True, True, False]), np.array([False, True, False])  # item 0 dropped
    window = np.ones(3, dtype=bool)
    for unread in ([0, 1], [1, 0], [1, 1], [0, 0]):  # labels of the items the diff does not show
        assert editor_loop.click_helps(before, after, np.array([0, *unread]), window) == (True, 1)
        assert editor_loop.click_helps(before, after, np.array([1, *unread]), window) == (False, 1)
    outside = np.array([False, True, True])  # a change outside the window is not in the diff
    assert editor_loop.click_helps(before, after, np.array([1, 0, 0]), outside) == (False, 0)
