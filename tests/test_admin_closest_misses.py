"""The topic editor's closest misses: the items scoring highest below the topic's threshold, scored as the matcher
scores them (story-level evidence included), with an *example* button that adds a headline to the examples. The
backtester's list against the matcher's verdicts over the whole window; the API and the page list the same; in a
real headless Chromium (tests/browser.py) a click on *example* makes the item match before anything is saved,
keyboard focus stays in the list, and a headline with markup is shown as text. Real model and database; the
threshold is taken from the matcher's own scores."""

from __future__ import annotations

import json
import lzma
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from adminfixtures import (
    PASSWORD,
    TOKEN,
    admin_app,
    client,
    csrf_of,
    hostage_talks,
    login,
    store_items,
    write_config,
)
from browser import artifact, chromium, serve
from sqlalchemy import Engine

from monitor.app.admin import auth, backtest, forms
from monitor.app.admin.backtest import Backtester, diff
from monitor.config import Settings, TopicConfig, load_config
from monitor.lab.demo import BUNDLED
from monitor.records import ItemRecord
from monitor.signal import embed, match

pytestmark = pytest.mark.slow

NOW = datetime(2023, 11, 25, 12, 0, tzinfo=UTC)
STALLED = "Hostage talks stall in Doha as Hamas and Israel trade blame"  # ruled out by the exclude keyword
MATCH = "Qatar says Israel and Hamas have made progress in talks on a hostage deal"
LIFTED = "Qatar says progress made in Israel-Hamas negotiations"  # no keyword; close to MATCH, published after it
CAIRO = "Hamas delegation in Cairo for ceasefire talks with Egyptian mediators"  # on topic, short of the threshold
HOSTILE = 'Egypt says "talks" on a Gaza truce <b onmouseover=x()>resume</b> & more'
OTHERS = [
    "Egypt hosts Hamas leaders as mediators push for a pause in Gaza",
    "Families of captives rally in Tel Aviv demanding their return",
    "US envoy heads to the Middle East to discuss the Gaza war",
    "Storm floods coastal towns in southern England",
    "Stock markets rally as inflation cools in the United States",
    "Qatar signs long-term gas supply deal with China",
    "Football club agrees deal for new striker",
]
HEADLINES = [STALLED, MATCH, LIFTED, CAIRO, HOSTILE, *OTHERS]  # in published order, 3 h apart
TOPIC = hostage_talks(require_any=["hostage", "hostages", "truce", "talks", "deal"], exclude=["stall"])


@pytest.fixture(scope="module")
def topic(embedder) -> TopicConfig:  # type: ignore[no-untyped-def]
    """TOPIC with a threshold halfway between the excluded headline's score and MATCH's (both on their own
    evidence: STALLED is published first, and lends nothing as it is excluded), so that only MATCH matches and
    the excluded headline would be the closest miss if exclusion were ignored."""
    vectors = embed.encode_items(embedder, HEADLINES, HEADLINES)
    probe = match.compile_topics([TOPIC.model_copy(update={"threshold": 0.0})], embedder)
    own = {t: v.score for t, v in zip(HEADLINES, match.match_texts(list(range(len(HEADLINES))), HEADLINES, vectors,
                                                                    probe), strict=True)}
    assert own[STALLED] < own[MATCH] and own[STALLED] > max(s for t, s in own.items() if t not in (STALLED, MATCH)), own
    return TOPIC.model_copy(update={"threshold": round((own[STALLED] + own[MATCH]) / 2, 4)})


def _store(engine: Engine, embedder) -> list[ItemRecord]:  # type: ignore[no-untyped-def]
    return store_items(engine, embedder, [(t, NOW - timedelta(hours=40 - 3 * k)) for k, t in enumerate(HEADLINES)])


