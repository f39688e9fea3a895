"""Subscriber pages through the real Starlette routes (in-process client) on real databases: preferences
change the next digest and are recorded; feedback is one POST, idempotent per (person, item, kind); GET never
changes anything; tampered, expired or form-less requests get a clear page and change nothing; story pages
and the per-topic Atom / JSON Feed validate."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from email import message_from_bytes, policy
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import feedparser
import jsonschema
import pytest
from deliveryfixtures import T0, Clock, World, make_config
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.testclient import TestClient

from monitor.app.subscriber import SubscriberContext, routes
from monitor.delivery import digest, links
from monitor.storage.db import naive_utc
from monitor.storage.tables import Alert, Delivery, Feed, Feedback, Item, Story, SubscriberEvent, Subscription

pytestmark = pytest.mark.databases("sqlite", "postgresql")

KEY = "secret-subscriber-key"
SCHEMA = Path(__file__).parent / "fixtures" / "jsonfeed-1.1.schema.json"

SUBSCRIBERS = """
[[subscribers]]
email = "ana@example.org"
topics = ["doha-talks"]
cadence = "daily"
daily_at = "08:00"
timezone = "Europe/London"
"""



@pytest.fixture
def site(tmp_path, engine):  # type: ignore[no-untyped-def]
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    world = World(engine)
    world.new_story("talks", "doha-talks", "Qatar hosts new round of ceasefire talks", sources=3)
    world.new_story("icc1", "icc", "ICC prosecutor seeks arrest warrants", sources=2)
    assert digest.build_due_digests(engine, config, T0, secret_key=KEY) == []  # the subscription: due at 08:00
    clock = Clock(T0 + timedelta(hours=3))  # the daily digest (08:00 London = 08:00 UTC) is built at 09:00
    built = digest.build_due_digests(engine, config, clock.now, secret_key=KEY)
    assert len(built) == 1
    ctx = SubscriberContext(engine=engine, config=lambda: config, secret_key=KEY, clock=clock)
    client = TestClient(Starlette(routes=routes(ctx)), base_url="https://monitor.example.org", follow_redirects=False)
    return config, client, clock, world


def last_mail(engine) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(text, html) of the newest e-mail in the outbox."""
    with Session(engine) as s:
        raw = s.scalars(select(Delivery.payload).where(Delivery.channel == "email").order_by(Delivery.id.desc())).first()
    msg = message_from_bytes(raw, policy=policy.default)
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()  # type: ignore[union-attr]


def path_of(text: str, label: str) -> str:
    m = re.search(rf"{re.escape(label)}: (https://\S+)", text)
    assert m, f"no {label!r} link in the digest"
    return urlsplit(m.group(1)).path


def form_token(html: str) -> str:
    m = re.search(r'name="form_token" value="([^"]+)"', html)
    assert m
    return m.group(1)


def events(engine) -> list[tuple[str, dict]]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return [(e.action, e.detail) for e in s.scalars(select(SubscriberEvent).order_by(SubscriberEvent.id))]


def test_preferences_change_the_next_digest_and_are_recorded(engine, site) -> None:
    config, client, clock, world = site
    text, _html = last_mail(engine)
    assert "Qatar hosts" in text and "ICC prosecutor" not in text  # only doha-talks so far
    prefs = path_of(text, "Change topics, timing or pause")
    page = client.get(prefs)
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert 'value="doha-talks" checked' in page.text and 'value="icc">' in page.text
    r = client.post(prefs, data={"form_token": form_token(page.text), "action": "save",
                                 "topics": ["doha-talks", "icc"], "cadence": "hourly", "daily_at": "08:00",
                                 "timezone": "Europe/London"})
    assert r.status_code == 303
    assert "Saved" in client.get(r.headers["location"]).text
    with Session(engine) as s:  # `monitor digest preview` shows what the subscriber chose
        world.new_story("icc0", "icc", "ICC previewed story", at=clock.now)
        content = digest.preview(s, config, digest.find_spec(config, subscriber="ana@example.org"), clock.now)
        assert content is not None and "ICC" in [t.name for t in content.topics]
    assert events(engine)[-1] == ("prefs", {
        "before": {"topics": ["doha-talks"], "cadence": "daily", "daily_at": "08:00", "timezone": "Europe/London"},
        "after": {"topics": ["doha-talks", "icc"], "cadence": "hourly", "daily_at": "08:00",
                  "timezone": "Europe/London"}})
    # The next digest follows: hourly (due at the next full hour, not tomorrow 08:00) and with ICC news.
    world.new_story("icc2", "icc", "ICC judges confirm charges", at=clock.now)
    assert digest.build_due_digests(engine, config, clock.now + timedelta(minutes=5), secret_key=KEY) == []
    assert len(digest.build_due_digests(engine, config, clock.now + timedelta(hours=1), secret_key=KEY)) == 1
    text, _ = last_mail(engine)
    assert "ICC judges confirm charges" in text
    assert "follows Doha talks, ICC." in text


