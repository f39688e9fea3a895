"""Server-made SVG charts (no chart library, no script): matches and alerts per day. Pure functions, plus the
one query that counts a topic's matches and alerts per day."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.records import ALERT_DECISIONS
from monitor.storage.db import naive_utc
from monitor.storage.tables import Alert, Match


@dataclass(frozen=True, slots=True)
class DayCount:
    day: str  # YYYY-MM-DD
    matches: int
    alerts: int


def activity(engine: Engine, now: datetime, topic_ids: list[str], days: int = 30) -> dict[str, list[DayCount]]:
    """Per topic id: matches (by when they were matched) and alerts (new stories + updates) per day, for
    the `days` days up to `now`, oldest first."""
    since = naive_utc(now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    matches: Counter[tuple[str, str]] = Counter()
    alerts: Counter[tuple[str, str]] = Counter()
    with Session(engine) as s:
        for tid, at in s.execute(select(Match.topic_id, Match.created_at).where(Match.created_at >= since)):
            matches[(tid, at.strftime("%Y-%m-%d"))] += 1
        for tid, at in s.execute(select(Alert.topic_id, Alert.created_at)
                                 .where(Alert.created_at >= since, Alert.decision.in_(ALERT_DECISIONS))):
            alerts[(tid, at.strftime("%Y-%m-%d"))] += 1
    day_list = [(now - timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days - 1, -1, -1)]
    return {t: [DayCount(d, matches[(t, d)], alerts[(t, d)]) for d in day_list] for t in topic_ids}


def bars_svg(counts: list[DayCount], *, width: int = 240, height: int = 48, label: str = "") -> str:
    """Bars of matches per day with alerts drawn over them; one <title> per day for hover text."""
    n = max(len(counts), 1)
    top = max([c.matches for c in counts] + [c.alerts for c in counts] + [1])
    bw = width / n
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">',
             f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#c8ccd2" />']
    for i, c in enumerate(counts):
        x = i * bw
        mh = (height - 2) * c.matches / top
        ah = (height - 2) * c.alerts / top
        parts.append(f'<g><title>{c.day}: {c.matches} matches, {c.alerts} alerts</title>'
                     f'<rect x="{x + 1:.1f}" y="{height - 1 - mh:.1f}" width="{max(bw - 2, 1):.1f}" '
                     f'height="{mh:.1f}" fill="#9db7d8" />'
                     f'<rect x="{x + 1:.1f}" y="{height - 1 - ah:.1f}" width="{max(bw - 2, 1):.1f}" '
                     f'height="{ah:.1f}" fill="#1f5fa8" /></g>')
    parts.append("</svg>")
    return "".join(parts)
