"""The admin topic editor in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium; no browser
download), against a real `monitor run` subprocess polling a real local feed server.

Log in; open a topic; add a counterexample; the backtest list and the diff change before anything is saved;
save; feeds.toml keeps its comments; the service reloads and its next match uses the edited topic. Also: an
unauthenticated /admin/topics goes to the login page and a form post without the CSRF token is refused.
A weak match that is news shows as held (waiting for a second outlet). Screenshots of the topic editor and
the feeds page are saved under $MONITOR_TEST_ARTIFACTS (default
test-artifacts/admin/)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.app.admin import auth
from monitor.lab.receiver import LiveFeedServer, free_port
from monitor.storage import db
from monitor.storage.tables import Item, Match

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("MONITOR_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("MONITOR_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "admin"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery staple"

# A paraphrase of the topic's third example: it matches the saved topic. Added as a counterexample in the
# browser, it must drop out of the backtest (and a later copy of it must not match in the service).
NEAR_MISS = "Qatari mediators say Israel and Hamas are close to a deal on hostages and a pause in fighting"
POSITIVE = "Mediators say a deal to free hostages and pause the fighting is close"  # an example: still matches
HEADLINES = [
    ("Qatar says talks between Israel and Hamas on a hostage deal have made progress", 30),
    ("Israeli negotiators travel to Doha for talks on a truce in Gaza", 26),
    (NEAR_MISS, 20),
    ("Hamas delegation in Cairo for ceasefire talks with Egyptian mediators", 14),
    ("Storm floods coastal towns in southern England", 12),
    ("Stock markets rally as inflation cools in the United States", 8),
]

CONFIG = """\
# Browser test configuration: these comments must survive a save from the admin pages.
[settings]
database_url = "sqlite:///{db}"
allow_private_networks = true   # the feed server is on 127.0.0.1
metrics_port = 0
min_interval_s = 1
outbox_dir = "{tmp}/outbox"
base_url = "http://127.0.0.1:{port}"

[[feeds]]
name = "Live wire"
url = "{feed}"
interval = 1

