"""Signed, opaque links for subscribers: preferences, feedback on an alert, a story page, a topic's alert feeds,
a sign-up confirmation, and the one-use form token that the pages post back.

The same mechanism as the unsubscribe links (monitor.delivery.unsubscribe): itsdangerous over the service's
signing key (`unsubscribe.signing_key`), one salt per purpose so a token made for one page is refused by every
other, a timestamp from the service's clock (not the OS's). A token names ids only (a subscription, an alert,
a story), never an address, and reading one says in words why it is refused.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.timed import TimestampSigner

PREFS_MAX_AGE = timedelta(days=90)
FEEDBACK_MAX_AGE = timedelta(days=90)
STORY_MAX_AGE = timedelta(days=365)
CONFIRM_MAX_AGE = timedelta(days=2)
FORM_MAX_AGE = timedelta(hours=12)
SIGNUP_FORM_MAX_AGE = timedelta(hours=2)

FEEDBACK_KINDS = ("not_relevant", "known", "more_like_this")
FEEDBACK_LABELS = {"not_relevant": "Not relevant", "known": "Already knew this", "more_like_this": "More like this"}

_DAMAGED = "This link is damaged or was not issued by this service."


class InvalidLink(Exception):
    """A link that cannot be used; `reason` is a sentence for the person who clicked it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def timed_serializer(key: str, salt: str, now: datetime) -> URLSafeTimedSerializer:
    """A signed, timestamped serializer whose clock is `now` (itsdangerous reads the OS clock; the service
    runs on its own clock): every signed link of the service, unsubscribe included, is made with it."""
    stamp = int(now.timestamp())

    class _Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return stamp

    return URLSafeTimedSerializer(key, salt=salt, signer=_Signer)


def _timed(key: str, purpose: str, now: datetime) -> URLSafeTimedSerializer:
    return timed_serializer(key, f"monitor.subscriber.{purpose}.v1", now)


def _dump(key: str, purpose: str, payload: Any, now: datetime) -> str:
    return _timed(key, purpose, now).dumps(payload)


def _load(key: str, purpose: str, token: str, now: datetime, max_age: timedelta, expired: str) -> Any:
    try:
        return _timed(key, purpose, now).loads(token, max_age=int(max_age.total_seconds()))
    except SignatureExpired:
        raise InvalidLink(expired) from None
    except BadSignature:
        raise InvalidLink(_DAMAGED) from None


def _ints(value: Any, n: int) -> list[int]:
    if not isinstance(value, list) or len(value) != n or not all(isinstance(v, int) for v in value):
        raise InvalidLink(_DAMAGED)
    return value


# --- preferences -----------------------------------------------------------------------------------------


def prefs_token(key: str, subscription_id: int, now: datetime) -> str:
    return _dump(key, "prefs", [subscription_id], now)


def read_prefs_token(key: str, token: str, now: datetime) -> int:
    data = _load(key, "prefs", token, now, PREFS_MAX_AGE,
                 "This preferences link has expired. Use the link at the foot of a more recent digest.")
    return _ints(data, 1)[0]


# --- feedback --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedbackClaim:
    subscription_id: int
    alert_id: int
    kind: str


def feedback_token(key: str, subscription_id: int, alert_id: int, kind: str, now: datetime) -> str:
    return _dump(key, "feedback", [subscription_id, alert_id, FEEDBACK_KINDS.index(kind)], now)


def read_feedback_token(key: str, token: str, now: datetime) -> FeedbackClaim:
    data = _load(key, "feedback", token, now, FEEDBACK_MAX_AGE,
                 "This feedback link has expired: feedback is taken for 90 days after a digest.")
    sub_id, alert_id, kind = _ints(data, 3)
    if not 0 <= kind < len(FEEDBACK_KINDS):
        raise InvalidLink(_DAMAGED)
    return FeedbackClaim(sub_id, alert_id, FEEDBACK_KINDS[kind])


# --- story pages -----------------------------------------------------------------------------------------


def story_token(key: str, story_id: int, now: datetime) -> str:
    return _dump(key, "story", [story_id], now)


def read_story_token(key: str, token: str, now: datetime) -> int:
    data = _load(key, "story", token, now, STORY_MAX_AGE, "This story link has expired.")
    return _ints(data, 1)[0]


# --- sign-up confirmation --------------------------------------------------------------------------------


def confirm_token(key: str, subscription_id: int, now: datetime) -> str:
    return _dump(key, "confirm", [subscription_id], now)


def read_confirm_token(key: str, token: str, now: datetime) -> int:
    data = _load(key, "confirm", token, now, CONFIRM_MAX_AGE,
                 "This confirmation link has expired (links are valid for two days). Please sign up again.")
    return _ints(data, 1)[0]


# --- alert feeds (no expiry: a feed reader keeps its URL) ------------------------------------------------


def feed_token(key: str, topic_id: str) -> str:
    return URLSafeSerializer(key, salt="monitor.subscriber.feed.v1").dumps(topic_id)


def read_feed_token(key: str, token: str) -> str:
    try:
        data = URLSafeSerializer(key, salt="monitor.subscriber.feed.v1").loads(token)
    except BadSignature:
        raise InvalidLink("This feed address is not valid; ask the administrator for the current one.") from None
    if not isinstance(data, str):
        raise InvalidLink(_DAMAGED)
    return data


# --- form tokens: a page's POST must come from the page we rendered for this link ------------------------


def form_token(key: str, link_token: str, now: datetime) -> str:
    """The CSRF token of a page reached by a signed link: bound to that link, valid for `FORM_MAX_AGE`."""
    return _dump(key, "form", link_token, now)


def check_form_token(key: str, link_token: str, form: str | None, now: datetime) -> None:
    if not form:
        raise InvalidLink("This form was not sent from its page. Open the link again and use the button there.")
    data = _load(key, "form", form, now, FORM_MAX_AGE,
                 "This page was open too long. Open the link again and use the button there.")
    if data != link_token:
        raise InvalidLink("This form was not sent from its page. Open the link again and use the button there.")


def signup_form_token(key: str, now: datetime) -> str:
    """The sign-up form's token: a CSRF token carrying a fresh random nonce, valid for `SIGNUP_FORM_MAX_AGE`;
    the sign-up records the nonce, so one form (or one scraped token) signs up once."""
    return _dump(key, "form", "signup:" + secrets.token_urlsafe(16), now)


def read_signup_form_token(key: str, form: str | None, now: datetime) -> str:
    """The nonce of a sign-up form token (InvalidLink when missing, forged or too old)."""
    if not form:
        raise InvalidLink("This form was not sent from its page. Open the sign-up page again.")
    data = _load(key, "form", form, now, SIGNUP_FORM_MAX_AGE,
                 "This page was open too long. Open the sign-up page again.")
    if not isinstance(data, str) or not data.startswith("signup:") or not 8 <= len(data) - 7 <= 32:
        raise InvalidLink("This form was not sent from its page. Open the sign-up page again.")
    return data[7:]


# --- URLs ------------------------------------------------------------------------------------------------


def url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path
