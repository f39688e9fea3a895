"""`monitor demo`: the whole pipeline, offline, on real headlines, in about a minute.

It serves the bundled excerpt (2023-11-20 .. 11-28: the truce and the hostage/prisoner releases) from the
replay server on 127.0.0.1, and runs the same pipeline functions the service runs, on a simulated clock
that advances one hour per step: poll -> embed -> match -> stories -> digests -> outbox. A daily-digest
subscriber gets e-mail (written as .eml and .html), a Slack-style channel gets hourly messages (captured
by a local receiver). Everything lands in the output folder, with a summary of what was sent and why.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import tomlkit
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.app import pipeline
from monitor.clock import ManualClock
from monitor.config import ChannelConfig, Config, FeedConfig, Settings, SubscriberConfig, TopicConfig
from monitor.delivery import outbox
from monitor.errors import MonitorError
from monitor.ingest.fetch import Fetcher
from monitor.lab import replay
from monitor.lab.receiver import CaptureReceiver
from monitor.signal import embed
from monitor.storage import db
from monitor.storage.tables import Alert, Delivery

log = logging.getLogger(__name__)

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "demo_items.jsonl.xz"
DIGEST_AT = time(8, 0)  # the demo subscriber's daily digest
SLACK_URL_ENV = "MONITOR_DEMO_SLACK_URL"
SUBSCRIBER = "analyst@example.org"


@dataclass
class DemoSummary:
    out_dir: Path
    items: int = 0
    first_item: datetime | None = None  # published range of the replayed items
    last_item: datetime | None = None
    replayed_until: datetime | None = None  # the clock runs past the last item, to the next daily digest
    config_file: Path | None = None  # a feeds.toml to explore the demo's database with the CLI
    topics: dict[str, Counter[str]] = field(default_factory=dict)
    emails: list[Path] = field(default_factory=list)
    slack_messages: int = 0
    alerts_by_day: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


def demo_config(topics: list[TopicConfig], feed_urls: list[str], out_dir: Path, base_url: str) -> Config:
    settings = Settings(
        database_url=f"sqlite:///{out_dir / 'demo.db'}",
        allow_private_networks=True,  # the replay server and the receiver are on 127.0.0.1
        outbox_dir=str(out_dir / "email"),
        base_url=base_url,
        # The int8 ONNX export of the bundled model (made once into var/models, ~10 s) encodes about twice
        # as fast as torch, with a mean cosine of 0.99+ to it: the demo's whole run fits in about a minute.
        embedding_backend="onnx-int8",
        model_cache_dir="var/models",
        min_interval_s=600,
        max_interval_s=3600,
        default_interval_s=900,
    )
    return Config(
        settings=settings,
        # The replay server serves every outlet from 127.0.0.1: each item names its outlet by its link.
        feeds=[FeedConfig(url=u, aggregator=True) for u in feed_urls],
        topics=topics,
        subscribers=[SubscriberConfig(email=SUBSCRIBER, name="Demo Analyst", cadence="daily", daily_at=DIGEST_AT)],
        channels=[ChannelConfig(name="newsroom", kind="slack", url_env=SLACK_URL_ENV, cadence="hourly")],
    )


async def run_demo(topics: list[TopicConfig], out_dir: Path, data: Path = BUNDLED,
                   progress: Callable[[str], None] = lambda _msg: None) -> DemoSummary:
    started = datetime.now(UTC)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("demo.db", "demo.db-wal", "demo.db-shm"):
        (out_dir / stale).unlink(missing_ok=True)
    for folder in ("email", "slack"):  # a re-run shows only its own messages
        shutil.rmtree(out_dir / folder, ignore_errors=True)
    items = replay.load_items(data)
    if not items:
        raise MonitorError(f"{data} holds no items to replay")
    # From the midnight before the first item to just past the daily digest after the last one.
    first, last = min(i.published for i in items), max(i.published for i in items)
    start = datetime.combine(first.date(), time(0), UTC)
    end = datetime.combine(last.date() + timedelta(days=1), DIGEST_AT, UTC) + timedelta(hours=1)
    clock = ManualClock(start)
    with replay.ReplayServer(items, clock.now) as server, CaptureReceiver(out_dir / "slack") as receiver:
        os.environ[SLACK_URL_ENV] = f"{receiver.url}/slack/newsroom"
        config = demo_config(topics, server.feed_urls(), out_dir, base_url="http://127.0.0.1:8080")
        engine = db.make_engine(config.settings.database_url)
        db.upgrade(engine)
        progress(f"loading the embedding model ({config.settings.embedding_model}) ...")
        embedder = embed.load_embedder(config.settings)
        rt = pipeline.build_runtime(engine, config, embedder, clock)
        rt.link_clock = lambda: datetime.now(UTC)  # links in the e-mails must not read as signed in 2023
        summary = DemoSummary(out_dir=out_dir, items=len(items), first_item=first, last_item=last,
                              replayed_until=end)
        async with Fetcher(config.settings) as fetcher, outbox.open_senders(config) as senders:
            day = None
            while clock.now() < end:
                clock.advance(timedelta(hours=1))
                if clock.now().date() != day:
                    day = clock.now().date()
                    progress(f"{day}: replaying ..." if day <= last.date()
                             else f"{day}: no more items; delivering the last digests ...")
                await pipeline.poll_feeds(rt, fetcher=fetcher)
                pipeline.process_pending(rt)
                pipeline.build_digests(rt)
                await pipeline.deliver(rt, senders=senders)
        _collect(engine, summary)
        summary.slack_messages = len(receiver.snapshot())
        engine.dispose()
    summary.emails = _html_copies(out_dir / "email")
    summary.config_file = write_explore_config(config, out_dir)
    summary.seconds = (datetime.now(UTC) - started).total_seconds()
    return summary


def write_explore_config(config: Config, out_dir: Path) -> Path:
    """`out_dir/feeds.toml`: the demo's database, embedding backend, subscriber and topics, and no feeds, so
    that `monitor --config out_dir/feeds.toml stories list ...` (or `backtest`, `topics test`) explores what
    the demo stored without environment variables or a backend switch, and `... run` serves the pages its
    e-mails link to (same database, same signing key beside `outbox_dir`)."""
    s = config.settings
    doc = tomlkit.document()
    doc.add(tomlkit.comment("Written by `monitor demo`: explore its database with --config pointing here."))
    settings = tomlkit.table()
    settings["database_url"] = f"sqlite:///{(out_dir / 'demo.db').resolve()}"
    settings["embedding_backend"] = s.embedding_backend
    settings["model_cache_dir"] = str(Path(s.model_cache_dir).resolve())
    settings["outbox_dir"] = str((out_dir / "email").resolve())
    settings["metrics_port"] = 0
    doc["settings"] = settings
    subscribers = tomlkit.aot()  # kept, so `run` on this file serves their preferences and unsubscribe pages
    for sub in config.subscribers:
        subscribers.append(tomlkit.item(sub.model_dump(mode="json", exclude_none=True, exclude_defaults=True)))
    doc["subscribers"] = subscribers
    topics = tomlkit.aot()
    for topic in config.topics:
        topics.append(tomlkit.item(topic.model_dump(mode="json", exclude_none=True, exclude_defaults=True)))
    doc["topics"] = topics
    path = out_dir / "feeds.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def _collect(engine, summary: DemoSummary) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        for topic, decision, n in s.execute(
            select(Alert.topic_id, Alert.decision, func.count()).group_by(Alert.topic_id, Alert.decision)
        ):
            summary.topics.setdefault(topic, Counter())[decision] = n
        for a in s.scalars(select(Alert).where(Alert.decision.in_(("new_story", "update"))).order_by(Alert.published_at)):
            line = f"[{a.topic_id}] {a.decision}: {a.title}" + (f"  ({a.what_is_new})" if a.what_is_new else "")
            summary.alerts_by_day.setdefault(a.published_at.date().isoformat(), []).append(line)
        failed = s.scalar(select(func.count()).select_from(Delivery).where(Delivery.status != "sent"))
        if failed:
            log.warning("some demo deliveries were not sent", extra={"deliveries": failed})


def _html_copies(email_dir: Path) -> list[Path]:
    """Next to each .eml, an .html file with its HTML part, to open in a browser."""
    emails = sorted(email_dir.glob("*.eml")) if email_dir.exists() else []
    for eml in emails:
        msg = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
        part = msg.get_body(preferencelist=("html",))
        if part is not None:
            eml.with_suffix(".html").write_text(part.get_content(), encoding="utf-8")
    return emails
