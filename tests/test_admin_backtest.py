"""The topic editor's backtest on stored vectors, with the real model: its verdicts are the matcher's, its
stories novelty's, its diff what changes, and new example texts are encoded once."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta

import pytest
from adminfixtures import hostage_talks, store_items
from sqlalchemy import Engine, delete

from monitor.app.admin.backtest import Backtester
from monitor.config import Settings, TopicConfig
from monitor.records import ItemRecord
from monitor.signal import embed, match, novelty
from monitor.signal.stories import params_for
from monitor.storage import db
from monitor.storage.tables import Item, ItemVector

pytestmark = pytest.mark.slow

NOW = datetime(2023, 11, 25, 12, 0, tzinfo=UTC)
HEADLINES = [
    "Qatar says talks between Israel and Hamas on a hostage deal have made progress",
    "Israeli negotiators travel to Doha for talks on a truce in Gaza",
    "Qatari mediators say Israel and Hamas are close to a deal on hostages and a pause in fighting",
    "Hamas delegation in Cairo for ceasefire talks with Egyptian mediators",
    "Mediators in Doha report progress on a hostage deal",
    "Storm floods coastal towns in southern England",
    "Stock markets rally as inflation cools in the United States",
    "Qatar signs long-term gas supply deal with China",
]
TOPIC = hostage_talks()


@pytest.fixture
def topic(embedder) -> TopicConfig:  # type: ignore[no-untyped-def]
    """TOPIC with a threshold under which the first three headlines (the near miss included) match, taken
    from the matcher's own scores: the test does not depend on the matcher's score scale."""
    vectors = embed.encode_items(embedder, HEADLINES, HEADLINES)
    scores = [m.score for m in match.match_texts(list(range(len(HEADLINES))), HEADLINES, vectors,
                                                 match.compile_topics([TOPIC.model_copy(update={"threshold": 0.0})],
                                                                      embedder))]
    third = sorted(scores, reverse=True)[2]
    assert scores[2] >= third and third > max(scores[5:]), scores
    return TOPIC.model_copy(update={"threshold": round(third - 0.0005, 4)})


def _store(engine: Engine, embedder, headlines: list[str], start_id: int = 1,  # type: ignore[no-untyped-def]
           hours_ago: float = 40.0) -> list[ItemRecord]:
    """The headlines 4 h apart from `hours_ago` before NOW."""
    return store_items(engine, embedder, [(t, NOW - timedelta(hours=hours_ago - 4 * k)) for k, t in enumerate(headlines)],
                       first_id=start_id)


def test_backtest_is_what_the_matcher_and_novelty_decide(engine: Engine, embedder, topic) -> None:  # type: ignore[no-untyped-def]
    TOPIC = topic
    records = _store(engine, embedder, HEADLINES)
    tester = Backtester(engine, embedder, Settings())
    try:
        result = tester.run(TOPIC, days=7, now=NOW)
    finally:
        tester.close()
    # The pipeline's own verdicts on the same items and vectors, story-level evidence included (each item's
    # lenders: the window's earlier items), as the service matches them.
    vectors = embed.encode_items(embedder, HEADLINES, HEADLINES)
    compiled = match.compile_topics([TOPIC], embedder)
    verdicts = match.match_items(records, vectors, compiled, match.Recent.empty(embedder.dim))
    assert any("similar recent item on topic" in v.reason for v in verdicts if v.matched)  # the fixture lends
    expected = [v for v in verdicts if v.matched]
    assert [h.item.id for h in result.hits] == [v.item_id for v in expected]
    assert [h.score for h in result.hits] == [v.score for v in expected]
    assert [h.reason for h in result.hits] == [v.reason for v in expected]
    assert len(expected) == 3 and 6 not in [h.item.id for h in result.hits]  # the storm is not matched
    index = {r.id: i for i, r in enumerate(records)}
    # Each with its match margin (score minus threshold), as the service's stories.assign gives it: a weak match
    # that is news waits for a second outlet (held) instead of alerting at once.
    threshold = compiled.topics[0].threshold
    decided = novelty.cluster([novelty.novelty_item(records[index[v.item_id]], TOPIC.id, vectors[index[v.item_id]],
                                                    v.score - threshold) for v in expected], params_for(Settings()))
    assert [(h.story_key, h.decision, h.why) for h in result.hits] == [(k, a.decision, a.reason) for k, a in decided]
    assert not result.pending and result.alerts >= 1
    assert sum(len(st.hits) for st in result.stories) == len(result.hits)


def test_a_counterexample_shows_as_lost_and_new_texts_are_encoded_once(engine: Engine, embedder, counting, topic) -> None:  # type: ignore[no-untyped-def]
    TOPIC = topic
    _store(engine, embedder, HEADLINES)
    tester = Backtester(engine, counting, Settings())
    try:
        saved, _none, _d = tester.compare(TOPIC, None, days=7, now=NOW, wait_s=60)
        near_miss = HEADLINES[2]
        assert near_miss in [h.item.title for h in saved.hits]
        encoded = sum(len(c) for c in counting.calls)
        edited = TOPIC.model_copy(update={"counterexamples": [*TOPIC.counterexamples, near_miss]})
        new, old, d = tester.compare(edited, TOPIC, days=7, now=NOW, wait_s=60)
        assert [h.item.title for h in d.lost] == [near_miss] and not d.gained
        assert near_miss not in [h.item.title for h in new.hits]
        assert old is not None and [h.item.id for h in old.hits] == [h.item.id for h in saved.hits]
        assert d.alerts_known and (d.alerts_lost or not [h for h in saved.hits if h.alert and h.item.title == near_miss])
        # Only the new counterexample was encoded; typing on (the same text again) encodes nothing.
        assert sum(len(c) for c in counting.calls) == encoded + 1
        tester.compare(edited, TOPIC, days=7, now=NOW, wait_s=60)
        tester.compare(edited.model_copy(update={"name": "Renamed"}), TOPIC, days=7, now=NOW, wait_s=60)
        assert sum(len(c) for c in counting.calls) == encoded + 1
        # Stories not ready within the wait: the matches are final anyway, the stories follow.
        renamed = edited.model_copy(update={"threshold": 0.55})
        quick, _old, _d = tester.compare(renamed, TOPIC, days=7, now=NOW, wait_s=0.0)
        full, _old, _d = tester.compare(renamed, TOPIC, days=7, now=NOW, wait_s=60)
        assert [h.item.id for h in quick.hits] == [h.item.id for h in full.hits] and not full.pending
    finally:
        tester.close()


def test_new_items_reach_the_backtest_after_the_refresh_interval(engine: Engine, embedder, topic) -> None:  # type: ignore[no-untyped-def]
    TOPIC = topic
    _store(engine, embedder, HEADLINES[:4])
    clock = [0.0]
    tester = Backtester(engine, embedder, Settings(), refresh_s=30.0, monotonic=lambda: clock[0])
    try:
        first = tester.run(TOPIC, days=7, now=NOW)
        _store(engine, embedder, [TOPIC.examples[0]], start_id=50, hours_ago=2)
        assert tester.run(TOPIC, days=7, now=NOW).hits == first.hits  # cached window
        clock[0] = 31.0
        later = tester.run(TOPIC, days=7, now=NOW)
        assert later.scanned == first.scanned + 1
        assert 50 in [h.item.id for h in later.hits]
        # Items older than the window drop out.
        assert tester.run(TOPIC, days=1, now=NOW).scanned == 1
    finally:
        tester.close()


def _cached_and_fresh(engine: Engine, embedder, topic: TopicConfig, change):  # type: ignore[no-untyped-def]
    """(the first backtest, the same backtester's after `change()` and its window's refresh, a fresh
    backtester's) of the 7 days before NOW."""
    clock = [0.0]
    tester = Backtester(engine, embedder, Settings(), refresh_s=30.0, monotonic=lambda: clock[0])
    try:
        early = tester.run(topic, days=7, now=NOW)
        change()
        clock[0] = 31.0
        cached = tester.run(topic, days=7, now=NOW)
    finally:
        tester.close()
    fresh_tester = Backtester(engine, embedder, Settings())
    try:
        fresh = fresh_tester.run(topic, days=7, now=NOW)
    finally:
        fresh_tester.close()
    return early, cached, fresh


@pytest.mark.databases("sqlite", "postgresql")
def test_a_refreshed_window_lists_what_a_fresh_one_does_when_vectors_arrive_out_of_id_order(  # type: ignore[no-untyped-def]
        engine: Engine, embedder, topic) -> None:
    """Workers encode batches of items at once, so an older batch (lower ids) can store its vectors after a newer
    one; and items leave the window's rows (retention, `reembed --all`). Two backtests of the same stored items
    and window list the same matches and alerts, whether the window was cached before or loaded afresh."""
    _store(engine, embedder, HEADLINES)  # ids 1..8
    late, pruned = 2, 7  # a match whose batch is still being encoded; an off-topic item about to be pruned
    with db.write_transaction(engine) as s:
        s.execute(delete(ItemVector).where(ItemVector.item_id == late))

    def change() -> None:  # the older batch's worker finishes; retention prunes an item
        with db.write_transaction(engine) as s:
            title = HEADLINES[late - 1]
            embed.store_vectors(s, embedder, [late], embed.encode_items(embedder, [title], [title]))
            s.execute(delete(ItemVector).where(ItemVector.item_id == pruned))
            s.execute(delete(Item).where(Item.id == pruned))

    early, cached, fresh = _cached_and_fresh(engine, embedder, topic, change)
    assert early.scanned == 7 and late not in [h.item.id for h in early.hits]
    assert fresh.scanned == 7 and late in [h.item.id for h in fresh.hits]
    assert cached.scanned == fresh.scanned
    assert [(h.item.id, h.score, h.reason, h.story_key, h.decision) for h in cached.hits] \
        == [(h.item.id, h.score, h.reason, h.story_key, h.decision) for h in fresh.hits]
    assert cached.alerts == fresh.alerts


@pytest.mark.databases("sqlite", "postgresql")
def test_a_refreshed_window_sees_an_item_stored_again_under_a_deleted_items_id(  # type: ignore[no-untyped-def]
        engine: Engine, embedder, topic) -> None:
    """SQLite gives the next item stored the id of a deleted newest row (a removed feed's items go with it). The
    cached window then holds another item under that id: the refresh must read it as a new item (title, vector,
    facts), so the editor shows what a fresh load, and the service, would."""
    _store(engine, embedder, HEADLINES)  # ids 1..8
    reused = len(HEADLINES)
    title = "Qatar says Israel and Hamas agree a four-day truce and the release of 50 hostages"

    def change() -> None:
        with db.write_transaction(engine) as s:
            s.execute(delete(ItemVector).where(ItemVector.item_id == reused))
            s.execute(delete(Item).where(Item.id == reused))
            s.add(Item(id=reused, feed_id=1, outlet="other.example", key="again", title=title, summary="",
                       published_at=db.naive_utc(NOW - timedelta(hours=2)), fetched_at=db.naive_utc(NOW),
                       content_hash="another-item", processed_at=db.naive_utc(NOW)))
            s.flush()
            embed.store_vectors(s, embedder, [reused], embed.encode_items(embedder, [title], [title]))

    _early, cached, fresh = _cached_and_fresh(engine, embedder, topic, change)
    assert title in [h.item.title for h in fresh.hits]
    assert [(h.item.id, h.item.title, h.score, h.reason, h.story_key, h.decision) for h in cached.hits] \
        == [(h.item.id, h.item.title, h.score, h.reason, h.story_key, h.decision) for h in fresh.hits]
    assert cached.alerts == fresh.alerts


def test_a_window_loaded_again_after_eviction_is_not_answered_from_the_old_loads_results(  # type: ignore[no-untyped-def]
        engine: Engine, embedder, topic) -> None:
    """Results are cached per load of a window. A window dropped from memory (`MAX_WINDOWS`) and loaded again
    is a new load: its backtest lists the items stored meanwhile, not the first load's cached matches (as it
    could when the cache key held the load's memory address, which CPython hands to a later object once the
    old load is freed: whether it does is up to the allocator, so the test also checks that each load of the
    window is a distinct version, the key results are cached under)."""
    from monitor.app.admin import backtest

    _store(engine, embedder, HEADLINES[:4])
    tester = Backtester(engine, embedder, Settings(), refresh_s=3600)
    try:
        first = tester.run(topic, days=7, now=NOW)
        first_load = tester.corpus(7, NOW).version
        for days in range(8, 8 + backtest.MAX_WINDOWS):  # other windows push the 7 days out of memory
            tester.run(topic, days=days, now=NOW)
        assert 7 not in tester.cached_windows()
        gc.collect()
        _store(engine, embedder, [topic.examples[0]], start_id=50, hours_ago=2)
        again = tester.run(topic, days=7, now=NOW)
        assert 50 not in [h.item.id for h in first.hits] and 50 in [h.item.id for h in again.hits]
        assert again.scanned == first.scanned + 1
        assert tester.corpus(7, NOW).version != first_load
    finally:
        tester.close()


def test_keyword_rules_give_the_matchers_verdicts_across_edits(engine: Engine, embedder, topic) -> None:  # type: ignore[no-untyped-def]
    records = _store(engine, embedder, HEADLINES)
    vectors = embed.encode_items(embedder, HEADLINES, HEADLINES)
    gated = topic.model_copy(update={"require_any": ["Qatar", "Doha"], "exclude": ["Cairo"], "keyword_mode": "gate"})
    tester = Backtester(engine, embedder, Settings())
    try:
        for edit in (gated, gated.model_copy(update={"examples": [*gated.examples, "Talks in Doha continue"]}),
                     gated.model_copy(update={"exclude": []})):
            got = tester.run(edit, days=7, now=NOW)
            want = [v for v in match.match_items(records, vectors, match.compile_topics([edit], embedder),
                                                 match.Recent.empty(embedder.dim)) if v.matched]
            assert [(h.item.id, h.score, h.reason) for h in got.hits] == [(v.item_id, v.score, v.reason) for v in want]
    finally:
        tester.close()


@pytest.mark.databases("sqlite", "postgresql")
def test_few_windows_are_kept_and_a_cached_one_never_waits_for_another_ones_load(engine: Engine, embedder,  # type: ignore[no-untyped-def]
                                                                                 topic) -> None:
    import threading
    import time as _time

    from sqlalchemy import text

    from monitor.app.admin import backtest

    _store(engine, embedder, HEADLINES)
    tester = Backtester(engine, embedder, Settings(), refresh_s=3600)
    try:
        for days in range(1, 11):  # an admin trying every window: memory stays bounded
            assert tester.run(topic, days=days, now=NOW).scanned >= 0
        assert len(tester.cached_windows()) == backtest.MAX_WINDOWS
        assert tester.cached_windows()[-1] == 10
        assert len(tester.run(topic, days=7, now=NOW).hits) == 3
        # A load of a new window that is slow (here: blocked by a lock on the items table) does not hold up a
        # backtest of a window already cached.
        if engine.dialect.name != "postgresql":
            return
        with engine.connect() as blocker:
            tx = blocker.begin()
            blocker.execute(text("LOCK TABLE items IN ACCESS EXCLUSIVE MODE"))
            loading = threading.Thread(target=tester.run, args=(topic,), kwargs={"days": 30, "now": NOW})
            loading.start()
            _time.sleep(0.5)
            started = _time.perf_counter()
            got: list[int] = []
            cached = threading.Thread(target=lambda: got.append(len(tester.run(topic, days=7, now=NOW).hits)))
            cached.start()
            cached.join(10)
            waited = _time.perf_counter() - started
            tx.rollback()
        loading.join(30)
        assert got == [3] and waited < 10, waited
    finally:
        tester.close()
