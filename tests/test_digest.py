"""Digests: schedules per cadence, the per-subscription cursor (nothing twice, nothing skipped, atomic with
the outbox rows), topic filters, grouping, and unsubscribes overriding feeds.toml."""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime, time, timedelta
from email import message_from_bytes, policy

import pytest
from concurrently import while_holding
from deliveryfixtures import T0, World, make_config
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.delivery import digest, render
from monitor.records import AlertView
from monitor.storage import db
from monitor.storage.tables import Delivery, Digest, Subscription

pytestmark = pytest.mark.databases("sqlite", "postgresql")

SUBSCRIBERS = """
[[subscribers]]
email = "Ana@Example.org"
name = "Ana"
topics = ["doha-talks"]
cadence = "immediate"

[[subscribers]]
email = "bo@example.org"
cadence = "daily"
daily_at = "08:00"
timezone = "Europe/London"
"""


def spec(cadence: str, daily_at: time = time(8, 0), tz: str = "UTC") -> digest.SubscriptionSpec:
    return digest.SubscriptionSpec(kind="email", target="x@example.org", name=None, topics=("a",), cadence=cadence,
                                   daily_at=daily_at, timezone=tz)


def test_hourly_is_due_on_the_next_full_hour() -> None:
    after = datetime(2026, 11, 24, 9, 59, 59, tzinfo=UTC)
    assert digest.next_due(spec("hourly"), after) == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert digest.next_due(spec("hourly"), datetime(2026, 11, 24, 10, 0, tzinfo=UTC)) == datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    assert digest.next_due(spec("immediate"), after) is None


def test_daily_follows_the_local_clock_across_daylight_saving() -> None:
    london = spec("daily", time(8, 0), "Europe/London")
    # Winter: 08:00 GMT = 08:00 UTC; summer: 08:00 BST = 07:00 UTC.
    assert digest.next_due(london, datetime(2026, 1, 10, 7, 0, tzinfo=UTC)) == datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
    assert digest.next_due(london, datetime(2026, 7, 10, 7, 0, tzinfo=UTC)) == datetime(2026, 7, 11, 7, 0, tzinfo=UTC)
    # Strictly after: at the digest instant the next one is tomorrow.
    assert digest.next_due(london, datetime(2026, 1, 10, 8, 0, tzinfo=UTC)) == datetime(2026, 1, 11, 8, 0, tzinfo=UTC)
    # The night clocks go forward (29 March 2026), a daily time in the skipped hour still fires once that day.
    gap = spec("daily", time(1, 30), "Europe/London")
    due = digest.next_due(gap, datetime(2026, 3, 29, 0, 0, tzinfo=UTC))
    assert due is not None and due.date().isoformat() == "2026-03-29"
    # New York's 08:00 in November (EST) is 13:00 UTC.
    ny = spec("daily", time(8, 0), "America/New_York")
    assert digest.next_due(ny, datetime(2026, 11, 24, 12, 0, tzinfo=UTC)) == datetime(2026, 11, 24, 13, 0, tzinfo=UTC)


def alert_view(alert_id: int, topic: str, story: int, decision: str = "new_story", what: str | None = None) -> AlertView:
    return AlertView(alert_id=alert_id, topic_id=topic, topic_name=topic.upper(), story_id=story,
                     story_title=f"story {story}", decision=decision, title=f"item {alert_id}",  # type: ignore[arg-type]
                     link=None, outlet="o", published_at=T0, what_is_new=what, sources_count=alert_id, first_seen=T0)


def test_grouping_is_topic_then_story_in_alert_order() -> None:
    alerts = [alert_view(3, "b", 10), alert_view(1, "a", 20), alert_view(5, "a", 20, "update", "toll rises"),
              alert_view(4, "a", 30, "update", "new venue")]
    topics = digest.group_alerts(alerts, topic_order=["b", "a"])
    assert [t.topic_id for t in topics] == ["b", "a"]
    a = topics[1]
    assert [s.story_id for s in a.stories] == [20, 30]
    assert a.stories[0].is_new and [u.what_is_new for u in a.stories[0].updates] == ["toll rises"]
    assert not a.stories[1].is_new and a.stories[1].updates[0].alert_id == 4
    assert a.stories[0].sources_count == 5  # the latest (largest) outlet count seen


