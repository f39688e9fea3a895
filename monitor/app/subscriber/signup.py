"""Self sign-up (when the admin turns `self_signup` on): double opt-in and a rate limit; bounces and
complaints suppress an address.

* `request_signup` records the attempt (rate limit per client address and per e-mail address), creates the
  subscription unconfirmed (source "signup"; monitor.delivery.digest sends nothing to it until confirmed) and
  returns the confirmation e-mail to send. An address already subscribed or suppressed gets no e-mail, and
  the page answers the same either way, so the form never tells who subscribes.
* `confirm` (the POST behind the e-mailed link) starts the subscription from now on.
* `suppress` (an SMTP 5xx at send, or a DSN read by `parse_dsn`) stops every digest to an address and
  leaves a row admins can see (`suppressed`)."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.config import Config
from monitor.delivery import links, render
from monitor.errors import MonitorError
from monitor.storage.db import naive_utc, write_transaction
from monitor.storage.tables import (
    Alert,
    SignupAttempt,
    SubscriberEvent,
    SubscriberPrefs,
    Subscription,
    Suppression,
)

log = logging.getLogger(__name__)

_EMAIL = re.compile(r"^[^@\s<>\"(),;:\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")


class SignupError(MonitorError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class SignupResult:
    address: str
    message: bytes | None  # the confirmation e-mail, or None when none is to be sent


def request_signup(engine: Engine, config: Config, key: str, address: str, topics: list[str], client: str,
                   now: datetime, *, form_nonce: str | None = None) -> SignupResult:
    address = address.strip().lower()
    if len(address) > 254 or not _EMAIL.match(address):
        raise SignupError("Enter an e-mail address like someone@example.org.")
    known = [t.id for t in config.enabled_topics]  # a disabled topic is neither offered nor accepted
    chosen = [t for t in known if t in topics] if topics else known
    if topics and len(chosen) != len(set(topics)):
        raise SignupError("Choose topics from the list.")
    limit = config.settings.signup_limit_per_hour
    try:
        return _request(engine, config, key, address, chosen, client, now, form_nonce, limit)
    except IntegrityError:  # the same form posted twice at once: the other post's row holds the nonce
        raise SignupError(_USED_FORM, 400) from None


_USED_FORM = "This form was sent already. Open the sign-up page again to sign up another address."


def _request(engine: Engine, config: Config, key: str, address: str, chosen: list[str], client: str,
             now: datetime, form_nonce: str | None, limit: int) -> SignupResult:
    with write_transaction(engine) as s:
        if form_nonce is not None and s.scalar(select(SignupAttempt.id).where(SignupAttempt.form_nonce == form_nonce)):
            raise SignupError(_USED_FORM, 400)
        since = naive_utc(now - timedelta(hours=1))
        by_client = s.scalar(select(func.count()).select_from(SignupAttempt)
                             .where(SignupAttempt.client == client[:64], SignupAttempt.at >= since)) or 0
        by_address = s.scalar(select(func.count()).select_from(SignupAttempt)
                              .where(SignupAttempt.address == address, SignupAttempt.at >= since)) or 0
        if by_client >= limit or by_address >= limit:
            raise SignupError("Too many sign-up requests; please try again in an hour.", 429)
        s.add(SignupAttempt(client=client[:64], address=address, at=naive_utc(now), form_nonce=form_nonce))
        s.flush()
        if s.get(Suppression, address) is not None or address in {x.email.lower() for x in config.subscribers}:
            return SignupResult(address, None)  # suppressed, or subscribed by feeds.toml: nothing to confirm
        row = s.scalar(select(Subscription).where(Subscription.kind == "email", Subscription.target == address))
        if row is None:
            cursor = s.scalar(select(func.coalesce(func.max(Alert.id), 0))) or 0
            row = Subscription(kind="email", target=address, cursor_alert_id=cursor, created_at=naive_utc(now))
            s.add(row)
            s.flush()
            s.add(SubscriberPrefs(subscription_id=row.id, source="signup", topics=chosen, cadence="daily",
                                  daily_at="08:00", timezone=config.settings.timezone, updated_at=naive_utc(now)))
            s.add(SubscriberEvent(subscription_id=row.id, at=naive_utc(now), action="signup",
                                  detail={"topics": chosen, "client": client[:64]}))
        elif row.unsubscribed_at is not None:
            # Unsubscribed earlier: sign up again with a fresh double opt-in. Nothing is sent until the new
            # confirmation (unsubscribed_at stays set until `confirm`), and then only what is alerted from then on.
            prefs = s.get(SubscriberPrefs, row.id)
            if prefs is None:
                prefs = SubscriberPrefs(subscription_id=row.id, cadence="daily", daily_at="08:00",
                                        timezone=config.settings.timezone)
                s.add(prefs)
            prefs.source, prefs.topics, prefs.confirmed_at, prefs.updated_at = "signup", chosen, None, naive_utc(now)
            prefs.paused_until = prefs.paused_from = None
            s.add(SubscriberEvent(subscription_id=row.id, at=naive_utc(now), action="signup",
                                  detail={"topics": chosen, "client": client[:64], "again": True}))
        else:
            prefs = s.get(SubscriberPrefs, row.id)
            if prefs is None or prefs.source != "signup" or prefs.confirmed_at is not None:
                return SignupResult(address, None)  # already subscribed: nothing to confirm
            prefs.topics = chosen
        sub_id = row.id
    url = f"{config.settings.base_url.rstrip('/')}/signup/confirm/{links.confirm_token(key, sub_id, now)}"
    return SignupResult(address, confirmation_email(config, address, url, now))


def confirmation_email(config: Config, address: str, url: str, now: datetime) -> bytes:
    msg = EmailMessage()
    msg["Message-ID"] = f"<{uuid.uuid4().hex}.signup@{render.message_id_domain(config.settings.mail_from)}>"
    msg["Date"] = format_datetime(now)
    msg["From"] = config.settings.mail_from
    msg["To"] = address
    msg["Subject"] = "Confirm your monitor subscription"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        "Someone (we hope you) asked to receive monitor digests at this address.\n\n"
        f"To confirm, open this link and press the button (valid for two days):\n{url}\n\n"
        "If it was not you, ignore this message: nothing will be sent.\n")
    return msg.as_bytes()


def confirm(session: Session, subscription_id: int, now: datetime) -> bool:
    prefs = session.get(SubscriberPrefs, subscription_id)
    row = session.get(Subscription, subscription_id)
    if prefs is None or row is None or prefs.source != "signup":
        raise SignupError("This subscription no longer exists; please sign up again.", 404)
    if prefs.confirmed_at is not None:
        return False
    prefs.confirmed_at = naive_utc(now)
    row.unsubscribed_at = None
    row.cursor_alert_id = max(row.cursor_alert_id, session.scalar(select(func.coalesce(func.max(Alert.id), 0))) or 0)
    session.add(SubscriberEvent(subscription_id=row.id, at=naive_utc(now), action="confirm", detail={}))
    log.info("sign-up confirmed", extra={"subscription_id": row.id, "channel": "email"})
    return True


# --- bounces and complaints ------------------------------------------------------------------------------


def suppress(session: Session, address: str, reason: str, detail: str, now: datetime) -> bool:
    """Stop sending to `address` (bounce | complaint). True if newly suppressed."""
    address = address.strip().lower()
    if session.get(Suppression, address) is not None:
        return False
    session.add(Suppression(address=address, reason=reason, detail=detail[:2000], created_at=naive_utc(now)))
    for row in session.scalars(select(Subscription).where(Subscription.kind == "email", Subscription.target == address)):
        session.add(SubscriberEvent(subscription_id=row.id, at=naive_utc(now), action="suppressed",
                                    detail={"reason": reason, "detail": detail[:500]}))
    log.warning("address suppressed", extra={"channel": "email", "reason": reason})
    return True


def suppressed(session: Session) -> list[Suppression]:
    return list(session.scalars(select(Suppression).order_by(Suppression.created_at.desc())))


@dataclass(frozen=True, slots=True)
class DsnFailure:
    address: str
    reason: str  # bounce | complaint
    detail: str


def parse_dsn(raw: bytes) -> list[DsnFailure]:
    """The permanently failed recipients of a delivery status notification (RFC 3464: a
    multipart/report; report-type=delivery-status with Action: failed and a 5.x.x Status), or of a complaint
    (an ARF report, RFC 5965: report-type=feedback-report). Anything else yields nothing."""
    msg = message_from_bytes(raw, policy=policy.default)
    if msg.get_content_type() != "multipart/report":
        return []
    report_type = (msg.get_param("report-type") or "").lower()  # type: ignore[union-attr]
    out: list[DsnFailure] = []
    for part in msg.iter_parts():  # type: ignore[attr-defined]
        ctype = part.get_content_type()
        if report_type == "delivery-status" and ctype == "message/delivery-status":
            for fields in _status_groups(part):
                action = fields.get("action", "").lower()
                status = fields.get("status", "")
                rcpt = fields.get("final-recipient") or fields.get("original-recipient") or ""
                addr = rcpt.split(";", 1)[-1].strip().strip("<>")
                if action == "failed" and status.startswith("5") and "@" in addr:
                    out.append(DsnFailure(addr.lower(), "bounce", f"{status} {fields.get('diagnostic-code', '')}".strip()))
        elif report_type == "feedback-report" and ctype == "message/feedback-report":
            fields = _status_groups(part)
            for f in fields:
                addr = f.get("original-rcpt-to", "").strip().strip("<>")
                if "@" in addr:
                    out.append(DsnFailure(addr.lower(), "complaint", f.get("feedback-type", "abuse")))
    return out


def _status_groups(part: EmailMessage) -> list[dict[str, str]]:
    """The header groups of a message/delivery-status (or feedback-report) part, lower-case keys."""
    payload = part.get_payload()
    texts: list[str] = []
    if isinstance(payload, list):
        for sub in payload:
            texts.append("".join(f"{k}: {v}\n" for k, v in sub.items()))
    else:
        texts.append(str(payload))
    groups: list[dict[str, str]] = []
    for text in texts:
        for block in re.split(r"\r?\n\s*\r?\n", text):
            fields: dict[str, str] = {}
            for line in block.splitlines():
                if ":" in line and not line[:1].isspace():
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
            if fields:
                groups.append(fields)
    return groups
