"""Table definitions (SQLAlchemy 2.x). The alembic migrations in `alembic/versions/` are generated from
these (`make migration`); a test fails when the two drift apart.

Times are stored as naive UTC datetimes (SQLite has no time zone type); `monitor.storage.db.utc()` turns
them back into aware ones at the edges.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


# --- feeds and items (fetch / parse / store) ------------------------------------------------------------


class Feed(Base):
    """A feed and its fetch state. Scheduling state lives here (not in the scheduler's memory) so a restart
    loses nothing and several workers can share the work."""

    __tablename__ = "feeds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    config_url: Mapped[str] = mapped_column(String(2048), index=True)  # as written in feeds.toml
    name: Mapped[str | None] = mapped_column(String(512))
    title: Mapped[str | None] = mapped_column(String(1024))  # the feed's own title
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # From feeds.toml: the feed carries other outlets' items (each item's outlet comes from its own link).
    aggregator: Mapped[bool] = mapped_column(Boolean, default=False)
    interval_s: Mapped[int | None] = mapped_column(Integer)  # fixed interval from config, None = adaptive
    etag: Mapped[str | None] = mapped_column(String(1024))
    last_modified: Mapped[str | None] = mapped_column(String(128))
    body_hash: Mapped[str | None] = mapped_column(String(64))  # sha256 of the last body parsed
    next_check_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)  # a worker holds this feed until then
    # Who holds the lease (a worker id): a fetch is recorded only while its worker still holds the feed (fencing).
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[str | None] = mapped_column(String(64))  # ok | not_modified | unchanged | error:<kind>
    last_error: Mapped[str | None] = mapped_column(Text)
    last_checked_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_new_item_at: Mapped[datetime | None] = mapped_column(DateTime)
    publish_interval_s: Mapped[float | None] = mapped_column(Float)  # smoothed gap between new items
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Item(Base):
    """One news item. Identity: (outlet, key); see monitor.ingest.parse for the key's fallback chain."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("outlet", "key", name="uq_items_outlet_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), index=True)
    outlet: Mapped[str] = mapped_column(String(255))  # registrable domain of the feed, e.g. bbc.co.uk
    key: Mapped[str] = mapped_column(String(512))
    guid: Mapped[str | None] = mapped_column(String(2048))
    link: Mapped[str | None] = mapped_column(String(2048))  # canonical link
    title: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str | None] = mapped_column(String(512))
    published_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    fetched_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)  # normalized title+summary: syndication
    processed_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)  # embed+match+novelty done
    # A process encoding this item holds it until then (real time), so others take the next batch instead.
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # the worker holding the claim (fencing)


class ItemVector(Base):
    """An item's embedding, stored once per model and reused by match, novelty and backtests."""

    __tablename__ = "item_vectors"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, L2-normalised


# --- topics: matches, stories and novelty decisions -----------------------------------------------------


