"""Story evaluation: the metrics on a hand-checked example, reading labelled files, `monitor eval stories`
and the stream replay on a small captured stream."""

from __future__ import annotations

import json
import lzma
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.config import Settings, TopicConfig
from monitor.lab import story_eval
from monitor.signal import match
from monitor.signal.novelty import BASELINE, StoryParams


def test_bcubed_and_pairwise_on_a_hand_checked_example() -> None:
    predicted = ["A", "A", "B", "B", "B"]
    gold = ["x", "x", "x", "y", "y"]
    # per item precision 1, 1, 1/3, 2/3, 2/3 and recall 2/3, 2/3, 1/3, 1, 1 -> both 11/15
    b = story_eval.bcubed(predicted, gold)
    assert b.precision == pytest.approx(11 / 15) and b.recall == pytest.approx(11 / 15)
    assert b.f1 == pytest.approx(11 / 15)
    # pairs put together: (1,2) (3,4) (3,5) (4,5); pairs belonging together: (1,2) (1,3) (2,3) (4,5)
    p = story_eval.pairwise(predicted, gold)
    assert p.precision == pytest.approx(0.5) and p.recall == pytest.approx(0.5)


def test_metrics_reward_the_right_clustering_and_punish_lumping_and_splitting() -> None:
    gold = ["x", "x", "y", "y", "z"]
    perfect = story_eval.bcubed(["1", "1", "2", "2", "3"], gold)
    assert (perfect.precision, perfect.recall, perfect.f1) == (1.0, 1.0, 1.0)
    lumped = story_eval.bcubed(["1"] * 5, gold)
    assert lumped.recall == 1.0 and lumped.precision < 0.5
    split = story_eval.bcubed(["1", "2", "3", "4", "5"], gold)
    assert split.precision == 1.0 and split.recall < 0.7
    assert story_eval.pairwise(["1", "2", "3", "4", "5"], gold).recall == 0.0
    with pytest.raises(ValueError):
        story_eval.bcubed(["1"], gold)


def _write_labelled(path: Path) -> Path:
    rows = [
        ("a1", "2023-09-09T06:00:00", "reuters", "Powerful earthquake in Morocco kills more than 600 people",
         "A magnitude 6.8 earthquake struck Morocco's High Atlas mountains late on Friday.", "quake-morocco"),
        ("b1", "2023-10-07T09:00:00", "ap", "Powerful earthquake strikes western Afghanistan near Herat",
         "A magnitude 6.3 earthquake struck western Afghanistan near the city of Herat.", "quake-herat"),
        ("a2", "2023-09-09T08:00:00", "bbc", "Morocco earthquake: more than 600 dead after powerful quake",
         "Hundreds of people have been killed after a 6.8 magnitude earthquake hit Morocco's Atlas mountains.",
         "quake-morocco"),
        ("b2", "2023-10-07T11:00:00", "cnn", "Deadly earthquake hits Herat province in Afghanistan",
         "At least 15 people were killed when a 6.3 quake shook Herat in western Afghanistan.", "quake-herat"),
        ("c1", "2023-10-07T12:00:00", "cnn", "Central bank raises interest rates to fight inflation",
         "The central bank raised its key rate by a quarter point.", "rates"),
    ]
    with path.open("w", encoding="utf-8") as fh:
        for i, d, src, t, s, story in rows:
            fh.write(json.dumps({"id": i, "date": d, "source": src, "title": t, "summary": s, "story": story}) + "\n")
    return path


def test_read_labelled_sorts_by_date_and_explains_bad_lines(tmp_path: Path) -> None:
    items = story_eval.read_labelled(_write_labelled(tmp_path / "s.jsonl"))
    assert [li.story for li in items] == ["quake-morocco", "quake-morocco", "quake-herat", "quake-herat", "rates"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "title": "no date"}\n', encoding="utf-8")
    with pytest.raises(story_eval.EvalError, match="bad.jsonl:1"):
        story_eval.read_labelled(bad)
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "none.toml"), "eval", "stories",
                                       "--items", str(bad)])
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output


