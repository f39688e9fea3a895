"""`monitor run` as a real subprocess, against real local servers: a feed server the test publishes to, an
SMTP server (aiosmtpd) and a webhook receiver, on an accelerated clock (1 real second = 30 simulated
minutes), so a whole morning of cadences passes in seconds."""

from __future__ import annotations

import email
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from monitor.lab.receiver import CaptureReceiver, LiveFeedServer, free_port
from monitor.storage.tables import Delivery, Feed, Match

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.databases("sqlite", "postgresql")]

CLOCK_START = datetime(2023, 11, 24, 6, 0, tzinfo=UTC)
SPEED = 1800.0  # simulated seconds per real second


class _SmtpSink:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[_SmtpSink, int]]:
    sink = _SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield sink, controller.port
    controller.stop()


@pytest.fixture
def feeds() -> Iterator[tuple[LiveFeedServer, str]]:
    with LiveFeedServer() as fs:
        yield fs, fs.url


def _toml_str(v: object) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_str(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def default_topics_toml(ids: set[str]) -> str:
    """The shipped topics (from feeds.toml), re-serialised."""
    topics = tomllib.loads((ROOT / "feeds.toml").read_text())["topics"]
    out = []
    for t in topics:
        if t["id"] in ids:
            out.append("[[topics]]\n" + "".join(f"{k} = {_toml_str(v)}\n" for k, v in t.items()))
    return "\n".join(out)


def write_config(path: Path, tmp: Path, *, feed_urls: list[str], topics: set[str], smtp_port: int,
                 extra: str = "", database_url: str, metrics_port: int = 0) -> None:
    feeds = "".join(f'[[feeds]]\nurl = "{u}"\ninterval = 300\n\n' for u in feed_urls)
    path.write_text(f"""
[settings]
database_url = "{database_url}"
metrics_port = {metrics_port}
allow_private_networks = true
outbox_dir = "{tmp / 'outbox'}"
min_interval_s = 60

[settings.smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
timeout_s = 5

{feeds}
{extra}
{default_topics_toml(topics)}
""")


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_service(config: Path, tmp: Path, env_extra: dict[str, str], port: int | None = None,
                  log_name: str = "service.log") -> Running:
    log_path = tmp / log_name
    port = port or free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MONITOR_SECRET_KEY": "test-key", **env_extra}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "--config", str(config), "--log-format", "json", "run",
         "--port", str(port), "--tick", "0.5", "--clock-start", CLOCK_START.strftime("%Y-%m-%dT%H:%M:%S"),
         "--clock-speed", str(SPEED)],
        cwd=tmp, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )
    return Running(proc, log_path, port)


def wait_for(cond: Callable[[], object], timeout: float, what: str, running: Running) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if running.proc.poll() is not None:
            raise AssertionError(f"service exited early ({running.proc.returncode}) while waiting for {what}:\n{running.log()[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{running.log()[-4000:]}")


def wait_ready(running: Running) -> float:
    """Waits for the service to be ready; its simulated clock (re)starts at CLOCK_START then."""
    wait_for(lambda: "service ready" in running.log(), 120, "the service to be ready", running)
    return time.monotonic()


def sim_now(started_real: float) -> datetime:
    return CLOCK_START + timedelta(seconds=(time.monotonic() - started_real) * SPEED)


def test_service_delivers_immediately_and_daily_and_stops_cleanly(tmp_path: Path, smtp, feeds, engine) -> None:
    sink, smtp_port = smtp
    fs, base = feeds
    fs.publish("wire", "Hamas frees 13 Israeli hostages as Israel releases 39 Palestinian prisoners",
           "The first exchange under the Qatar-brokered truce took place on Friday.", CLOCK_START - timedelta(hours=1))
    fs.publish("wire", "Storm floods coastal towns in southern England", "Heavy rain caused flooding.",
           CLOCK_START - timedelta(hours=1))
    with CaptureReceiver() as receiver:
        config = tmp_path / "feeds.toml"
        extra = """
[[subscribers]]
email = "daily@example.org"
cadence = "daily"
daily_at = 08:00:00

[[channels]]
name = "team"
kind = "webhook"
url_env = "TEAM_WEBHOOK_URL"
secret_env = "TEAM_WEBHOOK_SECRET"
cadence = "immediate"
"""
        write_config(config, tmp_path, feed_urls=[f"{base}/wire.xml"], topics={"prisoner-exchange"},
                     smtp_port=smtp_port, extra=extra, database_url=engine.url.render_as_string(hide_password=False))
        running = start_service(config, tmp_path, {"TEAM_WEBHOOK_URL": f"{receiver.url}/hook",
                                                   "TEAM_WEBHOOK_SECRET": "whsec_" + "dGVzdHNlY3JldA=="})
        try:
            t0 = wait_ready(running)
            wait_for(lambda: receiver.snapshot(), 60, "the first immediate webhook", running)
            assert b"13 Israeli hostages" in receiver.snapshot()[0].body
            # Published mid-run: it must reach the immediate webhook too.
            fs.publish("wire", "Second group of 14 Israeli hostages freed by Hamas, 42 Palestinian prisoners released",
                   "A second exchange took place on Saturday under the truce.", sim_now(t0))
            wait_for(lambda: any(b"Second group" in r.body for r in receiver.snapshot()), 30,
                     "the webhook for the item published mid-run", running)
            # 08:00 simulated passes about 4 real seconds after the start: one daily digest, and only one.
            wait_for(lambda: sim_now(t0) > CLOCK_START + timedelta(hours=4) and sink.messages, 30,
                     "the daily digest", running)
            time.sleep(2)
            daily = [m for rcpt, m in sink.messages if rcpt == ["daily@example.org"]]
            assert len(daily) == 1
            msg = email.message_from_bytes(daily[0])
            assert msg.get_content_type() == "multipart/alternative"
            assert "13 Israeli hostages" in daily[0].decode(errors="replace") or "hostages" in msg["Subject"]
        finally:
            running.proc.send_signal(signal.SIGTERM)
            code = running.proc.wait(timeout=30)
        assert code == 0, running.log()[-4000:]
        assert "service stopped cleanly" in running.log()
        with Session(engine) as s:
            statuses = [d.status for d in s.scalars(select(Delivery))]
        assert statuses and set(statuses) == {"sent"}, statuses