def test_pause_skips_the_news_of_the_pause_and_unsubscribe_resubscribe(engine, site) -> None:
    config, client, clock, world = site
    prefs = path_of(last_mail(engine)[0], "Change topics, timing or pause")
    token = form_token(client.get(prefs).text)
    assert client.post(prefs, data={"form_token": token, "action": "pause", "days": "2"}).status_code == 303
    assert "Paused until" in client.get(prefs).text
    world.new_story("during", "doha-talks", "Talks stall during the pause", at=clock.now + timedelta(hours=1))
    for h in (24, 47):  # daily digests during the pause: nothing
        assert digest.build_due_digests(engine, config, clock.now + timedelta(hours=h), secret_key=KEY) == []
    world.new_story("after", "doha-talks", "Talks resume after the pause", at=clock.now + timedelta(hours=49))
    assert len(digest.build_due_digests(engine, config, clock.now + timedelta(hours=71), secret_key=KEY)) == 1
    text, _ = last_mail(engine)
    assert "Talks resume after the pause" in text and "Talks stall" not in text
    # Unsubscribe, then resubscribe: nothing of the time between is sent.
    assert client.post(prefs, data={"form_token": token, "action": "unsubscribe"}).status_code == 303
    world.new_story("gone", "doha-talks", "News while unsubscribed", at=clock.now + timedelta(hours=72))
    assert digest.build_due_digests(engine, config, clock.now + timedelta(hours=95), secret_key=KEY) == []
    assert "Subscribe again" in client.get(prefs).text
    assert client.post(prefs, data={"form_token": token, "action": "resubscribe"}).status_code == 303
    world.new_story("back", "doha-talks", "News after coming back", at=clock.now + timedelta(hours=96))
    assert len(digest.build_due_digests(engine, config, clock.now + timedelta(hours=119), secret_key=KEY)) == 1
    text, _ = last_mail(engine)
    assert "News after coming back" in text and "while unsubscribed" not in text
    assert [a for a, _ in events(engine)] == ["pause", "unsubscribe", "resubscribe"]


def test_news_waiting_when_a_pause_begins_comes_after_it_and_the_pause_news_does_not(engine, site) -> None:
    config, client, clock, world = site
    prefs = path_of(last_mail(engine)[0], "Change topics, timing or pause")
    # Alerted after the 08:00 digest, so waiting for tomorrow's when the reader pauses at 15:00.
    world.new_story("before", "doha-talks", "Mediators table a new proposal", at=clock.now + timedelta(hours=2))
    clock.now += timedelta(hours=6)
    token = form_token(client.get(prefs).text)
    assert client.post(prefs, data={"form_token": token, "action": "pause", "days": "2"}).status_code == 303
    world.new_story("during", "doha-talks", "Talks stall during the pause", at=clock.now + timedelta(hours=1))
    clock.now += timedelta(hours=20)
    assert digest.build_due_digests(engine, config, clock.now, secret_key=KEY) == []  # paused: nothing
    # Changing the length of a running pause (now one more day) keeps its start: the first day stays skipped.
    assert client.post(prefs, data={"form_token": form_token(client.get(prefs).text), "action": "pause",
                                    "days": "1"}).status_code == 303
    world.new_story("after", "doha-talks", "Talks resume after the pause", at=clock.now + timedelta(hours=25))
    assert len(digest.build_due_digests(engine, config, clock.now + timedelta(hours=42), secret_key=KEY)) == 1
    text, _ = last_mail(engine)
    assert "Mediators table a new proposal" in text and "Talks resume after the pause" in text
    assert "Talks stall" not in text
    assert digest.build_due_digests(engine, config, clock.now + timedelta(hours=66), secret_key=KEY) == []