@pytest.mark.slow
def test_evaluate_stories_scores_a_small_labelled_file(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    items = story_eval.read_labelled(_write_labelled(tmp_path / "s.jsonl"))
    vectors = story_eval.cached_vectors(embedder, [li.item for li in items], tmp_path / "cache")
    r = story_eval.evaluate_stories(items, vectors, StoryParams())
    assert r.items == 5 and r.gold_stories == 3
    assert r.stories == 3 and r.bcubed.f1 == 1.0 and r.pairwise.f1 == 1.0
    # the cache is used on the next run and gives the same vectors
    again = story_eval.cached_vectors(embedder, [li.item for li in items], tmp_path / "cache")
    assert (again == vectors).all() and len(list((tmp_path / "cache").iterdir())) == 1
    # the baseline (no window: one cosine threshold over all time) is also scored
    base = story_eval.evaluate_stories(items, vectors, BASELINE)
    assert 0.0 < base.bcubed.f1 <= 1.0


def _write_stream(path: Path) -> Path:
    rows = [
        ("2023-11-24 09:00:00+00:00", "https://www.reuters.com/world", "Hamas releases 24 hostages on first day of Gaza truce",
         "Hamas freed 13 Israelis, 10 Thais and a Filipino on Friday, Qatar said.", "https://www.reuters.com/a"),
        ("2023-11-24 10:00:00+00:00", "https://www.usnews.com/feed", "Hamas releases 24 hostages on first day of Gaza truce",
         "Hamas freed 13 Israelis, 10 Thais and a Filipino on Friday, Qatar said.", "https://www.usnews.com/a"),
        ("2023-11-24 10:00:00+00:00", "https://www.usnews.com/feed", "Hamas releases 24 hostages on first day of Gaza truce",
         "Hamas freed 13 Israelis, 10 Thais and a Filipino on Friday, Qatar said.", "https://www.usnews.com/a"),
        ("2023-11-25 22:00:00+00:00", "https://feeds.bbci.co.uk/news", "Hamas releases 17 more hostages in second exchange after delay",
         "Thirteen Israelis and four Thais were freed on Saturday in exchange for 39 Palestinian prisoners.",
         "https://www.bbc.co.uk/b"),
        ("2023-11-25 23:00:00+00:00", "https://feeds.bbci.co.uk/news", "Central bank raises interest rates",
         "The bank raised its key rate by a quarter point.", "https://www.bbc.co.uk/c"),
        ("2023-12-05 10:00:00+00:00", "https://feeds.bbci.co.uk/news", "Hamas releases hostages (outside the dates)",
         "", "https://www.bbc.co.uk/d"),
    ]
    with lzma.open(path, "wt", encoding="utf-8") as fh:
        for d, feed, t, s, link in rows:
            fh.write(json.dumps({"capture_day": d[:10], "feed": feed, "title": t, "description": s, "link": link,
                                 "date_published": d}) + "\n")
    return path


@pytest.mark.slow
def test_replay_counts_matches_stories_alerts_and_repeats(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    stream = _write_stream(tmp_path / "stream.jsonl.xz")
    items = story_eval.read_stream(stream, datetime(2023, 11, 20, tzinfo=UTC), datetime(2023, 12, 3, tzinfo=UTC))
    assert len(items) == 4  # the duplicate capture and the item outside the dates are left out
    topic = TopicConfig(id="prisoner-exchange", name="Prisoner exchange",
                        description="Hostages and prisoners released in an exchange between Israel and Hamas.",
                        examples=["Hamas releases hostages in exchange for Palestinian prisoners"], threshold=0.05)
    topics = match.compile_topics([topic], embedder)
    vectors = story_eval.cached_vectors(embedder, items, None)
    r = story_eval.replay(items, vectors, topics, Settings())
    c = r.topics["prisoner-exchange"]
    assert c == {"matches": 3, "stories": 1, "alerts": 2, "repeats": 1, "new_stories": 1, "updates": 1, "held": 0}
    assert [(a.decision, a.title) for a in r.alerts] == [
        ("new_story", "Hamas releases 24 hostages on first day of Gaza truce"),
        ("update", "Hamas releases 17 more hostages in second exchange after delay")]
    assert r.alerts[0].link == "https://www.reuters.com/a" and "17" in (r.alerts[1].what_is_new or "")
    # what a person needs to judge each alert (JUDGING.md): headline, teaser, "what's new", time, topic
    row = r.alerts[1].as_dict()
    assert row["headline"] == "Hamas releases 17 more hostages in second exchange after delay"
    assert row["teaser"].startswith("Thirteen Israelis") and row["topic"] == "prisoner-exchange" and row["time"]
    assert r.per_day()["prisoner-exchange"] == {"2023-11-24": 1, "2023-11-25": 1}


@pytest.mark.slow
def test_eval_replay_sweep_judges_the_replay_at_each_alert_threshold(
        tmp_path: Path, embedder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from monitor.signal import embed
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    monkeypatch.setattr(story_eval, "SWEEP_THRESHOLDS", (0.0, 1.01))  # everything that is news / nothing alerts
    stream = _write_stream(tmp_path / "stream.jsonl.xz")
    (tmp_path / "topics.toml").write_text(
        '[settings]\ndatabase_url = "sqlite:///unused.db"\n\n[[topics]]\nid = "prisoner-exchange"\n'
        'name = "Prisoner exchange"\ndescription = "Hostages and prisoners released in an exchange between Israel '
        'and Hamas."\nexamples = ["Hamas releases hostages in exchange for Palestinian prisoners"]\nthreshold = 0.05\n',
        encoding="utf-8")
    labels = [("2023-11-24 09:00:00", "Hamas releases 24 hostages on first day of Gaza truce", "d1"),
              ("2023-11-24 10:00:00", "Hamas releases 24 hostages on first day of Gaza truce", "d1"),
              ("2023-11-25 22:00:00", "Hamas releases 17 more hostages in second exchange after delay", "d2")]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(
        {"topic": "prisoner-exchange", "date": d, "title": t, "on_topic": 1, "role": "development", "dev": dev})
        + "\n" for d, t, dev in labels), encoding="utf-8")
    args = ["--config", str(tmp_path / "topics.toml"), "eval", "replay", "--stream", str(stream),
            "--from", "2023-11-20", "--to", "2023-12-02", "--cache-dir", str(tmp_path / "cache")]
    refused = CliRunner().invoke(main, [*args, "--sweep"])
    assert refused.exit_code == 2 and "--labels" in refused.output
    result = CliRunner().invoke(main, [*args, "--labels", str(tmp_path / "labels.jsonl"), "--sweep", "--json"])
    assert result.exit_code == 0, result.output
    judged = json.loads(result.output.strip().splitlines()[-1])["judged"]
    sweep = judged["by_alert_threshold"]
    # every threshold is judged, the shipped one included (its row is the shipped run's)
    assert set(sweep) == {"0", "1.01", f"{StoryParams().alert_model.threshold:g}"}
    assert sweep[f"{StoryParams().alert_model.threshold:g}"] == judged["shipped"]
    # at 0 both releases (first reports of their developments) alert and are right, the syndicated copy does not;
    # above every p(new) nothing alerts
    assert (sweep["0"]["alerts"], sweep["0"]["right"]) == (2, 2)
    assert sweep["1.01"]["alerts"] == 0 and "by alert threshold" in result.output


def _write_timelines(path: Path) -> Path:
    rows = [
        ("t1", "2023-10-20 17:00:00", "reuters.com", "Hamas releases two American hostages, a mother and daughter",
         "development"),
        ("t1", "2023-10-20 18:00:00", "bbc.co.uk", "Hamas frees 2 US hostages, a mother and her daughter", "repeat"),
        ("t1", "2023-10-20 20:00:00", "nytimes.com", "Analysis: what the release of two hostages means", "repeat"),
        ("t1", "2023-10-23 20:00:00", "cnn.com", "Hamas frees 2 more hostages, elderly Israeli women", "development"),
    ]
    path.write_text("".join(json.dumps({"timeline": tl, "topic": "prisoner-exchange", "id": str(i), "date": d,
                                        "source": src, "title": t, "summary": "", "label": lab}) + "\n"
                            for i, (tl, d, src, t, lab) in enumerate(rows)), encoding="utf-8")
    return path


@pytest.mark.slow
def test_timeline_alerts_are_scored_against_development_labels(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    tl = story_eval.read_timelines(_write_timelines(tmp_path / "t.jsonl"))
    assert [t.development for t in tl] == [True, False, False, True]
    vectors = story_eval.cached_vectors(embedder, [t.item for t in tl], None)
    r = story_eval.evaluate_updates(tl, vectors, StoryParams())
    assert r.items == 4 and r.developments == 2
    assert r.alert_precision == 1.0 and r.development_recall == 1.0, r.mistakes
    # the threshold sweep: nothing alerts above every p(new), every first report alerts at 0, and the shipped
    # threshold's row is the shipped run's
    shipped = StoryParams().alert_model.threshold
    sweep = story_eval.by_alert_threshold(tl, vectors, StoryParams(), (0.0, shipped, 1.01))
    assert sweep[1.01].development_recall == 0.0 and sum(sweep[1.01].decisions.get(d, 0)
                                                         for d in ("new_story", "update")) == 0
    assert sweep[0.0].development_recall == 1.0 and sweep[0.0].decisions.get("update", 0) >= 1
    assert sweep[shipped] == r
    # and the command shows it
    from monitor.signal import embed
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embed, "load_embedder", lambda settings: embedder)
        mp.setattr(story_eval, "SWEEP_THRESHOLDS", (1.01,))
        out = CliRunner().invoke(main, ["eval", "stories", "--timelines", str(tmp_path / "t.jsonl"), "--json",
                                        "--cache-dir", str(tmp_path / "cache")])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output.strip().splitlines()[-1])["t.jsonl"]["by_alert_threshold"]
    assert set(rows) == {f"{shipped:g}", "1.01"} and rows[f"{shipped:g}"] == r.as_dict()
    assert "1.01: - / " in out.output  # no update at all: no update precision to show
    (tmp_path / "bad.jsonl").write_text('{"timeline": "t", "topic": "x", "date": "2023-10-20", "title": "x", '
                                        '"label": "maybe"}\n', encoding="utf-8")
    with pytest.raises(story_eval.EvalError, match="bad.jsonl:1"):
        story_eval.read_timelines(tmp_path / "bad.jsonl")


