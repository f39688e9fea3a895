"""schedule: adaptive intervals, server hints, jitter and backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from monitor.config import Settings
from monitor.ingest.schedule import JITTER, next_check

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
S = Settings(min_interval_s=120, max_interval_s=7200, default_interval_s=600, max_backoff_s=6 * 3600)


def delay(**kw: object) -> float:
    return (next_check(now=NOW, settings=S, rng=random.Random(1), **kw) - NOW).total_seconds()  # type: ignore[arg-type]


def within(value: float, base: float) -> bool:
    return base <= value <= base * (1 + JITTER)


def test_no_history_uses_default() -> None:
    assert within(delay(), 600)


def test_interval_follows_publishing_rate_within_bounds() -> None:
    busy = delay(publish_interval_s=600, last_new_item_at=NOW)
    quiet = delay(publish_interval_s=4 * 3600, last_new_item_at=NOW)
    assert within(busy, 300) and within(quiet, 7200)
    assert within(delay(publish_interval_s=10, last_new_item_at=NOW), 120)  # floor


def test_a_feed_that_goes_quiet_is_polled_less() -> None:
    recent = delay(publish_interval_s=600, last_new_item_at=NOW - timedelta(minutes=5))
    silent = delay(publish_interval_s=600, last_new_item_at=NOW - timedelta(hours=4))
    assert silent > recent and within(silent, 3600)


def test_fixed_interval_wins() -> None:
    assert within(delay(interval_s=60, publish_interval_s=10_000, last_new_item_at=NOW), 60)
    assert within(delay(interval_s=86_400), 86_400)


def test_cache_hints_and_retry_after_respected_within_bounds() -> None:
    assert within(delay(max_age_s=1800), 1800)
    assert within(delay(max_age_s=10 * 86_400), 7200)  # capped: we still check at the longest interval
    assert within(delay(retry_after=NOW + timedelta(hours=1)), 3600)
    assert within(delay(retry_after=NOW + timedelta(days=30)), 6 * 3600)
    assert within(delay(max_age_s=30), 600)  # never *earlier* than our own interval


def test_errors_back_off_exponentially_but_never_stop() -> None:
    delays = [delay(error_count=n) for n in range(1, 20)]
    assert all(b >= a * 0.95 for a, b in zip(delays, delays[1:], strict=False))
    assert within(delays[4], 120 * 16)  # 5th error: 2^4 x min interval
    assert all(d <= 6 * 3600 * (1 + JITTER) for d in delays)  # capped, still scheduled
    assert within(delay(error_count=1000), 6 * 3600)


def test_jitter_spreads_feeds_and_is_reproducible() -> None:
    rng = random.Random(7)
    spread = {next_check(now=NOW, settings=S, rng=rng) for _ in range(50)}
    assert len(spread) > 40
    assert all(NOW + timedelta(seconds=600) <= t <= NOW + timedelta(seconds=660) for t in spread)
    a = next_check(now=NOW, settings=S, rng=random.Random(3))
    b = next_check(now=NOW, settings=S, rng=random.Random(3))
    assert a == b