def deliveries(engine, target: str) -> list[Delivery]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return list(s.scalars(select(Delivery).where(Delivery.target == target).order_by(Delivery.id)))


def test_cursor_sends_each_alert_exactly_once_across_builds_and_restarts(tmp_path, engine) -> None:
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    w = World(engine)
    w.new_story("s1", "doha-talks", "Talks resume in Doha")
    w.alert("s1", "update", what_is_new="Hamas delegation arrives", at=T0 + timedelta(minutes=5))
    w.new_story("i1", "icc", "ICC issues warrant")  # not Ana's topic
    now = T0 + timedelta(minutes=10)

    first = digest.build_due_digests(engine, config, now, secret_key="k")
    assert len(first) == 1  # Ana (immediate); Bo's daily digest is not due yet
    ana = deliveries(engine, "ana@example.org")
    assert len(ana) == 1
    text = message_from_bytes(ana[0].payload, policy=policy.default).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Talks resume in Doha" in text and "Hamas delegation arrives" in text and "ICC issues warrant" not in text

    # Nothing new: no digest, nothing sent twice.
    assert digest.build_due_digests(engine, config, now + timedelta(minutes=1), secret_key="k") == []

    # A "restart": a new engine on the same file sees the cursor and sends only the new alert.
    engine2 = db.make_engine(engine.url.render_as_string(hide_password=False))
    w2 = World(engine2, item_seq=w.item_seq, stories=w.stories)
    w2.alert("s1", "update", title="Ceasefire draft agreed", what_is_new="draft agreed", at=now)
    second = digest.build_due_digests(engine2, config, now + timedelta(minutes=2), secret_key="k")
    assert len(second) == 1
    ana = deliveries(engine2, "ana@example.org")
    assert len(ana) == 2
    text2 = message_from_bytes(ana[1].payload, policy=policy.default).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "draft agreed" in text2 and "Hamas delegation arrives" not in text2
    with Session(engine2) as s:
        rows = list(s.scalars(select(Digest).order_by(Digest.id)))
        assert [(d.from_alert_id, d.to_alert_id, d.alert_count) for d in rows] == [(0, 2, 2), (2, 4, 1)]
    engine2.dispose()


class MeetingRenderer(render.Renderer):
    """Renders an e-mail only once a second builder is rendering too (or `wait_s` passed): without a lock
    on the subscription both builders would read the same cursor and write the same digest."""

    def __init__(self, meeting: threading.Barrier, wait_s: float) -> None:
        super().__init__()
        self.meeting, self.wait_s = meeting, wait_s

    def email(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with contextlib.suppress(threading.BrokenBarrierError):
            self.meeting.wait(self.wait_s)
        return super().email(*args, **kwargs)


def test_two_builders_at_once_write_each_digest_once(tmp_path, engine) -> None:
    """Two processes' digest ticks at the same moment (several workers on one database): each alert goes
    into one digest, whichever process builds it."""
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    World(engine).new_story("s1", "doha-talks", "Talks resume in Doha")
    with db.write_transaction(engine) as s:
        digest.sync_subscriptions(s, config, T0)
    meeting = threading.Barrier(2)
    built: list[list[int]] = []

    def builder() -> None:
        built.append(digest.build_due_digests(engine, config, T0, secret_key="k",
                                              renderer=MeetingRenderer(meeting, wait_s=0.5)))

    threads = [threading.Thread(target=builder) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(len(b) for b in built) == [0, 1]
    assert len(deliveries(engine, "ana@example.org")) == 1


def test_two_processes_adding_the_same_subscriptions_at_once(tmp_path, engine) -> None:
    """Workers started together (or hot-reloading the same feeds.toml edit) sync the same new subscriptions:
    the second waits for the first and finds them, instead of failing on the unique constraint."""
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    second = while_holding(engine, lambda s: digest.sync_subscriptions(s, config, T0),
                           lambda s: len(digest.sync_subscriptions(s, config, T0)))
    assert second == 2
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Subscription)) == 2


