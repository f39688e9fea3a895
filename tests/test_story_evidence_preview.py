"""The previews of a topic score as the service does (issue 11): the admin backtest and `monitor backtest` count
story-level evidence from the window's items, and `monitor topics test` from the stored matches of the 72 h
before the headline. A near duplicate of an on-topic item that falls below the threshold on its own evidence is
listed with the lender named in its reason, and is not when the lender is more than 72 h older, later, or
outside the window. Real model; the threshold is taken from the matcher's own scores, not tuned."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from adminfixtures import store_items
from click.testing import CliRunner
from sqlalchemy import Engine, delete

from monitor.app.admin.backtest import Backtester
from monitor.cli import main
from monitor.config import Settings, TopicConfig
from monitor.records import ItemRecord
from monitor.signal import embed, match
from monitor.storage import db
from monitor.storage.tables import ItemVector

pytestmark = pytest.mark.slow

NOW = datetime(2023, 11, 25, 12, 0, tzinfo=UTC)
LENDER = "ICC prosecutor seeks arrest warrants for Netanyahu and Hamas leaders"
NEAR_DUPLICATE = "Prosecutor's request for warrants against Netanyahu draws fury in Israel"
OTHER = "Storm hits the coast"
TOPIC = TopicConfig(
    id="icc-warrants", name="ICC warrants",
    description="The International Criminal Court and arrest warrants concerning Israel and Palestine.",
    examples=["ICC prosecutor seeks arrest warrants for Netanyahu and Hamas leaders",
              "International Criminal Court issues warrants for Israeli leaders over Gaza"],
    counterexamples=["ICC issues arrest warrant for Putin over deported Ukrainian children"])


@pytest.fixture(scope="module")
def topic(embedder) -> TopicConfig:  # type: ignore[no-untyped-def]
    """TOPIC with a threshold halfway between the near duplicate's score on its own evidence and its score
    when the lender was published an hour before it (both the matcher's own), so that only story-level
    evidence makes it match; the lender matches on its own evidence."""
    texts = [LENDER, NEAR_DUPLICATE, OTHER]
    vectors = embed.encode_items(embedder, texts, texts)
    assert float(vectors[0] @ vectors[1]) >= 0.6  # the fixture: the same story
    probe = match.compile_topics([TOPIC.model_copy(update={"threshold": 0.0})], embedder)
    own = match.match_texts([1, 2, 3], texts, vectors, probe)
    lifted = match.match_texts([1, 2, 3], texts, vectors, probe, times=[0.0, 3600.0, 7200.0])
    assert lifted[1].score > own[1].score and own[0].score > lifted[1].score, (own, lifted)
    threshold = round((own[1].score + lifted[1].score) / 2, 4)
    assert own[1].score < threshold < lifted[1].score and own[2].score < threshold
    return TOPIC.model_copy(update={"threshold": threshold})


def _service_verdicts(embedder, records: list[ItemRecord], topic: TopicConfig,  # type: ignore[no-untyped-def]
                      encoder=None) -> list[tuple[int, float, str]]:  # type: ignore[no-untyped-def]
    """What the service's matcher says of the window's items with story-level evidence (each item's lenders:
    the window's earlier items), the matched ones; the topic's texts encoded by `encoder` (the backtester's,
    which encodes a text typed later on its own) or the embedder."""
    titles = [r.title for r in records]
    vectors = embed.encode_items(embedder, titles, titles)
    topic_set = match.compile_topics([topic], encoder or embedder)
    return [(v.item_id, v.score, v.reason) for v in match.match_items(records, vectors, topic_set,
                                                                         match.Recent.empty(embedder.dim))
            if v.matched]


def _lent(reason: str) -> bool:
    return "similar recent item on topic" in reason and LENDER[:40] in reason


def test_backtest_lists_a_near_duplicate_lifted_by_an_earlier_on_topic_item(engine: Engine, embedder,  # type: ignore[no-untyped-def]
                                                                           topic) -> None:
    records = store_items(engine, embedder, [(LENDER, NOW - timedelta(hours=30)),
                                        (NEAR_DUPLICATE, NOW - timedelta(hours=20)),
                                        (OTHER, NOW - timedelta(hours=10))])
    tester = Backtester(engine, embedder, Settings())
    try:
        result = tester.run(topic, days=7, now=NOW)
    finally:
        tester.close()
    hits = {h.item.title: h for h in result.hits}
    assert set(hits) == {LENDER, NEAR_DUPLICATE}
    assert _lent(hits[NEAR_DUPLICATE].reason) and not _lent(hits[LENDER].reason)
    assert [(h.item.id, h.score, h.reason) for h in result.hits] == _service_verdicts(embedder, records, topic)
    # On its own evidence the near duplicate would not have matched: the preview no longer under-counts.
    alone = match.match_items(records, embed.encode_items(embedder, [r.title for r in records],
                                                          [r.title for r in records]),
                              match.compile_topics([topic], embedder))
    assert [v.matched for v in alone] == [True, False, False]


@pytest.mark.parametrize(("lender_at", "duplicate_at", "days"), [
    (NOW - timedelta(hours=100), NOW - timedelta(hours=20), 7),  # the lender is more than 72 h older
    (NOW - timedelta(hours=10), NOW - timedelta(hours=20), 7),  # the lender is published after it
    (NOW - timedelta(days=7, hours=10), NOW - timedelta(days=6, hours=14), 7),  # the lender is outside the window
], ids=["lender-older-than-72h", "lender-later", "lender-outside-the-window"])
def test_backtest_does_not_lift_without_a_lender_in_the_72_hours_before(engine: Engine, embedder, topic,  # type: ignore[no-untyped-def]
                                                                       lender_at, duplicate_at, days) -> None:
    records = store_items(engine, embedder, [(LENDER, lender_at), (NEAR_DUPLICATE, duplicate_at)])
    tester = Backtester(engine, embedder, Settings())
    try:
        titles = [h.item.title for h in tester.run(topic, days=days, now=NOW).hits]
        assert NEAR_DUPLICATE not in titles
        if lender_at < NOW - timedelta(days=days):
            # One more day of window takes the lender in, and with it its evidence (20 h before the item).
            wider = tester.run(topic, days=days + 1, now=NOW).hits
            assert [h.item.title for h in wider] == [LENDER, NEAR_DUPLICATE] and _lent(wider[1].reason)
        else:
            assert titles == [LENDER]
            assert [(h.item.id, h.score, h.reason) for h in tester.run(topic, days=days, now=NOW).hits] \
                == _service_verdicts(embedder, records, topic)
    finally:
        tester.close()


def test_edits_and_new_items_change_what_lends(engine: Engine, embedder, topic) -> None:  # type: ignore[no-untyped-def]
    """The backtester remembers lenders between keystrokes and refreshes; what it lists stays the service's."""
    records = store_items(engine, embedder, [(LENDER, NOW - timedelta(hours=30)), (OTHER, NOW - timedelta(hours=25))])
    clock = [0.0]
    tester = Backtester(engine, embedder, Settings(), refresh_s=30.0, monotonic=lambda: clock[0])
    try:
        assert [h.item.title for h in tester.run(topic, days=7, now=NOW).hits] == [LENDER]
        records += store_items(engine, embedder, [(NEAR_DUPLICATE, NOW - timedelta(hours=20))], first_id=10)
        clock[0] = 31.0  # the window is refreshed: the new item is close to a lender already known
        got = tester.run(topic, days=7, now=NOW).hits
        assert [h.item.title for h in got] == [LENDER, NEAR_DUPLICATE] and _lent(got[1].reason)
        # An edit that leaves every item's own evidence as it was lists the same; a keyword veto on the lender
        # (not on the near duplicate) takes its evidence away, as does a threshold above it; undoing gives it back.
        unrelated = topic.model_copy(update={"counterexamples": [*topic.counterexamples, "Football club signs a striker"]})
        for edit, listed in ((unrelated, [LENDER, NEAR_DUPLICATE]),
                             (topic.model_copy(update={"exclude": ["Hamas"]}), []),
                             (topic.model_copy(update={"threshold": 0.999}), []),
                             (topic, [LENDER, NEAR_DUPLICATE])):
            hits = tester.run(edit, days=7, now=NOW).hits
            assert [h.item.title for h in hits] == listed
            assert [(h.item.id, h.score, h.reason) for h in hits] \
                == _service_verdicts(embedder, records, edit, tester.encoder)
    finally:
        tester.close()


def test_backtest_command_counts_story_level_evidence(tmp_path: Path, engine: Engine, embedder, topic,  # type: ignore[no-untyped-def]
                                                      monkeypatch) -> None:
    store_items(engine, embedder, [(LENDER, NOW - timedelta(hours=30)), (NEAR_DUPLICATE, NOW - timedelta(hours=20))])
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    r = CliRunner().invoke(main, ["--config", str(_config(tmp_path, engine, topic)), "backtest", topic.id,
                                  "--since", "7d"])
    assert r.exit_code == 0, r.output
    assert "2 of 2 items would match" in r.output and NEAR_DUPLICATE in r.output


@pytest.mark.databases("sqlite", "postgresql")
def test_backtest_command_lists_what_scoring_every_item_of_the_window_lists(tmp_path: Path, engine: Engine,  # type: ignore[no-untyped-def]
                                                                            embedder, topic, monkeypatch) -> None:
    """`monitor backtest` goes through the editor's prefilter (`Backtester.matches`), and prints what scoring
    every stored item of its window with story-level evidence gives (`match.match_items`, the command's earlier
    way): the same header, items, scores and days, line for line."""
    other_day = "International Criminal Court issues warrants for Israeli leaders over Gaza"
    records = store_items(engine, embedder, [
        (LENDER, NOW - timedelta(days=9)),  # before the window
        (other_day, NOW - timedelta(days=4)),
        (LENDER, NOW - timedelta(hours=30)),
        (OTHER, NOW - timedelta(hours=25)),
        (NEAR_DUPLICATE, NOW - timedelta(hours=20)),  # on topic only by story-level evidence
        ("ICC judges issue warrants for Israeli leaders", NOW - timedelta(hours=2)),  # no vector (yet)
    ])
    unencoded = records[-1]
    with db.write_transaction(engine) as s:
        s.execute(delete(ItemVector).where(ItemVector.item_id == unencoded.id))
        stored = embed.load_vectors(s, embedder.model_id, [r.id for r in records])
    anchor = unencoded.published_at  # the newest stored item: the window counts back from it (a replayed database)
    window = sorted((r for r in records if r.published_at >= anchor - timedelta(days=7) and r.id in stored),
                    key=lambda r: (r.published_at, r.id))
    topic_set = match.compile_topics([topic], embedder)
    hits = [v for v in match.match_items(window, np.stack([stored[r.id] for r in window]), topic_set,
                                         match.Recent.empty(embedder.dim)) if v.matched]
    by_id = {r.id: r for r in window}
    assert NEAR_DUPLICATE in [by_id[v.item_id].title for v in hits] and len({by_id[v.item_id].published_at.date()
                                                                             for v in hits}) == 2
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    config = _config(tmp_path, engine, topic)
    for limit in (200, 2):
        r = CliRunner().invoke(main, ["--config", str(config), "backtest", topic.id, "--since", "7d",
                                      "--limit", str(limit)])
        assert r.exit_code == 0, r.output
        days: dict[str, int] = {}
        for v in hits:
            day = by_id[v.item_id].published_at.strftime("%Y-%m-%d")
            days[day] = days.get(day, 0) + 1
        assert r.output.splitlines() == [
            f"topic {topic.id} ({topic.name}), threshold {topic_set.topics[0].threshold:.3f}, in the 7d before the "
            f"newest stored item ({anchor:%Y-%m-%d %H:%M} UTC): {len(hits)} of {len(window)} items would match",
            f"skipped 1 items without a stored vector for {embedder.model_id!r} (run `monitor reembed`)",
            *[f"{by_id[v.item_id].published_at:%Y-%m-%d %H:%M}  {'Wire':<28}  {v.score:.3f}  {by_id[v.item_id].title}"
              for v in hits[:limit]],
            "per day:", *[f"  {day}  {n}" for day, n in sorted(days.items())]]


def _config(tmp_path: Path, engine: Engine | None, topic: TopicConfig) -> Path:
    url = engine.url.render_as_string(hide_password=False) if engine is not None \
        else f"sqlite:///{tmp_path / 'absent' / 'monitor.db'}"
    p = tmp_path / "feeds.toml"
    p.write_text(f'[settings]\ndatabase_url = {json.dumps(url)}\n\n[[topics]]\nid = "{topic.id}"\n'
                 f'name = "{topic.name}"\ndescription = {json.dumps(topic.description)}\n'
                 f'examples = {json.dumps(topic.examples)}\ncounterexamples = {json.dumps(topic.counterexamples)}\n'
                 f'threshold = {topic.threshold}\n')
    return p


def _topics_test(config: Path, *args: str) -> tuple[str, str]:
    """(the topic's line, the last line) of `monitor topics test`."""
    r = CliRunner().invoke(main, ["--config", str(config), "topics", "test", *args])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("icc-warrants"), r.output
    return lines[0], lines[-1]


@pytest.mark.databases("sqlite", "postgresql")
def test_topics_test_counts_the_stored_matches_of_the_72_hours_before(tmp_path: Path, engine: Engine, embedder,  # type: ignore[no-untyped-def]
                                                                      topic, monkeypatch) -> None:
    records = store_items(engine, embedder, [(LENDER, NOW - timedelta(hours=10)), (OTHER, NOW - timedelta(hours=9))])
    with db.write_transaction(engine) as s:  # what the service stored: the lender matched on its own
        vectors = embed.load_vectors(s, embedder.model_id, [r.id for r in records])
        saved = match.match_items(records, np.stack([vectors[r.id] for r in records]),
                                  match.compile_topics([topic], embedder))
        assert match.save_matches(s, saved, NOW) == 1
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    config = _config(tmp_path, engine, topic)

    line, last = _topics_test(config, NEAR_DUPLICATE, "--at", NOW.isoformat())
    assert " MATCH " in line and _lent(line)
    assert "story-level evidence" in last and "1 stored match " in last and "2023-11-25 12:00" in last
    # The same headline 20 h earlier: the lender comes after it. 80 h later: the lender is 90 h older.
    for at in (NOW - timedelta(hours=20), NOW + timedelta(hours=80)):
        line, last = _topics_test(config, NEAR_DUPLICATE, "--at", at.replace(tzinfo=None).isoformat())
        assert " no " in line and "similar recent item" not in line
        assert "own evidence only" in last and "no stored match" in last
    # A time zone is honoured: 14:00+02:00 is 12:00 UTC.
    line, _last = _topics_test(config, NEAR_DUPLICATE, "--at", "2023-11-25T14:00:00+02:00")
    assert " MATCH " in line
    bad = CliRunner().invoke(main, ["--config", str(config), "topics", "test", NEAR_DUPLICATE, "--at", "yesterday"])
    assert bad.exit_code == 2 and "--at" in bad.output


def test_topics_test_without_a_database_scores_own_evidence_only(tmp_path: Path, embedder, topic,  # type: ignore[no-untyped-def]
                                                                 monkeypatch) -> None:
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    line, last = _topics_test(_config(tmp_path, None, topic), NEAR_DUPLICATE)
    assert " no " in line and "own evidence only" in last and "no database" in last
    assert not (tmp_path / "absent").exists()  # a preview creates no database
    line, last = _topics_test(_config(tmp_path, None, topic), LENDER)
    assert " MATCH " in line and "own evidence only" in last
    # A database that cannot be reached: the same scores, and the last line says why.
    unreachable = _config(tmp_path, None, topic)
    unreachable.write_text(unreachable.read_text().replace(
        f"sqlite:///{tmp_path / 'absent' / 'monitor.db'}", "postgresql+psycopg://nobody@127.0.0.1:1/monitor"))
    line, last = _topics_test(unreachable, LENDER)
    assert " MATCH " in line and "own evidence only" in last and "could not be read" in last
