"""The subscriber loop end to end in a real headless Chromium: real items through the real pipeline (the bundled
model, matcher and stories), digests sent to a real SMTP server (aiosmtpd) and parsed from its capture, the
pages served by uvicorn.

A reader opens the preferences link of a delivered e-mail, changes cadence and topics, and the next digest
follows them; clicks "not relevant" in a delivered e-mail; the suggestion shows its backtest effect; applying
it (the CLI, audited) edits feeds.toml, and that item's look-alikes no longer match. Screenshots of the
preferences page and a story page are saved as test artifacts (tests/browser.py: ARTIFACTS)."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller
from browser import artifact, chromium, serve
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.applications import Starlette

from monitor.app import admin, pipeline
from monitor.app.admin import auth, make_context
from monitor.app.admin.backtest import Backtester
from monitor.app.subscriber import SubscriberContext, routes, suggest
from monitor.app.subscriber.adminpages import admin_routes
from monitor.cli import main
from monitor.config import load_config
from monitor.delivery import links, unsubscribe
from monitor.lab.receiver import free_port
from monitor.signal import embed, match
from monitor.storage import db
from monitor.storage.tables import Alert, AuditEntry, Feed, Item

pytestmark = pytest.mark.slow

KEY = "browser-test-key"

CONFIG = """# The subscriber browser test's configuration (comments must survive an applied suggestion).
[settings]
database_url = "sqlite:///{db}"
base_url = "{base}"
mail_from = "Monitor <alerts@monitor.example.org>"
allow_private_networks = true

