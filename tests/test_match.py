"""Matching: topic config validation, deterministic scoring, counterexamples and keyword gates, the
shipped topics on unseen headlines, stored matches, and the `topics test` / `backtest` commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from monitor.cli import main
from monitor.config import TopicConfig, load_config, parse_config
from monitor.errors import ConfigError
from monitor.records import ItemRecord
from monitor.signal import embed, match
from monitor.storage import db
from monitor.storage.tables import Feed, Item, Match

pytestmark = pytest.mark.databases("sqlite", "postgresql")

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(UTC).replace(microsecond=0)

TOPIC = """
[[topics]]
id = "icc-warrants"
name = "ICC warrants"
description = "The International Criminal Court and arrest warrants concerning Israel and Palestine."
examples = ["ICC prosecutor seeks arrest warrants for Netanyahu and Hamas leaders",
            "International Criminal Court issues warrants for Israeli leaders over Gaza"]
counterexamples = ["ICC issues arrest warrant for Putin over deported Ukrainian children"]
"""


@pytest.mark.parametrize(("extra", "message"), [
    ('colour = "red"', "topics['icc-warrants'].colour: unknown key"),
    ("threshold = 1.5", "topics['icc-warrants'].threshold: Input should be less than or equal to 1"),
])
def test_topic_config_errors_are_clear(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(TOPIC + extra + "\n")


def test_empty_examples_are_refused() -> None:
    text = TOPIC.replace('examples = ["ICC prosecutor seeks arrest warrants for Netanyahu and Hamas leaders",\n'
                         '            "International Criminal Court issues warrants for Israeli leaders over Gaza"]',
                         'examples = ["  "]')
    with pytest.raises(ConfigError, match=r"topics\['icc-warrants'\]\.examples: needs at least one example headline"):
        parse_config(text)


def _topics(embedder, **overrides) -> match.TopicSet:  # type: ignore[no-untyped-def]
    t = parse_config(TOPIC).topics[0].model_copy(update=overrides)
    return match.compile_topics([t], embedder)


def test_matching_is_deterministic_and_independent_of_batch(embedder) -> None:  # type: ignore[no-untyped-def]
    topics = _topics(embedder)
    texts = ["ICC prosecutor applies for warrants against Israeli leaders", "Storm hits the coast",
             "ICC judges issue Putin warrant"]
    v = embedder.encode(texts)
    a = match.match_texts([1, 2, 3], texts, v, topics)
    b = match.match_texts([1, 2, 3], texts, v.copy(), _topics(embedder))
    assert a == b
    single = match.match_texts([3], texts[2:], embedder.encode(texts[2:]), topics)
    assert single[0].score == pytest.approx(a[2].score, abs=1e-3)
    assert all(0.0 <= m.score <= 1.0 for m in a)


def test_counterexample_pushes_a_near_miss_out(embedder) -> None:  # type: ignore[no-untyped-def]
    with_counter = _topics(embedder, threshold=0.5)
    without = _topics(embedder, threshold=0.5, counterexamples=[])
    text = ["ICC issues arrest warrant for Russian president Putin over Ukraine"]
    v = embedder.encode(text)
    m1 = match.match_texts([1], text, v, with_counter)[0]
    m0 = match.match_texts([1], text, v, without)[0]
    assert m1.score < m0.score
    assert "closer to counterexample" in m1.reason


def test_keyword_gates(embedder) -> None:  # type: ignore[no-untyped-def]
    topics = _topics(embedder, threshold=0.0, require_all=[["ICC", "International Criminal Court"], ["Gaza", "Israel"]],
                     exclude=["cricket"], keyword_mode="gate")
    texts = ["ICC prosecutor visits Gaza", "ICC prosecutor visits Kyiv", "ICC cricket final in Gaza?"]
    got = match.match_texts([1, 2, 3], texts, embedder.encode(texts), topics)
    assert [m.matched for m in got] == [True, False, False]
    assert "keywords 2/2 groups: ICC, Gaza" in got[0].reason
    assert "not every keyword group has a hit" in got[1].reason
    assert "excluded keyword 'cricket'" in got[2].reason
    assert match.keyword_pattern(["ICC"]).search("ICCs") is None  # whole words only


def test_keywords_as_evidence_raise_or_lower_the_score_but_do_not_veto(embedder) -> None:  # type: ignore[no-untyped-def]
    with_kw = _topics(embedder, threshold=0.0, require_all=[["ICC"], ["Gaza", "Israel"]], exclude=["cricket"])
    without = _topics(embedder, threshold=0.0)
    texts = ["ICC prosecutor visits Gaza", "ICC prosecutor visits Kyiv", "ICC cricket final in Gaza?"]
    v = embedder.encode(texts)
    a, b = match.match_texts([1, 2, 3], texts, v, with_kw), match.match_texts([1, 2, 3], texts, v, without)
    assert a[0].score > b[0].score  # every group hit: evidence for
    assert a[1].score < a[0].score and a[1].matched  # a group missed: weaker, not refused
    assert not a[2].matched and "excluded keyword 'cricket'" in a[2].reason  # exclude stays a veto
    assert "evidence " in a[0].reason and "keywords +" in a[0].reason


def test_raw_scores_bound_the_final_score(embedder) -> None:  # type: ignore[no-untyped-def]
    topics = _topics(embedder, threshold=0.0, require_all=[["ICC"], ["Gaza"]])
    t = topics.topics[0]
    texts = ["ICC prosecutor visits Gaza", "ICC prosecutor visits Kyiv", "Storm hits the coast"]
    v = embedder.encode(texts)
    bound = match.raw_scores(v, t.prototypes, t.counters)[0]
    final = [m.score for m in match.match_texts([1, 2, 3], texts, v, topics)]
    assert all(b >= f - 1e-4 for b, f in zip(bound, final, strict=True))
    assert final[0] == pytest.approx(bound[0], abs=1e-4)  # every keyword group hit: the bound is reached


def test_label_free_threshold_without_configured_one(embedder) -> None:  # type: ignore[no-untyped-def]
    t = _topics(embedder).topics[0]
    assert t.threshold_source == "label-free" and 0.0 < t.threshold < 1.0
    assert _topics(embedder, threshold=0.7).topics[0].threshold == 0.7


def test_a_topic_with_one_example_and_no_keywords_still_matches(embedder) -> None:  # type: ignore[no-untyped-def]
    t = TopicConfig(id="weather", name="Weather", description="Storms, floods and heat waves",
                    examples=["Storm floods coastal towns"])
    topics = match.compile_topics([t], embedder)
    assert topics.topics[0].threshold_source == "label-free"
    texts = ["Floods hit coastal towns after a heavy storm", "Qatar hosts talks on a hostage deal"]
    got = match.match_texts([1, 2], texts, embedder.encode(texts), topics)
    assert [m.matched for m in got] == [True, False], [m.reason for m in got]


@pytest.fixture(scope="module")
def shipped(embedder) -> match.TopicSet:  # type: ignore[no-untyped-def]
    return match.compile_topics(load_config(ROOT / "feeds.toml").topics, embedder)


@pytest.mark.parametrize(("headline", "expected"), [
    # Later phases than the dev weeks (not in any example): what a subscriber would want.
    ("ICC judges issue arrest warrants for Netanyahu and former defence minister Gallant", {"icc-warrants"}),
    ("International Criminal Court issues arrest warrant for Vladimir Putin", set()),
    ("South Africa asks the International Court of Justice to rule Israel is committing genocide", set()),
    ("Pakistan stun England at the ICC Champions Trophy", set()),
    ("Qatari mediators say Israel and Hamas have agreed a ceasefire and hostage exchange", {"doha-talks", "prisoner-exchange"}),
    ("Red Cross receives three Israeli hostages freed by Hamas in Gaza", {"prisoner-exchange"}),
    ("Israeli strikes kill dozens in Khan Younis", set()),
])
def test_shipped_topics_on_unseen_headlines(shipped, embedder, headline: str, expected: set[str]) -> None:  # type: ignore[no-untyped-def]
    got = match.match_texts([1], [headline], embedder.encode([headline]), shipped)
    assert {m.topic_id for m in got if m.matched} == expected, [m.reason for m in got]




def _store(engine, titles, embedder=None):  # type: ignore[no-untyped-def]
    with db.write_transaction(engine) as s:
        feed = Feed(url="https://example.org/feed", config_url="https://example.org/feed", name="Example News",
                    created_at=db.naive_utc(NOW))
        s.add(feed)
        s.flush()
        rows = [Item(feed_id=feed.id, outlet="example.org", key=f"k{i}", title=t, summary="",
                     published_at=db.naive_utc(NOW - timedelta(days=1, hours=i)), fetched_at=db.naive_utc(NOW),
                     content_hash=f"h{i}") for i, t in enumerate(titles)]
        s.add_all(rows)
        s.flush()
        return [ItemRecord(id=r.id, feed_id=feed.id, outlet=r.outlet, title=r.title, summary="", link=None,
                           published_at=NOW, content_hash=r.content_hash) for r in rows]


def test_save_matches_stores_matched_ones_once(engine, embedder) -> None:  # type: ignore[no-untyped-def]
    items = _store(engine, ["ICC prosecutor seeks warrants for Netanyahu", "Storm hits the coast"])
    topics = _topics(embedder)  # the label-free threshold from the topic's own examples
    with db.write_transaction(engine) as s:
        vectors = embed.ensure_vectors(s, embedder, items)
        verdicts = match.match_items(items, vectors, topics)
        assert [m.matched for m in verdicts] == [True, False]
        assert match.save_matches(s, verdicts, NOW) == 1
        assert match.save_matches(s, verdicts, NOW) == 0
    with db.session_factory(engine)() as s:
        row = s.execute(select(Match)).scalar_one()
        assert (row.item_id, row.topic_id) == (items[0].id, "icc-warrants") and "nearest example" in row.reason


def _config_file(tmp_path: Path, engine=None) -> Path:  # type: ignore[no-untyped-def]
    url = engine.url.render_as_string(hide_password=False) if engine is not None else f"sqlite:///{tmp_path / 'monitor.db'}"
    p = tmp_path / "feeds.toml"
    p.write_text(f'[settings]\ndatabase_url = "{url}"\n' + TOPIC)  # no threshold: the label-free one
    return p


def test_topics_test_command_prints_score_decision_reason(tmp_path, embedder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    cfg = _config_file(tmp_path)
    r = CliRunner().invoke(main, ["--config", str(cfg), "topics", "test", "ICC seeks warrant for Netanyahu"])
    assert r.exit_code == 0, r.output
    line = r.output.strip().splitlines()[0]
    assert line.startswith("icc-warrants") and "MATCH" in line and "nearest example" in line
    assert "(label-free)" in line and "evidence" in line
    r = CliRunner().invoke(main, ["--config", str(cfg), "topics", "test", "Storm hits the coast"])
    assert " no " in r.output


def test_backtest_uses_stored_vectors_only(tmp_path, engine, embedder, counting, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    items = _store(engine, ["ICC prosecutor seeks warrants for Netanyahu", "Storm hits the coast",
                            "ICC judges issue warrants for Israeli leaders"])
    with db.write_transaction(engine) as s:
        embed.ensure_vectors(s, embedder, items[:2])  # the third item has no stored vector
        assert s.scalar(select(func.count()).select_from(Item)) == 3
    monkeypatch.setattr(embed, "load_embedder", lambda settings: counting)
    r = CliRunner().invoke(main, ["--config", str(_config_file(tmp_path, engine=engine)), "backtest", "icc-warrants", "--since", "7d"])
    assert r.exit_code == 0, r.output
    assert "ICC prosecutor seeks warrants for Netanyahu" in r.output and "Example News" in r.output
    assert "ICC judges" not in r.output and "skipped 1 items without a stored vector" in r.output
    assert "1 of 2 items would match" in r.output
    assert (NOW - timedelta(days=1)).strftime("%Y-%m-%d") in r.output.split("per day:")[1]
    encoded = [t for call in counting.calls for t in call]
    assert not any(it.title in encoded for it in items)  # only the topic's own texts were encoded
    bad = CliRunner().invoke(main, ["--config", str(_config_file(tmp_path, engine=engine)), "backtest", "nope"])
    assert bad.exit_code == 2 and "unknown topic 'nope'" in bad.output


def test_topic_config_model_accepts_gates() -> None:
    t = TopicConfig(id="x", name="X", description="d", examples=["e"], require_all=[["a", "b"], ["c"]])
    assert match.compile_gate(t).check("A then C")[0] and not match.compile_gate(t).check("A only")[0]


def test_backtest_window_counts_back_from_the_newest_stored_item(tmp_path, engine, embedder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A replayed database (the demo's holds 2023 news): `--since 7d` means the 7 days before its newest
    item, not the 7 days before today, where nothing would be found."""
    items = _store(engine, ["ICC prosecutor seeks warrants for Netanyahu", "Storm hits the coast"])
    old = datetime(2023, 11, 24, 12, tzinfo=UTC)
    with db.write_transaction(engine) as s:
        for i, it in enumerate(items):
            s.get(Item, it.id).published_at = db.naive_utc(old - timedelta(days=i * 10))  # the second: 10 days older
        embed.ensure_vectors(s, embedder, items)
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    r = CliRunner().invoke(main, ["--config", str(_config_file(tmp_path, engine=engine)), "backtest", "icc-warrants",
                                  "--since", "7d"])
    assert r.exit_code == 0, r.output
    assert "newest stored item (2023-11-24 12:00 UTC)" in r.output
    assert "1 of 1 items would match" in r.output  # the storm, 10 days older, is outside the window


