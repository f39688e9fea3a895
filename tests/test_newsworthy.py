"""The alert model (monitor.signal.newsworthy) and its evaluation (monitor.lab.alert_eval) on tiny fixtures:
what each feature reads, that fitting recovers a signal, that a retelling scores below a new development,
that another day's release is another development, and that the labels are scored as JUDGING.md scores."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from monitor.lab import alert_eval
from monitor.signal.logistic import Logistic, fit_logistic
from monitor.signal.newsworthy import (
    DEVELOPMENT_FEATURES,
    SAME_FEATURES,
    SHIPPED_ALERT_MODEL,
    AlertModel,
    Headline,
    Told,
    another_occurrence,
    development_features,
    same_features,
)

T0 = datetime(2023, 10, 20, 12, 0, tzinfo=UTC).timestamp()


def feature(names: tuple[str, ...], values: tuple[float, ...], name: str) -> float:
    return values[names.index(name)]


def test_development_features_read_commentary_events_family_and_margin() -> None:
    explainer = development_features(Headline.of("Analysis: what the release of two hostages means"), 0.2)
    release = development_features(Headline.of("Hamas frees two more hostages"), 0.2)
    family = development_features(Headline.of("Family of freed hostage speaks of relief"), 0.2)
    assert feature(DEVELOPMENT_FEATURES, explainer, "commentary") == 1.0
    assert feature(DEVELOPMENT_FEATURES, release, "commentary") == 0.0
    assert feature(DEVELOPMENT_FEATURES, release, "event") == 1.0 and feature(DEVELOPMENT_FEATURES, release, "count") == 1.0
    assert feature(DEVELOPMENT_FEATURES, family, "family") == 1.0
    # the margin is clipped, and an unknown margin counts as a clear match
    assert feature(DEVELOPMENT_FEATURES, development_features(Headline.of("x"), 5.0), "margin") == 0.7
    assert feature(DEVELOPMENT_FEATURES, development_features(Headline.of("x"), None), "margin") > 0


def test_same_features_read_time_kinds_and_further_markers() -> None:
    a = Headline.of("Hamas frees two American hostages")
    b = Headline.of("Hamas frees two more hostages, elderly Israeli women")
    f = same_features(b, a, 0.8, 72.0)
    assert feature(SAME_FEATURES, f, "cosine") == 0.8
    assert feature(SAME_FEATURES, f, "log_gap_h") == pytest.approx(np.log1p(72.0))
    assert feature(SAME_FEATURES, f, "both_event") == 1.0 and feature(SAME_FEATURES, f, "further") == 1.0
    assert 0 < feature(SAME_FEATURES, f, "words_shared") < 1


def test_fit_logistic_recovers_a_separable_signal_and_refuses_one_class() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] > 0).astype(float)
    m = fit_logistic(x, y, ("signal", "noise"), l2=1.0)
    assert m.weights[0] > 1.0 and abs(m.weights[1]) < abs(m.weights[0]) / 5
    assert m.probability([2.0, 0.0]) > 0.9 > 0.1 > m.probability([-2.0, 0.0])
    assert m.evidence([2.0, 0.0])[0][0] == "signal"
    with pytest.raises(ValueError, match="both positive and negative"):
        fit_logistic(x, np.ones(200), ("signal", "noise"))
    with pytest.raises(ValueError, match="must be"):
        fit_logistic(x, y, ("signal",))


def _vec(seed: int, near: np.ndarray | None = None, mix: float = 0.0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=16)
    if near is not None:
        v = mix * near + (1 - mix) * v / np.linalg.norm(v)
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_a_retelling_of_what_was_told_is_less_news_than_the_first_report() -> None:
    told_v = _vec(1)
    told = [Told(told_v, T0, Headline.of("Hamas frees two American hostages, a mother and daughter"))]
    again = Headline.of("Two American hostages freed by Hamas, mother and daughter")
    first = SHIPPED_ALERT_MODEL.judge(again, _vec(2, told_v, 0.9), T0 + 3600, 0.3, [])
    retold = SHIPPED_ALERT_MODEL.judge(again, _vec(2, told_v, 0.9), T0 + 3600, 0.3, told)
    assert retold.p_new < first.p_new and retold.same_as is told[0]
    assert "same as the alert" in retold.explain() and "same as" not in first.explain()


def test_commentary_is_less_news_than_a_report_and_says_why() -> None:
    report = SHIPPED_ALERT_MODEL.judge(Headline.of("Hamas frees two hostages, Qatar says"), _vec(5), T0, 0.2, [])
    comment = SHIPPED_ALERT_MODEL.judge(Headline.of("Analysis: why the hostage talks must not fail"), _vec(5), T0,
                                        0.2, [])
    assert comment.p_new < report.p_new
    assert "commentary" in comment.explain()


def test_another_days_release_announced_as_further_is_another_development() -> None:
    day1 = Headline.of("Hamas releases 24 hostages on first day of Gaza truce")
    day2 = Headline.of("Hamas releases 17 more hostages in second exchange after delay")
    assert another_occurrence(day2, day1, gap_h=26.0)
    assert another_occurrence(Headline.of("Second group of 14 hostages freed by Hamas"), day1, gap_h=2.0)
    # the same day, a different count with no "more"/"second" is a part of the same release; a day later it is not
    part = Headline.of("Hamas frees 13 Israeli hostages in Gaza")
    assert not another_occurrence(part, day1, gap_h=2.0) and another_occurrence(part, day1, gap_h=26.0)
    # the same release retold the same day is not another; a release on another day is (JUDGING.md)
    retold = (Headline.of("Two Americans freed by Hamas"), Headline.of("Hamas releases two American hostages"))
    assert not another_occurrence(*retold, gap_h=10.0) and another_occurrence(*retold, gap_h=20.0)
    # the two halves of an exchange, hours apart; and an event after an alert on its delay
    prisoners = Headline.of("Israel releases 39 Palestinian prisoners")
    assert another_occurrence(prisoners, day1, gap_h=4.0)
    assert another_occurrence(Headline.of("Truce between Israel and Hamas begins in Gaza"),
                              Headline.of("Start of truce delayed until Friday, Israel says"), gap_h=21.0)
    # a release after an alert on something else (an extension) is not that thing again
    assert another_occurrence(Headline.of("Hamas frees 11 hostages"),
                              Headline.of("Israel and Hamas agree to extend truce by two days"), gap_h=3.0)
    # "new", "fresh", "again" announce nothing; commentary is never another occurrence
    assert not another_occurrence(Headline.of("New details emerge on release of 24 hostages"), day1, gap_h=3.0)
    assert not another_occurrence(Headline.of("Analysis: what the release of 24 hostages means"), day1, gap_h=30)
    v = _vec(7)
    told = [Told(v, T0, day1)]
    j = SHIPPED_ALERT_MODEL.judge(day2, _vec(8, v, 0.95), T0 + 26 * 3600, 0.3, told)
    assert j.p_same == 0.0 and j.same_as is None


def _label_row(topic: str, hours: float, title: str, role: str, dev: str | None, kd: str | None = None,
               on: int = 1) -> dict[str, object]:
    when = datetime(2023, 10, 20, tzinfo=UTC) + timedelta(hours=hours)
    return {"topic": topic, "id": f"{hours}", "date": when.strftime("%Y-%m-%d %H:%M:%S"), "source": "example.org",
            "title": title, "summary": "", "on_topic": on, "role": role, "dev": dev, "kd": kd}


def test_candidates_are_read_checked_and_scored_like_a_reader_scores_alerts(tmp_path: Path) -> None:
    rows = [_label_row("t", 0, "Hamas frees two hostages", "development", "d1", "kd-1"),
            _label_row("t", 1, "Two hostages freed by Hamas", "development", "d1", "kd-1"),
            _label_row("t", 2, "What the release means", "commentary", None),
            _label_row("t", 3, "Football results", "off", None, on=0),
            _label_row("t", 30, "Hamas frees two more hostages", "development", "d2")]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cands = alert_eval.read_candidates(path)
    assert [c.dev for c in cands] == ["d1", "d1", None, None, "d2"]
    v = [_vec(1), _vec(2, _vec(1), 0.95), _vec(3), _vec(4), _vec(5, _vec(1), 0.5)]
    cands = [replace(c, vector=v[i], margin=0.3) for i, c in enumerate(cands)]
    every = alert_eval.simulate(cands, AlertModel(SHIPPED_ALERT_MODEL.development, SHIPPED_ALERT_MODEL.same, 0.0), 168)
    # every candidate alerts: 2 of 5 are right (the first report of d1 and of d2), both developments alerted
    assert (every.alerts, every.right, every.developments_alerted, every.kd_alerted, every.kd_pairs) == (5, 2, 2, 1, 1)
    none = alert_eval.simulate(cands, AlertModel(SHIPPED_ALERT_MODEL.development, SHIPPED_ALERT_MODEL.same, 1.01), 168)
    assert (none.alerts, none.right, none.precision, none.recall) == (0, 0, 0.0, 0.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_label_row("t", 0, "x", "development", None)) + "\n", encoding="utf-8")
    with pytest.raises(alert_eval.AlertEvalError, match="development id"):
        alert_eval.read_candidates(bad)


def test_fitting_refuses_labels_from_the_reporting_period(tmp_path: Path) -> None:
    rows = [_label_row("t", h, f"Hamas frees {h} hostages", "development", f"d{h}") for h in (0, 1)]
    rows.append(_label_row("t", 24 * 40, "Hamas frees hostages on the truce's first day", "development", "late"))
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(alert_eval.AlertEvalError, match="reporting only"):
        alert_eval.fit_model(alert_eval.read_candidates(path), 168, 0.5)


def test_analog_labels_are_only_fitted_on_and_respect_the_time_split(tmp_path: Path) -> None:
    rows = [_label_row("big", h, f"Hamas frees {h} hostages", "development", f"b{h}") for h in (0, 1, 2)]
    rows += [_label_row("small", 3, "Talks resume in Doha", "development", "s1"),
             _label_row("big", 24 * 13, "Hamas frees hostages", "development", "b-late")]  # 11-02: after the split
    analog_rows = [_label_row("other", 5, "Ukraine and Russia swap prisoners", "development", "o1"),
                   _label_row("other", 24 * 14, "Ukraine and Russia swap more prisoners", "development", "o2"),
                   _label_row("other", 3, "Talks resume in Doha", "off", None, on=0)]  # also a shipped candidate
    path, analog_path = tmp_path / "labels.jsonl", tmp_path / "analogs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    analog_path.write_text("".join(json.dumps(r) + "\n" for r in analog_rows), encoding="utf-8")
    cands, analogs = alert_eval.read_candidates(path), alert_eval.read_candidates(analog_path)
    plain = alert_eval.folds(cands)
    with_analogs = alert_eval.folds(cands, analogs)
    assert set(with_analogs) == set(plain) | {"analogs only -> all", "all -> analogs"}
    for name, (fit_on, measure_on) in with_analogs.items():
        # an item labelled in both files is never fitted on where it is measured
        assert not {(c.item.title, c.topic) for c in fit_on} & {("Talks resume in Doha", "other")}, name
        if name == "all -> analogs":
            assert fit_on == cands and [c.dev for c in measure_on] == ["o1", "o2"]
            continue
        assert not {c.topic for c in measure_on} & {"other"}, f"{name} measures an analog"
        assert measure_on == (cands if name == "analogs only -> all" else plain[name][1])
    # the time protocol fits on no label, analog or not, dated from its split on
    time_fit, _ = with_analogs["before 11-01 -> 11-01..15"]
    assert all(c.item.published_at < alert_eval.TIME_SPLIT for c in time_fit)
    assert [c.dev for c in time_fit if c.topic == "other"] == ["o1"]
    assert [c.dev for c in with_analogs["big -> others"][0] if c.topic == "other"] == ["o1", "o2"]


@pytest.mark.slow
def test_eval_alerts_refuses_analog_labels_of_a_topic_its_analog_config_lacks(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from monitor.cli import main

    labels, analogs = tmp_path / "labels.jsonl", tmp_path / "analogs.jsonl"
    labels.write_text("".join(json.dumps(_label_row("prisoner-exchange", h, f"Hamas frees {h + 2} hostages",
                                                    "development", f"d{h}")) + "\n" for h in (0, 30)),
                      encoding="utf-8")
    analogs.write_text(json.dumps(_label_row("grain-deal", 0, "Russia quits grain deal", "development", "g1")) + "\n",
                       encoding="utf-8")
    (tmp_path / "topics.toml").write_text(  # the analogs' own config, found beside them
        '[[topics]]\nid = "sudan-talks"\nname = "Sudan talks"\ndescription = "Talks to end the war in Sudan."\n'
        'examples = ["Sudan army and RSF sign truce in Jeddah"]\n', encoding="utf-8")
    config = Path(__file__).resolve().parents[1] / "feeds.toml"
    r = CliRunner().invoke(main, ["--config", str(config), "eval", "alerts", "--labels", str(labels), "--analogs",
                                  str(analogs), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code != 0
    assert "grain-deal" in r.output and "topics.toml" in r.output, r.output


@pytest.mark.slow
def test_eval_alerts_fits_on_several_analog_files_each_with_its_own_topics(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from monitor.cli import main

    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in (
        _label_row("prisoner-exchange", 0, "Hamas frees 2 hostages", "development", "d0"),
        _label_row("prisoner-exchange", 2, "Two hostages freed by Hamas", "development", "d0"),
        _label_row("prisoner-exchange", 5, "Hamas frees hostages: what it means", "commentary", None),
        _label_row("prisoner-exchange", 30, "Qatar says talks on a hostage deal resume", "development", "d30"))),
        encoding="utf-8")
    files = []
    for folder, topic, title, later in (
            ("one", "grain-deal", "Russia quits grain deal", "Putin says Russia could return to the grain deal"),
            ("two", "sudan-talks", "Sudan army and RSF sign truce in Jeddah", "Sudan army and RSF truce agreed in Jeddah collapses")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "topics.toml").write_text(
            f'[[topics]]\nid = "{topic}"\nname = "{topic}"\ndescription = "{title}."\nexamples = ["{title}"]\n'
            'threshold = 0.05\n', encoding="utf-8")
        rows = [_label_row(topic, 0, title, "development", "a1"),
                _label_row(topic, 1, f"Report: {title}", "development", "a1"),
                _label_row(topic, 9, f"{title}: what it means", "commentary", None),
                _label_row(topic, 20, later, "development", "a2")]
        files.append(tmp_path / folder / "development_labels.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = Path(__file__).resolve().parents[1] / "feeds.toml"
    base = ["--config", str(config), "eval", "alerts", "--labels", str(labels), "--cache-dir", str(tmp_path / "c")]
    r = CliRunner().invoke(main, [*base, "--analogs", str(files[0]), "--analogs", str(files[1]), "--json"])
    assert r.exit_code == 0, r.output
    for f in files:  # each file is matched by the topics beside it (one topic each, two developments each)
        assert f"{f}: 4 analog candidates of 1 topics" in r.output
    report = json.loads(r.output.strip().splitlines()[-1])
    assert report["all -> analogs / refit"]["developments"] == 4  # both files' developments are measured there
    # each row's baseline: every match of its measured half alerts, so every matched development is alerted
    every = report["all -> analogs / every match"]
    assert every["right"] == every["developments_alerted"] == every["developments"] == 4 and every["alerts"] == 8
    # one analog topic labelled in two files would be fitted on twice: refused, naming it
    twice = CliRunner().invoke(main, [*base, "--analogs", str(files[0]), "--analogs", str(files[0])])
    assert twice.exit_code != 0 and "topic grain-deal is labelled in" in twice.output
    # --analog-topics names one file's topics; with two files it is ambiguous
    both = CliRunner().invoke(main, [*base, "--analogs", str(files[0]), "--analogs", str(files[1]),
                                     "--analog-topics", str(tmp_path / "one" / "topics.toml")])
    assert both.exit_code != 0 and "--analog-topics" in both.output


def test_development_auc_ranks_reports_of_a_development_above_the_rest(tmp_path: Path) -> None:
    rows = [_label_row("t", 0, "Hamas frees two hostages", "development", "d1"),
            _label_row("t", 1, "Why the truce matters", "commentary", None),
            _label_row("t", 2, "Qatar says deal signed", "development", "d2"),
            _label_row("t", 3, "Opinion: lessons of the war", "commentary", None)]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cands = alert_eval.read_candidates(path)
    # a stub development model that reads only the margin: reports get the clearer matches, then the reverse
    names = DEVELOPMENT_FEATURES
    margin_only = Logistic(names, (0.0,) * len(names), (1.0,) * len(names),
                           tuple(1.0 if n == "margin" else 0.0 for n in names), 0.0)
    model = AlertModel(margin_only, SHIPPED_ALERT_MODEL.same, 0.5)
    right = [replace(c, margin=0.4 if c.dev else -0.1) for c in cands]
    wrong = [replace(c, margin=-0.1 if c.dev else 0.4) for c in cands]
    assert alert_eval.development_auc(right, model) == 1.0
    assert alert_eval.development_auc(wrong, model) == 0.0
    # unmatched candidates are not judged by the development model, and one kind alone says nothing
    assert alert_eval.development_auc([replace(c, matched=False) for c in right], model) == 0.5
    assert alert_eval.development_auc([c for c in right if c.dev], model) == 0.5
