"""The transactional outbox: delivery rows are written with their digest (monitor.delivery.digest); workers claim due
rows under a lease, send them, and record the outcome.

* Claim: one row at a time, in a write transaction (SQLite: BEGIN IMMEDIATE + a guarded UPDATE; PostgreSQL:
  SELECT ... FOR UPDATE SKIP LOCKED). A row is due when pending and `next_attempt_at <= now`, or when a
  worker's lease on it has expired (the worker died mid-send: the row is sent again, with the same
  Message-ID / webhook-id, so the receiver can deduplicate).
* Every attempt is a delivery_attempts row, written when the row is claimed (outcome `sending`) and
  completed after the send (`sent`, `retry`, `failed`); an attempt whose worker died stays `sending` until
  the row is reclaimed, then reads `lost`.
* Retries: a transient failure (connection refused, timeout, SMTP 4xx, HTTP 5xx/429...) is retried on
  a schedule that spans days, like the Standard Webhooks schedule and a mail server's queue: 5 s, 5 min,
  30 min, 2 h, 5 h, then every 10 h (each with +-10% jitter; a receiver's Retry-After wins), until the
  row is GIVE_UP_AFTER (5 days) old. An outage of hours therefore loses nothing. When a send succeeds, the
  rows waiting for the same receiver (the SMTP server; a webhook's channel) are pulled forward to now, so
  a backlog goes out as soon as the receiver is back instead of at each row's next slot; a row the receiver
  answered itself with a refusal of that recipient or message (an SMTP 4xx to RCPT or DATA: greylisting, a
  full mailbox) keeps its own backoff.
* Only a permanent failure (SMTP 5xx, HTTP 4xx, a channel gone) or the end of that span ends a row as
  `failed`, with the error (`monitor deliveries list --failed`), an ERROR log line "delivery failed for
  good" and the `monitor_deliveries_failed` gauge; `monitor deliveries retry ID|--failed` sends it again.
* The lease is longer than any send can take (senders have their own, shorter, wall-clock timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.orm import Session

from monitor.config import ChannelConfig, Config, secret
from monitor.delivery import Outgoing, Sender
from monitor.delivery.email import EmlFileSender, SmtpSender
from monitor.delivery.webhook import SlackSender, WebhookSender
from monitor.errors import ChannelGoneError, DeliveryError
from monitor.netguard import guarded_transport
from monitor.storage.db import aware_utc, is_sqlite, naive_utc, storable_text, write_transaction
from monitor.storage.tables import Delivery, DeliveryAttempt, SubscriberEvent, Subscription, Suppression

log = logging.getLogger(__name__)

LEASE_S = 300.0
HTTP_TIMEOUT_S = 20.0
# Delay after the 1st, 2nd, ... failed attempt (the last one repeats): Standard Webhooks' schedule.
RETRY_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
RETRY_JITTER = 0.1
GIVE_UP_AFTER = timedelta(days=5)  # like a mail server's queue lifetime (Postfix: 5 days)
MAX_RETRY_AFTER_S = 6 * 3600.0
MAX_LOST_ATTEMPTS = 10  # attempts in a row whose worker died before recording an outcome


@dataclass
class DeliveryReport:
    """What one `deliver_due` pass did."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    delivery_ids: list[int] = field(default_factory=list)

    @property
    def claimed(self) -> int:
        return self.sent + self.retried + self.failed + self.cancelled

    def by_outcome(self) -> dict[str, int]:
        return {k: v for k, v in (("sent", self.sent), ("retry", self.retried), ("failed", self.failed),
                                  ("cancelled", self.cancelled)) if v}


@dataclass(frozen=True)
class OutboxStats:
    depth: int  # pending + sending
    oldest_pending_age_s: float
    by_status: dict[str, int]