# The topic under edit.
[[topics]]
id = "hostage-talks"
name = "Hostage talks"
description = "Negotiations between Israel and Hamas, mediated by Qatar and Egypt, over a truce and the release of hostages"
examples = [
  "Qatar says talks between Israel and Hamas on a hostage deal have made progress",
  "Israeli negotiators travel to Doha for talks on a Gaza truce",
  "Mediators say a deal to free hostages and pause the fighting is close",
  "Hamas delegation in Cairo for ceasefire talks with Egyptian mediators",
]
counterexamples = [
  "Storm floods coastal towns",  # weather is never this topic
]
threshold = {threshold}
"""
EXAMPLES = tomllib.loads(CONFIG.replace("{threshold}", "0.5"))["topics"][0]


def topic_threshold(embedder) -> float:  # type: ignore[no-untyped-def]
    """A threshold under which the four topical headlines (the near miss included) match and the others do
    not, from the matcher's own scores (so the test holds whatever the matcher's score scale)."""
    from monitor.config import TopicConfig
    from monitor.signal import embed, match

    topic = TopicConfig.model_validate({k: v for k, v in EXAMPLES.items() if k != "threshold"} | {"threshold": 0.0})
    titles = [t for t, _h in HEADLINES]
    vectors = embed.encode_items(embedder, titles, titles)
    scores = [m.score for m in match.match_texts(list(range(len(titles))), titles, vectors,
                                                 match.compile_topics([topic], embedder))]
    topical, other = min(scores[:4]), max(scores[4:])
    assert topical > other, scores
    return round((topical + other) / 2, 4)


def _wait(cond: Callable[[], object], timeout: float, what: str, log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"service exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def service(tmp_path: Path, embedder) -> Iterator[dict[str, object]]:  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    threshold = topic_threshold(embedder)
    now = datetime.now(UTC)
    with LiveFeedServer() as fs:
        for title, hours_ago in HEADLINES:
            fs.publish("wire", title, "", now - timedelta(hours=hours_ago))
        port = free_port()
        db_path = tmp_path / "monitor.db"
        config = tmp_path / "feeds.toml"
        config.write_text(CONFIG.format(db=db_path, tmp=tmp_path, port=port, feed=f"{fs.url}/wire.xml",
                                        threshold=threshold))
        engine = db.make_engine(f"sqlite:///{db_path}")
        db.upgrade(engine)
        auth.create_user(engine, "alice", PASSWORD)
        log = tmp_path / "service.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MONITOR_SECRET_KEY": "browser-test-key"}
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "--config", str(config), "--log-format", "json",
                                 "run", "--port", str(port), "--tick", "0.5"],
                                cwd=tmp_path, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            def processed() -> bool:
                with Session(engine) as s:
                    return s.scalar(select(func.count()).select_from(Item)
                                    .where(Item.processed_at.is_not(None))) == len(HEADLINES)
            _wait(processed, 180, "the feed's items to be stored and matched", log, proc)
            yield {"base": f"http://127.0.0.1:{port}", "config": config, "engine": engine, "feeds": fs,
                   "log": log, "proc": proc}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            engine.dispose()


def _matched_titles(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return list(s.scalars(select(Item.title).join(Match, Match.item_id == Item.id).order_by(Item.id)))


def test_edit_a_topic_see_the_backtest_change_before_saving_then_save(service: dict[str, object]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, config, engine = str(service["base"]), Path(str(service["config"])), service["engine"]
    log, proc = Path(str(service["log"])), service["proc"]
    assert NEAR_MISS in _matched_titles(engine), "the near miss must match the saved topic for this test to mean anything"
    original = config.read_text()
    # The service serves the API and its OpenAPI document on its one port too, both behind the admin login.
    assert httpx.get(f"{base}/openapi.json", timeout=10).status_code == 401
    assert httpx.get(f"{base}/api/v1/topics", timeout=10).status_code == 401
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            # Not logged in: the login page, which then leads back.
            page.goto(f"{base}/admin/topics")
            assert "/admin/login" in page.url
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/admin/topics")
            expect(page.locator("table.grid")).to_contain_text("Hostage talks")
            doc = page.request.get(f"{base}/openapi.json")  # logged in: the API's document is readable
            assert doc.status == 200 and "/api/v1/topics" in doc.json()["paths"]

            # Open the topic: the backtest of the saved version shows the near miss, and no difference.
            page.click("text=Hostage talks")
            page.wait_for_url(f"{base}/admin/topics/hostage-talks")
            stories = page.locator("#stories")
            expect(stories).to_contain_text(NEAR_MISS, timeout=60_000)
            expect(page.locator("#diff")).to_contain_text("Same matches and alerts as the saved version")
            matches_before = int(page.locator(".summary").get_attribute("data-matches") or "0")
            assert matches_before >= 3

            # Mark the near miss as one, from the backtest's list: its headline joins the counterexamples and,
            # before any save, the backtest drops it and the diff says so.
            # A match that is one of the topic's own examples offers no button: it says so instead.
            example = EXAMPLES["examples"][3]
            expect(stories.locator("li.hit", has_text=example).locator(".own-text")).to_have_text("in the topic")
            expect(stories.locator("li.hit", has_text=example).locator("button.add-line")).to_have_count(0)
            box = page.locator("#f-counterexamples")
            before_lines = box.input_value().splitlines()
            button = stories.locator("li.hit", has_text=NEAR_MISS).locator("button.add-line")
            expect(button).to_have_attribute("aria-label", f"near miss: {NEAR_MISS}")
            button.click()
            assert box.input_value().splitlines() == [*before_lines, NEAR_MISS]
            expect(page.locator("#items-lost")).to_have_text("−1 items", timeout=60_000)
            expect(page.locator("#diff")).to_contain_text(NEAR_MISS)
            expect(stories).not_to_contain_text(NEAR_MISS)
            assert int(page.locator(".summary").get_attribute("data-matches") or "0") == matches_before - 1
            # it is now a closest miss, marked as one of the topic's texts (no example button to undo it with)
            missed = page.locator("#misses li.miss", has=page.locator(f'a:text-is("{NEAR_MISS}")'))
            expect(missed.locator(".own-text")).to_have_text("in the topic")
            assert config.read_text() == original, "nothing is written before Save"
            page.set_viewport_size({"width": 1440, "height": 1400})  # the screenshot shows the closest misses too
            page.screenshot(path=str(ARTIFACTS / "topic-editor.png"), full_page=False)
            page.set_viewport_size({"width": 1440, "height": 1000})

            # Save: the file has the counterexample and keeps its comments; the page says it was saved.
            reloads = log.read_text(errors="replace").count("configuration reloaded")
            page.click("button:has-text('Save')")
            page.wait_for_url(f"{base}/admin/topics/hostage-talks?saved=1")
            expect(page.locator(".notice")).to_contain_text("Saved to feeds.toml")
            saved = config.read_text()
            assert f'  "{NEAR_MISS}",' in saved
            for line in original.splitlines():
                if "#" in line:
                    assert line in saved, line
            # The saved version is the new baseline: no difference any more.
            expect(page.locator("#diff")).to_contain_text("Same matches and alerts", timeout=60_000)

            # A keyword group most examples miss, with the label-free threshold: the preview names each such
            # example before anything is saved (a warning, not a refusal).
            saved = config.read_text()
            page.fill("#f-threshold", "")
            page.fill("#f-require_any", "Qatar")
            warnings = page.locator(".topic-warning")
            expect(warnings.first).to_contain_text("contains none of require_any", timeout=60_000)
            expect(warnings).to_have_count(3)  # the three examples that say Doha, mediators or Cairo
            expect(warnings.nth(0)).to_contain_text("examples[1]")
            page.screenshot(path=str(ARTIFACTS / "topic-editor-warning.png"), full_page=False)
            assert config.read_text() == saved, "a warning writes nothing"

            # A weak match that is news waits for a second outlet, as in the service: with the threshold just
            # under the best score, the backtest shows that item held, styled apart from a repeat.
            page.fill("#f-require_any", "")
            expect(warnings).to_have_count(0, timeout=60_000)
            expect(stories.locator(".decision").first).to_be_visible(timeout=60_000)
            best = max(float(t) for t in stories.locator(".score").all_inner_texts())
            page.fill("#f-threshold", f"{best - 0.004:.3f}")
            held = stories.locator(".decision.held")
            expect(held.first).to_be_visible(timeout=60_000)
            expect(held.first).to_have_text("held")
            assert held.first.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(251, 240, 208)"
            page.screenshot(path=str(ARTIFACTS / "topic-editor-held.png"), full_page=False)
            assert config.read_text() == saved, "a preview writes nothing"

            # The feeds page (health at a glance), for the screenshot.
            page.goto(f"{base}/admin/feeds")
            expect(page.locator("table.feeds")).to_contain_text("Live wire")
            expect(page.locator("table.feeds")).to_contain_text("OK")
            page.screenshot(path=str(ARTIFACTS / "feeds.png"), full_page=True)

            # A state-changing post without the CSRF token is refused, even with the session cookie.
            r = page.request.post(f"{base}/admin/topics/hostage-talks",
                                  form={"id": "hostage-talks", "name": "Hijacked", "description": "x",
                                        "examples": "x"})
            assert r.status == 403
            assert "Hijacked" not in config.read_text()

            # Another browser with no session is sent to the login page.
            other = browser.new_context()
            anon = other.new_page()
            anon.goto(f"{base}/admin/topics")
            assert anon.url.startswith(f"{base}/admin/login")
            other.close()
            assert not errors, errors  # no script errors, no CSP violations
        finally:
            browser.close()

    # The running service picks the edit up without a restart, and its next match uses it: a new copy of the
    # near miss (it matched the saved topic) is stored and processed, and matches no more.
    _wait(lambda: log.read_text(errors="replace").count("configuration reloaded") > reloads, 30,
          "the service to reload feeds.toml", log, proc)  # type: ignore[arg-type]
    fs: LiveFeedServer = service["feeds"]  # type: ignore[assignment]
    fs.publish("wire", NEAR_MISS, "", datetime.now(UTC))
    fs.publish("wire", POSITIVE, "", datetime.now(UTC))

    def both_processed() -> bool:
        with Session(engine) as s:  # type: ignore[arg-type]
            return s.scalar(select(func.count()).select_from(Item).where(Item.processed_at.is_not(None))) == \
                len(HEADLINES) + 2
    _wait(both_processed, 60, "the new items to be processed", log, proc)  # type: ignore[arg-type]
    titles = _matched_titles(engine)
    assert titles.count(NEAR_MISS) == 1, "the copy published after the save must not match"
    assert POSITIVE in titles


def teardown_module() -> None:
    # Keep the README's screenshot in step when asked to (MONITOR_UPDATE_SCREENSHOTS=1).
    if os.environ.get("MONITOR_UPDATE_SCREENSHOTS") == "1" and (ARTIFACTS / "topic-editor.png").exists():
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(ARTIFACTS / "topic-editor.png", ROOT / "docs" / "admin-topic-editor.png")

