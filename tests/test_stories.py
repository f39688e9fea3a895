"""Stories at the database edge: decisions persisted as Story and Alert rows, re-runs harmless, expiry,
and `monitor stories list` explaining each decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from concurrently import while_holding
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.cli import main
from monitor.config import Settings
from monitor.ingest.parse import text_hash
from monitor.records import ItemRecord, MatchedItem
from monitor.signal import stories
from monitor.signal.embed import encode_items
from monitor.storage.db import naive_utc
from monitor.storage.tables import Alert, Feed, Item, Story

pytestmark = pytest.mark.databases("sqlite", "postgresql")

T0 = datetime(2023, 11, 24, 6, 0, tzinfo=UTC)
SETTINGS = Settings(story_window_h=72)

FIRST = ("Hamas releases 24 hostages on first day of Gaza truce",
         "Hamas freed 13 Israelis, 10 Thais and a Filipino on Friday after a four-day truce took effect, Qatar said.")
DEAL = ("Israel and Hamas agree four-day truce to free 50 hostages",
        "Qatar announced the deal after weeks of talks; the truce is to start on Thursday.")
SECOND = ("Hamas releases 17 more hostages in second exchange after delay",
          "Thirteen Israelis and four Thais were freed on Saturday in exchange for 39 Palestinian prisoners.")


def _store(engine: Engine, spec: list[tuple[float, str, str, str]], t0: datetime = T0) -> list[ItemRecord]:
    """Items stored in the database (alerts and stories reference them) -> their records."""
    out = []
    with Session(engine) as s, s.begin():
        feed = Feed(url="https://example.org/feed", config_url="https://example.org/feed", created_at=naive_utc(T0))
        s.add(feed)
        s.flush()
        for i, (h, outlet, title, summary) in enumerate(spec):
            at = t0 + timedelta(hours=h)
            row = Item(feed_id=feed.id, outlet=outlet, key=f"k{i}", link=f"https://{outlet}/{i}", title=title,
                       summary=summary, published_at=naive_utc(at), fetched_at=naive_utc(at),
                       content_hash=text_hash(title, summary))
            s.add(row)
            s.flush()
            out.append(ItemRecord(id=row.id, feed_id=feed.id, outlet=outlet, title=title, summary=summary,
                                  link=row.link, published_at=at, content_hash=row.content_hash))
    return out


def _matched(embedder, items: list[ItemRecord], topic: str = "prisoner-exchange",  # type: ignore[no-untyped-def]
             score: float = 0.9, threshold: float | None = None) -> list[MatchedItem]:
    v = encode_items(embedder, [it.title for it in items], [it.text for it in items])
    return [MatchedItem(item=it, topic_id=topic, score=score, vector=v[i], threshold=threshold)
            for i, it in enumerate(items)]


@pytest.mark.slow
def test_assign_persists_stories_and_one_alert_per_decision(engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    items = _store(engine, [(0, "reuters.com", *FIRST), (1, "usnews.com", *FIRST), (26, "bbc.co.uk", *SECOND)])
    matched = _matched(embedder, items)
    with Session(engine) as s, s.begin():
        # handed over out of order: processed in published order all the same
        made = stories.assign(s, list(reversed(matched)), T0 + timedelta(hours=27), SETTINGS)
    assert [d.decision for d in made] == ["new_story", "repeat", "update"]
    assert "17" in (made[2].what_is_new or "")
    with Session(engine) as s:
        story = s.scalars(select(Story)).one()
        assert story.item_count == 3 and story.sources == ["reuters.com", "usnews.com", "bbc.co.uk"]
        assert story.title == FIRST[0] and story.first_item_id == items[0].id
        alerts = s.scalars(select(Alert).order_by(Alert.published_at)).all()
        assert [a.decision for a in alerts] == ["new_story", "repeat", "update"]
        assert alerts[2].title == SECOND[0] and alerts[2].outlet == "bbc.co.uk" and alerts[2].link
        assert all(a.story_id == story.id for a in alerts)

    # a re-run of the same batch (crash mid-way) changes nothing
    with Session(engine) as s, s.begin():
        assert stories.assign(s, matched, T0 + timedelta(hours=27), SETTINGS) == []
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Alert)) == 3


@pytest.mark.slow
def test_story_state_survives_between_batches(engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    items = _store(engine, [(0, "reuters.com", *FIRST), (3, "usnews.com", *FIRST), (26, "bbc.co.uk", *SECOND)])
    matched = _matched(embedder, items)
    for m in matched:  # one item per poll, as the service sees them
        with Session(engine) as s, s.begin():
            stories.assign(s, [m], m.item.published_at, SETTINGS)
    with Session(engine) as s:
        assert [a.decision for a in s.scalars(select(Alert).order_by(Alert.id))] == ["new_story", "repeat", "update"]
        assert s.scalar(select(func.count()).select_from(Story)) == 1


@pytest.mark.slow
def test_a_story_stored_with_the_old_developments_list_still_loads_and_decides_the_same(
        engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    """Rows written before the story state stopped keeping "developments" (what each headline reported, read
    by nothing) still hold that key: such a story loads, later items are decided as before (a re-report is a
    repeat, the next release an update), and the key is gone once the story is written again."""
    items = _store(engine, [(0, "reuters.com", *FIRST), (3, "usnews.com", *FIRST), (26, "bbc.co.uk", *SECOND)])
    matched = _matched(embedder, items)
    with Session(engine) as s, s.begin():
        stories.assign(s, [matched[0]], matched[0].item.published_at, SETTINGS)
    old_developments = [{"kind": "release", "args": ["count:24:hostage", "ord:1"], "phrase": "release (24 hostages)",
                         "at": T0.timestamp(), "alerted": True}]
    with Session(engine) as s, s.begin():
        row = s.scalars(select(Story)).one()
        new_state = dict(row.state)
        row.state = {**new_state, "developments": old_developments}  # as the old code wrote it
    with Session(engine) as s:
        stored = s.scalars(select(Story)).one().state
        assert stored["developments"] == old_developments
        assert stories.StoryState.from_json(stored) == stories.StoryState.from_json(new_state)
    for m in matched[1:]:
        with Session(engine) as s, s.begin():
            stories.assign(s, [m], m.item.published_at, SETTINGS)
    with Session(engine) as s:
        alerts = s.scalars(select(Alert).order_by(Alert.id)).all()
        assert [a.decision for a in alerts] == ["new_story", "repeat", "update"]
        assert "17" in (alerts[2].what_is_new or "")
        row = s.scalars(select(Story)).one()
        assert row.item_count == 3 and "developments" not in row.state


def test_what_subscribers_were_told_is_remembered_between_batches_and_after_the_story_closes(
        engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    """The alerted items' vectors and developments are stored with the story, and the topic keeps them for
    `memory_h` after the story closes: the same deal reported again four days later, in a new story,
    is a repeat (it was a new story before: only open stories were consulted)."""
    items = _store(engine, [(0, "reuters.com", *DEAL), (96, "bbc.co.uk", *DEAL)])
    matched = _matched(embedder, items)
    with Session(engine) as s, s.begin():
        stories.assign(s, [matched[0]], matched[0].item.published_at, SETTINGS)
    later = matched[1].item.published_at
    with Session(engine) as s, s.begin():
        assert stories.close_expired(s, later, SETTINGS.story_window_h) == 1
        row = s.scalars(select(Story)).one()
        assert row.alerted_vectors and len(row.alerted_vectors) == 4 * len(matched[0].vector)
        [d] = stories.assign(s, [matched[1]], later, SETTINGS)
    assert d.decision == "repeat", d.reason
    assert "same as the alert" in d.reason



def test_an_update_readers_already_knew_is_not_remembered_as_told(engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    """Readers marked the story "already knew this" twice: a one-development update becomes a repeat, and
    the story does not remember it as told (nobody received it, so it must not silence a later report)."""
    items = _store(engine, [(0, "reuters.com", *FIRST), (26, "bbc.co.uk", "Hamas releases 17 more hostages", "")])
    first, more = _matched(embedder, items)
    with Session(engine) as s, s.begin():
        stories.assign(s, [first], first.item.published_at, SETTINGS)
        s.scalars(select(Story)).one().known_marks = 2
    with Session(engine) as s, s.begin():
        [d] = stories.assign(s, [more], more.item.published_at, SETTINGS)
    assert d.decision == "repeat" and "readers already knew" in d.reason, d.reason
    with Session(engine) as s:
        state = stories.StoryState.from_json(s.scalars(select(Story)).one().state)
        assert state.alerted_titles == (FIRST[0],)


@pytest.mark.slow
def test_a_held_story_waits_across_batches_and_alerts_when_a_second_outlet_reports_it(engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    """A weak match (score just over the topic threshold) reporting a development is held; its state (typed,
    stored as JSON) survives until another outlet's report arrives in a later poll, which alerts once as the
    new story."""
    quiet = ("Hamas frees two hostages held in Gaza, Qatar says", "Two women were handed to the Red Cross on Friday.")
    again = ("Two hostages freed by Hamas, Qatari mediators say", "The women were handed over at the Rafah crossing.")
    items = _store(engine, [(0, "reuters.com", *quiet), (2, "bbc.co.uk", *again)])
    matched = _matched(embedder, items, score=0.41, threshold=0.40)
    for m in matched:
        with Session(engine) as s, s.begin():
            stories.assign(s, [m], m.item.published_at, SETTINGS)
    with Session(engine) as s:
        alerts = s.scalars(select(Alert).order_by(Alert.id)).all()
        assert [a.decision for a in alerts] == ["held", "new_story"]
        assert "second outlet" in alerts[1].reason
        row = s.scalars(select(Story)).one()
        state = stories.StoryState.from_json(row.state)
        assert state.alerted and state == stories.StoryState.from_json(state.to_json())


@pytest.mark.slow
def test_window_expiry_closes_stories_and_later_items_start_new_ones(engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    items = _store(engine, [(0, "reuters.com", *DEAL), (100, "usnews.com", *DEAL)])
    first, late = _matched(embedder, items)
    with Session(engine) as s, s.begin():
        stories.assign(s, [first], T0, SETTINGS)
        assert stories.close_expired(s, T0 + timedelta(hours=71), 72) == 0
        assert stories.close_expired(s, T0 + timedelta(hours=73), 72) == 1
    with Session(engine) as s, s.begin():
        (d,) = stories.assign(s, [late], T0 + timedelta(hours=100), SETTINGS)
    # the first story has closed, so the same headline starts a new one; subscribers were told it four days
    # ago (the topic remembers `memory_h`), so it does not alert again
    assert d.decision == "repeat" and "same as the alert" in d.reason
    with Session(engine) as s:
        assert [st.closed for st in s.scalars(select(Story).order_by(Story.id))] == [True, False]


@pytest.mark.slow
def test_stories_list_shows_items_sources_and_reasons(engine: Engine, embedder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)  # `--since 3d` counts back from the real clock
    items = _store(engine, [(0, "reuters.com", *FIRST), (1, "usnews.com", *FIRST), (26, "bbc.co.uk", *SECOND)],
                   t0=now - timedelta(hours=30))
    with Session(engine) as s, s.begin():
        stories.assign(s, _matched(embedder, items), now, SETTINGS)
    config = tmp_path / "feeds.toml"
    config.write_text(
        f'[settings]\ndatabase_url = "{engine.url.render_as_string(hide_password=False)}"\n\n'
        '[[topics]]\nid = "prisoner-exchange"\nname = "Prisoner exchange"\n'
        'description = "Releases of hostages and prisoners."\nexamples = ["Hamas releases hostages"]\n',
        encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "stories", "list", "prisoner-exchange", "--since", "3d"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "1 story" in out and FIRST[0] in out and SECOND[0] in out
    assert "3 source(s): reuters.com, usnews.com, bbc.co.uk" in out
    assert "syndicated copy" in out and "release (17 more hostages" in out

    unknown = CliRunner().invoke(main, ["--config", str(config), "stories", "list", "nope"])
    assert unknown.exit_code == 2 and "unknown topic" in unknown.output


def test_two_processes_deciding_the_same_event_open_one_story(engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    """Process A decides item 1 and has not committed; process B decides item 2, another outlet's report of
    the same event. B must wait for A and see its story (a repeat), not open a second one."""
    items = _store(engine, [(0, "reuters.com", *FIRST), (1, "usnews.com", *FIRST)])
    first, second = _matched(embedder, items)
    now = T0 + timedelta(hours=2)
    # B is blocked until A commits (on SQLite by BEGIN IMMEDIATE, on PostgreSQL by the topic's lock)
    while_holding(engine, lambda s: stories.assign(s, [first], now, SETTINGS),
                  lambda s: stories.assign(s, [second], now, SETTINGS), head_start_s=2)
    with Session(engine) as s:
        assert sorted(a.decision for a in s.scalars(select(Alert))) == ["new_story", "repeat"]
        assert s.scalar(select(func.count()).select_from(Story)) == 1
