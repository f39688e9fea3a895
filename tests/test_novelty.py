"""Novelty: story clustering and the new_story / update / repeat decision, on real embeddings."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from monitor.ingest.parse import text_hash
from monitor.records import ALERT_DECISIONS, ItemRecord
from monitor.signal.developments import arguments, commentary, read_developments
from monitor.signal.embed import encode_items
from monitor.signal.newsworthy import SHIPPED_ALERT_MODEL
from monitor.signal.novelty import StoryParams, absorb, cluster, extract_facts, novelty_item, start_story

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


def _items(embedder, spec: list[tuple[float, str, str, str]], topic: str = "quakes",  # type: ignore[no-untyped-def]
           margins: list[float | None] | None = None):
    """(hours after T0, outlet, title, summary) -> NoveltyItems with the service's item vectors; `margins`
    are the match margins (score - topic threshold), None = clearly on topic."""
    records = [ItemRecord(id=i + 1, feed_id=1, outlet=o, title=t, summary=s, link=f"https://{o}/{i}",
                          published_at=T0 + timedelta(hours=h), content_hash=text_hash(t, s))
               for i, (h, o, t, s) in enumerate(spec)]
    vectors = encode_items(embedder, [r.title for r in records], [r.text for r in records])
    ms = margins or [None] * len(records)
    return [novelty_item(r, topic, vectors[i], ms[i]) for i, r in enumerate(records)]


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
    assert a2.decision == "new_story" and k2 != k1, a2.reason
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


# --- the alerting rules (issue 12): look-alike split, material update, corroboration wait ----------------------

RELEASE = ("Hamas releases two American hostages, a mother and daughter",
           "The two US citizens were handed to the Red Cross at the Gaza border on Friday, Qatar said.")
RELEASE_AGAIN = ("Hamas frees 2 US hostages, a mother and her daughter",
                 "A mother and her daughter held in Gaza since October 7 were freed, the White House said.")
REACTION = ("White House welcomes release of two American hostages",
            "The president said he was overjoyed that the two Americans held by Hamas had been freed.")
EXPLAINER = ("Analysis: what the release of two hostages means for the war",
             "The release of two American hostages raises questions about what comes next.")
SECOND_RELEASE = ("Hamas frees 2 more hostages, elderly Israeli women",
                  "Two elderly Israeli women held in Gaza were released on Monday evening, Qatar said.")


@pytest.mark.slow
def test_look_alike_events_with_different_counts_are_not_one_alerted_development(embedder) -> None:  # type: ignore[no-untyped-def]
    """Two releases of the same kind a day apart: whatever story the second lands in, it alerts (a new story or
    an update naming the release) because its figures contradict the first release's."""
    xs = _items(embedder, [(0, "reuters.com", *RELEASE),
                           (26, "bbc.co.uk", "Hamas frees 13 more hostages on second day of exchange",
                            "Thirteen Israelis were handed to the Red Cross on Saturday, Qatar said.")], topic="exchange")
    (_k1, a1), (_k2, a2) = cluster(xs, StoryParams())
    assert a1.decision == "new_story"
    assert a2.decision in ("new_story", "update"), a2.reason


@pytest.mark.slow
def test_reactions_rephrasings_and_explainers_of_an_alerted_release_do_not_alert(embedder) -> None:  # type: ignore[no-untyped-def]
    xs = _items(embedder, [(0, "reuters.com", *RELEASE), (1, "bbc.co.uk", *RELEASE_AGAIN), (2, "cnn.com", *REACTION),
                           (3, "nytimes.com", *EXPLAINER)], topic="exchange")
    steps = cluster(xs, StoryParams())
    assert [a.decision in ALERT_DECISIONS for _k, a in steps] == [True, False, False, False], [a.reason for _k, a in steps]
    assert "commentary" in steps[3][1].reason


@pytest.mark.slow
def test_a_material_development_is_an_update_that_says_what_happened(embedder) -> None:  # type: ignore[no-untyped-def]
    xs = _items(embedder, [(0, "reuters.com", *QUAKE), (1, "bbc.co.uk", *QUAKE_REPHRASED),
                           (20, "aljazeera.com", *QUAKE_TOLL)])
    steps = cluster(xs, StoryParams())
    assert [a.decision for _k, a in steps] == ["new_story", "repeat", "update"]
    what = steps[2][1].what_is_new or ""
    assert "new count" in what and "2,012" in what


