"""The admin pages for reader feedback and suppressed addresses, inside the admin UI (its login, CSRF check,
layout): suggestions with their backtest effect, applied like an admin save (feeds.toml keeps its comments,
audited); suppressions listed and lifted (audited)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from adminfixtures import (
    CONFIG,
    NEAR_MISS,
    PASSWORD,
    admin_app,
    client,
    csrf_of,
    login,
    reader_said_not_relevant,
    write_config,
)
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.applications import Starlette

from monitor.app.admin import auth
from monitor.app.admin.backtest import Backtester
from monitor.app.subscriber.adminpages import admin_routes
from monitor.config import load_config
from monitor.storage.db import naive_utc
from monitor.storage.tables import AuditEntry, Suppression

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def setup(tmp_path, engine):  # type: ignore[no-untyped-def]
    path = write_config(tmp_path)
    reader_said_not_relevant(engine, NOW)
    with Session(engine) as s, s.begin():
        s.add(Suppression(address="gone@example.org", reason="bounce", detail="550 5.1.1 user unknown",
                          created_at=naive_utc(NOW)))
    auth.create_user(engine, "alice", PASSWORD)
    return path


def app_with(engine, path, backtester=lambda: None) -> Starlette:  # type: ignore[no-untyped-def]
    app, ctx = admin_app(engine, path, backtester, clock=lambda: NOW)
    ctx.config = lambda: load_config(path)  # this process reloads feeds.toml at once (the service: in 2 s)
    return Starlette(routes=[*app.routes, *admin_routes(ctx)])


async def test_suggestions_need_a_login_and_apply_edits_the_topic_with_an_audit_entry(engine, setup, embedder) -> None:
    path = setup
    app = app_with(engine, path, lambda: Backtester(engine, embedder, load_config(path).settings))
    async with client(app) as c:
        r = await c.get("/admin/topics/hostage-talks/suggestions")
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")
        await login(c)
        page = await c.get("/admin/topics/hostage-talks/suggestions")
        assert page.status_code == 200
        assert "add counterexample</strong>: " + NEAR_MISS in page.text
        assert "+0 / &minus;0" in page.text  # the backtest ran (no stored items in this window)
        refused = await c.post("/admin/topics/hostage-talks/suggestions", data={"suggestion": "1"})
        assert refused.status_code == 403 and NEAR_MISS not in path.read_text()
        done = await c.post("/admin/topics/hostage-talks/suggestions",
                            data={"suggestion": "1", "csrf_token": csrf_of(page.text)})
        assert done.status_code == 303 and done.headers["location"].endswith("?applied=1")
        text = path.read_text()
        assert "# Test configuration. This comment must survive every save." in text
        assert load_config(path).topic("hostage-talks").counterexamples == ["Qatar signs long-term gas supply deal",
                                                                            NEAR_MISS]
        after = await c.get(done.headers["location"])
        assert "Suggestion #1 applied" in after.text and "No open suggestions" in after.text
    with Session(engine) as s:
        [entry] = s.scalars(select(AuditEntry)).all()
        assert entry.actor == "alice" and entry.target == "topic hostage-talks" and NEAR_MISS in entry.diff


async def test_suppressed_addresses_are_shown_and_lifted_with_an_audit_entry(engine, setup) -> None:
    app = app_with(engine, setup)
    async with client(app) as c:
        await login(c)
        page = await c.get("/admin/suppressions")
        assert "gone@example.org" in page.text and "550 5.1.1 user unknown" in page.text
        r = await c.post("/admin/suppressions/lift", data={"address": "gone@example.org",
                                                           "csrf_token": csrf_of(page.text)})
        assert r.status_code == 303
        assert "No address is suppressed" in (await c.get("/admin/suppressions")).text
    with Session(engine) as s:
        assert [(e.action, e.target) for e in s.scalars(select(AuditEntry))] == [("subscriber.unsuppress",
                                                                                   "gone@example.org")]


async def test_the_service_routes_serve_the_pages_and_the_feed_urls_the_cli_prints(tmp_path, engine) -> None:
    """What the composition root mounts (subscriber.service_routes): the public pages, the admin pages behind
    the login, and the alert feeds at the addresses `monitor subscribers feed-urls` prints."""
    from click.testing import CliRunner

    from monitor.app.subscriber import service_routes
    from monitor.cli import main

    url = engine.url.render_as_string(hide_password=False)
    path = write_config(tmp_path, CONFIG.replace("[settings]\n", f'[settings]\ndatabase_url = "{url}"\n'
                                                                   'base_url = "http://test"\n', 1))
    config = load_config(path)
    key = "k" * 32
    from monitor.app.admin import service_context

    admin = service_context(engine, path, lambda: config, key, lambda: None, lambda: NOW)
    app = Starlette(routes=service_routes(engine, lambda: config, key, lambda: NOW, lambda: None, admin=admin))
    async with client(app) as c:
        assert (await c.get("/subscriber.css")).headers["content-type"].startswith("text/css")
        assert (await c.get("/admin/suppressions")).status_code == 303  # the admin login first
        assert (await c.get("/preferences/not-a-token")).status_code == 400
        out = CliRunner().invoke(main, ["--config", str(path), "subscribers", "feed-urls"],
                                 env={"MONITOR_SECRET_KEY": key})
        assert out.exit_code == 0, out.output
        atom_url = next(line.split("atom: ", 1)[1] for line in out.output.splitlines() if "atom: " in line)
        assert atom_url.startswith("http://test/feeds/hostage-talks.atom?token=")
        r = await c.get(atom_url.replace("http://test", ""))
        assert r.status_code == 200 and b"<feed" in r.content