def _misses_by_the_matcher(embedder, records: list[ItemRecord], topic: TopicConfig,  # type: ignore[no-untyped-def]
                           encoder=None, vectors: np.ndarray | None = None) -> list[tuple[int, float, str]]:
    """Every window item the service's matcher does not match (each item's lenders: the window's earlier items),
    but those ruled out by an exclude keyword: highest score first, the newer first on a tie. `vectors`: the
    records' (encoded here when not given)."""
    titles = [r.title for r in records]
    topic_set = match.compile_topics([topic], encoder or embedder)
    gate = topic_set.topics[0].gate
    if vectors is None:
        vectors = embed.encode_items(embedder, titles, titles)
    verdicts = match.match_items(records, vectors, topic_set, match.Recent.empty(embedder.dim))
    kept = [(k, v) for k, (r, v) in enumerate(zip(records, verdicts, strict=True))
            if not v.matched and gate.evidence(r.text)[2] is None]
    out, seen = [], set()
    for k, v in sorted(kept, key=lambda kv: (-kv[1].score, -kv[0])):  # one per headline: its best copy
        headline = " ".join(titles[k].lower().split())
        if headline not in seen:
            seen.add(headline)
            out.append((v.item_id, v.score, v.reason))
    return out


@pytest.mark.parametrize("k", [2, 5, 20])
def test_closest_misses_are_the_matchers_best_scores_below_the_threshold(engine: Engine, embedder, topic,  # type: ignore[no-untyped-def]
                                                                        k: int) -> None:
    records = _store(engine, embedder)
    tester = Backtester(engine, embedder, Settings(), closest_misses=k)
    try:
        result = tester.run(topic, days=7, now=NOW)
    finally:
        tester.close()
    by_id = {r.id: r.title for r in records}
    assert [h.item.title for h in result.hits] == [MATCH]
    expected = _misses_by_the_matcher(embedder, records, topic)
    assert [(h.item.id, h.score, h.reason) for h in result.misses] == expected[:k]
    scores = [h.score for h in result.misses]
    assert len(scores) == min(k, len(HEADLINES) - 2) and scores == sorted(scores, reverse=True)
    assert all(s < topic.threshold for s in scores)
    listed = [by_id[h.item.id] for h in result.misses]
    assert MATCH not in listed and STALLED not in listed
    # the excluded headline scores above every listed miss: only the exclusion keeps it out
    stalled = match.match_items(records, embed.encode_items(embedder, HEADLINES, HEADLINES),
                                match.compile_topics([topic], embedder), match.Recent.empty(embedder.dim))[0]
    assert "excluded keyword 'stall'" in stalled.reason and stalled.score > scores[0]
    # the two best misses: LIFTED with story-level evidence from MATCH (which is all that brings it close), and
    # CAIRO, on topic but short of the examples; each says why it fell short
    assert set(listed[:2]) == {LIFTED, CAIRO}
    lifted = next(h for h in result.misses if h.item.title == LIFTED)
    assert "similar recent item on topic" in lifted.reason and MATCH[:40] in lifted.reason
    assert lifted.shortfall == "no keyword of require_any"
    cairo = next(h for h in result.misses if h.item.title == CAIRO)
    assert cairo.shortfall.startswith("not close enough to the examples")
    if k == 20:  # every item below the threshold is listed, the storm too: closer to the counterexample
        storm = next(h for h in result.misses if h.item.title.startswith("Storm floods"))
        assert storm.shortfall == "no keyword of require_any; closer to counterexample 'Storm floods coastal towns'"


def test_copies_of_a_headline_are_one_closest_miss(engine: Engine, embedder, topic) -> None:  # type: ignore[no-untyped-def]
    # the same wire headline from three feeds, one in other case and spacing: one line, its best copy
    copies = [CAIRO.upper(), "  " + CAIRO.replace(" ", "  ")]
    placed = [(t, NOW - timedelta(hours=40 - 3 * k)) for k, t in enumerate(HEADLINES)]
    placed += [(c, NOW - timedelta(hours=2 - k)) for k, c in enumerate(copies)]
    records = store_items(engine, embedder, placed)
    tester = Backtester(engine, embedder, Settings(), closest_misses=20)
    try:
        result = tester.run(topic, days=7, now=NOW)
    finally:
        tester.close()
    listed = [" ".join(h.item.title.lower().split()) for h in result.misses]
    assert listed.count(" ".join(CAIRO.lower().split())) == 1
    assert len(listed) == len(set(listed)) == len(HEADLINES) - 2  # every other distinct headline, once
    assert [(h.item.id, h.score, h.reason) for h in result.misses] == _misses_by_the_matcher(embedder, records, topic)


