"""A disabled topic (`enabled = false`) matches nothing, so readers are not offered it: the sign-up and
preferences pages leave it out (a reader's earlier choice of it is kept for when it is enabled again), and
`monitor topics test` and the evaluation commands do not compile it (review finding)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from deliveryfixtures import T0, Clock, config_text
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.testclient import TestClient

from monitor.app.subscriber import SubscriberContext, routes
from monitor.cli import main
from monitor.config import parse_config
from monitor.delivery import digest, links
from monitor.signal import embed
from monitor.storage.tables import SubscriberPrefs, Subscription

pytestmark = pytest.mark.databases("sqlite", "postgresql")

KEY = "disabled-topic-key"
EXTRA = """
[[topics]]
id = "weather"
name = "Storm watch"
description = "Storms, floods and heat waves"
examples = ["Storm floods coastal towns"]
enabled = false

[[subscribers]]
email = "ana@example.org"
topics = ["doha-talks", "weather"]
cadence = "daily"
"""


def _form_token(html: str) -> str:
    m = re.search(r'name="form_token" value="([^"]+)"', html)
    assert m
    return m.group(1)


def test_signup_and_preferences_pages_do_not_offer_a_disabled_topic(tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    config = parse_config(config_text(tmp_path, EXTRA, "self_signup = true", engine), "test.toml", env={})
    clock = Clock()

    async def send_mail(address: str, message: bytes) -> None:
        pass

    ctx = SubscriberContext(engine=engine, config=lambda: config, secret_key=KEY, clock=clock, send_mail=send_mail)
    client = TestClient(Starlette(routes=routes(ctx)), base_url="https://monitor.example.org", follow_redirects=False)
    page = client.get("/signup").text
    assert "Doha talks" in page and "ICC" in page and "Storm watch" not in page and 'value="weather"' not in page
    r = client.post("/signup", data={"form_token": _form_token(page), "email": "new@example.org", "topics": ["weather"]})
    assert r.status_code == 422 and "Choose topics from the list" in r.text

    digest.build_due_digests(engine, config, T0, secret_key=KEY)  # creates ana's subscription
    with Session(engine) as s:
        sub_id = s.scalars(select(Subscription.id).where(Subscription.target == "ana@example.org")).one()
    path = f"/preferences/{links.prefs_token(KEY, sub_id, clock.now)}"
    page = client.get(path).text
    assert "Doha talks" in page and "Storm watch" not in page and 'value="weather"' not in page
    r = client.post(path, data={"form_token": _form_token(page), "action": "save", "topics": ["doha-talks", "icc"],
                                "cadence": "daily", "daily_at": "08:00", "timezone": "UTC"})
    assert r.status_code == 303, r.text
    with Session(engine) as s:
        assert s.get_one(SubscriberPrefs, sub_id).topics == ["doha-talks", "icc", "weather"]  # kept, not shown


def test_topics_test_leaves_out_a_disabled_topic(tmp_path, embedder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)
    cfg = tmp_path / "feeds.toml"
    cfg.write_text(config_text(tmp_path, EXTRA))
    r = CliRunner().invoke(main, ["--config", str(cfg), "topics", "test", "Storm floods coastal towns"])
    assert r.exit_code == 0, r.output
    *topics, note = r.output.strip().splitlines()  # the last line says what the scores count
    assert [line.split()[0] for line in topics] == ["doha-talks", "icc"] and "evidence" in note
