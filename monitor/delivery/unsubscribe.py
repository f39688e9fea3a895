"""One-click unsubscribe (RFC 8058) with signed, expiring tokens.

* The token (itsdangerous, salted, timestamped) names the subscription id only, never the address (a
  forwarded digest or a proxy log must not reveal who receives it); it is valid for `TOKEN_MAX_AGE` after
  the digest was built. Tokens of the first format (id and address) are still read until they expire.
* The signing key is `MONITOR_SECRET_KEY`; only a single-machine install (SQLite) may fall back to a local
  key file. With any other database it is required at start-up, since several hosts share the database and
  each must check the links the others signed.
* `GET /unsubscribe/{token}` only shows a confirmation page with a form: link scanners and previews that
  follow links unsubscribe nobody.
* `POST /unsubscribe/{token}` (the mail client's one-click `List-Unsubscribe=One-Click` body, or the form)
  unsubscribes: no login, no redirect, idempotent. The state lives in `subscriptions.unsubscribed_at` and
  overrides feeds.toml.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from monitor.config import Config, Settings, secret
from monitor.delivery import links, render
from monitor.errors import ConfigError
from monitor.storage.db import naive_utc, utcnow
from monitor.storage.tables import Subscription

log = logging.getLogger(__name__)

SALT = "monitor.delivery.unsubscribe.v1"
TOKEN_MAX_AGE = timedelta(days=90)
PATH = "/unsubscribe/{token}"

_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


class InvalidToken(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def signing_key(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The key that signs unsubscribe links: the environment variable `settings.secret_key_env`, else (a
    single-machine install on SQLite) a random key made once and kept in `<outbox_dir>/../.secret_key` (mode
    0600) so links survive restarts. With any other database the variable is required (ConfigError): the
    hosts that share that database must share the key. The digest builder and the web routes must use the
    same key: call this in both."""
    key = secret(settings.secret_key_env, env)
    if key:
        return key
    if not settings.database_url.startswith("sqlite"):
        name = settings.secret_key_env
        raise ConfigError(
            f"{name} is not set, and it is required when the database is not SQLite: several hosts share that "
            "database, so a digest signed on one host must be checked on another, which works only if they all "
            f"use the same key. Set {name} to the same random value on every host (e.g. the output of "
            "`openssl rand -base64 32`); changing it later invalidates the links in digests already sent.")
    path = Path(settings.outbox_dir).parent / ".secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32))
    log.warning("no %s in the environment: made a local signing key for unsubscribe links", settings.secret_key_env,
                extra={"path": str(path)})
    return path.read_text().strip()


def _serializer(secret_key: str, now: datetime) -> URLSafeTimedSerializer:
    return links.timed_serializer(secret_key, SALT, now)


def make_token(secret_key: str, subscription_id: int, now: datetime) -> str:
    """A signed, timestamped token naming the subscription id only."""
    return _serializer(secret_key, now).dumps([subscription_id])


def read_token(secret_key: str, token: str, now: datetime, max_age: timedelta = TOKEN_MAX_AGE) -> int:
    """The subscription id of a valid token; InvalidToken with a reason a person understands."""
    damaged = "This link is damaged or was not issued by this service."
    try:
        data = _serializer(secret_key, now).loads(token, max_age=int(max_age.total_seconds()))
    except SignatureExpired:
        raise InvalidToken("This link has expired. Use the unsubscribe link in a more recent digest.") from None
    except BadSignature:
        raise InvalidToken(damaged) from None
    if isinstance(data, list) and len(data) == 1 and type(data[0]) is int:
        return data[0]
    if isinstance(data, dict) and type(data.get("s")) is int:  # the first format, {"s": id, "a": address}
        return data["s"]
    raise InvalidToken(damaged)


def unsubscribe_url(base_url: str, secret_key: str, subscription_id: int, now: datetime) -> str:
    return base_url.rstrip("/") + PATH.format(token=make_token(secret_key, subscription_id, now))


def unsubscribe(session: Session, subscription_id: int, now: datetime) -> bool | None:
    """Mark the subscription unsubscribed. True if it was just unsubscribed, False if it already was, None if
    no such subscription exists."""
    row = session.get(Subscription, subscription_id)
    if row is None:
        return None
    if row.unsubscribed_at is not None:
        return False
    row.unsubscribed_at = naive_utc(now)
    return True


def routes(engine: Engine, config: Config | Callable[[], Config], secret_key: str, *,
           clock: Callable[[], datetime] = utcnow, renderer: render.Renderer | None = None) -> list[Route]:
    """Starlette routes for GET (confirmation page) and POST (one-click) at /unsubscribe/{token}.
    `config` may be a callable returning the current config (hot reload); it is not needed for the state,
    which is the database's."""
    pages = renderer or render.Renderer()
    del config  # the subscription table is the truth; kept in the signature for the composition root

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(pages.render(f"unsubscribe/{name}.html", **ctx), status_code=status, headers=_PAGE_HEADERS)

    def invalid(reason: str) -> HTMLResponse:
        return page("invalid", 400, title="Invalid unsubscribe link", reason=reason)

    def address_of(sub_id: int) -> str | None:
        with Session(engine) as s:
            return s.scalar(select(Subscription.target).where(Subscription.id == sub_id))

    async def confirm(request: Request) -> Response:
        try:
            sub_id = read_token(secret_key, request.path_params["token"], clock())
        except InvalidToken as e:
            return invalid(e.reason)
        address = await run_in_threadpool(address_of, sub_id)
        if address is None:
            return invalid("This subscription no longer exists.")
        return page("confirm", title="Unsubscribe", address=address)

    async def one_click(request: Request) -> Response:
        try:
            sub_id = read_token(secret_key, request.path_params["token"], clock())
        except InvalidToken as e:
            return invalid(e.reason)
        await request.body()  # RFC 8058 body `List-Unsubscribe=One-Click`; the signed token is what counts

        def apply() -> tuple[bool | None, str | None]:
            with Session(engine) as s, s.begin():
                return unsubscribe(s, sub_id, clock()), s.scalar(select(Subscription.target).where(
                    Subscription.id == sub_id))

        changed, address = await run_in_threadpool(apply)
        if changed is None:
            return invalid("This subscription no longer exists.")
        if changed:
            log.info("unsubscribed", extra={"subscription_id": sub_id, "channel": "email"})
        return page("done", title="Unsubscribed", address=address, already=not changed)

    return [Route(PATH, confirm, methods=["GET"]), Route(PATH, one_click, methods=["POST"])]