def stats(session: Session, now: datetime) -> OutboxStats:
    """Outbox depth, oldest pending age and counts by status (for /metrics)."""
    by_status = {status: n for status, n in session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))}
    oldest = session.scalar(select(func.min(Delivery.created_at)).where(Delivery.status.in_(("pending", "sending"))))
    age = (now - aware_utc(oldest)).total_seconds() if oldest is not None else 0.0  # type: ignore[operator]
    return OutboxStats(depth=by_status.get("pending", 0) + by_status.get("sending", 0),
                       oldest_pending_age_s=max(age, 0.0), by_status=by_status)


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Delay after failed attempt number `attempt` (1-based): RETRY_SCHEDULE_S, +-RETRY_JITTER."""
    base = RETRY_SCHEDULE_S[min(max(attempt, 1), len(RETRY_SCHEDULE_S)) - 1]
    return base * (1 - RETRY_JITTER + 2 * RETRY_JITTER * rng.random())


# --- senders ---------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_senders(config: Config | Callable[[], Config],
                       env: Mapping[str, str] | None = None) -> AsyncIterator[dict[str, Sender]]:
    """The real senders: SMTP (or .eml files), Slack and signed webhooks. Keep one set open across passes
    (the service's lifetime) so the one-message-per-second Slack limit holds between ticks; pass a callable
    returning the current config so channel URLs/secrets follow hot reloads (SMTP settings do not)."""
    current = config if callable(config) else (lambda: config)
    s = current().settings

    def channel(name: str) -> ChannelConfig | None:
        return next((c for c in current().channels if c.name == name), None)

    def url(name: str) -> str | None:
        c = channel(name)
        return secret(c.url_env, env) if c else None

    def signing_secret(name: str) -> str | None:
        c = channel(name)
        return secret(c.secret_env, env) if c else None

    email: Sender
    if s.smtp is not None:
        email = SmtpSender(s.smtp, s.mail_from, secret(s.smtp.password_env, env))
    else:
        email = EmlFileSender(s.outbox_dir)
    # Connections go through the address guard's resolver, so a webhook host cannot pass the up-front check
    # and then resolve to a private address for the connection itself (DNS rebinding).
    transport = guarded_transport(allow_private_networks=s.allow_private_networks)
    async with httpx.AsyncClient(transport=transport, timeout=HTTP_TIMEOUT_S,
                                 follow_redirects=False, headers={"user-agent": s.user_agent}) as client:
        yield {
            "email": email,
            "slack": SlackSender(url, client, allow_private_networks=s.allow_private_networks),
            "webhook": WebhookSender(url, signing_secret, client, allow_private_networks=s.allow_private_networks,
                                     user_agent=s.user_agent),
        }


# --- claiming and recording ------------------------------------------------------------------------------


def _due(now: datetime):  # type: ignore[no-untyped-def]
    n = naive_utc(now)
    return or_(
        and_(Delivery.status == "pending", Delivery.next_attempt_at <= n),
        and_(Delivery.status == "sending", Delivery.lease_until < n),
    )


@dataclass(frozen=True)
class _Claim:
    message: Outgoing
    attempt_id: int
    subscription_id: int
    created_at: datetime  # when the retry span started: built, or last queued again by a person
    blocked: str | None  # why the subscription no longer receives (unsubscribed / disabled)
    lost: int = 0  # attempts in a row whose worker died before recording an outcome


def claim_one(engine: Engine, now: datetime, worker_id: str, lease_s: float) -> _Claim | None:
    """Claim the most overdue row for `lease_s` seconds; None when nothing is due."""
    n = naive_utc(now)
    for _ in range(5):  # another worker may win the guarded UPDATE; try the next row
        with write_transaction(engine) as s:
            q = select(Delivery.id).where(_due(now)).order_by(Delivery.next_attempt_at, Delivery.id).limit(1)
            if not is_sqlite(engine):
                q = q.with_for_update(skip_locked=True)
            delivery_id = s.scalar(q)
            if delivery_id is None:
                return None
            won = s.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id, _due(now))
                .values(status="sending", lease_owner=worker_id, lease_until=n + timedelta(seconds=lease_s),
                        attempts=Delivery.attempts + 1)
                .execution_options(synchronize_session=False)
            ).rowcount
            if won != 1:
                continue
            # An attempt still marked `sending` belonged to a worker that died before finishing it.
            s.execute(update(DeliveryAttempt)
                      .where(DeliveryAttempt.delivery_id == delivery_id, DeliveryAttempt.outcome == "sending")
                      .values(outcome="lost", error="the worker stopped before recording an outcome (lease expired)")
                      .execution_options(synchronize_session=False))
            lost = 0
            for outcome in s.scalars(select(DeliveryAttempt.outcome).where(DeliveryAttempt.delivery_id == delivery_id)
                                     .order_by(DeliveryAttempt.id.desc())):
                if outcome != "lost":
                    break
                lost += 1
            d = s.get_one(Delivery, delivery_id)
            sub = s.get_one(Subscription, d.subscription_id)
            attempt = DeliveryAttempt(delivery_id=d.id, at=n, outcome="sending")
            s.add(attempt)
            s.flush()
            blocked = None
            if sub.unsubscribed_at is not None:
                blocked = "unsubscribed before it was sent"
            elif sub.disabled_at is not None:
                blocked = f"channel disabled: {sub.disabled_reason or 'no reason recorded'}"
            return _Claim(
                message=Outgoing(delivery_id=d.id, kind=d.channel, target=d.target, idempotency_key=d.idempotency_key,
                                 payload=d.payload, attempt=d.attempts),
                attempt_id=attempt.id, subscription_id=d.subscription_id,
                created_at=aware_utc(d.requeued_at or d.created_at),  # type: ignore[arg-type]
                blocked=blocked, lost=lost,
            )
    return None


def _record(engine: Engine, claim: _Claim, worker_id: str, now: datetime, *, outcome: str, status: str,
            code: str | None, error: str | None, duration_ms: float | None, next_attempt_at: datetime | None = None,
            disable_reason: str | None = None, retry_scope: str | None = None, suppress: str | None = None) -> None:
    n = naive_utc(now)
    error, disable_reason = storable_text(error), storable_text(disable_reason)  # receivers' replies
    with write_transaction(engine) as s:
        s.execute(update(DeliveryAttempt).where(DeliveryAttempt.id == claim.attempt_id)
                  .values(outcome=outcome, code=code, error=error, duration_ms=duration_ms)
                  .execution_options(synchronize_session=False))
        values: dict[str, object] = {"status": status, "lease_owner": None, "lease_until": None, "last_error": error,
                                     "retry_scope": retry_scope}
        if status == "sent":
            values["sent_at"] = n
            guard = Delivery.status != "sent"  # a success is the truth even if our lease lapsed meanwhile
            # The receiver is up: what waits for it after a transient failure goes now, not at its next slot.
            # Not a row the receiver refused for itself (greylisting, a full mailbox): that keeps its backoff.
            same_receiver = and_(Delivery.channel == claim.message.kind,
                                 or_(Delivery.retry_scope.is_(None), Delivery.retry_scope != "recipient"))
            if claim.message.kind != "email":  # every e-mail goes through the one SMTP server
                same_receiver = and_(same_receiver, Delivery.target == claim.message.target)
            s.execute(update(Delivery)
                      .where(Delivery.status == "pending", same_receiver, Delivery.attempts > 0,
                             Delivery.next_attempt_at > n)
                      .values(next_attempt_at=n).execution_options(synchronize_session=False))
        else:
            guard = and_(Delivery.status == "sending", Delivery.lease_owner == worker_id)
        if next_attempt_at is not None:
            values["next_attempt_at"] = naive_utc(next_attempt_at)
        s.execute(update(Delivery).where(Delivery.id == claim.message.delivery_id, guard).values(**values)
                  .execution_options(synchronize_session=False))
        if suppress is not None and suppress_address(s, claim.message.target, suppress, now):
            log.warning("address suppressed: the mail server refused it permanently",
                        extra={"channel": "email", "target": claim.message.target,
                               "delivery_id": claim.message.delivery_id})
        if disable_reason is not None:
            s.execute(update(Subscription).where(Subscription.id == claim.subscription_id, Subscription.disabled_at.is_(None))
                      .values(disabled_at=n, disabled_reason=disable_reason).execution_options(synchronize_session=False))
            s.execute(update(Delivery)
                      .where(Delivery.subscription_id == claim.subscription_id, Delivery.status == "pending")
                      .values(status="cancelled", last_error=f"channel disabled: {disable_reason}")
                      .execution_options(synchronize_session=False))


# --- the pass --------------------------------------------------------------------------------------------


async def deliver_due(engine: Engine, config: Config, now: datetime, *, worker_id: str, limit: int = 50,
                      senders: Mapping[str, Sender] | None = None, concurrency: int = 4,
                      lease_s: float | None = None, rng: random.Random | None = None) -> DeliveryReport:
    """Claim and send up to `limit` due deliveries (`concurrency` at a time). `now` is the pass's start on the
    database's clock; every claim, lease and outcome is stamped `now` + the real time elapsed since, so a long
    pass (slow SMTP, many rows) never hands out a lease that has already expired for another worker. The
    senders' timeouts are real time. Returns what happened."""
    if senders is None:
        async with open_senders(config) as opened:
            return await deliver_due(engine, config, now, worker_id=worker_id, limit=limit, senders=opened,
                                     concurrency=concurrency, lease_s=lease_s, rng=rng)
    smtp_timeout = config.settings.smtp.timeout_s if config.settings.smtp else 0.0
    lease = lease_s if lease_s is not None else max(LEASE_S, 2 * max(smtp_timeout, HTTP_TIMEOUT_S) + 60)
    rng = rng or random.Random()
    report = DeliveryReport()
    budget = [limit]
    started = time.perf_counter()

    def clock() -> datetime:
        return now + timedelta(seconds=time.perf_counter() - started)

    async def worker() -> None:
        while budget[0] > 0:
            budget[0] -= 1
            claim = await asyncio.to_thread(claim_one, engine, clock(), worker_id, lease)
            if claim is None:
                return
            await _send_one(engine, claim, senders, worker_id, clock, rng, report)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, limit)))))
    return report


