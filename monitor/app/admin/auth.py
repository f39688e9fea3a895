"""Admin authentication for the web pages and the JSON API (reusable by any page that needs an admin).

* Accounts: `monitor admin create-user` stores an argon2id hash in `admin_users`; nothing else is kept.
* API: `Authorization: Bearer <token>` where the token is the value of the environment variable
  `MONITOR_ADMIN_TOKEN` (compared in constant time), or a logged-in browser session plus its CSRF header.
* Sessions: a signed, timestamped cookie (itsdangerous; HttpOnly, SameSite=Lax, Secure when the public
  `base_url` is https) naming the session id, the user and the account's session epoch; it expires after
  `SESSION_MAX_AGE`. The epoch is checked against `admin_users` (cached `check_ttl_s` per process): logging
  out, a new password, `monitor admin end-sessions` or disabling the account ends every session of it on
  every host. Every visitor gets a session id (anonymous until login), so the login form is CSRF-protected.
* CSRF: the token is an HMAC of the session id; every state-changing request must carry it (form field
  `csrf_token` or header `X-CSRF-Token`). A new session id is issued at login (no session fixation).
* Login attempts are rate-limited per client address and per user name (`LoginLimiter`), counted in the
  database so every web process shares the limit and a restart does not reset it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from monitor.errors import MonitorError
from monitor.storage.db import naive_utc, utcnow, write_transaction
from monitor.storage.tables import AdminUser, LoginFailure

ADMIN_TOKEN_ENV = "MONITOR_ADMIN_TOKEN"
SESSION_COOKIE = "monitor_session"
SESSION_MAX_AGE = 12 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SALT = "monitor.app.admin.session.v1"
_HASHER = PasswordHasher()  # argon2id with the library's current defaults (a constant, not state)
_USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")


class AuthError(MonitorError):
    """A user could not be created or authenticated (the message says why)."""


# --- accounts ---------------------------------------------------------------------------------------------


def create_user(engine: Engine, username: str, password: str, *, replace: bool = False) -> None:
    """Store an admin account with an argon2id hash of `password` (`replace` resets an existing one)."""
    username = username.strip()
    if not username or len(username) > 128 or set(username) - _USERNAME_CHARS:
        raise AuthError("a user name is 1-128 letters, digits or . _ @ -")
    if len(password) < 10:
        raise AuthError("the password must be at least 10 characters long")
    hashed = _HASHER.hash(password)
    with write_transaction(engine) as s:
        row = s.scalar(select(AdminUser).where(AdminUser.username == username))
        if row is not None and not replace:
            raise AuthError(f"admin user {username!r} already exists (use --replace to set a new password)")
        if row is None:
            s.add(AdminUser(username=username, password_hash=hashed, disabled=False,
                            created_at=naive_utc(utcnow())))
        else:
            row.password_hash, row.disabled = hashed, False
            row.session_epoch = (row.session_epoch or 0) + 1  # a new password ends the sessions of the old one


def end_sessions(engine: Engine, username: str) -> bool:
    """End every session of the account, on every host (its cookies name an older epoch). False when there
    is no such account."""
    with write_transaction(engine) as s:
        return bool(s.execute(update(AdminUser).where(AdminUser.username == username.strip())
                              .values(session_epoch=AdminUser.session_epoch + 1)).rowcount)


def session_epoch(engine: Engine, username: str) -> int | None:
    """The account's current session epoch; None when it does not exist or is disabled (no session is valid)."""
    with Session(engine) as s:
        row = s.execute(select(AdminUser.session_epoch, AdminUser.disabled)
                        .where(AdminUser.username == username)).first()
    return None if row is None or row.disabled else int(row.session_epoch or 0)


def verify_user(engine: Engine, username: str, password: str) -> bool:
    """True when the account exists, is enabled and the password is right. Takes the same time whether the
    user exists or not (a dummy hash is verified), so user names cannot be probed by timing."""
    with Session(engine) as s:
        row = s.scalar(select(AdminUser).where(AdminUser.username == username.strip()))
    stored = row.password_hash if row is not None and not row.disabled else _DUMMY_HASH
    try:
        ok = _HASHER.verify(stored, password) and row is not None and not row.disabled
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if ok and row is not None:
        rehash = _HASHER.hash(password) if _HASHER.check_needs_rehash(row.password_hash) else None
        with write_transaction(engine) as s:  # BEGIN IMMEDIATE: waits for the pipeline's writers on SQLite
            values: dict[str, object] = {"last_login_at": naive_utc(utcnow())}
            if rehash:
                values["password_hash"] = rehash
            s.execute(update(AdminUser).where(AdminUser.id == row.id).values(**values))
    return ok


_DUMMY_HASH = _HASHER.hash("not a password anyone has")


def token_matches(presented: str, env: Mapping[str, str]) -> bool:
    """The API token from the environment (no token configured: token auth is off)."""
    expected = env.get(ADMIN_TOKEN_ENV) or ""
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


# --- sessions and CSRF ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebSession:
    sid: str
    user: str | None  # None: not logged in
    csrf: str
    fresh: bool  # made for this request: the response must set the cookie
    epoch: int = 0  # the account's session epoch when the session was made