def test_an_example_taken_from_the_misses_matches_and_leaves_them(engine: Engine, embedder, counting,  # type: ignore[no-untyped-def]
                                                                   topic) -> None:
    records = _store(engine, embedder)
    tester = Backtester(engine, counting, Settings())
    try:
        before, _none, _d = tester.compare(topic, None, days=7, now=NOW, wait_s=60)
        assert CAIRO in [h.item.title for h in before.misses]
        edited = topic.model_copy(update={"examples": [*topic.examples, CAIRO]})
        after, saved, d = tester.compare(edited, topic, days=7, now=NOW, wait_s=60)
        assert [h.item.title for h in d.gained] == [CAIRO] and CAIRO not in [h.item.title for h in after.misses]
        assert saved is not None and [h.item.id for h in saved.misses] == [h.item.id for h in before.misses]
        assert [(h.item.id, h.score, h.reason) for h in after.misses] \
            == _misses_by_the_matcher(embedder, records, edited, tester.encoder)[:len(after.misses)]
    finally:
        tester.close()


def _config(tmp_path: Path, topic: TopicConfig) -> Path:
    quoted = ", ".join(f'"{t}"' for t in topic.examples)
    return write_config(tmp_path, f"""\
[settings]
timezone = "UTC"

[[topics]]
id = "{topic.id}"
name = "{topic.name}"
description = "{topic.description}"
examples = [{quoted}]
counterexamples = ["{topic.counterexamples[0]}"]
require_any = {list(topic.require_any)!r}
exclude = {list(topic.exclude)!r}
threshold = {topic.threshold}
""".replace("'", '"'))


async def test_the_api_and_the_page_list_the_same_closest_misses(engine: Engine, embedder, topic,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    records = _store(engine, embedder)
    path = _config(tmp_path, topic)
    auth.create_user(engine, "alice", PASSWORD)
    tester = Backtester(engine, embedder, Settings())
    app, _ctx = admin_app(engine, path, backtester=lambda: tester, clock=lambda: NOW)
    try:
        async with client(app) as c:
            body = {"topic": load_config(path).topic(topic.id).model_dump(), "days": 7}
            r = await c.post(f"/api/v1/topics/{topic.id}/backtest", json=body,
                             headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200, r.text
            api = r.json()["closest_misses"]
            await login(c)
            editor = await c.get(f"/admin/topics/{topic.id}")
            form = {**forms.form_values(load_config(path).topic(topic.id), forms.TOPIC_FIELDS),
                    "csrf_token": csrf_of(editor.text)}
            page = await c.post(f"/admin/topics/{topic.id}/backtest", data=form)
            assert page.status_code == 200, page.text
            doc = (await c.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})).json()
    finally:
        tester.close()
    expected = _misses_by_the_matcher(embedder, records, topic)
    assert [(m["item_id"], m["score"], m["reason"]) for m in api] == expected
    assert {"item_id", "title", "outlet", "link", "published_at", "score", "reason", "shortfall"} <= set(api[0])
    assert "closest_misses" in doc["components"]["schemas"]["BacktestOut"]["properties"]
    # the page: a section under the matches, each line with its score and an example button; the headline with
    # markup is text, in the button's data attribute too
    html = page.text
    section = html[html.index('id="misses"'):]
    assert "Closest misses (would not match)" in section and html.index('id="stories"') < html.index('id="misses"')
    items = re.findall(r'<li class="miss" data-item="(\d+)">\s*<span class="score"[^>]*>([0-9.]+)</span>', section)
    assert [(int(i), float(s)) for i, s in items] == [(m["item_id"], round(m["score"], 3)) for m in api]
    assert section.count('data-add-to="examples"') == len(api)
    assert ('data-add-to="examples" data-text="Egypt says &#34;talks&#34; on a Gaza truce '
            '&lt;b onmouseover=x()&gt;resume&lt;/b&gt; &amp; more"') in section
    assert "<b onmouseover" not in html