async def _send_one(engine: Engine, claim: _Claim, senders: Mapping[str, Sender], worker_id: str,
                    clock: Callable[[], datetime], rng: random.Random, report: DeliveryReport) -> None:
    msg = claim.message
    now = clock()
    extra = {"delivery_id": msg.delivery_id, "channel": msg.kind, "target": msg.target, "attempt": msg.attempt}
    report.delivery_ids.append(msg.delivery_id)
    if claim.blocked is not None:
        await asyncio.to_thread(_record, engine, claim, worker_id, now, outcome="cancelled", status="cancelled",
                                code=None, error=claim.blocked, duration_ms=None)
        report.cancelled += 1
        log.info("delivery cancelled: %s", claim.blocked, extra=extra)
        return
    if claim.lost >= MAX_LOST_ATTEMPTS:  # its workers kept dying mid-send (leases expired): stop trying
        reason = f"gave up after {claim.lost} attempts without an outcome (the worker stopped each time)"
        await asyncio.to_thread(_record, engine, claim, worker_id, now, outcome="failed", status="failed",
                                code=None, error=reason, duration_ms=None)
        report.failed += 1
        _log_failed(reason, extra)
        return
    sender = senders.get(msg.kind)
    t0 = time.perf_counter()
    code: str | None = None
    error: DeliveryError | None = None
    try:
        if sender is None:
            raise DeliveryError(f"no sender for {msg.kind!r} deliveries", permanent=True)
        code = await sender.send(msg)
    except DeliveryError as e:
        error = e
    except Exception as e:  # a sender bug must not lose the row: record it and retry
        log.exception("sender raised an unexpected error", extra=extra)
        error = DeliveryError(f"{type(e).__name__}: {e}")
    ms = (time.perf_counter() - t0) * 1000
    now = clock()
    if error is None:
        await asyncio.to_thread(_record, engine, claim, worker_id, now, outcome="sent", status="sent", code=code,
                                error=None, duration_ms=ms)
        report.sent += 1
        log.info("delivered", extra={**extra, "code": code})
        return
    if isinstance(error, ChannelGoneError):
        await asyncio.to_thread(_record, engine, claim, worker_id, now, outcome="failed", status="failed",
                                code=error.code, error=str(error), duration_ms=ms, disable_reason=str(error))
        report.failed += 1
        _log_failed(f"channel disabled: {error}", extra, hint=f"fix the channel, then `monitor digest enable {msg.target}`")
        return
    if error.permanent or now - claim.created_at >= GIVE_UP_AFTER:
        age = now - claim.created_at
        reason = str(error) if error.permanent else (
            f"gave up after {msg.attempt} attempts over {age.days} d {age.seconds // 3600} h: {error}")
        # An address the mail server refused for good is suppressed with this outcome, in its transaction
        # (no digest is built for it again), instead of being looked for in the outbox on every digest tick.
        suppress = f"{error.code} {error}" if error.address_refused and msg.kind == "email" else None
        await asyncio.to_thread(_record, engine, claim, worker_id, now, outcome="failed", status="failed",
                                code=error.code, error=reason, duration_ms=ms, suppress=suppress)
        report.failed += 1
        _log_failed(reason, extra)
        return
    if error.retry_after_s is not None:
        delay = min(max(error.retry_after_s, 1.0), MAX_RETRY_AFTER_S)
    else:
        delay = backoff_s(msg.attempt, rng)
    await asyncio.to_thread(_record, engine, claim, worker_id, now, outcome="retry", status="pending",
                            code=error.code, error=str(error), duration_ms=ms,
                            next_attempt_at=now + timedelta(seconds=delay),
                            retry_scope="recipient" if error.recipient_only else "receiver")
    report.retried += 1
    log.warning("delivery will be retried in %.0f s: %s", delay, error, extra=extra)


