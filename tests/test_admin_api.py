"""The admin JSON API (/api/v1) through an in-process ASGI client, on a real database and a real feeds.toml."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from adminfixtures import TOKEN, admin_app, client, write_config
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.storage.tables import AuditEntry, ConfigRevision

pytestmark = pytest.mark.databases("sqlite", "postgresql")
AUTH = {"Authorization": f"Bearer {TOKEN}"}

NEW_TOPIC = {"id": "icc-warrants", "name": "ICC warrants", "description": "The International Criminal Court",
             "examples": ["ICC prosecutor seeks arrest warrants"], "threshold": 0.5}


def _topics(path: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return {t["id"]: t for t in tomllib.loads(path.read_text())["topics"]}


async def test_create_edit_delete_a_topic_writes_feeds_toml_with_comments_and_audits(engine: Engine,
                                                                                     tmp_path: Path) -> None:
    path = write_config(tmp_path)
    app, _ctx = admin_app(engine, path)
    async with client(app) as c:
        r = await c.post("/api/v1/topics", json=NEW_TOPIC, headers=AUTH)
        assert r.status_code == 201, r.text
        assert _topics(path)["icc-warrants"]["examples"] == ["ICC prosecutor seeks arrest warrants"]

        r = await c.get("/api/v1/topics/icc-warrants", headers=AUTH)
        assert r.status_code == 200 and r.json()["name"] == "ICC warrants"

        edited = {**NEW_TOPIC, "counterexamples": ["ICC judges elect a new president"], "threshold": 0.55}
        r = await c.put("/api/v1/topics/icc-warrants", json=edited, headers=AUTH)
        assert r.status_code == 200, r.text
        assert 'counterexamples: + "ICC judges elect a new president"' in r.json()["diff"]
        assert "threshold: 0.5 -> 0.55" in r.json()["diff"]
        t = _topics(path)["icc-warrants"]
        assert t["counterexamples"] == ["ICC judges elect a new president"] and t["threshold"] == 0.55

        r = await c.delete("/api/v1/topics/icc-warrants", headers=AUTH)
        assert r.status_code == 204
        assert "icc-warrants" not in _topics(path)
        assert (await c.get("/api/v1/topics/icc-warrants", headers=AUTH)).status_code == 404

    text = path.read_text()
    assert "# Test configuration. This comment must survive every save." in text
    assert "# an inline comment that must survive too" in text
    assert "# the first example" in text  # untouched topics keep even their comments inside arrays
    with Session(engine) as s:
        actions = [(a.actor, a.action, a.target) for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
        revisions = s.scalars(select(ConfigRevision).order_by(ConfigRevision.id)).all()
    assert actions == [("api-token", "topic.create", "icc-warrants"), ("api-token", "topic.update", "icc-warrants"),
                       ("api-token", "topic.delete", "icc-warrants")]
    assert len(revisions) == 3 and revisions[-1].text == text


async def test_invalid_input_is_422_naming_the_field(engine: Engine, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    before = path.read_text()
    app, _ctx = admin_app(engine, path)
    async with client(app) as c:
        r = await c.post("/api/v1/topics", json={**NEW_TOPIC, "threshold": 1.7}, headers=AUTH)
        assert r.status_code == 422
        assert ["body", "threshold"] in [e["loc"] for e in r.json()["detail"]]

        r = await c.post("/api/v1/topics", json={**NEW_TOPIC, "examples": ["  "]}, headers=AUTH)
        assert r.status_code == 422
        assert any(e["loc"] == ["body", "examples"] and "at least one example" in e["msg"] for e in r.json()["detail"])

        r = await c.post("/api/v1/topics", json={**NEW_TOPIC, "id": "Not A Slug"}, headers=AUTH)
        assert r.status_code == 422 and ["body", "id"] in [e["loc"] for e in r.json()["detail"]]

        r = await c.post("/api/v1/topics", json={**NEW_TOPIC, "colour": "red"}, headers=AUTH)
        assert r.status_code == 422 and ["body", "colour"] in [e["loc"] for e in r.json()["detail"]]

        # Valid on its own, invalid in the whole configuration: a subscriber still names the topic.
        r = await c.delete("/api/v1/topics/hostage-talks", headers=AUTH)
        assert r.status_code == 422 and "unknown topic" in r.json()["detail"][0]["msg"]

        # The id of an existing topic cannot be taken twice, nor changed.
        r = await c.post("/api/v1/topics", json={**NEW_TOPIC, "id": "weather"}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "id"]
        r = await c.put("/api/v1/topics/weather", json={**NEW_TOPIC, "id": "weather-2"}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "id"]
    assert path.read_text() == before


async def test_401_without_a_valid_token(engine: Engine, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    before = path.read_text()
    app, _ctx = admin_app(engine, path)
    async with client(app) as c:
        for method, url, body in (("GET", "/api/v1/topics", None), ("POST", "/api/v1/topics", NEW_TOPIC),
                                  ("DELETE", "/api/v1/topics/weather", None)):
            for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
                r = await c.request(method, url, json=body, headers=headers)
                assert r.status_code == 401, (method, url, headers)
                assert r.headers["www-authenticate"] == "Bearer"
        # The OpenAPI document maps every operation: it needs the token too; no CDN-backed docs pages are served.
        assert (await c.get("/openapi.json")).status_code == 401
        doc = (await c.get("/openapi.json", headers=AUTH)).json()
        assert {"/api/v1/topics", "/api/v1/topics/{topic_id}", "/api/v1/topics/{topic_id}/backtest"} <= set(doc["paths"])
        assert (await c.get("/docs")).status_code == 404
    assert path.read_text() == before


async def test_no_token_configured_means_no_token_works(engine: Engine, tmp_path: Path) -> None:
    app, ctx = admin_app(engine, write_config(tmp_path))
    ctx.env = {}
    async with client(app) as c:
        assert (await c.get("/api/v1/topics", headers={"Authorization": "Bearer "})).status_code == 401
        assert (await c.get("/api/v1/topics", headers={"Authorization": "Bearer x"})).status_code == 401


async def test_feed_and_delivery_operations(engine: Engine, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    app, _ctx = admin_app(engine, path)
    async with client(app) as c:
        r = await c.post("/api/v1/feeds", json={"url": "https://new.example.org/rss", "name": "New"}, headers=AUTH)
        assert r.status_code == 201, r.text
        r = await c.post("/api/v1/feeds", json={"url": "https://new.example.org/rss"}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "url"]
        r = await c.post("/api/v1/feeds", json={"url": "gopher://x"}, headers=AUTH)
        assert r.status_code == 422 and ["body", "url"] in [e["loc"] for e in r.json()["detail"]]
        r = await c.put("/api/v1/feeds/enabled", json={"url": "https://new.example.org/rss", "enabled": False},
                        headers=AUTH)
        assert r.status_code == 200
        assert (await c.put("/api/v1/feeds/enabled", json={"url": "https://nope.example/", "enabled": False},
                            headers=AUTH)).status_code == 404
        assert (await c.post("/api/v1/deliveries/12345/retry", headers=AUTH)).status_code == 409
        assert (await c.post("/api/v1/subscriptions/12345/enable", headers=AUTH)).status_code == 404
        assert (await c.post("/api/v1/feeds", json={"url": "https://x.example/"})).status_code == 401
    feeds = tomllib.loads(path.read_text())["feeds"]
    assert feeds[-1] == {"url": "https://new.example.org/rss", "name": "New", "enabled": False}
    assert "# Test configuration. This comment must survive every save." in path.read_text()
    with Session(engine) as s:
        actions = [a.action for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert actions == ["feed.add", "feed.disable"]


async def test_subscribers_list_add_edit_resubscribe_audited_like_the_page(engine: Engine, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from monitor.app import pipeline
    from monitor.config import load_config
    from monitor.storage.tables import Subscription

    path = write_config(tmp_path)
    app, _ctx = admin_app(engine, path)
    async with client(app) as c:
        listed = (await c.get("/api/v1/subscribers", headers=AUTH)).json()
        assert [(s["email"], s["cadence"], s["state"]) for s in listed] == [("analyst@example.org", "daily",
                                                                              "not synced yet")]
        r = await c.post("/api/v1/subscribers", headers=AUTH,
                         json={"email": "desk@example.org", "topics": ["weather"], "cadence": "hourly"})
        assert r.status_code == 201, r.text
        r = await c.patch("/api/v1/subscribers/Analyst@example.org", headers=AUTH,
                          json={"topics": ["hostage-talks", "weather"], "daily_at": "07:30",
                                "timezone": "Europe/London"})
        assert r.status_code == 200, r.text
        assert 'topics: + "weather"' in r.json()["diff"] and 'timezone: null -> "Europe/London"' in r.json()["diff"]
        subs = {s.email: s for s in load_config(path).subscribers}
        assert subs["desk@example.org"].topics == ["weather"] and subs["desk@example.org"].cadence == "hourly"
        analyst = subs["analyst@example.org"]
        assert (analyst.topics, analyst.cadence, analyst.daily_at.strftime("%H:%M"), analyst.timezone) == (
            ["hostage-talks", "weather"], "daily", "07:30", "Europe/London")
        assert "# Test configuration. This comment must survive every save." in path.read_text()

        # The service syncs the file into the database; the reader unsubscribes; an admin resubscribes them.
        pipeline.sync_config(engine, load_config(path, env={}), datetime.now(UTC))
        with Session(engine) as s, s.begin():
            s.scalars(select(Subscription).where(Subscription.target == "analyst@example.org")).one() \
                .unsubscribed_at = datetime(2024, 1, 1)
        states = {s["email"]: s["state"] for s in (await c.get("/api/v1/subscribers", headers=AUTH)).json()}
        assert states == {"analyst@example.org": "unsubscribed", "desk@example.org": "active"}
        r = await c.post("/api/v1/subscribers/analyst@example.org/resubscribe", headers=AUTH)
        assert r.status_code == 200 and "resubscribed" in r.json()["done"]
        states = {s["email"]: s["state"] for s in (await c.get("/api/v1/subscribers", headers=AUTH)).json()}
        assert states["analyst@example.org"] == "active"
        assert (await c.post("/api/v1/subscribers/nobody@example.org/resubscribe", headers=AUTH)).status_code == 404
        assert (await c.patch("/api/v1/subscribers/nobody@example.org", json={"cadence": "daily"},
                              headers=AUTH)).status_code == 404

        doc = (await c.get("/openapi.json", headers=AUTH)).json()
        assert {"/api/v1/subscribers", "/api/v1/subscribers/{email}",
                "/api/v1/subscribers/{email}/resubscribe"} <= set(doc["paths"])
        assert {"get", "post"} <= set(doc["paths"]["/api/v1/subscribers"])
        assert "patch" in doc["paths"]["/api/v1/subscribers/{email}"]
    with Session(engine) as s:
        audit = [(a.actor, a.action, a.target) for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert audit == [("api-token", "subscriber.add", "desk@example.org"),
                     ("api-token", "subscriber.update", "analyst@example.org"),
                     ("api-token", "subscription.resubscribed", "email analyst@example.org")]


async def test_subscriber_input_errors_are_422_naming_the_field_and_no_token_is_401(engine: Engine,
                                                                                  tmp_path: Path) -> None:
    path = write_config(tmp_path)
    before = path.read_text()
    app, _ctx = admin_app(engine, path)
    new = {"email": "desk@example.org", "topics": ["weather"]}
    async with client(app) as c:
        for body, field in (({**new, "email": "not an address"}, "email"),
                            ({**new, "email": "analyst@example.org"}, "email"),  # subscribed already
                            ({**new, "topics": ["no-such-topic"]}, "topics"),
                            ({**new, "cadence": "weekly"}, "cadence"),
                            ({**new, "daily_at": "25:00"}, "daily_at"),
                            ({**new, "timezone": "Mars/Olympus"}, "timezone"),
                            ({**new, "colour": "red"}, "colour")):
            r = await c.post("/api/v1/subscribers", json=body, headers=AUTH)
            assert r.status_code == 422, (body, r.text)
            assert ["body", field] in [e["loc"] for e in r.json()["detail"]], (body, r.json())
        for body, field in (({"topics": ["no-such-topic"]}, "topics"), ({"cadence": "weekly"}, "cadence"),
                            ({"daily_at": "8 o'clock"}, "daily_at"), ({"timezone": "Mars/Olympus"}, "timezone"),
                            ({"email": "other@example.org"}, "email")):
            r = await c.patch("/api/v1/subscribers/analyst@example.org", json=body, headers=AUTH)
            assert r.status_code == 422, (body, r.text)
            assert ["body", field] in [e["loc"] for e in r.json()["detail"]], (body, r.json())
        for method, url, body in (("GET", "/api/v1/subscribers", None), ("POST", "/api/v1/subscribers", new),
                                  ("PATCH", "/api/v1/subscribers/analyst@example.org", {"cadence": "hourly"}),
                                  ("POST", "/api/v1/subscribers/analyst@example.org/resubscribe", None)):
            for headers in ({}, {"Authorization": "Bearer wrong-token"}):
                r = await c.request(method, url, json=body, headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, url, headers)
    assert path.read_text() == before
    with Session(engine) as s:
        assert s.scalars(select(AuditEntry)).first() is None


async def test_the_test_fetch_and_the_channel_test_refuse_private_addresses(engine: Engine, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                            feed_server, monkeypatch) -> None:
    """With allow_private_networks off (the default), the admin's test fetch and channel test reach no private
    address: loopback by IP, name and IPv4-mapped IPv6, 0.0.0.0, and the cloud metadata address."""
    import asyncio

    from deliveryfixtures import http_receiver

    from monitor.app.admin import operations
    from monitor.config import load_config

    feed_server.route("/feed.xml", body=b"<rss version='2.0'><channel><title>Private</title></channel></rss>")
    port = feed_server.port
    path = write_config(tmp_path)
    app, _ctx = admin_app(engine, path)
    async with client(app) as c:
        for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "0.0.0.0", "169.254.169.254"):
            r = await c.post("/api/v1/feeds/test", json={"url": f"http://{host}:{port}/feed.xml"}, headers=AUTH)
            assert r.status_code == 200 and r.json()["status"] == "error" and r.json()["title"] is None, (host, r.text)
            assert "private" in (r.json()["error"] or "").lower(), (host, r.json()["error"])
    assert feed_server.requests_for("/feed.xml") == []
    with http_receiver() as rx:
        text = path.read_text() + ('\n[[channels]]\nname = "ops"\nkind = "webhook"\nurl_env = "OPS_URL"\n'
                                   'secret_env = "OPS_SECRET"\n')
        path.write_text(text)
        monkeypatch.setenv("OPS_URL", rx.url)
        monkeypatch.setenv("OPS_SECRET", "s" * 32)
        answer = await asyncio.to_thread(operations.send_test_message, load_config(path), "ops", datetime.now(UTC))
        assert answer.startswith("not delivered") and "private" in answer.lower(), answer
        assert rx.requests == []


ODD_TOPIC = {"id": "pow-swaps", "name": "POW swaps", "description": "Prisoner exchanges between Ukraine and Russia",
             "examples": ["Ukraine and Russia swap prisoners of war", "Kyiv and Moscow exchange bodies of soldiers",
                          "Russia says 95 servicemen returned from Ukrainian captivity",
                          "Azovstal defenders freed in prisoner swap"],
             "require_any": ["Ukraine", "Ukrainian", "Russia", "Kyiv", "Moscow"]}


async def test_an_example_without_the_keywords_is_saved_with_a_warning_naming_it(engine: Engine, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                                embedder) -> None:
    from monitor.app.admin.backtest import Backtester
    from monitor.config import Settings

    path = write_config(tmp_path)
    tester = Backtester(engine, embedder, Settings())
    app, _ctx = admin_app(engine, path, backtester=lambda: tester)
    async with client(app) as c:
        r = await c.post("/api/v1/topics/new/backtest", json={"topic": ODD_TOPIC, "days": 3}, headers=AUTH)
        assert r.status_code == 200, r.text
        [preview] = r.json()["warnings"]
        assert preview.startswith("topics['pow-swaps'].examples[3] ('Azovstal defenders freed in prisoner swap') "
                                  "contains none of require_any")
        r = await c.post("/api/v1/topics", json=ODD_TOPIC, headers=AUTH)
        assert r.status_code == 201, r.text  # valid: saved, not refused
        assert r.json()["warnings"] == [preview]
        assert _topics(path)["pow-swaps"]["examples"][3] == "Azovstal defenders freed in prisoner swap"
        got = await c.get("/api/v1/topics/pow-swaps", headers=AUTH)
        assert got.status_code == 200 and got.json()["warnings"] == [preview], got.text
        r = await c.post("/api/v1/topics/pow-swaps/backtest", json={"topic": got.json(), "days": 3}, headers=AUTH)
        assert r.status_code == 200 and r.json()["warnings"] == [preview], r.text
        # the GET answer sent back with the example fixed: its (stale) warnings are ignored, never saved
        fixed = {**got.json(), "examples": [*ODD_TOPIC["examples"][:3], "Azovstal defenders freed in Ukraine swap"]}
        r = await c.put("/api/v1/topics/pow-swaps", json=fixed, headers={**AUTH, "If-Match": got.headers["etag"]})
        assert r.status_code == 200 and r.json()["warnings"] == [], r.text
        assert "warnings" not in _topics(path)["pow-swaps"] and "warnings" not in r.json()["diff"]
        assert (await c.get("/api/v1/topics/pow-swaps", headers=AUTH)).json()["warnings"] == []