@pytest.mark.slow
def test_a_weak_new_story_waits_for_a_second_outlet(embedder) -> None:  # type: ignore[no-untyped-def]
    # the wait itself, whatever the fitted weights say is news: a model that calls every item a development
    dev = SHIPPED_ALERT_MODEL.development
    every_item_news = replace(SHIPPED_ALERT_MODEL, threshold=0.5, development=replace(
        dev, weights=(0.0,) * len(dev.weights), bias=3.0))
    params = StoryParams(alert_model=every_item_news)
    weak, strong = params.strong_margin - 0.01, 1.0  # a match just short of clear
    spec = [(0, "reuters.com", *QUAKE), (1, "reuters.com", *QUAKE_REPHRASED),
            (2, "bbc.co.uk", "Strong earthquake in Morocco leaves hundreds dead", "Rescuers dug through rubble in "
             "villages of the High Atlas on Saturday after the quake.")]
    steps = cluster(_items(embedder, spec, margins=[weak, weak, weak]), params)
    assert [a.decision for _k, a in steps] == ["held", "held", "new_story"]  # the same outlet does not corroborate
    assert "second outlet" in steps[2][1].reason and len({k for k, _a in steps}) == 1
    # no second outlet within the delay: the story never alerts
    late = [(0, "reuters.com", *QUAKE), (12, "bbc.co.uk", *QUAKE_REPHRASED)]
    assert [a.decision for _k, a in cluster(_items(embedder, late, margins=[weak, weak]), params)] == ["held", "held"]
    # clear evidence alerts at once; without the wait, a weak match alerts at once too
    assert cluster(_items(embedder, spec[:1], margins=[strong]), params)[0][1].decision == "new_story"
    no_wait = replace(params, corroboration=False)
    assert cluster(_items(embedder, spec[:1], margins=[weak]), no_wait)[0][1].decision == "new_story"


@pytest.mark.slow
def test_the_same_release_split_into_another_story_is_not_alerted_twice(embedder) -> None:  # type: ignore[no-untyped-def]
    """Whatever story the service puts it in, a report of an alerted development is a repeat."""
    xs = _items(embedder, [(0, "reuters.com", *RELEASE), (5, "apnews.com", "Two Americans freed by Hamas", "")],
                topic="exchange")
    params = StoryParams(join_threshold=2.0)  # nothing joins: every item starts its own story
    (k1, a1), (k2, a2) = cluster(xs, params)
    assert k1 != k2 and a1.decision == "new_story"
    assert a2.decision == "repeat" and "same as the alert" in a2.reason


def kinds(title: str) -> set[str]:
    return {d.kind for d in read_developments(title)}


def test_a_release_that_happened_is_not_a_release_that_is_offered() -> None:
    assert "release" in kinds("Hamas frees two more hostages")
    offered = kinds("Hamas says it is ready to release civilian hostages")
    assert "release" not in offered and "proposal" in offered
    # a release as the goal of talks, terms or pressure is no release; one that happened on a day still is
    for goal in ("Hamas official reveals conditions for hostages' release", "Negotiations ongoing for release of "
                 "15 captives", "Talks on release of hostages stall", "Israel and Hamas agree on release of 50 hostages"):
        assert "release" not in kinds(goal) and "proposal" in kinds(goal), goal
    for happened in ("Hostages freed on Friday after 50 days in Gaza", "Release of 50 hostages delayed",
                     "Over 100 Ukrainian POWs freed in latest swap", "Hostages held for 50 days freed",
                     "On day four, Hamas frees 11 hostages", "After months of negotiations, Iran frees five Americans",
                     "Qatar negotiated release of two Americans", "Qatar helps secure release of two hostages",
                     "US works for release of more hostages after 2 are freed"):
        assert "release" in kinds(happened), happened
    # the words that make a release a goal leave other realised events alone
    assert "deal" in kinds("After all-night talks, Israel approves hostage deal")
    assert "extension" in kinds("On Tuesday, truce extended") and "start" in kinds("Hours after talks, ceasefire "
                                                                                   "takes effect")


def test_deals_extensions_collapses_and_talks_moving_city_are_developments() -> None:
    assert "deal" in kinds("Israel and Hamas agree four-day truce")
    assert "extension" in kinds("Qatar says the truce has been extended by one day")
    assert "collapse" in kinds("Truce collapses as fighting resumes in Gaza")
    talks = read_developments("Hamas delegation arrives in Cairo for talks")
    assert any("place:cairo" in d.args for d in talks)