def suppress_address(session: Session, address: str, why: str, now: datetime) -> bool:
    """Stop every digest to `address` after a permanent refusal of it by the mail server (a bounce), with
    an event on each of its subscriptions; admins see it at /admin/suppressions. False when it already was."""
    address = address.strip().lower()
    if session.get(Suppression, address) is not None:
        return False
    session.add(Suppression(address=address, reason="bounce", detail=storable_text(why[:2000]) or "",
                            created_at=naive_utc(now)))
    for sub_id in session.scalars(select(Subscription.id).where(Subscription.kind == "email",
                                                                Subscription.target == address)):
        session.add(SubscriberEvent(subscription_id=sub_id, at=naive_utc(now), action="suppressed",
                                    detail={"reason": "bounce", "detail": why[:500]}))
    return True


def requeue(session: Session, now: datetime, *, delivery_ids: list[int] | None = None,
            where: Any = None) -> list[int]:
    """Queue deliveries that ended `failed` (or, with `where`, any rows it selects) for sending again now, with
    a fresh retry span; same row, same Message-ID / webhook-id. `delivery_ids=None` and `where=None`: every
    failed row. Returns the ids queued (rows that are not failed, e.g. already sent, are left alone)."""
    n = naive_utc(now)
    cond = Delivery.status == "failed" if where is None else where
    if delivery_ids is not None:
        cond = and_(cond, Delivery.id.in_(delivery_ids))
    return list(session.scalars(
        update(Delivery).where(cond)
        .values(status="pending", next_attempt_at=n, requeued_at=n, lease_owner=None, lease_until=None, retry_scope=None)
        .returning(Delivery.id).execution_options(synchronize_session=False)))


