"""The service's web app (Service._app, the composition root) gives the topic editor and the suggestions page
(monitor.app.subscriber.adminpages) one backtester: what the editor encoded is not encoded again when the
suggestions page backtests the same topic."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from adminfixtures import (
    CONFIG,
    NEAR_MISS,
    PASSWORD,
    client,
    csrf_of,
    login,
    reader_said_not_relevant,
    store_items,
    write_config,
)
from sqlalchemy import Engine

from monitor.app.admin import auth, forms
from monitor.app.service import Service, ServiceOptions
from monitor.clock import ManualClock
from monitor.config import load_config

pytestmark = pytest.mark.databases("sqlite", "postgresql")

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@asynccontextmanager
async def _editor(engine: Engine, embedder, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A logged-in client of the service's web app (its model loaded), and a function that posts the topic
    editor's form for hostage-talks, with some fields changed, to its live backtest."""
    url = engine.url.render_as_string(hide_password=False)
    path = write_config(tmp_path, CONFIG.replace("[settings]\n", f'[settings]\ndatabase_url = "{url}"\n', 1))
    auth.create_user(engine, "alice", PASSWORD)
    service = Service(ServiceOptions(config_path=path), load_config(path), ManualClock(NOW))
    service.rt = SimpleNamespace(embedder=embedder)  # type: ignore[assignment]  # the model is loaded
    try:
        async with client(service._app()) as c:
            await login(c)

            async def backtest(**changes: str):  # type: ignore[no-untyped-def]
                page = await c.get("/admin/topics/hostage-talks")
                topic = load_config(path).topic("hostage-talks")
                form = {**forms.form_values(topic, forms.TOPIC_FIELDS), "csrf_token": csrf_of(page.text), **changes}
                return topic, await c.post("/admin/topics/hostage-talks/backtest", data=form)

            yield c, backtest
    finally:
        service.engine.dispose()


async def test_the_topic_editor_and_the_suggestions_page_share_one_backtester(engine: Engine, counting,  # type: ignore[no-untyped-def]
                                                                              tmp_path: Path) -> None:
    reader_said_not_relevant(engine, NOW)
    async with _editor(engine, counting, tmp_path) as (c, backtest):
        topic, r = await backtest()
        assert r.status_code == 200 and "data-matches=" in r.text, r.text
        by_editor = {t for call in counting.calls for t in call}
        assert set(topic.examples) <= by_editor  # the editor encoded the topic's texts

        counting.calls.clear()
        page = await c.get("/admin/topics/hostage-talks/suggestions")
        assert page.status_code == 200
        assert "add counterexample</strong>: " + NEAR_MISS in page.text
        assert "+0 / &minus;0" in page.text  # its backtest ran, on the model
    # Only the suggested counterexample was new: the topic's own texts came from the editor's cache.
    assert [t for call in counting.calls for t in call] == [NEAR_MISS]


async def test_a_match_offers_its_headline_as_a_near_miss_escaped(engine: Engine, embedder,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    hostile = 'Qatar says "talks" on a hostage deal <b onmouseover=x()>made progress</b> & more'
    store_items(engine, embedder, [(hostile, NOW)])
    async with _editor(engine, embedder, tmp_path) as (_c, backtest):
        _topic, r = await backtest(threshold="0.05")  # whatever the markup does to its score, it is listed
    assert r.status_code == 200 and 'data-matches="1"' in r.text, r.text
    # the button carries the headline for the page's script to write into the counterexamples box as text
    assert ('data-add-to="counterexamples" data-text="Qatar says &#34;talks&#34; on a hostage deal '
            '&lt;b onmouseover=x()&gt;made progress&lt;/b&gt; &amp; more"') in r.text
    assert "<b onmouseover" not in r.text
