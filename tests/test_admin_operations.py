"""The feeds, deliveries and subscribers pages through an in-process client, against real local servers (a
feed server for the test fetch, a webhook receiver for the test message) and a real database."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from adminfixtures import CONFIG, PASSWORD, admin_app, client, csrf_of, login, write_config
from deliveryfixtures import T0, World
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.app.admin import auth
from monitor.config import load_config
from monitor.lab.receiver import CaptureReceiver
from monitor.storage import db
from monitor.storage.tables import Alert, AuditEntry, Delivery, Digest, SubscriberEvent, Subscription

pytestmark = pytest.mark.databases("sqlite", "postgresql")

RSS = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>Local wire</title><link>https://local.example/</link>'
       b"<description>x</description><item><title>Truce extended by two days</title><guid>a1</guid>"
       b"<link>https://local.example/a1</link></item></channel></rss>")
OPML = b"""<?xml version="1.0"?><opml version="2.0"><head><title>x</title></head><body>
<outline text="Wire" xmlUrl="https://wire.example.org/rss.xml"/>
<outline text="Other" xmlUrl="https://other.example.org/feed"/></body></opml>"""


@pytest.fixture
def alice(engine: Engine) -> Engine:
    auth.create_user(engine, "alice", PASSWORD)
    return engine


def _audit(engine: Engine) -> list[tuple[str, str]]:
    with Session(engine) as s:
        return [(a.action, a.target) for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]


async def test_feeds_test_fetch_add_disable_and_opml(alice: Engine, tmp_path: Path, feed_server) -> None:  # type: ignore[no-untyped-def]
    path = write_config(tmp_path, CONFIG.replace("[settings]\n", "[settings]\nallow_private_networks = true\n"))
    feed_server.route("/rss.xml", body=RSS, headers={"Content-Type": "application/rss+xml"})
    url = feed_server.url("/rss.xml")
    app, _ctx = admin_app(alice, path)
    async with client(app) as c:
        await login(c)
        page = await c.get("/admin/feeds")
        assert page.status_code == 200 and "Wire" in page.text and "not polled yet" in page.text
        token = csrf_of(page.text)
        base_sha = re.search(r'name="base_sha" value="(\w+)"', page.text).group(1)  # type: ignore[union-attr]
        # Test fetch: what the feed returns, nothing written.
        r = await c.post("/admin/feeds", data={"csrf_token": token, "url": url, "name": "", "interval": "",
                                                "action": "test", "base_sha": base_sha})
        assert r.status_code == 200 and "Local wire" in r.text and "Truce extended by two days" in r.text
        assert url not in path.read_text()
        # A broken one says why, in words.
        r = await c.post("/admin/feeds", data={"csrf_token": token, "url": feed_server.url("/missing.xml"),
                                                "action": "test"})
        assert "404" in r.text
        r = await c.post("/admin/feeds", data={"csrf_token": token, "url": "ftp://nope", "action": "add"})
        assert r.status_code == 422 and "must be an http:// or https:// URL" in r.text
        # Add, then disable.
        r = await c.post("/admin/feeds", data={"csrf_token": token, "url": url, "name": "Local", "interval": "",
                                                "action": "add", "base_sha": base_sha})
        assert r.status_code == 303
        assert [f.url for f in load_config(path).feeds] == ["https://wire.example.org/rss.xml", url]
        r = await c.post("/admin/feeds/enabled", data={"csrf_token": token, "url": url, "enabled": "false"})
        assert r.status_code == 303 and not load_config(path).feeds[1].enabled
        # OPML: export lists the feeds; import adds only the new ones.
        exported = (await c.get("/admin/feeds/opml")).text
        assert url in exported and "https://wire.example.org/rss.xml" in exported
        r = await c.post("/admin/feeds/opml", data={"csrf_token": token}, files={"opml": ("f.opml", OPML, "text/xml")})
        assert r.status_code == 303
        assert [f.url for f in load_config(path).feeds][-1] == "https://other.example.org/feed"
    assert "# Test configuration. This comment must survive every save." in path.read_text()
    assert [a for a, _t in _audit(alice)] == ["feed.add", "feed.disable", "feed.import"]


def _failed_delivery(engine: Engine) -> tuple[int, int, int]:
    now = db.naive_utc(datetime(2023, 11, 24, tzinfo=UTC))
    with db.write_transaction(engine) as s:
        sub = Subscription(kind="webhook", target="team", cursor_alert_id=0, created_at=now, disabled_at=now,
                           disabled_reason="410 Gone from the receiver")
        s.add(sub)
        s.flush()
        dg = Digest(subscription_id=sub.id, from_alert_id=0, to_alert_id=3, alert_count=3, created_at=now)
        s.add(dg)
        s.flush()
        d = Delivery(digest_id=dg.id, subscription_id=sub.id, channel="webhook", target="team", part=1,
                     idempotency_key="msg_1", payload=b"{}", status="failed", attempts=6, next_attempt_at=now,
                     last_error="webhook channel 'team': refused with 400", created_at=now)
        s.add(d)
        # Held back when the receiver said 410: re-enabling the channel sends it again.
        held = Delivery(digest_id=dg.id, subscription_id=sub.id, channel="webhook", target="team", part=2,
                        idempotency_key="msg_2", payload=b"{}", status="cancelled", attempts=1, next_attempt_at=now,
                        last_error="channel disabled: 410 Gone from the receiver", created_at=now)
        s.add(held)
        s.flush()
        return d.id, held.id, sub.id


async def test_deliveries_retry_reenable_and_test_message(alice: Engine, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with CaptureReceiver() as receiver:
        monkeypatch.setenv("TEAM_URL", f"{receiver.url}/hook")
        monkeypatch.setenv("TEAM_SECRET", "whsec_dGVzdHNlY3JldA==")
        path = write_config(tmp_path, CONFIG.replace("[settings]\n", "[settings]\nallow_private_networks = true\n")
                            + '\n[[channels]]\nname = "team"\nkind = "webhook"\nurl_env = "TEAM_URL"\n'
                              'secret_env = "TEAM_SECRET"\n')
        delivery_id, held_id, sub_id = _failed_delivery(alice)
        app, _ctx = admin_app(alice, path)
        async with client(app) as c:
            await login(c)
            page = await c.get("/admin/deliveries")
            assert "refused with 400" in page.text and "410 Gone" in page.text
            token = csrf_of(page.text)
            r = await c.post(f"/admin/deliveries/{delivery_id}/retry", data={"csrf_token": token})
            assert r.status_code == 303
            r = await c.post(f"/admin/subscriptions/{sub_id}/enable", data={"csrf_token": token})
            assert r.status_code == 303
            r = await c.post("/admin/channels/test", data={"csrf_token": token, "channel": "team"})
            assert r.status_code == 200 and "delivered: the receiver answered 200" in r.text
        got = receiver.snapshot()
        assert len(got) == 1 and got[0].path == "/hook" and "webhook-signature" in {k.lower() for k in got[0].headers}
    with Session(alice) as s:
        d = s.get(Delivery, delivery_id)
        sub = s.get(Subscription, sub_id)
        # Queued with a fresh retry span (as `monitor deliveries retry`): a days-old failure is not given up
        # on again at its first transient error.
        assert d is not None and d.status == "pending" and d.requeued_at is not None
        assert sub is not None and sub.disabled_at is None
        held = s.get(Delivery, held_id)
        assert held is not None and held.status == "pending"  # what the 410 held back goes out again
    assert [a for a, _t in _audit(alice)] == ["delivery.retry", "subscription.re-enabled", "channel.test"]


async def test_subscribers_add_edit_resubscribe(alice: Engine, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    app, _ctx = admin_app(alice, path)
    async with client(app) as c:
        await login(c)
        page = await c.get("/admin/subscribers")
        assert "analyst@example.org" in page.text
        token = csrf_of(page.text)
        r = await c.post("/admin/subscribers", data={"csrf_token": token, "email": "not-an-address", "topics": "",
                                                      "cadence": "daily", "daily_at": "08:00", "timezone": ""})
        assert r.status_code == 422 and "plain e-mail address" in r.text
        r = await c.post("/admin/subscribers", data={"csrf_token": token, "email": "new@example.org",
                                                      "topics": "weather", "cadence": "hourly", "daily_at": "08:00",
                                                      "timezone": "Europe/London", "name": "New"})
        assert r.status_code == 303, r.text
        r = await c.post("/admin/subscribers", data={"csrf_token": token, "editing": "new@example.org",
                                                      "email": "new@example.org", "topics": "weather\nhostage-talks",
                                                      "cadence": "daily", "daily_at": "07:30",
                                                      "timezone": "Mars/Olympus"})
        assert r.status_code == 422 and "unknown timezone" in r.text
        subs = {x.email: x for x in load_config(path).subscribers}
        assert subs["new@example.org"].cadence == "hourly" and subs["new@example.org"].topics == ["weather"]
        # Resubscribe someone who unsubscribed (the database's state, not the file's).
        now = db.naive_utc(datetime(2023, 11, 24, tzinfo=UTC))
        with db.write_transaction(alice) as s:
            row = Subscription(kind="email", target="analyst@example.org", cursor_alert_id=0, created_at=now,
                               unsubscribed_at=now)
            s.add(row)
            s.flush()
            sub_id = row.id
        # Alerted while the address was unsubscribed: resubscribing must not send it all at once.
        world = World(alice)
        world.new_story("s-meanwhile", "weather", "Storm warning while away", at=T0)
        with Session(alice) as s:
            newest_alert = s.scalar(select(func.max(Alert.id)))
        page = await c.get("/admin/subscribers")
        assert "unsubscribed" in page.text
        r = await c.post(f"/admin/subscriptions/{sub_id}/enable", data={"csrf_token": token, "resubscribe": "1",
                                                                       "back": "subscribers"})
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/subscribers")
    with Session(alice) as s:
        sub = s.get(Subscription, sub_id)
        assert sub is not None and sub.unsubscribed_at is None and sub.cursor_alert_id == newest_alert
        assert [e.action for e in s.scalars(select(SubscriberEvent).where(SubscriberEvent.subscription_id == sub_id))] \
            == ["resubscribe"]
    assert [a for a, _t in _audit(alice)] == ["subscriber.add", "subscription.resubscribed"]