def test_example_from_the_closest_misses_in_chromium(engine: Engine, embedder, topic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from monitor.lab.receiver import free_port

    ids = {r.title: r.id for r in _store(engine, embedder)}
    path = _config(tmp_path, topic)
    auth.create_user(engine, "alice", PASSWORD)
    tester = Backtester(engine, embedder, Settings())
    app, _ctx = admin_app(engine, path, backtester=lambda: tester, clock=lambda: NOW)
    original = path.read_text()
    try:
        with chromium() as browser, serve(app, free_port()) as base:
            from playwright.sync_api import expect

            page = browser.new_page(viewport={"width": 1280, "height": 1000})  # type: ignore[attr-defined]
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{base}/admin/login")
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/admin/topics")
            page.goto(f"{base}/admin/topics/{topic.id}")
            misses, stories = page.locator("#misses"), page.locator("#stories")
            cairo = f'li[data-item="{ids[CAIRO]}"]'  # its line (other lines' reasons may quote it once an example)
            expect(misses.locator(cairo)).to_contain_text(CAIRO, timeout=60_000)
            expect(misses.locator("h3")).to_have_text("Closest misses (would not match)")
            expect(stories.locator(cairo)).to_have_count(0)
            # markup in a headline is shown as text, never as an element
            expect(misses.locator(f'li[data-item="{ids[HOSTILE]}"]')).to_contain_text(HOSTILE)
            assert misses.locator("li.miss b").count() == 0
            matches_before = int(page.locator(".summary").get_attribute("data-matches") or "0")
            # the buttons are large enough to hit with a finger (24 px at least)
            button = misses.locator(cairo).locator("button.add-line")
            expect(button).to_have_attribute("aria-label", f"example: {CAIRO}")
            box = button.bounding_box()
            assert box is not None and box["height"] >= 24 and box["width"] >= 24, box
            # keyboard: focus the button, press Enter; the headline joins the examples and the backtest re-runs
            examples = page.locator("#f-examples")
            before_lines = examples.input_value().splitlines()
            button.focus()
            page.keyboard.press("Enter")
            assert examples.input_value().splitlines() == [*before_lines, CAIRO]
            expect(stories.locator(cairo)).to_contain_text(CAIRO, timeout=60_000)
            expect(misses.locator(cairo)).to_have_count(0)
            expect(page.locator("#items-gained")).to_have_text("+1 items")
            assert int(page.locator(".summary").get_attribute("data-matches") or "0") == matches_before + 1
            expect(stories.locator(cairo).locator(".own-text")).to_have_text("in the topic")
            # focus stayed in the list, on the next miss's button, not back at the start of the page
            focused = page.evaluate("() => [document.activeElement.className,"
                                    " !!document.activeElement.closest('#misses')]")
            assert focused == ["add-line example", True], focused
            page.screenshot(path=str(artifact("admin/topic-editor-closest-misses.png")), full_page=True)
            assert path.read_text() == original, "nothing is written before Save"
            assert not errors, errors  # no script errors, no CSP violations
    finally:
        tester.close()


# --- the pruned search over a real window ---------------------------------------------------------------------

WAR = ("Israel", "Gaza", "Hamas", "hostage")
EDITED = hostage_talks(require_any=["Israel", "Israeli", "Gaza", "Hamas", "hostage", "hostages"], exclude=["Ukraine"],
                       counterexamples=["Storm floods coastal towns", "Israeli strikes hit southern Gaza"])


@pytest.fixture(scope="module")
def demo_window(embedder) -> tuple[list[tuple[str, datetime]], np.ndarray]:  # type: ignore[no-untyped-def]
    """(headline, published) in published order, and their vectors (encoded once for the module): the bundled
    demo stream's first 240 distinct headlines on the war in Gaza (many stories told by several outlets: items
    that lend to later ones) and its first 120 others."""
    war: dict[str, datetime] = {}
    other: dict[str, datetime] = {}
    with lzma.open(BUNDLED, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            kind = war if any(w in row["title"] for w in WAR) else other
            if len(kind) < (240 if kind is war else 120):
                kind.setdefault(row["title"], datetime.fromisoformat(row["date_published"]))
            if len(war) == 240 and len(other) == 120:
                break
    ordered = sorted({**other, **war}.items(), key=lambda tp: tp[1])
    titles = [t for t, _p in ordered]
    return ordered, embed.encode_items(embedder, titles, titles)


@pytest.mark.parametrize(("base", "only_lift"), [(hostage_talks(), False), (EDITED, True)],
                         ids=["no-keywords", "keywords-and-veto"])
def test_the_pruned_search_finds_the_matchers_closest_misses_on_real_headlines(  # type: ignore[no-untyped-def]
        engine: Engine, embedder, demo_window, monkeypatch: pytest.MonkeyPatch, base: TopicConfig, only_lift: bool
) -> None:
    """Steps of 8 rows: the first candidates leave most rows to the search, the floor (the K-th miss found) rises
    step by step, and rows that cannot reach it are never scored, those only a lender can lift included. The
    list is still what the matcher says over the whole window."""
    placed, vectors = demo_window
    records = store_items(engine, embedder, placed, vectors=vectors)
    titles = [r.title for r in records]
    probe = match.compile_topics([base.model_copy(update={"threshold": 0.0})], embedder)
    own = sorted((v.score for v in match.match_texts([r.id for r in records], titles, vectors, probe)), reverse=True)
    topic = base.model_copy(update={"threshold": round(own[19] - 0.00005, 5)})  # 20 match on their own
    expected = _misses_by_the_matcher(embedder, records, topic, vectors=vectors)

    # what the search scores: `match.own_logits` while `_closest_misses` runs (one call per step)
    monkeypatch.setattr(backtest, "_MISS_STEP", 8)
    steps: list[list[str]] = []
    searching = [False]
    own_logits, closest_misses = match.own_logits, Backtester._closest_misses

    def counted(t, texts, vecs):  # type: ignore[no-untyped-def]
        if searching[0]:
            steps.append(list(texts))
        return own_logits(t, texts, vecs)

    def search(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        searching[0] = True
        try:
            return closest_misses(self, *args, **kwargs)
        finally:
            searching[0] = False

    monkeypatch.setattr(match, "own_logits", counted)
    monkeypatch.setattr(Backtester, "_closest_misses", search)
    tester = Backtester(engine, embedder, Settings())
    try:
        result, _none, _d = tester.compare(topic, None, days=7, now=placed[-1][1] + timedelta(hours=1), wait_s=0)
    finally:
        tester.close()
    k = backtest.CLOSEST_MISSES
    assert [(h.item.id, h.score, h.reason) for h in result.misses] == expected[:k]
    assert len(result.misses) == k and result.scanned == len(records)

    # the search was exercised: several steps of at most 8 rows, most rows never scored
    scored = [t for step in steps for t in step]
    assert len(steps) >= 3 and all(len(step) <= 8 for step in steps), [len(s) for s in steps]
    assert len(scored) < len(records) // 4, len(scored)
    # ... and a miss that only story-level evidence brings into the list was found by the search: its own score's
    # bound is under the K-th miss's score, so only the lift bound of a close lender could let it through
    bound = dict(zip(titles, match.raw_scores(vectors, *_weights(probe))[0].tolist(), strict=True))
    by_id = {r.id: r.title for r in records}
    lifted = [by_id[h.item.id] for h in result.misses if "similar recent item on topic" in h.reason]
    assert len(lifted) >= 5
    if only_lift:  # keywords hit: the bound is exact on own evidence, and some miss is above it
        assert any(t in scored and bound[t] < result.misses[-1].score for t in lifted), (lifted, result.misses[-1].score)


def _weights(topic_set: match.TopicSet) -> tuple[np.ndarray, np.ndarray, match.Combiner]:
    t = topic_set.topics[0]
    return t.prototypes, t.counters, t.combiner


def test_a_scan_cached_with_misses_off_never_answers_one_with_them_on(engine: Engine, embedder, topic) -> None:  # type: ignore[no-untyped-def]
    from monitor.app.admin.pages import templates

    _store(engine, embedder)
    tester = Backtester(engine, embedder, Settings(), closest_misses=0)
    try:
        off = tester.run(topic, days=7, now=NOW)
        tester.closest_misses = 5
        on = tester.run(topic, days=7, now=NOW)  # the same window and topic, cached with misses off
    finally:
        tester.close()
    assert off.misses == () and off.misses_off and len(on.misses) == 5 and not on.misses_off
    # the empty list says why it is empty: turned off, or every other item vetoed by its keywords
    page = templates().get_template("admin/_backtest.html")
    hint = re.compile(r'<li class="hint">([^<]*)</li>')
    render = {"diff": diff(None, on), "saved": None, "errors": {}, "warnings": [], "message": "", "per_day": "",
              "csrf_field": "csrf_token", "csrf_token": "x", "is_new": False, "disabled": False, "own_texts": set()}
    assert hint.findall(page.render(result=off, **render)) == ["Closest misses are turned off on this server."]
    vetoed = replace(on, misses=(), misses_off=False)
    assert hint.findall(page.render(result=vetoed, **render)) \
        == ["Every other item of the last 7 days is ruled out by an exclude keyword."]
    gated = replace(vetoed, keyword_mode="gate")
    assert "keyword group without a hit" in hint.findall(page.render(result=gated, **render))[0]
