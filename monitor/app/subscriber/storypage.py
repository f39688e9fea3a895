"""The story page: one alerted story's timeline (each alert with its "what's new"), the outlets that carried
it and when, first and last seen. Read-only, from the stories and alerts tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.config import Config
from monitor.records import ALERT_DECISIONS
from monitor.storage.db import aware_utc
from monitor.storage.tables import Alert, Story


@dataclass(frozen=True, slots=True)
class Report:
    """One item of the story: an alert (new story / update) or a re-report by another outlet."""

    alert_id: int
    decision: str
    title: str
    link: str | None
    outlet: str
    published_at: datetime
    what_is_new: str | None


@dataclass(frozen=True, slots=True)
class StoryPage:
    story_id: int
    topic_id: str
    topic_name: str
    title: str
    link: str | None
    first_seen: datetime
    last_seen: datetime
    outlets: tuple[tuple[str, int, datetime], ...]  # (outlet, reports, first report) by first report
    timeline: tuple[Report, ...]  # the first report, the alerts (new story, each update), in published order
    reports: tuple[Report, ...]  # every report, in published order
    first_report_id: int | None = None  # the earliest report: not the alerted one when the alert waited for
    # a second outlet (a held story), so the page never labels a later item "first report"

    @property
    def developments(self) -> int:
        return len(self.timeline)


def story_page(session: Session, config: Config, story_id: int) -> StoryPage | None:
    st = session.get(Story, story_id)
    if st is None:
        return None
    rows = session.scalars(select(Alert).where(Alert.story_id == story_id).order_by(Alert.published_at, Alert.id)).all()
    reports = tuple(Report(a.id, a.decision, a.title, a.link, a.outlet, aware_utc(a.published_at), a.what_is_new)  # type: ignore[arg-type]
                    for a in rows)
    outlets: dict[str, list[datetime]] = {}
    for r in reports:
        outlets.setdefault(r.outlet, []).append(r.published_at)
    names = {t.id: t.name for t in config.topics}
    return StoryPage(
        story_id=st.id, topic_id=st.topic_id, topic_name=names.get(st.topic_id, st.topic_id), title=st.title,
        link=st.link, first_seen=aware_utc(st.first_seen), last_seen=aware_utc(st.last_seen),  # type: ignore[arg-type]
        outlets=tuple(sorted(((o, len(ts), min(ts)) for o, ts in outlets.items()), key=lambda x: x[2])),
        timeline=tuple(r for i, r in enumerate(reports) if i == 0 or r.decision in ALERT_DECISIONS),
        reports=reports, first_report_id=reports[0].alert_id if reports else None,
    )
