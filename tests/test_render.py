"""Rendering: golden files for a fixed digest (e-mail HTML + text, Slack payload), Slack's limits and
escaping, header sanitising. MONITOR_REGEN_GOLDEN=1 rewrites the golden files."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from html.parser import HTMLParser
from pathlib import Path

import pytest

from monitor.delivery import render
from monitor.records import AlertView, DigestContent, DigestStory, DigestTopic

GOLDEN = Path(__file__).parent / "golden"
T = datetime(2026, 11, 24, 7, 30, tzinfo=UTC)


def check_golden(name: str, actual: str) -> None:
    actual = actual.replace("\r\n", "\n")  # the message travels with CRLF; golden files use LF
    path = GOLDEN / name
    if os.environ.get("MONITOR_REGEN_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"{path} is missing; run with MONITOR_REGEN_GOLDEN=1 to create it")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{name} differs from the golden file; if the change is intended, regenerate with MONITOR_REGEN_GOLDEN=1"


def av(alert_id: int, topic: tuple[str, str], story: int, story_title: str, decision: str = "new_story", *,
       title: str | None = None, what: str | None = None, outlet: str = "bbc.co.uk", sources: int = 1,
       link: str | None = "https://news.example/a") -> AlertView:
    return AlertView(alert_id=alert_id, topic_id=topic[0], topic_name=topic[1], story_id=story,
                     story_title=story_title, decision=decision, title=title or story_title, link=link,  # type: ignore[arg-type]
                     outlet=outlet, published_at=T + timedelta(minutes=alert_id), what_is_new=what,
                     sources_count=sources, first_seen=T - timedelta(hours=story))


DOHA = ("doha-talks", "Doha talks")
ICC = ("icc", "ICC")


def fixed_digest() -> DigestContent:
    s1 = "Qatar hosts new round of ceasefire talks"
    s2 = "ICC prosecutor seeks warrants & says <!channel> \"evidence is clear\""
    doha = DigestTopic("doha-talks", "Doha talks", (
        DigestStory(1, s1, "https://news.example/doha?id=1&src=rss", T - timedelta(hours=1), 4, True, (
            av(1, DOHA, 1, s1, sources=3),
            av(3, DOHA, 1, s1, "update", title="Hamas delegation lands in Doha", what="Hamas delegation arrived; Israeli team due Tuesday",
               outlet="aljazeera.com", sources=4, link="https://news.example/doha/3"),
        ), topics=("Doha talks", "ICC"), reason="score 0.710 >= threshold 0.550; nearest example 'Qatar hosts talks' (0.71)"),
        DigestStory(2, "Égypte et Qatar: « trêve » proposée", None, T - timedelta(hours=2), 2, False, (
            av(4, DOHA, 2, "Égypte et Qatar: « trêve » proposée", "update", what="Egypt joins as co-mediator",
               outlet="france24.com", sources=2, link="javascript:alert(1)"),
        )),
    ))
    icc = DigestTopic("icc", "ICC", (
        DigestStory(3, s2, "https://news.example/icc", T - timedelta(hours=3), 7, True, (av(2, ICC, 3, s2, sources=7),)),
    ))
    return DigestContent(recipient="ana@example.org", recipient_name="Ana <Reader>", kind="email", timezone="Europe/London",
                         generated_at=T, first_alert_id=1, last_alert_id=4, topics=(doha, icc),
                         subscribed_topics=("Doha talks", "ICC"))


def fixed_links() -> render.DigestLinks:
    base = "https://monitor.example.org"
    return render.DigestLinks(
        prefs_url=f"{base}/preferences/PREFS",
        story_urls={i: f"{base}/story/S{i}" for i in (1, 2, 3)},
        feedback_urls={a: {k: f"{base}/feedback/{k}-{a}" for k in ("not_relevant", "known", "more_like_this")}
                       for a in (1, 2, 3, 4)})


def email_message(content: DigestContent | None = None) -> bytes:
    return render.Renderer().email(content or fixed_digest(), mail_from="Monitor <alerts@monitor.example.org>",
                                   message_id="<golden.1@monitor.example.org>", now=T, cadence="daily",
                                   unsubscribe_url="https://monitor.example.org/unsubscribe/TOKEN",
                                   links=fixed_links()).message


def test_email_golden_html_and_text() -> None:
    msg = message_from_bytes(email_message(), policy=policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    check_golden("digest_email.txt", text)
    check_golden("digest_email.html", html)


def test_email_reads_well_and_escapes_feed_text() -> None:
    msg = message_from_bytes(email_message(), policy=policy.default)
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    # Grouped topic -> story with outlets, first seen (in the subscriber's zone) and what is new.
    assert text.index("== Doha talks ==") < text.index("Qatar hosts") < text.index("== ICC ==")
    assert "4 outlets, first seen Tue 24 Nov 2026, 06:30 GMT" in text
    assert "What's new: Hamas delegation arrived" in text
    assert "<!channel>" in text  # plain text is shown as text, nothing to escape
    assert "&lt;!channel&gt;" in html and "<!channel>" not in html
    assert "javascript:" not in html and "javascript:" not in text  # unsafe links are shown as text only
    assert 'href="https://news.example/doha?id=1&amp;src=rss"' in html
    # The HTML is well-formed enough for a strict-ish parser and uses inline styles, no <style> block.
    parser = HTMLParser()
    parser.feed(html)
    assert "<style" not in html and 'style="' in html
    # The subject names the biggest development (the story most outlets carried), not the first story.
    assert msg["Subject"] == 'ICC: ICC prosecutor seeks warrants & says <!channel> "evidence is clear" (+2 more)'
    # Why you got this (every topic, the match reason of a new story), the story page, feedback per alert,
    # and a footer naming the topics with the preferences link.
    assert "Why you got this: Doha talks, ICC (closest to 'Qatar hosts talks')" in text
    assert "Story timeline: https://monitor.example.org/story/S1" in text
    for kind in ("not_relevant", "known", "more_like_this"):
        for alert in (1, 2, 3, 4):
            assert f'href="https://monitor.example.org/feedback/{kind}-{alert}"' in html
    assert "follows Doha talks, ICC." in text and 'href="https://monitor.example.org/preferences/PREFS"' in html


def test_slack_golden_payload() -> None:
    messages = render.Renderer().slack_messages(fixed_digest(), digest_id=7, links=fixed_links())
    # Feedback buttons (link buttons: they work without an interactivity URL) on each story's latest alert.
    actions = [b for b in messages[0]["blocks"] if b["type"] == "actions"]
    assert [[e["url"].rsplit("/", 1)[1] for e in a["elements"]] for a in actions] == [
        [f"{k}-{alert}" for k in ("not_relevant", "known", "more_like_this")] for alert in (3, 4, 2)]
    check_golden("digest_slack.json", json.dumps(messages, indent=2, ensure_ascii=False) + "\n")


def test_a_channel_mention_in_a_title_cannot_ping() -> None:
    messages = render.Renderer().slack_messages(fixed_digest())
    dumped = json.dumps(messages)
    assert "<!channel>" not in dumped and "&lt;!channel&gt;" in dumped
    assert "&amp; says" in dumped


def big_digest(n: int, title_len: int = 200) -> DigestContent:
    stories = []
    for i in range(n):
        title = f"Story {i} <!here> " + "w" * title_len
        updates = tuple(av(1000 * i + k, DOHA, i, title, "update", what="x" * 600, link="https://e.example/" + "p" * 300)
                        for k in range(1, 9))
        stories.append(DigestStory(i, title, "https://news.example/s", T, 3, True, (av(1000 * i, DOHA, i, title), *updates)))
    half = n // 2
    topics = (DigestTopic("doha-talks", "Doha talks", tuple(stories[:half])), DigestTopic("icc", "ICC", tuple(stories[half:])))
    return DigestContent(recipient="newsroom", recipient_name=None, kind="slack", timezone="UTC", generated_at=T,
                         first_alert_id=0, last_alert_id=n * 1000, topics=topics)


@pytest.mark.parametrize("n", [80, 200])
def test_a_large_digest_splits_into_valid_slack_messages(n: int) -> None:
    content = big_digest(n)
    links = render.DigestLinks(feedback_urls={a.alert_id: {"not_relevant": "https://m.example/f", "known": "https://m.example/k"}
                                              for t in content.topics for s in t.stories for a in s.alerts})
    messages = render.Renderer().slack_messages(content, digest_id=1, links=links)
    assert len(messages) > 1
    for m in messages:
        assert render.validate_slack_message(m) == []
        assert len(m["blocks"]) <= render.SLACK_MAX_BLOCKS
        for b in m["blocks"]:
            if b["type"] == "section":
                assert len(b["text"]["text"]) <= render.SLACK_MAX_SECTION_CHARS
        assert "<!here>" not in json.dumps(m)
    # Every story appears exactly once across the parts, in order.
    seen = [int(b["text"]["text"].split("Story ", 1)[1].split(" ", 1)[0])
            for m in messages for b in m["blocks"] if b["type"] == "section"]
    assert seen == list(range(n))
    assert messages[0]["blocks"][-1]["elements"][0]["text"].startswith(f"Part 1 of {len(messages)}")


def test_the_match_reason_reads_as_a_line() -> None:
    reason = ("score 0.498 >= threshold 0.382 (label-free); nearest example 'US presses Israel' (0.62); "
              "keywords 2/2 groups: hostage, release; evidence vs an average item (log-odds) similarity +4.1")
    assert render.reason_line(reason) == "closest to 'US presses Israel'; keywords 2/2 groups: hostage, release"
    assert render.reason_line("first report") == "first report"
    assert render.reason_line(None) == ""


def test_header_text_strips_injection_material() -> None:
    assert render.header_text("Breaking\r\nBcc: victim@example.org") == "Breaking Bcc: victim@example.org"
    cleaned = render.header_text("x =?UTF-8?Q?=0A?=Bcc: y")
    assert "=?" not in cleaned and "?=" not in cleaned and cleaned.startswith("x UTF-8")
    for nasty in ("=?=??==", "==??", "=?=?=?"):
        assert "=?" not in render.header_text(nasty) and "?=" not in render.header_text(nasty)
    assert render.header_text("a\u202eb\x00c\td") == "a b c d"
    assert len(render.header_text("é" * 500, 100)) == 100


def test_unsafe_urls_are_not_links() -> None:
    assert render.safe_url("javascript:alert(1)") is None
    assert render.safe_url("data:text/html,hi") is None
    assert render.safe_url("https://ok.example/a b") is None
    assert render.safe_url(" https://ok.example/x ") == "https://ok.example/x"


def test_the_webhook_payload_links_each_story_page_and_names_its_topics() -> None:
    body = render.Renderer().webhook_payload(fixed_digest(), digest_id=7, now=T, cadence="daily", links=fixed_links())
    stories = [s for t in body["data"]["topics"] for s in t["stories"]]
    assert [s["story_url"] for s in stories] == [f"https://monitor.example.org/story/S{i}" for i in (1, 2, 3)]
    assert [s["topics"] for s in stories] == [["Doha talks", "ICC"], ["Doha talks"], ["ICC"]]