class Match(Base):
    __tablename__ = "matches"
    __table_args__ = (UniqueConstraint("item_id", "topic_id", name="uq_matches_item_topic"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    topic_id: Mapped[str] = mapped_column(String(64), index=True)
    score: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Story(Base):
    __tablename__ = "stories"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    topic_id: Mapped[str] = mapped_column(String(64), index=True)
    title: Mapped[str] = mapped_column(Text)  # headline of the first item
    link: Mapped[str | None] = mapped_column(String(2048))
    first_item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id", ondelete="SET NULL"))
    first_seen: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime] = mapped_column(DateTime, index=True)
    item_count: Mapped[int] = mapped_column(Integer, default=1)
    sources: Mapped[list[str]] = mapped_column(JSON, default=list)  # outlets that carried it
    centroid: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 representative vector
    # float32 (k, dim) matrix of member vectors (first item + most recent): novelty compares to members.
    member_vectors: Mapped[bytes | None] = mapped_column(LargeBinary)
    # float32 (k, dim) vectors of the story's items that alerted (the last few): what subscribers were told,
    # compared with later items of the topic to recognise a retelling.
    alerted_vectors: Mapped[bytes | None] = mapped_column(LargeBinary)
    state: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)  # novelty's own memory (facts seen...)
    closed: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # Readers' "already knew this" marks on its alerts: each pair of marks asks one more new fact of an update.
    known_marks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Alert(Base):
    """The novelty decision for one matched item. Rows with decision new_story/update are alerts; the
    autoincrement id is the digest cursor (a subscription has seen every alert id <= its cursor)."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("item_id", "topic_id", name="uq_alerts_item_topic"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id", ondelete="SET NULL"), index=True)
    topic_id: Mapped[str] = mapped_column(String(64), index=True)
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id", ondelete="CASCADE"), index=True)
    decision: Mapped[str] = mapped_column(String(16), index=True)  # new_story | update | repeat
    reason: Mapped[str] = mapped_column(Text)
    what_is_new: Mapped[str | None] = mapped_column(Text)
    similarity: Mapped[float | None] = mapped_column(Float)
    # Copied from the item so alerts and digests survive item retention.
    title: Mapped[str] = mapped_column(Text)
    link: Mapped[str | None] = mapped_column(String(2048))
    outlet: Mapped[str] = mapped_column(String(255))
    published_at: Mapped[datetime] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)


# --- subscriptions, digests and the outbox --------------------------------------------------------------


class Subscription(Base):
    """One recipient (e-mail subscriber or channel). Created from feeds.toml; the cursor and unsubscribes
    live here and override the file."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("kind", "target", name="uq_subscriptions_kind_target"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # email | slack | webhook
    target: Mapped[str] = mapped_column(String(512))  # e-mail address (lower-case) or channel name
    cursor_alert_id: Mapped[int] = mapped_column(Integer, default=0)
    # The cadence the next_digest_at was computed for ("daily 08:00 Europe/London"): a config edit recomputes it.
    schedule: Mapped[str | None] = mapped_column(String(128))
    last_digest_at: Mapped[datetime | None] = mapped_column(DateTime)
    next_digest_at: Mapped[datetime | None] = mapped_column(DateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(DateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Digest(Base):
    __tablename__ = "digests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True)
    from_alert_id: Mapped[int] = mapped_column(Integer)  # exclusive
    to_alert_id: Mapped[int] = mapped_column(Integer)  # inclusive
    alert_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Delivery(Base):
    """The outbox: one message to send. Written in the same transaction as its digest and the cursor."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digests.id", ondelete="CASCADE"), index=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))  # email | slack | webhook
    target: Mapped[str] = mapped_column(String(512))
    part: Mapped[int] = mapped_column(Integer, default=1)  # a Slack digest may be split into several messages
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)  # Message-ID / webhook-id
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # the rendered message, sent as is on every retry
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending|sending|sent|failed|cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    # When a person last queued it again (`monitor deliveries retry`, `digest enable`): the retry span restarts.
    requeued_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Why a pending row waits: "receiver" (down or unreachable: pulled forward when a send to it succeeds)
    # or "recipient" (this message or address refused for now, e.g. greylisting: keeps its own backoff).
    retry_scope: Mapped[str | None] = mapped_column(String(16))


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    outcome: Mapped[str] = mapped_column(String(16))  # sending (in flight) | sent | retry | failed | cancelled | lost
    code: Mapped[str | None] = mapped_column(String(32))  # SMTP reply code or HTTP status
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None] = mapped_column(Float)


Index("ix_deliveries_due", Delivery.status, Delivery.next_attempt_at)


# --- scale-out: the processes sharing the work (monitor.storage.workers) --------------------------------


class Worker(Base):
    """A running `monitor run` process and its heartbeat. A worker whose heartbeat is older than its own
    `dead_after_s` is presumed dead: its leases on feeds, items and deliveries are taken back at once (instead
    of waiting for them to lapse) and any late write it attempts is refused (the lease owner no longer matches)."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid, the lease owner it writes
    roles: Mapped[str] = mapped_column(String(64))  # e.g. "scheduler,web" or "worker"
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    dead_after_s: Mapped[float] = mapped_column(Float)
    # Work done since the start (feeds fetched, items processed, deliveries sent), written with each beat.
    stats: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)


# --- subscribers in control: preferences, feedback, sign-up, suppression (monitor.app.subscriber) -------


class SubscriberPrefs(Base):
    """A subscriber's own choices, made on the preferences page; they override feeds.toml for this address.
    A self-signed-up subscriber (source "signup") exists only here and gets nothing until confirmed."""

    __tablename__ = "subscriber_prefs"
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), default="config")  # config | signup
    topics: Mapped[list[str] | None] = mapped_column(JSON)  # None = as feeds.toml says
    cadence: Mapped[str | None] = mapped_column(String(16))
    daily_at: Mapped[str | None] = mapped_column(String(5))  # HH:MM local
    timezone: Mapped[str | None] = mapped_column(String(64))
    paused_until: Mapped[datetime | None] = mapped_column(DateTime)
    paused_from: Mapped[datetime | None] = mapped_column(DateTime)  # when the pause began (None: before it was kept)
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime)  # signup: double opt-in done
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class SubscriberEvent(Base):
    """Every change a subscriber (or a bounce) made to a subscription: what, when, from which value."""

    __tablename__ = "subscriber_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    action: Mapped[str] = mapped_column(String(32))  # prefs | pause | unsubscribe | resubscribe | signup | confirm
    detail: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)


