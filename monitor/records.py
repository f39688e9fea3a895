"""Small frozen records passed between stages (the contracts of the pipeline). Stage-internal records live
in their own modules; the ones here cross module boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

# held: a new story on weak evidence waiting for corroboration (no alert unless a second outlet confirms it)
Decision = Literal["new_story", "update", "repeat", "held"]
ALERT_DECISIONS: tuple[Decision, ...] = ("new_story", "update")


def item_text(title: str, summary: str) -> str:
    """What gets embedded and matched: headline and teaser. Production and the evaluations use this one
    definition, so what is measured is what runs."""
    return f"{title}. {summary}" if summary else title


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
        return item_text(self.title, self.summary)


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
    item_id: int | None = None  # None once retention removed the item
    match_reason: str | None = None  # the matcher's reason for (item, topic), for "why you got this"
    story_link: str | None = None  # the link of the article the story's title names


@dataclass(frozen=True, slots=True)
class MatchedItem:
    """An item that matched a topic, with its vector: the input of novelty/stories."""

    item: ItemRecord
    topic_id: str
    score: float
    vector: Any  # np.ndarray (float32, L2-normalised); typed loosely to keep this module numpy-free
    threshold: float | None = None  # the topic's match threshold (score - threshold: how clearly on topic)


# --- fetch -> parse -> store (the feed side of the pipeline) ---------------------------------------------

FetchStatus = Literal["ok", "not_modified", "unchanged", "deferred", "error"]


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """A claimed feed: what fetch needs (url + validators + hash of the last parsed body) and the feed's
    scheduling state, which poll hands to schedule.next_check after the fetch."""

    feed_id: int
    url: str
    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None
    name: str | None = None
    interval_s: int | None = None  # fixed interval from feeds.toml; None = adaptive
    publish_interval_s: float | None = None
    last_new_item_at: datetime | None = None  # aware UTC
    error_count: int = 0
    aggregator: bool = False  # items count for the outlet of their own link, not the feed's (feeds.toml)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one fetch. fetch() never raises: failures come back with status "error"."""

    feed_id: int
    url: str  # as requested
    status: FetchStatus
    fetched_at: datetime  # aware UTC, when the fetch started
    elapsed_s: float = 0.0
    http_status: int | None = None
    final_url: str | None = None  # after redirects
    permanent_url: str | None = None  # set only when every redirect hop was 301/308
    body: bytes = b""  # only for status "ok"
    headers: tuple[tuple[str, str], ...] = ()  # the response headers parse needs (content-type, ...)
    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None  # sha256 hex of the decoded body
    retry_after: datetime | None = None
    max_age_s: float | None = None  # Cache-Control max-age (or Expires - Date)
    error: str | None = None  # a sentence naming the feed URL and what to do
    error_kind: str | None = None  # http | dns | network | timeout | too_large | private_address | redirects | parse

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "not_modified", "unchanged")


@dataclass(frozen=True, slots=True)
class ParsedItem:
    """One normalized feed entry. Identity is (outlet, key); see monitor.ingest.parse for the key's fallback chain."""

    key: str
    outlet: str
    guid: str | None
    link: str | None  # canonical (tracking parameters and fragment dropped)
    title: str
    summary: str
    author: str | None
    published_at: datetime  # aware UTC, never after the fetch time
    content_hash: str  # sha256 of normalized title + summary (syndication detection)


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    title: str | None
    link: str | None
    items: tuple[ParsedItem, ...]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DigestStory:
    """One story in a digest: its alerts since the subscription's cursor (a new_story alert and/or updates)."""

    story_id: int
    title: str
    link: str | None
    first_seen: datetime
    sources_count: int
    is_new: bool  # the story itself first appeared in this digest
    alerts: tuple[AlertView, ...]
    topics: tuple[str, ...] = ()  # names of every topic the story matched in this digest (it is shown once)
    reason: str | None = None  # for a new story: why it matched, in a line

    @property
    def updates(self) -> tuple[AlertView, ...]:
        return tuple(a for a in self.alerts if a.decision == "update")


@dataclass(frozen=True, slots=True)
class DigestTopic:
    topic_id: str
    name: str
    stories: tuple[DigestStory, ...]


@dataclass(frozen=True, slots=True)
class DigestContent:
    """What one digest says, grouped topic -> story; rendered by monitor.delivery.render into each channel's format."""

    recipient: str  # e-mail address or channel name
    recipient_name: str | None
    kind: str  # email | slack | webhook
    timezone: str  # times are shown in this zone
    generated_at: datetime  # aware UTC
    first_alert_id: int
    last_alert_id: int
    topics: tuple[DigestTopic, ...]
    subscribed_topics: tuple[str, ...] = ()  # names of the recipient's topics (the footer says them)

    @property
    def alert_count(self) -> int:
        return sum(len(s.alerts) for t in self.topics for s in t.stories)

    @property
    def story_count(self) -> int:
        return sum(len(t.stories) for t in self.topics)