def test_replay_alerts_are_judged_with_development_labels_as_a_reader_judges_them(tmp_path: Path) -> None:
    """JUDGING.md with labels: right = on topic and a development no earlier alert of the topic reported;
    commentary, off-topic items and repeats are wrong; a key development counts once any alert reports it;
    an alert with no label is counted, never guessed."""
    def at(h: int) -> datetime:
        return datetime(2023, 10, 20, tzinfo=UTC) + timedelta(hours=h)

    rows = [("t", 0, "Hamas frees two hostages", 1, "development", "d1", "kd-1"),
            ("t", 1, "Two hostages freed by Hamas", 1, "development", "d1", "kd-1"),
            ("t", 2, "What the release means", 1, "commentary", None, None),
            ("t", 3, "Football results", 0, "off", None, None),
            ("u", 4, "Two hostages freed by Hamas", 1, "development", "d1", None)]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(
        {"topic": t, "date": at(h).strftime("%Y-%m-%d %H:%M:%S"), "title": title, "on_topic": on, "role": role,
         "dev": dev, "kd": kd}) + "\n" for t, h, title, on, role, dev, kd in rows), encoding="utf-8")
    labels = story_eval.read_development_labels(tmp_path / "labels.jsonl")

    def alert(topic: str, h: int, title: str) -> story_eval.ReplayAlert:
        return story_eval.ReplayAlert(topic=topic, decision="new_story", published=at(h), title=title, link=None,
                                      story=1, outlet="example.org", what_is_new=None)

    alerts = [alert("t", 0, "Hamas frees two hostages"), alert("t", 1, "Two  hostages freed by Hamas"),
              alert("t", 2, "What the release means"), alert("t", 3, "Football results"),
              alert("u", 4, "Two hostages freed by Hamas"), alert("t", 5, "Never labelled")]
    j = story_eval.judge_replay(alerts, labels, [("kd-1", "t"), ("kd-1", "u"), ("kd-2", "t")])
    assert (j.alerts, j.right, j.unlabelled) == (6, 2, 1)  # d1 in t, d1 in u (another topic's subscribers)
    assert j.per_topic["t"] == {"alerts": 5, "right": 1, "off_topic": 1, "repeat": 1, "commentary": 1, "unlabelled": 1}
    # development ids and their key developments are per topic: u's label names no key development
    assert (j.kd_alerted, j.kd_pairs) == (1, 3) and j.missed_kds == ("kd-1 u", "kd-2 t")
    with pytest.raises(story_eval.EvalError, match="role"):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"topic": "t", "date": "2023-10-20", "title": "x",
                                                        "on_topic": 1, "role": "maybe"}) + "\n", encoding="utf-8")
        story_eval.read_development_labels(tmp_path / "bad.jsonl")
