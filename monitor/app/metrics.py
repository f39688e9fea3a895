"""Prometheus metrics. One `Metrics` object (with its own registry, no process globals) is built by the
composition root and passed to whatever records events; gauges that describe database state (outbox depth,
per-feed last success) are read from the database at scrape time, so every process reports the truth."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.storage.db import aware_utc
from monitor.storage.tables import Delivery, Feed


def label_url(url: str) -> str:
    """A feed URL as a metrics label: no user name or password, no query string, no fragment, since a
    feed URL may carry credentials or tokens and metrics travel to other systems."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "invalid-url"


@dataclass(frozen=True)
class OutboxGauge:
    depth: int
    oldest_age_s: float


class _DatabaseCollector(Collector):
    def __init__(self, engine: Engine, now: Callable[[], datetime]) -> None:
        self._engine = engine
        self._now = now

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self._now()
        depth = GaugeMetricFamily("monitor_outbox_depth", "Deliveries not yet sent or failed for good", labels=["status"])
        oldest = GaugeMetricFamily("monitor_outbox_oldest_age_seconds", "Age of the oldest pending delivery")
        last_ok = GaugeMetricFamily("monitor_feed_last_success_timestamp_seconds", "Last successful fetch of a feed", labels=["feed"])
        errors = GaugeMetricFamily("monitor_feed_consecutive_errors", "Consecutive failed fetches of a feed", labels=["feed"])
        failed = GaugeMetricFamily(
            "monitor_deliveries_failed", "Deliveries that failed for good and wait for `monitor deliveries retry` "
            "(alert when above 0)", labels=["channel"])
        try:
            with Session(self._engine) as s:
                for status, n in s.execute(select(Delivery.status, func.count()).group_by(Delivery.status)):
                    depth.add_metric([status], n)
                failed_by = dict(s.execute(select(Delivery.channel, func.count()).where(Delivery.status == "failed")
                                           .group_by(Delivery.channel)).all())
                for channel in ("email", "slack", "webhook"):  # present at 0, so an alert rule has a series
                    failed.add_metric([channel], failed_by.pop(channel, 0))
                for channel, n in failed_by.items():
                    failed.add_metric([channel], n)
                first = s.execute(
                    select(func.min(Delivery.created_at)).where(Delivery.status.in_(("pending", "sending")))
                ).scalar()
                oldest.add_metric([], (now - aware_utc(first)).total_seconds() if first else 0.0)
                # Two feeds that differ only in what the label drops share a series: newest success, most errors.
                ok_by: dict[str, float] = {}
                err_by: dict[str, int] = {}
                for url, ok_at, n_err in s.execute(select(Feed.url, Feed.last_success_at, Feed.error_count).where(Feed.enabled)):
                    label = label_url(url)
                    if ok_at is not None:
                        ok_by[label] = max(ok_by.get(label, 0.0), aware_utc(ok_at).timestamp())
                    err_by[label] = max(err_by.get(label, 0), n_err or 0)
                for label, ts in ok_by.items():
                    last_ok.add_metric([label], ts)
                for label, n in err_by.items():
                    errors.add_metric([label], n)
        except Exception:  # a scrape must never take the process down; the gauges are simply absent
            return []
        return [depth, oldest, last_ok, errors, failed]


class Metrics:
    def __init__(self, engine: Engine | None = None, now: Callable[[], datetime] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.polls = Counter("monitor_polls_total", "Feed polls by outcome", ["status"], registry=r)
        self.fetch_seconds = Histogram(
            "monitor_fetch_seconds", "Time to fetch one feed", registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.new_items = Counter("monitor_new_items_total", "New items stored", registry=r)
        self.matches = Counter("monitor_matches_total", "Items matched to a topic", ["topic"], registry=r)
        self.alerts = Counter("monitor_alerts_total", "Novelty decisions", ["topic", "decision"], registry=r)
        self.deliveries = Counter("monitor_deliveries_total", "Delivery attempts by outcome", ["channel", "outcome"], registry=r)
        self.cycle_errors = Counter("monitor_cycle_errors_total", "Scheduler jobs that failed", ["job"], registry=r)
        if engine is not None and now is not None:
            r.register(_DatabaseCollector(engine, now))

    def render(self) -> bytes:
        return generate_latest(self.registry)