[settings.smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"

[[topics]]
id = "doha-talks"
name = "Doha talks"
description = "Ceasefire and hostage negotiations between Israel and Hamas mediated by Qatar."
examples = ["Qatar hosts new round of ceasefire talks", "Hostage deal talks resume in Doha", "Qatari mediators say truce talks are progressing"]
counterexamples = []  # readers' "not relevant" end up here once an admin applies them

[[topics]]
id = "icc"
name = "ICC"
description = "International Criminal Court cases and arrest warrants."
examples = ["ICC prosecutor seeks arrest warrants", "International Criminal Court opens investigation"]

[[subscribers]]
email = "ana@example.org"
name = "Ana"
topics = ["doha-talks"]
cadence = "immediate"
"""

# A near miss (another war's ceasefire talks in Doha) and a look-alike of it.
FALSE_POSITIVE = "Qatar hosts new round of ceasefire talks for Sudan's warring generals"
EARLIER_LOOK_ALIKE = "Qatar hosts fresh ceasefire talks for Sudan's army and paramilitary RSF"
LOOK_ALIKE = "Qatar hosts another round of Sudan ceasefire talks between army and RSF"
CONTROL = "Doha talks: hostage deal could take place in coming days"


class Capture:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append(envelope.content)
        return "250 Message accepted"


class ManualClock:
    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t

    def to_real_seconds(self, simulated_seconds: float) -> float:
        return simulated_seconds


def add_items(engine, now: datetime, titles: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    """Store items as the poll stage would (title, outlet), published in order over the last minutes."""
    with Session(engine) as s, s.begin():
        feed = s.scalar(select(Feed).where(Feed.url == "https://news.example/rss"))
        if feed is None:
            feed = Feed(url="https://news.example/rss", config_url="https://news.example/rss", created_at=db.naive_utc(now))
            s.add(feed)
            s.flush()
        for i, (title, outlet) in enumerate(titles):
            at = now - timedelta(minutes=len(titles) - i)
            key = re.sub(r"\W+", "-", title.lower())[:80]
            s.add(Item(feed_id=feed.id, outlet=outlet, key=key, link=f"https://{outlet}/{key}", title=title,
                       summary="", published_at=db.naive_utc(at), fetched_at=db.naive_utc(now), content_hash=key))


def decisions(engine) -> str:  # type: ignore[no-untyped-def]
    """The pipeline's decisions, for a failing assertion's message."""
    with Session(engine) as s:
        return "\n".join(f"{a.topic_id} {a.decision}: {a.title} ({a.reason})" for a in s.scalars(select(Alert)))


def mail_parts(raw: bytes) -> tuple[str, str, str]:
    msg = message_from_bytes(raw, policy=policy.default)
    return (str(msg["Subject"]), msg.get_body(("plain",)).get_content(),  # type: ignore[union-attr]
            msg.get_body(("html",)).get_content())  # type: ignore[union-attr]


def link_after(text: str, label: str) -> str:
    m = re.search(rf"{re.escape(label)}: (http\S+)", text)
    assert m, f"no {label!r} link in:\n{text}"
    return m.group(1)


def test_a_reader_tunes_the_digest_and_a_topic_in_chromium(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    capture = Capture()
    smtp_port, web_port = free_port(), free_port()
    controller = Controller(capture, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    config_path = tmp_path / "feeds.toml"
    config_path.write_text(CONFIG.format(db=tmp_path / "monitor.db", base=f"http://127.0.0.1:{web_port}",
                                         smtp_port=smtp_port))
    config = load_config(config_path)
    engine = db.make_engine(config.settings.database_url)
    db.upgrade(engine)
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    rt = pipeline.build_runtime(engine, config, embedder, clock, signing_key=KEY)
    current = {"config": config}
    ctx = SubscriberContext(engine=engine, config=lambda: current["config"], secret_key=KEY, clock=clock.now)
    backtester = Backtester(engine, embedder, config.settings)
    admin_ctx = make_context(engine, config_path, lambda: current["config"], KEY, lambda: backtester,
                             lambda: datetime.now(UTC))
    app = Starlette(routes=[*routes(ctx), *unsubscribe.routes(engine, config, KEY, clock=clock.now),
                            *admin.routes(admin_ctx), *admin_routes(admin_ctx)])
    auth.create_user(engine, "editor", "correct horse battery staple")

    def run_pipeline() -> int:
        pipeline.process_pending(rt)
        built = pipeline.build_digests(rt)
        before = len(capture.messages)
        with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
            pool.submit(asyncio.run, pipeline.deliver(rt)).result()
        assert len(capture.messages) - before == len(built)
        return len(built)

    try:
        add_items(engine, clock.now(), [
            ("Hamas and Israel agree four-day truce brokered by Qatar", "bbc.co.uk"),
            (FALSE_POSITIVE, "gulfnews.com"),
            (EARLIER_LOOK_ALIKE, "sudantribune.com"),
        ])
        assert run_pipeline() == 1
        subject, text, html = mail_parts(capture.messages[-1])
        with Session(engine) as s:
            fp_alert, fp_title = s.execute(select(Alert.id, Alert.title).where(
                Alert.title == FALSE_POSITIVE, Alert.topic_id == "doha-talks",
                Alert.decision.in_(["new_story", "update"]))).one()
        assert "Hamas and Israel agree four-day truce" in text and fp_title in text, decisions(engine)
        assert "== ICC ==" not in text  # not one of Ana's topics yet (test_subscriber_pages: filtered out)
        assert "You receive this as news breaks because ana@example.org follows Doha talks." in text
        prefs_url = link_after(text, "Change topics, timing or pause")
        story_url = link_after(text, "Story timeline")

        with chromium() as browser, serve(app, web_port) as base:
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            # --- preferences from the delivered e-mail: ICC too, hourly ---------------------------------
            page.goto(prefs_url)
            assert page.title().startswith("Your digest")
            assert page.is_checked("input[name=topics][value=doha-talks]")
            assert not page.is_checked("input[name=topics][value=icc]")
            page.check("input[name=topics][value=icc]")
            page.check("input[name=cadence][value=hourly]")
            page.select_option("select[name=timezone]", "Europe/London")
            page.click("#prefs button[type=submit]")
            page.wait_for_selector("text=Saved. Your next digest follows these settings.")
            assert page.is_checked("input[name=topics][value=icc]") and page.is_checked("input[name=cadence][value=hourly]")
            page.screenshot(path=str(artifact("subscriber-preferences.png")), full_page=True)

            # --- the next digest follows: nothing before the full hour, then ICC news is in ------------
            clock.t += timedelta(minutes=1)
            add_items(engine, clock.now(), [("ICC prosecutor seeks arrest warrants for militia leaders", "reuters.com"),
                                            ("Qatari mediators say a truce deal is close, hostages could be freed", "aljazeera.com")])
            assert run_pipeline() == 0  # hourly now: not as news breaks
            clock.t = clock.t.replace(minute=0, second=0) + timedelta(hours=1, seconds=5)
            assert run_pipeline() == 1
            subject2, text2, html2 = mail_parts(capture.messages[-1])
            assert "ICC prosecutor seeks arrest warrants for militia leaders" in text2, decisions(engine)
            assert "follows Doha talks, ICC." in text2
            assert "You receive this hourly" in text2

            # --- "not relevant" on the false positive, from the first e-mail -------------------------------
            feedback_urls = re.findall(r'href="(http://127\.0\.0\.1:\d+/feedback/[^"]+)"', html)
            claims = {u: links.read_feedback_token(KEY, urlsplit(u).path.rsplit("/", 1)[1], clock.now()) for u in feedback_urls}
            not_relevant = next(u for u, c in claims.items() if c.alert_id == fp_alert and c.kind == "not_relevant")
            page.goto(not_relevant)
            assert page.is_visible(f"text={fp_title}")
            page.click("button[type=submit]")
            page.wait_for_selector("text=Recorded")
            page.goto(not_relevant)  # a second click: already recorded, nothing new
            assert page.is_visible("text=You already told us this about this item")
            page.click("button[type=submit]")
            page.wait_for_selector("text=Already recorded")

            # --- tampered and expired links get a clear page ------------------------------------------------
            page.goto(prefs_url[:-4] + "AAAA")
            assert page.is_visible("text=This link is damaged or was not issued by this service.")

            # --- the story page ------------------------------------------------------------------------------
            page.goto(story_url)
            assert page.is_visible("h2:has-text('Timeline')") and page.is_visible("text=First report")
            page.screenshot(path=str(artifact("subscriber-story.png")), full_page=True)

            # --- the suggestion in the admin UI, with its backtest effect over the last 7 days ----------------
            with Session(engine) as s:
                [sg] = suggest.suggestions(s, config, "doha-talks")
            assert (sg.field, sg.text, sg.votes) == ("counterexamples", fp_title, 1)
            # The look-alike would match the topic as it stands.
            before = match.compile_topics(config.topics, embedder)
            vec = embed.encode_items(embedder, [LOOK_ALIKE], [LOOK_ALIKE])
            assert next(v for v in match.match_texts([0], [LOOK_ALIKE], vec, before) if v.topic_id == "doha-talks").matched
            runner = CliRunner()
            listed = runner.invoke(main, ["--config", str(config_path), "topics", "suggest", "doha-talks", "--no-backtest"])
            assert listed.exit_code == 0, listed.output
            assert f"#{sg.id}  add counterexample: {fp_title!r}  (1 reader)" in listed.output

            page.goto(f"{base}/admin/topics/doha-talks/suggestions")  # not logged in: the login page first
            page.fill("input[name=username]", "editor")
            page.fill("input[name=password]", "correct horse battery staple")
            page.click("form[action='/admin/login'] button[type=submit]")
            page.wait_for_url("**/admin/topics/doha-talks/suggestions")
            row = page.locator("table.suggestions tbody tr").first
            assert fp_title in row.inner_text()
            # The stored look-alike would no longer match (the matcher keeps the reported item itself above its
            # threshold: a counterexample lowers look-alikes, it does not blacklist a headline).
            effect = row.locator("td.effect").first.inner_text()
            lost = int(re.search(r"\+(\d+) / \u2212(\d+)", effect).group(2))  # type: ignore[union-attr]
            assert lost >= 1 and effect.startswith("+0"), effect
            assert EARLIER_LOOK_ALIKE in row.inner_text()  # "would no longer match: ..."
            page.screenshot(path=str(artifact("subscriber-suggestions.png")), full_page=True)
            row.locator("button[type=submit]").click()
            page.wait_for_selector(f"text=Suggestion #{sg.id} applied")

        saved = config_path.read_text()
        assert "# The subscriber browser test's configuration" in saved and fp_title in saved
        with Session(engine) as s:
            audit = s.scalars(select(AuditEntry)).all()
            assert [(a.actor, a.target) for a in audit] == [("editor", "topic doha-talks")]
            assert fp_title in audit[0].diff
            assert suggest.suggestions(s, load_config(config_path), "doha-talks") == []  # applied: no longer open

        # --- the service reloads feeds.toml; the look-alike no longer matches -------------------------------
        new_config = load_config(config_path)
        rt.reload(new_config)
        current["config"] = new_config
        clock.t += timedelta(minutes=5)
        add_items(engine, clock.now(), [(LOOK_ALIKE, "thenationalnews.com"),
                                        (CONTROL, "bbc.co.uk")])
        pipeline.process_pending(rt)
        with Session(engine) as s:
            alerted = set(s.scalars(select(Alert.title).where(Alert.topic_id == "doha-talks")))
        assert LOOK_ALIKE not in alerted and CONTROL in alerted
    finally:
        controller.stop()
        engine.dispose()