def reenable(session: Session, row: Subscription, now: datetime) -> int:
    """Re-enable a subscription the outbox disabled (HTTP 410, channel_not_found, ...) and queue again what
    was held back when it went away (same rows, same ids). Returns how many deliveries were queued."""
    reason = row.disabled_reason
    row.disabled_at, row.disabled_reason = None, None
    if reason is None:
        return 0
    return len(requeue(session, now, where=and_(
        Delivery.subscription_id == row.id, Delivery.status.in_(("failed", "cancelled")),
        or_(Delivery.last_error == reason, Delivery.last_error == f"channel disabled: {reason}"))))


def _log_failed(reason: str, extra: Mapping[str, object], hint: str | None = None) -> None:
    """The line an operator alerts on: one per delivery that ended `failed` (also the gauge
    `monitor_deliveries_failed`)."""
    what_to_do = hint or f"fix the cause, then `monitor deliveries retry {extra['delivery_id']}` (or --failed)"
    log.error("delivery failed for good: %s; %s", reason, what_to_do,
              extra={**extra, "event": "delivery_failed", "reason": reason})


def count_deliveries(session: Session, *, failed_only: bool = False) -> int:
    q = select(func.count()).select_from(Delivery)
    if failed_only:
        q = q.where(Delivery.status.in_(("failed", "cancelled")))
    return session.scalar(q) or 0


def list_deliveries(session: Session, *, failed_only: bool = False,
                    limit: int | None = 50) -> list[tuple[Delivery, list[DeliveryAttempt]]]:
    """Newest deliveries first, with their attempts (for `monitor deliveries list`); `limit=None`: all."""
    q = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if failed_only:
        q = q.where(Delivery.status.in_(("failed", "cancelled")))
    rows = list(session.scalars(q))
    attempts: dict[int, list[DeliveryAttempt]] = {}
    for i in range(0, len(rows), 500):  # bound parameters per statement (--all may list thousands)
        ids = [d.id for d in rows[i : i + 500]]
        for a in session.scalars(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(ids))
                                 .order_by(DeliveryAttempt.id)):
            attempts.setdefault(a.delivery_id, []).append(a)
    return [(d, attempts.get(d.id, [])) for d in rows]
