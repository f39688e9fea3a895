"""Disabling a topic (`enabled = false`): it stays in feeds.toml and in the admin pages, matches nothing in the
pipeline, and matches again once enabled; set from the topic editor's checkbox and from the API."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from adminfixtures import PASSWORD, TOKEN, admin_app, client, csrf_of, login, write_config
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.app import pipeline
from monitor.app.admin import auth, configfile, forms
from monitor.clock import ManualClock
from monitor.config import load_config
from monitor.lab.receiver import LiveFeedServer
from monitor.storage.tables import Alert, AuditEntry, Match

pytestmark = pytest.mark.databases("sqlite", "postgresql")

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2023, 11, 24, 12, 0, tzinfo=UTC)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOPIC = "prisoner-exchange"


def _config_text(engine: Engine, feed_url: str, tmp_path: Path) -> str:
    """A feeds.toml with one live feed and the shipped prisoner-exchange topic (written as the pages write)."""
    url = engine.url.render_as_string(hide_password=False)
    text = (f'# A comment that every save keeps.\n[settings]\ndatabase_url = "{url}"\nallow_private_networks = true\n'
            f'outbox_dir = "{tmp_path / "outbox"}"\n\n[[feeds]]\nurl = "{feed_url}"\n')
    topic = load_config(ROOT / "feeds.toml", env={}).topic(TOPIC)
    return configfile.upsert_entry(text, "topics", "id", TOPIC, topic)


def _matches(engine: Engine) -> tuple[int, int]:
    with Session(engine) as s:
        return (s.scalar(select(func.count()).select_from(Match).where(Match.topic_id == TOPIC)) or 0,
                s.scalar(select(func.count()).select_from(Alert).where(Alert.topic_id == TOPIC)) or 0)


async def test_a_disabled_topic_matches_nothing_and_matches_again_once_enabled(engine: Engine, embedder,  # type: ignore[no-untyped-def]
                                                                              tmp_path: Path) -> None:
    with LiveFeedServer() as feeds:
        path = tmp_path / "feeds.toml"
        path.write_text(_config_text(engine, f"{feeds.url}/f.xml", tmp_path), encoding="utf-8")
        app, _ctx = admin_app(engine, path)
        async with client(app) as c:
            r = await c.put(f"/api/v1/topics/{TOPIC}/enabled", json={"enabled": False}, headers=AUTH)
            assert r.status_code == 200, r.text
            # Still in the file and in the API's list, marked disabled.
            assert tomllib.loads(path.read_text())["topics"][0]["enabled"] is False
            listed = {t["id"]: t for t in (await c.get("/api/v1/topics", headers=AUTH)).json()}
            assert listed[TOPIC]["enabled"] is False

            rt = pipeline.build_runtime(engine, load_config(path, env={}), embedder, ManualClock(NOW),
                                        signing_key="k")
            feeds.publish("f", "Hamas frees 13 Israeli hostages as Israel releases 39 Palestinian prisoners",
                          "The first exchange under the truce took place on Friday.", NOW - timedelta(hours=2))
            assert len((await pipeline.poll_feeds(rt, all_feeds=True)).new_items) == 1
            report = pipeline.process_pending(rt)
            assert report.items == 1 and report.matches == 0
            assert _matches(engine) == (0, 0)

            r = await c.put(f"/api/v1/topics/{TOPIC}/enabled", json={"enabled": True}, headers=AUTH)
            assert r.status_code == 200, r.text
            assert "enabled" not in tomllib.loads(path.read_text())["topics"][0]  # the default is not written
            rt.reload(load_config(path, env={}))  # what the service's file watcher does after a save
            feeds.publish("f", "Second group of Israeli hostages freed in exchange for Palestinian prisoners",
                          "Thirteen more hostages were released on Saturday.", NOW - timedelta(hours=1))
            assert len((await pipeline.poll_feeds(rt, all_feeds=True)).new_items) == 1
            report = pipeline.process_pending(rt)
            assert report.items == 1 and report.matches == 1
            assert _matches(engine) == (1, 1)

            assert (await c.put("/api/v1/topics/nope/enabled", json={"enabled": False},
                                headers=AUTH)).status_code == 404
            r = await c.put(f"/api/v1/topics/{TOPIC}/enabled", json={"enabled": "sometimes"}, headers=AUTH)
            assert r.status_code == 422 and ["body", "enabled"] in [e["loc"] for e in r.json()["detail"]]
            assert (await c.put(f"/api/v1/topics/{TOPIC}/enabled", json={"enabled": False})).status_code == 401
    assert "# A comment that every save keeps." in path.read_text()
    with Session(engine) as s:
        audit = [(a.actor, a.action, a.target, a.diff) for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert audit == [("api-token", "topic.disable", TOPIC, "enabled: true -> false"),
                     ("api-token", "topic.enable", TOPIC, "enabled: false -> true")]


def _editor_form(html: str, topic_id: str, path: Path, **values: str) -> dict[str, str]:
    """What the browser posts for the saved topic, with the box as the page shows it unless `values` say."""
    form = forms.form_values(load_config(path).topic(topic_id), forms.TOPIC_FIELDS)
    form.pop("enabled")
    if re.search(r'<input id="f-enabled" type="checkbox" name="enabled" checked>', html):
        form["enabled"] = "on"
    form.update(values)
    form["csrf_token"] = csrf_of(html)
    form["base_sha"] = re.search(r'name="base_sha" value="(\w+)"', html).group(1)  # type: ignore[union-attr]
    return {k: v for k, v in form.items() if v is not None}


async def test_the_editor_checkbox_disables_and_enables_and_the_list_shows_it(engine: Engine, tmp_path: Path) -> None:
    auth.create_user(engine, "alice", PASSWORD)
    path = write_config(tmp_path)
    app, _ctx = admin_app(engine, path)
    async with client(app) as c:
        await login(c)
        # A new topic's box is ticked (enabled is the default), as is an existing topic's.
        assert 'name="enabled" checked' in (await c.get("/admin/topics/new")).text
        page = await c.get("/admin/topics/weather")
        assert 'name="enabled" checked' in page.text
        assert "topic-disabled" not in (await c.get("/admin/topics")).text

        form = _editor_form(page.text, "weather", path)
        del form["enabled"]  # the admin unticks the box: the browser sends nothing for it
        r = await c.post("/admin/topics/weather", data=form)
        assert r.status_code == 303, r.text
        assert load_config(path).topic("weather").enabled is False
        assert tomllib.loads(path.read_text())["topics"][1]["enabled"] is False
        listing = (await c.get("/admin/topics")).text
        row = re.search(r"<tr>\s*<td><a href=\"/admin/topics/weather\">.*?</tr>", listing, re.S)
        assert row and ">disabled<" in row.group(0)
        other = re.search(r"<tr>\s*<td><a href=\"/admin/topics/hostage-talks\">.*?</tr>", listing, re.S)
        assert other and ">disabled<" not in other.group(0)

        page = await c.get("/admin/topics/weather")
        assert 'name="enabled" checked' not in page.text and 'name="enabled" >' in page.text
        r = await c.post("/admin/topics/weather", data=_editor_form(page.text, "weather", path, enabled="on"))
        assert r.status_code == 303, r.text
        assert load_config(path).topic("weather").enabled is True
        assert "topic-disabled" not in (await c.get("/admin/topics")).text
    assert "# Test configuration. This comment must survive every save." in path.read_text()
    with Session(engine) as s:
        audit = [(a.actor, a.action, a.diff) for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert audit == [("alice", "topic.update", "enabled: true -> false"),
                     ("alice", "topic.update", "enabled: false -> true")]


def test_enabled_topics_leave_out_the_disabled_ones(tmp_path: Path) -> None:
    text = write_config(tmp_path).read_text().replace('id = "weather"\n', 'id = "weather"\nenabled = false\n')
    path = write_config(tmp_path, text)
    config = load_config(path)
    assert [t.id for t in config.topics] == ["hostage-talks", "weather"]
    assert [t.id for t in config.enabled_topics] == ["hostage-talks"]
