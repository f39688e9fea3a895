"""Evaluation metrics, the keyword baseline, threshold calibration and `monitor eval topics` on a tiny
fixture whose figures are computed by hand below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.config import load_config
from monitor.lab.topic_eval import (
    EvalDataError,
    calibrate_threshold,
    evaluate,
    keyword_baseline,
    parse_items,
    parse_labels,
    scores,
)
from monitor.signal import embed

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