def test_daily_digest_waits_for_its_local_time_and_holds_everything_since_the_last(tmp_path, engine) -> None:
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    w = World(engine)
    start = datetime(2026, 7, 1, 5, 0, tzinfo=UTC)  # 06:00 in London (BST)
    digest.build_due_digests(engine, config, start, secret_key="k")  # creates the subscriptions
    w.new_story("s1", "doha-talks", "Talks resume", at=start + timedelta(minutes=1))
    w.new_story("i1", "icc", "ICC ruling", at=start + timedelta(minutes=2))
    assert digest.build_due_digests(engine, config, start + timedelta(minutes=59), secret_key="k") != []  # Ana only
    assert deliveries(engine, "bo@example.org") == []
    # 07:00 UTC = 08:00 London: Bo gets both topics (no filter = every topic).
    built = digest.build_due_digests(engine, config, datetime(2026, 7, 1, 7, 0, tzinfo=UTC), secret_key="k")
    assert len(built) == 1
    bo = deliveries(engine, "bo@example.org")
    assert len(bo) == 1
    with Session(engine) as s:
        sub = s.scalar(select(Subscription).where(Subscription.target == "bo@example.org"))
        assert sub is not None and sub.next_digest_at == datetime(2026, 7, 2, 7, 0)
    # Next day with nothing new: no digest, but the schedule moves on.
    assert digest.build_due_digests(engine, config, datetime(2026, 7, 2, 7, 0, tzinfo=UTC), secret_key="k") == []
    with Session(engine) as s:
        sub = s.scalar(select(Subscription).where(Subscription.target == "bo@example.org"))
        assert sub is not None and sub.next_digest_at == datetime(2026, 7, 3, 7, 0)


def test_a_failed_build_writes_nothing_and_the_next_build_sends_everything(tmp_path, engine) -> None:
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    w = World(engine)
    w.new_story("s1", "doha-talks", "Talks resume")

    class Broken(render.Renderer):
        def email(self, *a, **k):  # type: ignore[no-untyped-def]
            raise RuntimeError("template exploded")

    assert digest.build_due_digests(engine, config, T0, secret_key="k", renderer=Broken()) == []
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Digest)) == 0
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        assert s.scalar(select(Subscription.cursor_alert_id).where(Subscription.target == "ana@example.org")) == 0
    assert len(digest.build_due_digests(engine, config, T0, secret_key="k")) == 1
    assert len(deliveries(engine, "ana@example.org")) == 1


def test_unsubscribed_in_the_database_stays_unsubscribed_while_still_in_feeds_toml(tmp_path, engine) -> None:
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    World(engine).new_story("s1", "doha-talks", "Talks resume")
    with Session(engine) as s, s.begin():
        digest.sync_subscriptions(s, config, T0)
        sub = s.scalar(select(Subscription).where(Subscription.target == "ana@example.org"))
        assert sub is not None
        sub.unsubscribed_at = db.naive_utc(T0)
    with Session(engine) as s, s.begin():
        digest.sync_subscriptions(s, config, T0 + timedelta(hours=1))  # a config reload
    assert digest.build_due_digests(engine, config, T0 + timedelta(hours=1), secret_key="k") == []
    assert deliveries(engine, "ana@example.org") == []


def test_a_new_subscription_starts_with_the_last_day_not_the_whole_history(tmp_path, engine) -> None:
    w = World(engine)
    w.new_story("old", "doha-talks", "Old news", at=T0 - timedelta(days=3))
    w.new_story("new", "doha-talks", "Fresh news", at=T0 - timedelta(hours=2))
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    assert len(digest.build_due_digests(engine, config, T0, secret_key="k")) == 1
    (d,) = deliveries(engine, "ana@example.org")
    text = message_from_bytes(d.payload, policy=policy.default).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Fresh news" in text and "Old news" not in text


