"""schedule: when to check a feed next. Pure; `now` and the random source are arguments.

Rules, in order:
1. Normal interval: a fixed `interval` from feeds.toml wins as given. Otherwise it adapts to how often the
   feed publishes: half the smoothed gap between new items (Feed.publish_interval_s), lengthened while the
   feed stays quiet (a quarter of the silence since its last new item), bounded by
   settings.min_interval_s .. settings.max_interval_s; a feed with no history uses default_interval_s.
2. Errors back off exponentially: min_interval_s * 2^(errors-1), at most settings.max_backoff_s, never
   shorter than the normal interval. A feed is never dropped: the longest wait is max_backoff_s.
3. Server hints are respected: no earlier than Cache-Control max-age / Expires (capped at the longest
   interval we would use anyway) or Retry-After (capped at max_backoff_s).
4. Jitter: up to +10% (never earlier than the above), so feeds added together do not stay in lock step.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from monitor.config import Settings

JITTER = 0.10


def next_check(
    *,
    now: datetime,
    settings: Settings,
    interval_s: int | None = None,
    publish_interval_s: float | None = None,
    last_new_item_at: datetime | None = None,
    error_count: int = 0,
    retry_after: datetime | None = None,
    max_age_s: float | None = None,
    rng: random.Random | None = None,
) -> datetime:
    """The instant of the next check (aware UTC)."""
    delay = normal_interval(now=now, settings=settings, interval_s=interval_s,
                            publish_interval_s=publish_interval_s, last_new_item_at=last_new_item_at)
    longest = max(settings.max_interval_s, interval_s or 0)
    if error_count > 0:
        backoff = settings.min_interval_s * 2.0 ** min(error_count - 1, 40)
        delay = max(delay, min(backoff, float(settings.max_backoff_s)))
    if max_age_s is not None and max_age_s > 0:
        delay = max(delay, min(max_age_s, float(longest)))
    if retry_after is not None:
        wait = (retry_after - now).total_seconds()
        delay = max(delay, min(wait, float(max(settings.max_backoff_s, longest))))
    r = rng if rng is not None else random.Random()
    delay *= 1.0 + r.uniform(0.0, JITTER)
    return now + timedelta(seconds=delay)


def normal_interval(
    *,
    now: datetime,
    settings: Settings,
    interval_s: int | None = None,
    publish_interval_s: float | None = None,
    last_new_item_at: datetime | None = None,
) -> float:
    """The interval without errors, hints or jitter (seconds)."""
    if interval_s:
        return float(interval_s)
    if publish_interval_s is None:
        target = float(settings.default_interval_s)
    else:
        target = publish_interval_s / 2.0
        if last_new_item_at is not None:
            target = max(target, (now - last_new_item_at).total_seconds() / 4.0)
    return float(min(max(target, settings.min_interval_s), settings.max_interval_s))
