"""The service's HTTP endpoints, through an in-process ASGI client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from monitor.app.metrics import Metrics
from monitor.app.web import create_app, create_metrics_app
from monitor.storage.tables import Feed

pytestmark = pytest.mark.databases("sqlite", "postgresql")

NOW = datetime(2023, 11, 24, 12, 0, tzinfo=UTC)


async def _get(app, path: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.get(path)


async def test_healthz_and_readiness_report_each_check() -> None:
    checks = {"database": True, "model": False}
    app = create_app(lambda: checks)
    assert (await _get(app, "/healthz")).status_code == 200
    r = await _get(app, "/readyz")
    assert r.status_code == 503
    assert r.json() == {"ready": False, "checks": {"database": True, "model": False}}
    checks["model"] = True
    assert (await _get(app, "/readyz")).status_code == 200


async def test_metrics_expose_counters_and_database_gauges(engine: Engine) -> None:
    secret_url = "https://reader:hunter2@example.org/rss?token=s3cret#top"
    with Session(engine) as s, s.begin():
        s.add(Feed(url=secret_url, config_url=secret_url, enabled=True,
                   error_count=3, last_success_at=(NOW - timedelta(hours=1)).replace(tzinfo=None),
                   created_at=NOW.replace(tzinfo=None)))
    metrics = Metrics(engine, lambda: NOW)
    metrics.polls.labels(status="ok").inc(2)
    metrics.alerts.labels(topic="doha-talks", decision="new_story").inc()
    text = (await _get(create_metrics_app(metrics), "/metrics")).text
    # Credentials and tokens in a feed URL never reach a label.
    assert "hunter2" not in text and "s3cret" not in text and "reader" not in text
    samples = {(m.name, tuple(sorted(m.labels.items()))): m.value
               for family in text_string_to_metric_families(text) for m in family.samples}
    assert samples[("monitor_polls_total", (("status", "ok"),))] == 2
    assert samples[("monitor_alerts_total", (("decision", "new_story"), ("topic", "doha-talks")))] == 1
    feed = (("feed", "https://example.org/rss"),)
    assert samples[("monitor_feed_consecutive_errors", feed)] == 3
    assert samples[("monitor_feed_last_success_timestamp_seconds", feed)] == (NOW - timedelta(hours=1)).timestamp()
    assert samples[("monitor_outbox_oldest_age_seconds", ())] == 0


async def test_metrics_are_not_served_on_the_public_app() -> None:
    assert (await _get(create_app(dict), "/metrics")).status_code == 404