def test_channels_get_slack_parts_and_a_webhook_body(tmp_path, engine) -> None:
    config = make_config(tmp_path, """
[[channels]]
name = "newsroom"
kind = "slack"
url_env = "SLACK_URL"

[[channels]]
name = "ingest"
kind = "webhook"
url_env = "HOOK_URL"
secret_env = "HOOK_SECRET"
topics = ["icc"]
""", engine=engine)
    w = World(engine)
    for i in range(80):
        w.new_story(f"s{i}", "doha-talks" if i % 2 else "icc", f"Story number {i} " + "x" * 100)
    built = digest.build_due_digests(engine, config, T0, secret_key="k")
    assert len(built) == 2
    slack = deliveries(engine, "newsroom")
    assert len(slack) >= 2 and [d.part for d in slack] == list(range(1, len(slack) + 1))
    assert len({d.idempotency_key for d in slack}) == len(slack)
    (hook,) = deliveries(engine, "ingest")
    body = json.loads(hook.payload)
    assert body["type"] == "digest.created"
    assert {t["id"] for t in body["data"]["topics"]} == {"icc"} and body["data"]["alert_count"] == 40
    assert hook.idempotency_key.startswith("msg_")


def test_cadence_change_in_feeds_toml_reschedules(tmp_path, engine) -> None:
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    with Session(engine) as s, s.begin():
        digest.sync_subscriptions(s, config, T0)
    changed = make_config(tmp_path, SUBSCRIBERS.replace('cadence = "daily"', 'cadence = "hourly"'))
    with Session(engine) as s, s.begin():
        digest.sync_subscriptions(s, changed, T0)
        sub = s.scalar(select(Subscription).where(Subscription.target == "bo@example.org"))
        assert sub is not None and sub.schedule == "hourly" and sub.next_digest_at == datetime(2026, 11, 24, 7, 0)


def test_preview_names_an_unknown_subscriber_clearly(tmp_path) -> None:
    config = make_config(tmp_path, SUBSCRIBERS)
    with pytest.raises(Exception, match="no subscriber 'nobody@example.org'"):
        digest.find_spec(config, subscriber="nobody@example.org")


def test_a_backlog_beyond_one_digest_goes_out_on_the_next_tick_not_the_next_day(tmp_path, engine) -> None:
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    w = World(engine)
    start = datetime(2026, 7, 1, 5, 0, tzinfo=UTC)
    digest.build_due_digests(engine, config, start, secret_key="k")
    w.story("big", "doha-talks", "Talks")
    for i in range(digest.MAX_ALERTS_PER_DIGEST + 20):
        w.alert("big", "update", title=f"Update {i}", at=start + timedelta(minutes=1))
    at_eight = datetime(2026, 7, 1, 7, 0, tzinfo=UTC)  # 08:00 London
    digest.build_due_digests(engine, config, at_eight, secret_key="k")
    assert len(deliveries(engine, "bo@example.org")) == 1
    # One tick later, the 20 left over are sent: the daily schedule waited for the backlog.
    digest.build_due_digests(engine, config, at_eight + timedelta(seconds=1), secret_key="k")
    with Session(engine) as s:
        counts = sorted(s.scalars(select(Digest.alert_count).join(Subscription, Digest.subscription_id == Subscription.id)
                                  .where(Subscription.target == "bo@example.org")))
    assert counts == [20, digest.MAX_ALERTS_PER_DIGEST]


def test_a_very_long_mail_from_domain_still_gives_a_storable_message_id(tmp_path, engine) -> None:
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    long_from = "Monitor <alerts@" + "newsroom-" * 40 + "example.org>"
    config = config.model_copy(update={"settings": config.settings.model_copy(update={"mail_from": long_from})})
    World(engine).new_story("s1", "doha-talks", "Talks resume in Doha")
    assert digest.build_due_digests(engine, config, T0, secret_key="k")
    (email,) = deliveries(engine, "ana@example.org")
    assert email.idempotency_key.startswith("<") and len(email.idempotency_key) <= 255