STRONG = "ICC prosecutor seeks arrest warrants for Netanyahu and Hamas leaders"
IMPLICIT = "Prosecutor's request for warrants against Netanyahu draws fury in Israel"


def test_story_level_evidence_lifts_a_later_close_item_and_says_why(embedder) -> None:  # type: ignore[no-untyped-def]
    topics = _topics(embedder)
    texts = [STRONG, IMPLICIT, "Storm hits the coast"]
    v = embedder.encode(texts)
    assert float(v[0] @ v[1]) >= 0.6  # the fixture: close enough to be the same story
    own = match.match_texts([1, 2, 3], texts, v, topics)
    assert own[0].matched and own[1].score < own[0].score
    hour = 3600.0
    later = match.match_texts([1, 2, 3], texts, v, topics, times=[0.0, hour, 2 * hour])
    assert later[0] == own[0]  # nothing earlier to inherit from
    assert later[1].score > own[1].score
    assert "similar recent item on topic" in later[1].reason and STRONG[:40] in later[1].reason
    assert later[2].score == own[2].score  # unrelated: nothing inherited
    earlier = match.match_texts([1, 2, 3], texts, v, topics, times=[hour, 0.0, 2 * hour])
    assert earlier[1].score == own[1].score  # evidence only flows from earlier items
    too_old = match.match_texts([1, 2, 3], texts, v, topics, times=[0.0, 100 * hour, 101 * hour])
    assert too_old[1].score == own[1].score  # older than the 72 h window