@dataclass
class SessionKeeper:
    """Reads and writes the session cookie; computes and checks CSRF tokens. Built once by the composition
    root with the service's secret key."""

    secret_key: str
    secure: bool = False  # Secure cookies (the public base_url is https)
    max_age: int = SESSION_MAX_AGE
    engine: Engine | None = None  # admin_users, for the session epoch (None: cookies are not revocable)
    check_ttl_s: float = 5.0  # how long this process trusts an account's epoch before reading it again
    _serializer: URLSafeTimedSerializer = field(init=False, repr=False)
    _epochs: dict[str, tuple[float, int | None]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._serializer = URLSafeTimedSerializer(self.secret_key, salt=_SALT)

    def csrf_for(self, sid: str) -> str:
        return hmac.new(self.secret_key.encode(), f"csrf:{sid}".encode(), hashlib.sha256).hexdigest()

    def _make(self, user: str | None, epoch: int = 0) -> WebSession:
        sid = secrets.token_urlsafe(24)
        return WebSession(sid=sid, user=user, csrf=self.csrf_for(sid), fresh=True, epoch=epoch)

    def _epoch(self, user: str, *, fresh: bool = False) -> int | None:
        if self.engine is None:
            return 0
        cached = self._epochs.get(user)
        if not fresh and cached is not None and time.monotonic() - cached[0] < self.check_ttl_s:
            return cached[1]
        epoch = session_epoch(self.engine, user)
        if len(self._epochs) > 1000:  # bound what unknown user names in forged-free cookies can make us hold
            self._epochs.clear()
        self._epochs[user] = (time.monotonic(), epoch)
        return epoch

    def read(self, request: Request) -> WebSession:
        """The request's session (a new anonymous one when the cookie is missing, forged or expired)."""
        raw = request.cookies.get(SESSION_COOKIE)
        if raw:
            try:
                data = self._serializer.loads(raw, max_age=self.max_age)
                sid, user, epoch = str(data["sid"]), data.get("user"), int(data.get("epoch", 0))
                if user and self._epoch(str(user)) != epoch:
                    return self._make(None)  # logged out elsewhere, new password, or account disabled
                return WebSession(sid=sid, user=str(user) if user else None, csrf=self.csrf_for(sid), fresh=False,
                                  epoch=epoch)
            except (BadSignature, KeyError, TypeError, ValueError):
                pass
        return self._make(None)

    def login(self, user: str) -> WebSession:
        return self._make(user, self._epoch(user, fresh=True) or 0)

    def logout(self, session: WebSession | None = None) -> WebSession:
        """A new anonymous session; the user's sessions end everywhere (a copied cookie included)."""
        if session is not None and session.user and self.engine is not None:
            end_sessions(self.engine, session.user)
            self._epochs.pop(session.user, None)
        return self._make(None)

    def write(self, response: Response, session: WebSession) -> None:
        value = self._serializer.dumps({"sid": session.sid, "user": session.user, "epoch": session.epoch})
        response.set_cookie(SESSION_COOKIE, value, max_age=self.max_age, path="/", httponly=True,
                            samesite="lax", secure=self.secure)

    def csrf_ok(self, session: WebSession, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(str(presented), session.csrf)


# --- login rate limit -------------------------------------------------------------------------------------


@dataclass
class LoginLimiter:
    """At most `max_failures` failed logins per client address and per user name within `window_s`; after
    that, login answers 429 until the window has passed. Counted in `login_failures`, so every web process
    (and host) shares one limit and a restart does not reset it."""

    engine: Engine
    max_failures: int = 5
    window_s: float = 300.0
    now: Callable[[], datetime] = utcnow

    @staticmethod
    def _keys(client: str, username: str) -> tuple[str, str]:
        return f"ip:{client[:64]}", f"user:{username.lower()[:128]}"

    def _cutoff(self) -> datetime:
        return naive_utc(self.now() - timedelta(seconds=self.window_s))

    def retry_after(self, client: str, username: str) -> int:
        """Seconds to wait before another attempt is allowed (0: allowed now)."""
        cutoff = self._cutoff()
        waits = []
        with Session(self.engine) as s:
            for key in self._keys(client, username):
                times = s.scalars(select(LoginFailure.at).where(LoginFailure.key == key, LoginFailure.at >= cutoff)
                                  .order_by(LoginFailure.at.desc()).limit(self.max_failures)).all()
                if len(times) >= self.max_failures:  # allowed again once the oldest of these leaves the window
                    waits.append(int((times[-1] - cutoff).total_seconds()) + 1)
        return max(waits, default=0)

    def failed(self, client: str, username: str) -> None:
        at = naive_utc(self.now())
        with write_transaction(self.engine) as s:
            s.execute(delete(LoginFailure).where(LoginFailure.at < self._cutoff()))
            s.add_all([LoginFailure(key=k, at=at) for k in self._keys(client, username)])

    def succeeded(self, client: str, username: str) -> None:
        with write_transaction(self.engine) as s:
            s.execute(delete(LoginFailure).where(LoginFailure.key == self._keys(client, username)[1]))
