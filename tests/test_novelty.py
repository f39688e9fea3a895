"""Novelty: story clustering and the new_story / update / repeat decision, on real embeddings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.ingest.parse import text_hash
from monitor.records import ItemRecord
from monitor.signal.embed import encode_items
from monitor.signal.novelty import StoryParams, cluster, extract_facts, novelty_item

T0 = datetime(2023, 9, 9, 6, 0, tzinfo=UTC)

QUAKE = ("Powerful earthquake in Morocco kills more than 600 people",
         "A magnitude 6.8 earthquake struck Morocco's High Atlas mountains late on Friday, killing at least 632 "
         "people, the interior ministry said.")
QUAKE_REPHRASED = ("Morocco earthquake: more than 600 dead after powerful quake",
                   "Hundreds of people have been killed after a 6.8 magnitude earthquake hit Morocco's Atlas "
                   "mountains on Friday night.")
QUAKE_TOLL = ("Morocco earthquake death toll rises to 2,012",
              "The number of people killed in the earthquake in Morocco has risen to 2,012, the interior ministry "
              "said.")
OTHER_QUAKE = ("Powerful earthquake strikes western Afghanistan near Herat",
               "A magnitude 6.3 earthquake struck western Afghanistan near the city of Herat, killing at least 15 "
               "people, officials said.")


def _items(embedder, spec: list[tuple[float, str, str, str]], topic: str = "quakes"):  # type: ignore[no-untyped-def]
    """(hours after T0, outlet, title, summary) -> NoveltyItems with the service's item vectors."""
    records = [ItemRecord(id=i + 1, feed_id=1, outlet=o, title=t, summary=s, link=f"https://{o}/{i}",
                          published_at=T0 + timedelta(hours=h), content_hash=text_hash(t, s))
               for i, (h, o, t, s) in enumerate(spec)]
    vectors = encode_items(embedder, [r.title for r in records], [r.text for r in records])
    return [novelty_item(r, topic, vectors[i]) for i, r in enumerate(records)]


@pytest.mark.slow
def test_syndicated_copy_is_a_repeat_and_counts_as_a_source(embedder) -> None:  # type: ignore[no-untyped-def]
    xs = _items(embedder, [(0, "reuters.com", *QUAKE), (2, "usnews.com", *QUAKE)])
    (k1, a1), (k2, a2) = cluster(xs, StoryParams())
    assert a1.decision == "new_story"
    assert a2.decision == "repeat" and k2 == k1
    assert "syndicated" in a2.reason


@pytest.mark.slow
def test_rephrasing_with_nothing_new_is_a_repeat(embedder) -> None:  # type: ignore[no-untyped-def]
    xs = _items(embedder, [(0, "reuters.com", *QUAKE), (1, "bbc.co.uk", *QUAKE_REPHRASED)])
    (k1, _a1), (k2, a2) = cluster(xs, StoryParams())
    assert k2 == k1
    assert a2.decision == "repeat", a2.reason


@pytest.mark.slow
def test_new_casualty_figure_is_an_update_that_names_it(embedder) -> None:  # type: ignore[no-untyped-def]
    xs = _items(embedder, [(0, "reuters.com", *QUAKE), (1, "bbc.co.uk", *QUAKE_REPHRASED),
                           (20, "aljazeera.com", *QUAKE_TOLL)])
    steps = cluster(xs, StoryParams())
    assert len({k for k, _a in steps}) == 1
    update = steps[2][1]
    assert update.decision == "update"
    assert update.what_is_new is not None and "2,012" in update.what_is_new
    assert "2,012" in update.reason


@pytest.mark.slow
def test_a_different_event_of_the_same_type_starts_a_new_story(embedder) -> None:  # type: ignore[no-untyped-def]
    xs = _items(embedder, [(0, "reuters.com", *QUAKE), (30, "apnews.com", *OTHER_QUAKE),
                           (31, "cnn.com", *QUAKE_TOLL)])
    (k1, _a1), (k2, a2), (k3, a3) = cluster(xs, StoryParams())
    assert a2.decision == "new_story" and k2 != k1
    assert k3 == k1 and a3.decision == "update"  # the Morocco toll still goes to the Morocco story


@pytest.mark.slow
def test_window_expiry_starts_a_new_story(embedder) -> None:  # type: ignore[no-untyped-def]
    spec = [(0, "reuters.com", *QUAKE), (1, "bbc.co.uk", *QUAKE_REPHRASED)]
    inside = cluster(_items(embedder, spec), StoryParams(window_h=72))
    assert inside[0][0] == inside[1][0]
    late = [(0, "reuters.com", *QUAKE), (80, "bbc.co.uk", *QUAKE_REPHRASED)]
    steps = cluster(_items(embedder, late), StoryParams(window_h=72))
    assert steps[1][0] != steps[0][0]
    assert steps[1][1].decision == "new_story"


@pytest.mark.slow
def test_topics_keep_separate_stories(embedder) -> None:  # type: ignore[no-untyped-def]
    a = _items(embedder, [(0, "reuters.com", *QUAKE)], topic="a")
    b = _items(embedder, [(1, "bbc.co.uk", *QUAKE_REPHRASED)], topic="b")
    steps = cluster([*a, *b], StoryParams())
    assert [s.decision for _k, s in steps] == ["new_story", "new_story"]


def test_facts_normalise_numbers_and_ignore_dates() -> None:
    f = extract_facts("Hamas frees twenty-four hostages on Nov. 24", "Talks resumed on Monday, 2023.")
    g = extract_facts("Hamas releases 24 hostages", "")
    assert "24" in f.numbers and "24" in g.numbers
    assert "2023" not in f.numbers  # years and dates are context, not figures
    assert f.numbers == {"24"}
    assert extract_facts("Dozens of hostages freed as hundreds wait", "").numbers == frozenset()  # vague


def test_headline_facts_skip_durations_ages_and_outlet_names() -> None:
    f = extract_facts("Family of 3-year-old hostage waits 24 hours for news, Reuters says", "", "reuters.com")
    assert f.number_phrases == ()
    assert "reuters" not in f.names


def test_apostrophes_are_not_quotes_but_quotes_are() -> None:
    f = extract_facts("Israel’s truce won’t start before Friday", "")
    assert f.title_quotes == frozenset()
    g = extract_facts("US says hostage deal ‘closer than ever’", "")
    assert g.title_quotes == {"closer than ever"}