def test_recent_matches_come_from_stored_matches(engine, embedder) -> None:  # type: ignore[no-untyped-def]
    stored = _store(engine, [STRONG, "Storm hits the coast"])
    topics = _topics(embedder)
    new = ItemRecord(id=10**6, feed_id=stored[0].feed_id, outlet="example.org", title=IMPLICIT, summary="",
                     link=None, published_at=NOW, content_hash="new")
    with db.write_transaction(engine) as s:
        vectors = embed.ensure_vectors(s, embedder, stored)
        saved = match.match_items(stored, vectors, topics)
        assert match.save_matches(s, saved, NOW) == 1  # the strong one only
    with db.session_factory(engine)() as s:
        recent = match.recent_matches(s, embedder.model_id, embedder.dim, [new])
        assert recent.texts == (STRONG,) and recent.topics == (frozenset({"icc-warrants"}),)
        assert match.recent_matches(s, embedder.model_id, embedder.dim, [new], window_h=1).texts == ()
    v = embedder.encode([IMPLICIT])
    alone = match.match_items([new], v, topics)[0]
    lifted = match.match_items([new], v, topics, recent)[0]
    assert lifted.score > alone.score and "similar recent item on topic" in lifted.reason


# --- examples without the topic's keywords: left out of the label-free threshold, and the admin is told ------