def test_feedback_is_one_post_idempotent_and_get_changes_nothing(engine, site) -> None:
    _config, client, _clock, _world = site
    _text, html = last_mail(engine)
    urls = re.findall(r'href="(https://monitor\.example\.org/feedback/[^"]+)"', html)
    assert len(urls) == 3  # one alert, three kinds
    known = next(u for u in urls if links.read_feedback_token(KEY, urlsplit(u).path.rsplit("/", 1)[1], _clock.now).kind == "known")
    path = urlsplit(known).path
    page = client.get(path)
    assert page.status_code == 200 and "Already knew this?" in page.text and "Qatar hosts" in page.text
    client.get(path)
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Feedback)) == 0  # GET recorded nothing
    token = form_token(page.text)
    first = client.post(path, data={"form_token": token})
    assert first.status_code == 200 and "Recorded" in first.text
    again = client.post(path, data={"form_token": token})
    assert again.status_code == 200 and "Already recorded" in again.text
    with Session(engine) as s:
        rows = s.scalars(select(Feedback)).all()
        assert [(r.kind, r.topic_id, r.title) for r in rows] == [("known", "doha-talks",
                                                                   "Qatar hosts new round of ceasefire talks")]
        sub = s.scalar(select(Subscription).where(Subscription.target == "ana@example.org"))
        assert rows[0].subscription_id == sub.id and rows[0].story_id is not None
        assert s.get_one(Story, rows[0].story_id).known_marks == 1  # counted once, not per click
    assert "You already told us" in client.get(path).text


@pytest.mark.parametrize("kind", ["preferences", "feedback"])
def test_tampered_expired_and_formless_requests_change_nothing(engine, site, kind: str) -> None:
    _config, client, clock, _world = site
    _text, html = last_mail(engine)
    path = urlsplit(re.findall(rf'href="(https://monitor\.example\.org/{kind}/[^"]+)"', html)[0]).path
    token = form_token(client.get(path).text)
    data = {"form_token": token, "action": "unsubscribe"}
    before = events(engine)
    # A changed character: the page says so, nothing changes.
    tampered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    for r in (client.get(tampered), client.post(tampered, data=data)):
        assert r.status_code == 400 and "damaged or was not issued by this service" in r.text
    # A POST without the page's form token (a cross-site form) or with another link's token.
    r = client.post(path, data={"action": "unsubscribe"})
    assert r.status_code == 400 and "not sent from its page" in r.text
    other = links.form_token(KEY, "another-link", clock.now)
    assert client.post(path, data={"form_token": other, "action": "unsubscribe"}).status_code == 400
    # 91 days later the link has expired.
    clock.now += timedelta(days=91)
    for r in (client.get(path), client.post(path, data=data)):
        assert r.status_code == 400 and "expired" in r.text
    assert events(engine) == before
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Feedback)) == 0
        assert s.scalar(select(Subscription.unsubscribed_at).where(Subscription.target == "ana@example.org")) is None


def test_story_page_shows_the_timeline_outlets_and_first_last_seen(engine, site) -> None:
    config, client, clock, world = site
    world.alert("talks", "update", title="Hamas delegation lands in Doha", what_is_new="Hamas delegation arrived",
                at=T0 + timedelta(hours=2), outlet="aljazeera.com")
    text, _ = last_mail(engine)
    page = client.get(path_of(text, "Story timeline"))
    assert page.status_code == 200
    body = page.text
    assert "Qatar hosts new round of ceasefire talks" in body and "What&rsquo;s new:</strong> Hamas delegation arrived" in body
    assert body.index("First report") < body.index("Hamas delegation arrived")
    assert "aljazeera.com" in body and "First seen" in body and "Last seen" in body
    assert "<script" not in body and "style=" not in body  # the CSP allows neither
    # Every asset is shipped by the service itself (no CDN): the one stylesheet, same origin.
    assert re.findall(r'<link[^>]+href="([^"]+)"', body) == ["/subscriber.css"]
    assert client.get("/subscriber.css").status_code == 200
    parser = HTMLParser()
    parser.feed(body)
    parser.close()
    # Behind admin login by setting.
    admin_only = config.model_copy(update={"settings": config.settings.model_copy(update={"story_pages": "admin"})})
    ctx = SubscriberContext(engine=engine, config=lambda: admin_only, secret_key=KEY, clock=clock)
    locked = TestClient(Starlette(routes=routes(ctx)), base_url="https://monitor.example.org")
    r = locked.get(path_of(text, "Story timeline"))
    assert r.status_code == 403 and "/admin/login" in r.text and "Hamas" not in r.text
    ctx.is_admin = lambda request: True
    assert "Hamas delegation arrived" in locked.get(path_of(text, "Story timeline")).text