class Feedback(Base):
    """A reader's verdict on one alerted item: not_relevant | known | more_like_this. One per (who, item, kind)."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("subscription_id", "item_key", "kind", name="uq_feedback_who_item_kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True)
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="SET NULL"))
    # The item id, or "a<alert id>" once retention removed the item (alerts keep a copy of its title).
    item_key: Mapped[str] = mapped_column(String(32))
    item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id", ondelete="SET NULL"), index=True)
    topic_id: Mapped[str] = mapped_column(String(64), index=True)
    story_id: Mapped[int | None] = mapped_column(ForeignKey("stories.id", ondelete="SET NULL"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text)  # the item's headline, kept for the suggestion list
    summary: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    applied_at: Mapped[datetime | None] = mapped_column(DateTime)  # turned into a topic change by an admin


class Suppression(Base):
    """An address that bounced or complained: nothing more is sent to it; admins see why."""

    __tablename__ = "suppressions"
    address: Mapped[str] = mapped_column(String(254), primary_key=True)
    reason: Mapped[str] = mapped_column(String(16))  # bounce | complaint
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)


class SignupAttempt(Base):
    """Sign-up requests, for the rate limit (per client address and per e-mail address)."""

    __tablename__ = "signup_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(254), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    # The sign-up form's one-use nonce (links.signup_form_token): a second post of the same form is refused.
    form_nonce: Mapped[str | None] = mapped_column(String(32), unique=True)


# --- the admin web UI and API (monitor.app.admin) -------------------------------------------------------


class AdminUser(Base):
    """An admin account (`monitor admin create-user`): the password is kept only as an argon2 hash."""

    __tablename__ = "admin_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Every session cookie names the epoch it was issued in; raising it (log out, a new password,
    # `monitor admin end-sessions`) ends every session of the account on every host.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class LoginFailure(Base):
    """Failed admin logins, for the rate limit every web process shares (key: `ip:<client>` or
    `user:<name>`); rows older than the limit's window are pruned."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)


class AuditEntry(Base):
    """Who changed what through the admin pages or API, when, and the change itself (a readable diff)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(128))  # admin user name, or "api-token"
    action: Mapped[str] = mapped_column(String(64))  # topic.update, topic.create, feed.disable ...
    target: Mapped[str] = mapped_column(String(2048))  # topic id, feed URL, subscriber address ...
    diff: Mapped[str] = mapped_column(Text, default="")


class ConfigRevision(Base):
    """Every feeds.toml written by the admin pages, in full: a service on another host sees a newer revision
    here and applies it (monitor.app.admin.configfile.pull_revision), so an edit needs no restart anywhere."""

    __tablename__ = "config_revisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
