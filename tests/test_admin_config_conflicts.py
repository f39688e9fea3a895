"""Two saves of feeds.toml at once (admin page and API, or two web hosts on one database): the second is
refused with 409 naming the first, never written over it (review finding: the hash was checked before the
write transaction)."""

from __future__ import annotations

import threading
import time
import tomllib
from pathlib import Path

import pytest
from adminfixtures import TOKEN, admin_app, client, write_config
from sqlalchemy import Engine

from monitor.app.admin import configfile, forms
from monitor.config import load_config
from monitor.storage import db
from monitor.storage.tables import ConfigRevision

pytestmark = pytest.mark.databases("sqlite", "postgresql")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _threshold(path: Path, topic_id: str) -> float | None:
    return next(t.get("threshold") for t in tomllib.loads(path.read_text())["topics"] if t["id"] == topic_id)


def test_a_save_that_waited_for_another_is_refused_not_written_over_it(engine: Engine, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    weather = load_config(path).topic("weather")
    out: dict[str, object] = {}

    def api_save() -> None:  # reads feeds.toml, edits it, then waits for the lock the other save holds
        try:
            out["saved"] = forms.save_topic(engine, path, weather.model_copy(update={"threshold": 0.61}),
                                            original_id="weather", actor="api-token")
        except Exception as e:
            out["error"] = e

    with db.write_transaction(engine) as s:  # the page's save, holding the lock while it writes
        db.serialize(s, configfile.CONFIG_LOCK)
        t = threading.Thread(target=api_save)
        t.start()
        time.sleep(1.0)
        text = configfile.read_text(path)
        page_text = configfile.upsert_entry(text, "topics", "id", "hostage-talks",
                                            load_config(path).topic("hostage-talks").model_copy(
                                                update={"threshold": 0.52}))
        s.add(ConfigRevision(created_at=db.naive_utc(db.utcnow()), actor="alice",
                             sha256=configfile.sha256(page_text), text=page_text))
        configfile._write_atomically(path, page_text)
    t.join(30)
    assert not t.is_alive()
    assert isinstance(out.get("error"), configfile.StaleEdit), out
    assert "saved by alice" in str(out["error"])
    assert _threshold(path, "hostage-talks") == 0.52  # the first save is kept


async def test_api_save_on_a_host_that_has_not_loaded_another_hosts_save_is_409(engine: Engine,
                                                                               tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path_a, path_b = write_config(tmp_path / "a"), write_config(tmp_path / "b")
    app_a, _ = admin_app(engine, path_a)
    app_b, _ = admin_app(engine, path_b)
    time.sleep(0.05)  # host a's save below is later than host b's file
    async with client(app_a) as a, client(app_b) as b:
        got = await b.get("/api/v1/topics/weather", headers=AUTH)
        etag = got.headers["etag"]
        r = await a.put("/api/v1/topics/hostage-talks", headers=AUTH,
                        json={**(await a.get("/api/v1/topics/hostage-talks", headers=AUTH)).json(), "threshold": 0.52})
        assert r.status_code == 200, r.text
        # Host b has not pulled revision 1 yet: its save would drop host a's change.
        r = await b.put("/api/v1/topics/weather", headers=AUTH, json={**got.json(), "threshold": 0.61})
        assert r.status_code == 409, r.text
        assert "another host" in r.json()["detail"] and "api-token" in r.json()["detail"]
        assert _threshold(path_b, "weather") is None

        # Once b has the revision, an If-Match with the hash read before is refused too; a fresh one saves.
        configfile.pull_revision(engine, path_b, None)
        r = await b.put("/api/v1/topics/weather", headers={**AUTH, "If-Match": etag},
                        json={**got.json(), "threshold": 0.61})
        assert r.status_code == 409 and "changed by someone else" in r.json()["detail"]
        r = await b.put("/api/v1/topics/weather", headers=AUTH, json={**got.json(), "threshold": 0.61})
        assert r.status_code == 200, r.text
    assert _threshold(path_b, "weather") == 0.61 and _threshold(path_b, "hostage-talks") == 0.52


def test_a_hand_edit_made_after_the_last_save_is_not_a_conflict(engine: Engine, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    weather = load_config(path).topic("weather")
    forms.save_topic(engine, path, weather.model_copy(update={"threshold": 0.6}), original_id="weather", actor="a")
    time.sleep(0.05)
    path.write_text(path.read_text().replace('name = "Weather"', 'name = "Weather (hand edit)"'))
    forms.save_topic(engine, path, load_config(path).topic("weather").model_copy(update={"threshold": 0.7}),
                     original_id="weather", actor="a")
    assert load_config(path).topic("weather").name == "Weather (hand edit)"
    assert _threshold(path, "weather") == 0.7