def test_story_page_labels_the_earliest_report_first_not_the_alerted_one(engine, site) -> None:
    _config, client, clock, world = site
    # A held story: the first outlet's report waited for a second outlet, whose report was alerted.
    world.story("held", "doha-talks", "Negotiators draft a truce text", first_seen=T0 + timedelta(hours=4))
    world.alert("held", "held", title="Negotiators draft a truce text", at=T0 + timedelta(hours=4), outlet="first.example")
    world.alert("held", "new_story", title="Truce text drafted, sources say", at=T0 + timedelta(hours=7),
                outlet="second.example")
    with Session(engine) as s:
        story_id = s.scalars(select(Story.id).where(Story.title == "Negotiators draft a truce text")).one()
    body = client.get(f"/story/{links.story_token(KEY, story_id, clock.now)}").text
    timeline = body[body.index("<h2>Timeline</h2>"):body.index("<h2>Who carried it</h2>")]
    first = timeline.index("First report")
    assert first < timeline.index("first.example") < timeline.index("Alerted") < timeline.index("second.example")
    assert timeline.count("First report") == 1


def test_alert_feeds_validate_as_atom_and_json_feed(engine, site) -> None:
    _config, client, _clock, world = site
    world.alert("talks", "update", title="Hamas delegation lands in Doha <b>", what_is_new="Hamas delegation arrived",
                at=T0 + timedelta(hours=2), outlet="aljazeera.com")
    token = links.feed_token(KEY, "doha-talks")
    assert client.get("/feeds/doha-talks.atom").status_code == 403  # the secret token is needed
    assert client.get(f"/feeds/icc.atom?token={token}").status_code == 403  # and it is per topic
    atom = client.get(f"/feeds/doha-talks.atom?token={token}")
    assert atom.status_code == 200 and atom.headers["content-type"].startswith("application/atom+xml")
    parsed = feedparser.parse(atom.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    titles = [e.title for e in parsed.entries]
    assert titles == ["Update: Hamas delegation lands in Doha <b>", "Qatar hosts new round of ceasefire talks"]
    update = parsed.entries[0]
    assert "What's new: Hamas delegation arrived" in update.summary and "outlet0.example" in update.summary
    story_link = next(lk.href for lk in update.links if lk.rel == "alternate")
    assert "/story/" in story_link and client.get(urlsplit(story_link).path).status_code == 200
    assert any(lk.rel == "related" and lk.href.startswith("https://news.example/talks/") for lk in update.links)
    js = client.get(f"/feeds/doha-talks.json?token={token}")
    assert js.headers["content-type"].startswith("application/feed+json")
    feed = js.json()
    jsonschema.validate(feed, json.loads(SCHEMA.read_text()))
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert [i["title"] for i in feed["items"]] == titles
    assert feed["items"][0]["url"] == story_link.replace("&amp;", "&") or "/story/" in feed["items"][0]["url"]
    assert "What's new: Hamas delegation arrived" in feed["items"][0]["content_text"]


def test_a_story_matched_by_two_topics_is_shown_once_with_both(engine, tmp_path) -> None:
    config = make_config(tmp_path, """
[[subscribers]]
email = "bo@example.org"
cadence = "immediate"
""", engine=engine)
    with Session(engine) as s, s.begin():
        feed = Feed(url="https://f.example/rss", config_url="https://f.example/rss", created_at=naive_utc(T0))
        s.add(feed)
        s.flush()
        item = Item(feed_id=feed.id, outlet="f.example", key="k1", title="Qatar says ICC warrants could derail talks",
                    link="https://f.example/1", published_at=naive_utc(T0), fetched_at=naive_utc(T0), content_hash="h")
        s.add(item)
        s.flush()
        for topic in ("doha-talks", "icc"):
            st = Story(topic_id=topic, title=item.title, link=item.link, first_item_id=item.id,
                       first_seen=naive_utc(T0), last_seen=naive_utc(T0), sources=["f.example"], state={})
            s.add(st)
            s.flush()
            s.add(Alert(item_id=item.id, topic_id=topic, story_id=st.id, decision="new_story", reason="first report",
                        title=item.title, link=item.link, outlet="f.example", published_at=naive_utc(T0),
                        created_at=naive_utc(T0)))
    assert len(digest.build_due_digests(engine, config, T0, secret_key=KEY)) == 1
    text, html = last_mail(engine)
    assert text.count("Qatar says ICC warrants could derail talks") == 1
    assert "Why you got this: Doha talks, ICC" in text
    assert "1 new story" in text


def test_an_invalid_choice_is_named_and_changes_nothing(engine, site) -> None:
    _config, client, _clock, _world = site
    prefs = path_of(last_mail(engine)[0], "Change topics, timing or pause")
    token = form_token(client.get(prefs).text)
    base = {"form_token": token, "action": "save", "cadence": "daily", "daily_at": "08:00", "timezone": "Europe/London"}
    r = client.post(prefs, data={**base, "topics": []})
    assert r.status_code == 422 and "Choose at least one topic" in r.text
    r = client.post(prefs, data={**base, "topics": ["doha-talks"], "timezone": "Mars/Olympus"})
    assert r.status_code == 422 and "Unknown timezone" in r.text
    r = client.post(prefs, data={**base, "topics": ["doha-talks"], "daily_at": "25:99"})
    assert r.status_code == 422 and "08:00" in r.text
    r = client.post(prefs, data={"form_token": token, "action": "pause", "days": "400"})
    assert r.status_code == 422 and "Pause for 1 to 90 days" in r.text
    assert events(engine) == []


def test_slack_digests_carry_feedback_buttons_that_land_on_the_confirmation_page(engine, tmp_path) -> None:
    config = make_config(tmp_path, """
[[channels]]
name = "newsroom"
kind = "slack"
url_env = "NEWSROOM_SLACK_URL"
cadence = "immediate"
""", engine=engine)
    World(engine).new_story("s1", "icc", "ICC prosecutor seeks arrest warrants", at=T0)
    assert len(digest.build_due_digests(engine, config, T0, secret_key=KEY)) == 1
    with Session(engine) as s:
        payload = json.loads(s.scalars(select(Delivery.payload).where(Delivery.channel == "slack")).one())
        channel_id = s.scalar(select(Subscription.id).where(Subscription.target == "newsroom"))
    [actions] = [b for b in payload["blocks"] if b["type"] == "actions"]
    assert [e["text"]["text"] for e in actions["elements"]] == ["Not relevant", "Already knew this", "More like this"]
    url = actions["elements"][0]["url"]
    claim = links.read_feedback_token(KEY, urlsplit(url).path.rsplit("/", 1)[1], T0)
    assert (claim.subscription_id, claim.kind) == (channel_id, "not_relevant")
    ctx = SubscriberContext(engine=engine, config=lambda: config, secret_key=KEY, clock=lambda: T0)
    client = TestClient(Starlette(routes=routes(ctx)), base_url="https://monitor.example.org")
    page = client.get(urlsplit(url).path)
    assert page.status_code == 200 and "Not relevant?" in page.text
    assert client.post(urlsplit(url).path, data={"form_token": form_token(page.text)}).status_code == 200
    with Session(engine) as s:
        assert [(f.subscription_id, f.kind) for f in s.scalars(select(Feedback))] == [(channel_id, "not_relevant")]


def test_already_knew_counts_once_per_reader_and_story(engine) -> None:  # type: ignore[no-untyped-def]
    """One reader clicking "already knew" on two alerts of a story raises its bar once; a second reader's click
    counts too: a single person (or a forwarded digest) cannot raise the bar for everyone."""
    from monitor.app.subscriber import feedback

    world = World(engine)
    first = world.new_story("s1", "doha-talks", "Talks resume in Doha")
    second = world.alert("s1", "update", title="Talks move to Cairo", at=T0 + timedelta(hours=1))
    with Session(engine) as s, s.begin():
        readers = [Subscription(kind="email", target=f"r{i}@example.org", cursor_alert_id=0, created_at=naive_utc(T0))
                   for i in range(2)]
        s.add_all(readers)
        s.flush()
        ids = [r.id for r in readers]
    for alert_id in (first, second):
        with Session(engine) as s, s.begin():
            assert feedback.record(s, ids[0], alert_id, "known", T0)
    with Session(engine) as s:
        assert s.get_one(Story, world.stories["s1"]).known_marks == 1
    with Session(engine) as s, s.begin():
        assert feedback.record(s, ids[1], first, "known", T0)
    with Session(engine) as s:
        assert s.get_one(Story, world.stories["s1"]).known_marks == 2