POW = """
[[topics]]
id = "pow-swaps"
name = "POW swaps"
description = "Exchanges of prisoners of war between Ukraine and Russia: each swap, how many came home, talks."
examples = ["Ukraine and Russia swap more than 100 prisoners of war",
            "Kyiv and Moscow exchange bodies of fallen soldiers",
            "Russia says 95 servicemen returned from Ukrainian captivity",
            "Zelensky says 45 Ukrainian defenders have come home in latest exchange"]
counterexamples = ["Russia strikes Kyiv with drones overnight"]
require_any = ["Ukraine", "Ukrainian", "Russia", "Kyiv", "Moscow", "Zelensky"]
"""
NO_KEYWORD = "Azovstal defenders freed in prisoner swap"  # names neither country


def _pow(**overrides) -> TopicConfig:  # type: ignore[no-untyped-def]
    return parse_config(POW).topics[0].model_copy(update=overrides)


def test_an_example_without_the_keywords_is_left_out_of_the_label_free_threshold(embedder) -> None:  # type: ignore[no-untyped-def]
    base = _pow()
    odd = _pow(examples=[*base.examples[:2], NO_KEYWORD, *base.examples[2:]])
    without, with_odd = match.compile_topics([base, odd], embedder).topics
    assert with_odd.threshold == without.threshold
    assert without.threshold_source == "label-free"
    assert with_odd.threshold_source == "label-free, 1 of 5 examples without the keywords left out"
    # every example counted (the former rule): its missing keywords drag the threshold down
    every = match.label_free_threshold(with_odd.prototypes, with_odd.counters,
                                       match.keyword_features(with_odd.gate, odd.examples))
    assert every < with_odd.threshold
    # it is still an example: an item like it is compared with it, and the reason says how the threshold was set
    text = ["Ukraine says Azovstal defenders freed in prisoner swap with Russia"]
    [verdict] = match.match_texts([1], text, embedder.encode(text), match.TopicSet(embedder.model_id, (with_odd,)))
    assert "nearest example 'Azovstal" in verdict.reason and "1 of 5 examples without the keywords" in verdict.reason
    [warning] = match.example_warnings(odd)
    assert warning.startswith(f"topics['pow-swaps'].examples[2] ({NO_KEYWORD!r}) contains none of require_any")
    assert "left out of the label-free threshold" in warning and warning.endswith("to it or to require_any")
    assert match.example_warnings(base) == []