def test_hot_reload_applies_feeds_and_topics_and_rejects_invalid_edits(tmp_path: Path, smtp, feeds) -> None:
    """SQLite only (no `engine`: the service migrates the empty file itself), to keep the suite short: a reload's
    database step (sync_feeds / sync_subscriptions) runs on PostgreSQL in test_store / test_digest, and the
    whole service runs on it in the test above."""
    _sink, smtp_port = smtp
    fs, base = feeds
    fs.publish("one", "Weather: a calm week ahead", "Nothing to report.", CLOCK_START - timedelta(hours=2))
    config = tmp_path / "feeds.toml"
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    write_config(config, tmp_path, feed_urls=[f"{base}/one.xml"], topics={"prisoner-exchange"}, smtp_port=smtp_port,
                 database_url=url)
    running = start_service(config, tmp_path, {})
    engine = create_engine(url)
    try:
        t0 = wait_ready(running)
        wait_for(lambda: "one" in fs.requests, 60, "the first poll", running)
        # Add a feed and a topic while it runs.
        write_config(config, tmp_path, feed_urls=[f"{base}/one.xml", f"{base}/two.xml"],
                     topics={"prisoner-exchange", "icc-warrants"}, smtp_port=smtp_port, database_url=url)
        wait_for(lambda: "configuration reloaded" in running.log(), 20, "the reload", running)
        fs.publish("two", "ICC prosecutor Karim Khan applies for arrest warrants for Netanyahu and Sinwar",
               "The International Criminal Court prosecutor said he had reasonable grounds.", sim_now(t0))

        def icc_matched() -> bool:
            with Session(engine) as s:
                return s.scalar(select(Match).where(Match.topic_id == "icc-warrants")) is not None

        wait_for(icc_matched, 30, "the new topic to match an item of the new feed", running)
        # An invalid edit is rejected and the last good configuration stays in force.
        config.write_text(config.read_text() + '\n[[feeds]]\nurl = "ftp://example.org/feed"\n')
        wait_for(lambda: "configuration change rejected" in running.log(), 20, "the rejection", running)
        assert "feeds[3].url" in running.log()
        polled = fs.requests.count("two")
        wait_for(lambda: fs.requests.count("two") > polled, 20, "polling to go on with the old config", running)
        with Session(engine) as s:
            assert s.scalar(select(Feed.enabled).where(Feed.url == f"{base}/two.xml")) is True
    finally:
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=30) == 0, running.log()[-4000:]


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_ports_metrics_listener_and_readiness_of_a_locked_database(tmp_path: Path, smtp, feeds) -> None:
    """SQLite: /metrics answers only on its own (loopback) listener; /readyz says 503 while another process
    holds the database's write lock and 200 once it lets go; a second `monitor run` on the same port stops
    at once with "port N is in use" (before loading the model)."""
    _sink, smtp_port = smtp
    _fs, base = feeds
    config = tmp_path / "feeds.toml"
    db_file = tmp_path / "monitor.db"
    metrics_port = free_port()
    write_config(config, tmp_path, feed_urls=[f"{base}/one.xml"], topics={"prisoner-exchange"}, smtp_port=smtp_port,
                 database_url=f"sqlite:///{db_file}", metrics_port=metrics_port)
    running = start_service(config, tmp_path, {})
    public = f"http://127.0.0.1:{running.port}"
    try:
        wait_ready(running)
        assert _status(f"{public}/readyz") == 200
        assert _status(f"{public}/metrics") == 404
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert scrape.status_code == 200 and "monitor_polls_total" in scrape.text

        locker = sqlite3.connect(db_file, timeout=5, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            wait_for(lambda: _status(f"{public}/readyz") == 503, 30, "/readyz to report the locked database", running)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        wait_for(lambda: _status(f"{public}/readyz") == 200, 30, "/readyz to recover", running)

        second = start_service(config, tmp_path, {}, port=running.port, log_name="second.log")
        assert second.proc.wait(timeout=60) == 2, second.log()[-4000:]
        assert f"port {running.port} on 127.0.0.1 is in use" in second.log()
        assert "service starting" not in second.log()
    finally:
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=30) == 0, running.log()[-4000:]
