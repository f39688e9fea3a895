"""The orchestration on real parts: a live feed server, real SQLite, the real model and the shipped topics,
on a manual clock."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from monitor.app import pipeline
from monitor.clock import ManualClock
from monitor.config import Config, FeedConfig, Settings, load_config
from monitor.lab.receiver import LiveFeedServer
from monitor.storage.tables import Alert, Item, Match, Story

pytestmark = pytest.mark.databases("sqlite", "postgresql")

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2023, 11, 24, 12, 0, tzinfo=UTC)


def _runtime(engine: Engine, embedder, feed_url: str, tmp_path: Path) -> pipeline.Runtime:  # type: ignore[no-untyped-def]
    topics = [t for t in load_config(ROOT / "feeds.toml", env={}).topics if t.id == "prisoner-exchange"]
    config = Config(settings=Settings(database_url=engine.url.render_as_string(hide_password=False),
                                      allow_private_networks=True, outbox_dir=str(tmp_path / "outbox")),
                    feeds=[FeedConfig(url=feed_url)], topics=topics)
    return pipeline.build_runtime(engine, config, embedder, ManualClock(NOW), signing_key="k")


async def test_fresh_items_alert_and_a_back_catalogue_does_not(engine: Engine, embedder, tmp_path: Path) -> None:
    with LiveFeedServer() as feeds:
        feeds.publish("f", "Hamas frees 13 Israeli hostages as Israel releases 39 Palestinian prisoners",
                      "The first exchange under the truce took place on Friday.", NOW - timedelta(hours=2))
        feeds.publish("f", "Hamas releases Israeli hostages in exchange for Palestinian prisoners",
                      "An earlier exchange.", NOW - timedelta(days=10))
        rt = _runtime(engine, embedder, f"{feeds.url}/f.xml", tmp_path)
        report = await pipeline.poll_feeds(rt, all_feeds=True)
        assert len(report.new_items) == 2
        processed = pipeline.process_pending(rt)
    assert processed.items == 2 and processed.matches == 2
    with Session(engine) as s:
        alerts = s.scalars(select(Alert)).all()
        assert s.scalar(select(Item.processed_at).where(Item.id == 1)) is not None
    assert [a.title for a in alerts] == ["Hamas frees 13 Israeli hostages as Israel releases 39 Palestinian prisoners"]
    assert alerts[0].decision == "new_story"


async def test_processing_survives_other_writers(engine: Engine, embedder, tmp_path: Path) -> None:
    """The deliver job and the web pages write while items are being encoded; processing must wait for
    them, not fail with 'database is locked'."""
    with LiveFeedServer() as feeds:
        for i in range(40):
            feeds.publish("f", f"Hostage release talks, round {i}: {i} more captives freed", "Mediators in Doha.",
                          NOW - timedelta(minutes=i))
        rt = _runtime(engine, embedder, f"{feeds.url}/f.xml", tmp_path)
        await pipeline.poll_feeds(rt, all_feeds=True)
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        while not stop.is_set():
            with engine.begin() as conn:
                conn.execute(text("UPDATE feeds SET last_status = last_status"))
            writes[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        report = pipeline.process_pending(rt)
    finally:
        stop.set()
        t.join()
    assert report.items == 40 and writes[0] > 0
    with Session(engine) as s:
        assert s.scalar(select(Item).where(Item.processed_at.is_(None))) is None
        assert len(s.scalars(select(Match)).all()) == report.matches


async def test_housekeeping_closes_stories_past_their_window(engine: Engine, embedder, tmp_path: Path) -> None:
    with LiveFeedServer() as feeds:
        feeds.publish("f", "Hamas frees 13 Israeli hostages as Israel releases 39 Palestinian prisoners",
                      "The first exchange under the truce.", NOW - timedelta(hours=1))
        rt = _runtime(engine, embedder, f"{feeds.url}/f.xml", tmp_path)
        await pipeline.poll_feeds(rt, all_feeds=True)
    pipeline.process_pending(rt)
    pipeline.housekeeping(rt, NOW + timedelta(hours=1))
    with Session(engine) as s:
        assert s.scalars(select(Story.closed)).all() == [False]
    pipeline.housekeeping(rt, NOW + timedelta(hours=rt.config.settings.story_window_h + 1))
    with Session(engine) as s:
        assert s.scalars(select(Story.closed)).all() == [True]


@pytest.mark.parametrize("a_lease_s", [pipeline.PROCESS_LEASE_S, 0.0], ids=["claim-held", "claim-lapsed"])
async def test_two_processes_on_one_batch_write_it_once(engine: Engine, embedder, tmp_path: Path,
                                                        a_lease_s: float) -> None:
    """Process A has claimed and encoded a batch but not written it when process B runs.
    claim-held: B finds nothing to do and encodes nothing; A writes the batch.
    claim-lapsed (A stalled past its claim): B processes the batch and A's writes skip it.
    Either way: no error, no duplicate matches or alerts."""
    with LiveFeedServer() as feeds:
        for i in range(6):
            feeds.publish("f", f"Hamas frees {i + 10} hostages as Israel releases Palestinian prisoners",
                          "Exchange under the truce.", NOW - timedelta(minutes=10 * i))
        url = f"{feeds.url}/f.xml"
        b = _runtime(engine, embedder, url, tmp_path)
        await pipeline.poll_feeds(b, all_feeds=True)
    b_done, armed, a_encoded = threading.Event(), threading.Event(), threading.Event()
    b_encoded: list[str] = []

    class WaitsForB:  # A's embedder: encodes items, then lets B run to the end before A writes
        model_id, dim = embedder.model_id, embedder.dim

        def encode(self, texts):  # type: ignore[no-untyped-def]
            vectors = embedder.encode(texts)
            if armed.is_set():  # not while the runtime encodes the topics' prototypes
                a_encoded.set()
                assert b_done.wait(60)
            return vectors

    class CountsForB:
        model_id, dim = embedder.model_id, embedder.dim

        def encode(self, texts):  # type: ignore[no-untyped-def]
            b_encoded.extend(texts)
            return embedder.encode(texts)

    a = _runtime(engine, WaitsForB(), url, tmp_path)
    b = dataclasses.replace(b, embedder=CountsForB())
    armed.set()
    result: list[pipeline.ProcessReport] = []
    t = threading.Thread(target=lambda: result.append(pipeline.process_pending(a, lease_s=a_lease_s)))
    t.start()
    assert a_encoded.wait(60)  # A holds the batch, encoded, unwritten
    b_report = pipeline.process_pending(b)
    b_done.set()
    t.join(120)
    (a_report,) = result
    writer = a_report if a_lease_s else b_report
    assert writer.items == 6 and writer.matches > 0
    if a_lease_s:
        assert b_report.items == 0 and b_encoded == []  # no work done twice
    else:
        assert a_report.items == 0 and a_report.matches == 0
    with Session(engine) as s:
        assert len(s.scalars(select(Match)).all()) == writer.matches
        # one Alert row per decision the writer made (new_story, update, repeat or held), none twice
        assert len(s.scalars(select(Alert)).all()) == sum(writer.decisions.values())
        assert s.scalar(select(Item).where(Item.processed_at.is_(None))) is None


async def test_a_failed_batch_is_given_back_at_once(engine: Engine, embedder, tmp_path: Path) -> None:
    with LiveFeedServer() as feeds:
        feeds.publish("f", "Hamas frees 13 hostages as Israel releases 39 Palestinian prisoners", "Truce.",
                      NOW - timedelta(minutes=5))
        rt = _runtime(engine, embedder, f"{feeds.url}/f.xml", tmp_path)
        await pipeline.poll_feeds(rt, all_feeds=True)

    class Fails:
        model_id, dim = embedder.model_id, embedder.dim

        def encode(self, texts):  # type: ignore[no-untyped-def]
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        pipeline.process_pending(dataclasses.replace(rt, embedder=Fails()))
    assert pipeline.process_pending(rt).items == 1  # not held back until the claim lapses
