"""Small frozen records passed between stages (the contracts of the pipeline). Stage-internal records live
in their own modules; the ones here cross module boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Decision = Literal["new_story", "update", "repeat"]
ALERT_DECISIONS: tuple[Decision, ...] = ("new_story", "update")


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """A stored item as the stages after `store` see it."""

    id: int
    feed_id: int
    outlet: str
    title: str
    summary: str
    link: str | None
    published_at: datetime  # aware UTC
    content_hash: str

    @property
    def text(self) -> str:
        """What gets embedded and matched: headline and teaser."""
        return f"{self.title}. {self.summary}" if self.summary else self.title


@dataclass(frozen=True, slots=True)
class TopicMatch:
    """The matcher's verdict for one (item, topic)."""

    item_id: int
    topic_id: str
    score: float
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class NoveltyDecision:
    """What novelty decided for one matched item."""

    item_id: int
    topic_id: str
    story_id: int
    decision: Decision
    reason: str
    what_is_new: str | None
    similarity: float | None


@dataclass(frozen=True, slots=True)
class AlertView:
    """One alert as a digest shows it (read back from the alerts + stories tables)."""

    alert_id: int
    topic_id: str
    topic_name: str
    story_id: int
    story_title: str
    decision: Decision
    title: str
    link: str | None
    outlet: str
    published_at: datetime
    what_is_new: str | None
    sources_count: int
    first_seen: datetime


@dataclass(frozen=True, slots=True)
class MatchedItem:
    """An item that matched a topic, with its vector: the input of novelty/stories."""

    item: ItemRecord
    topic_id: str
    score: float
    vector: Any  # np.ndarray (float32, L2-normalised); typed loosely to keep this module numpy-free