def test_with_too_few_examples_left_every_example_counts_and_the_reason_says_so(embedder) -> None:  # type: ignore[no-untyped-def]
    few = _pow(examples=[*_pow().examples[:2], NO_KEYWORD])  # two with the keywords: too few for a quantile
    [t] = match.compile_topics([few], embedder).topics
    assert t.threshold_source == "label-free from every example: only 2 of 3 contain the keywords"
    assert t.threshold == match.label_free_threshold(t.prototypes, t.counters, match.keyword_features(t.gate, few.examples))
    [warning] = match.example_warnings(few)
    assert warning.startswith("topics['pow-swaps'].examples[2]") and "too few to leave it out" in warning


def test_example_warnings_name_the_group_missed_and_stay_quiet_where_they_do_not_apply() -> None:
    two_groups = _pow(require_any=[], require_all=[["prisoners", "captivity", "swap", "come home"],
                                                    ["Ukraine", "Ukrainian", "Russia", "Kyiv"]],
                      keyword_mode="gate")
    # examples[1] has no word of group 0; the Azovstal example has none of group 1
    got = match.example_warnings(two_groups.model_copy(update={"examples": [*two_groups.examples, NO_KEYWORD]}))
    assert [w.split(" (")[0] for w in got] == ["topics['pow-swaps'].examples[1]", "topics['pow-swaps'].examples[4]"]
    assert "contains none of require_all[0]:" in got[0] and "contains none of require_all[1]:" in got[1]
    assert 'keyword_mode = "gate"' in got[1]  # in gate mode no item like it can match at all
    assert match.example_warnings(_pow(examples=[NO_KEYWORD], threshold=0.4)) == []  # threshold configured
    assert match.example_warnings(_pow(examples=[NO_KEYWORD], require_any=[])) == []  # no keywords at all
    shipped_topics = load_config(ROOT / "feeds.toml").topics
    assert [w for t in shipped_topics for w in match.example_warnings(t)] == []
    assert all(all(match.threshold_sample(match.compile_gate(t), t.examples).keep) for t in shipped_topics)


def test_config_check_warns_about_an_example_without_the_keywords_and_still_passes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "feeds.toml"
    cfg.write_text(POW.replace('"Kyiv and Moscow exchange bodies of fallen soldiers",',
                               f'"Kyiv and Moscow exchange bodies of fallen soldiers", "{NO_KEYWORD}",'))
    r = CliRunner().invoke(main, ["--config", str(cfg), "config", "check"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"{cfg}: OK (1 warning)")
    assert f"warning: topics['pow-swaps'].examples[2] ({NO_KEYWORD!r}) contains none of require_any" in r.output
    r = CliRunner().invoke(main, ["--config", str(ROOT / "feeds.toml"), "config", "check"])
    assert r.exit_code == 0 and "warning" not in r.output.lower(), r.output


def test_a_keyword_group_is_named_as_the_config_writes_it_even_after_an_empty_group() -> None:
    # require_all[0] has no term, so it is no group: the gate's groups and the config's indexes differ
    topic = _pow(require_any=["Kyiv", "Moscow"], require_all=[[" "], ["prisoners", "swap"], ["Ukraine", "Russia"]])
    gate = match.compile_gate(topic)
    assert gate.names == ("require_any", "require_all[1]", "require_all[2]") and len(gate.groups) == 3
    texts = [*topic.examples, NO_KEYWORD]
    missed = match.missed_groups(gate, texts)
    assert missed[0] == ("require_any",) and missed[-1] == ("require_any", "require_all[2]")
    # the same groups as the keyword evidence of scoring counts
    assert [len(gate.groups) - len(m) for m in missed] == [gate.evidence(t)[0] for t in texts]
    [*_, last] = match.example_warnings(topic.model_copy(update={"examples": texts}))
    assert last.startswith("topics['pow-swaps'].examples[4]")
    assert "contains none of require_any and none of require_all[2]:" in last
    with pytest.raises(ValueError, match="one name per group"):
        match.KeywordGate(gate.require_any, gate.require_all, None, names=("require_any",))