def test_commentary_explainers_and_live_blogs_report_no_development() -> None:
    for title in ("Analysis: what the release of two hostages means", "Israel-Gaza war live updates: hostages freed",
                  "What we know about the hostages released on Friday", "Why Qatar is the mediator everyone calls"):
        assert commentary(title), title
        assert read_developments(title) == ()
    assert commentary("Hamas frees two more hostages") is None


def test_different_counts_or_places_make_different_developments() -> None:
    (first,) = [d for d in read_developments("Hamas releases 13 hostages") if d.kind == "release"]
    (again,) = [d for d in read_developments("Thirteen freed: Hamas releases 13 hostages") if d.kind == "release"]
    (second,) = [d for d in read_developments("Hamas releases 17 more hostages") if d.kind == "release"]
    assert first.same_as(again) and not first.same_as(second)
    cairo = read_developments("Negotiators gather in Cairo for talks")[0]
    doha = read_developments("Negotiators gather in Doha for talks")[0]
    assert cairo.kind == doha.kind == "talks" and not cairo.same_as(doha)


def test_arguments_read_counts_ordinals_and_places_but_not_title_case_words() -> None:
    args = arguments("Second group of 17 hostages handed over in Rafah")
    assert {"ord:2", "count:17:hostage", "place:rafah"} <= args
    assert not any(a.startswith("place:") for a in arguments("US Pressing Israel To Delay Gaza Invasion To Win Release"))


@pytest.mark.slow
def test_a_late_arrival_of_news_already_alerted_is_a_repeat(embedder) -> None:  # type: ignore[no-untyped-def]
    """An item from a slow feed, published a few minutes before a report that already alerted, arrives after
    it: what subscribers were told covers reports published after it too."""
    xs = _items(embedder, [(0.1, "reuters.com", *RELEASE), (0.0, "bbc.co.uk", *RELEASE_AGAIN)], topic="exchange")
    (_k1, a1), (_k2, a2) = cluster(xs, StoryParams(join_threshold=2.0))  # in arrival order; no story joins
    assert a1.decision == "new_story" and a2.decision == "repeat", a2.reason


@pytest.mark.slow
def test_a_story_opened_by_commentary_alerts_its_first_development_as_a_new_story(embedder) -> None:  # type: ignore[no-untyped-def]
    """Commentary that opens a story is not news and tells subscribers nothing: the first development that
    joins the story alerts as a new story (with its own headline), not as an update of a story nobody got."""
    xs = _items(embedder, [(0, "nytimes.com", *EXPLAINER), (1, "reuters.com", *RELEASE)], topic="exchange")
    steps = cluster(xs, StoryParams(join_threshold=0.0))  # everything joins the first story
    assert [a.decision for _k, a in steps] == ["repeat", "new_story"], [a.reason for _k, a in steps]
    assert len({k for k, _a in steps}) == 1


def test_a_story_remembers_what_it_told_for_memory_h_not_for_a_fixed_count() -> None:
    """A long-running story alerting several times a day keeps every told item of the last `memory_h` hours
    (a count cap of 8 used to forget the truce's first days after two), and drops older ones."""
    rng = np.random.default_rng(4)
    params = StoryParams(memory_h=48.0)
    first = ItemRecord(id=1, feed_id=1, outlet="a.org", title="Hamas frees 13 hostages", summary="", link=None,
                       published_at=T0, content_hash="h1")
    story = start_story(0, novelty_item(first, "exchange", rng.normal(size=8).astype(np.float32)))
    for k in range(1, 25):  # an alerting item every 3 hours for 3 days
        it = ItemRecord(id=k + 1, feed_id=1, outlet="a.org", title=f"Hamas frees {k} more hostages", summary="",
                        link=None, published_at=T0 + timedelta(hours=3 * k), content_hash=f"h{k + 1}")
        story = absorb(story, novelty_item(it, "exchange", rng.normal(size=8).astype(np.float32)), params, "update")
    last = T0.timestamp() + 3 * 24 * 3600
    assert story.alerted_times[-1] == last and len(story.alerted_titles) == len(story.alerted_times)
    assert min(story.alerted_times) > last - 48 * 3600 and len(story.alerted_times) == 16  # 48 h / 3 h
    assert story.alerted_vectors is not None and len(story.alerted_vectors) == 16
