"""Subscribers in control (issue 14): pages reached from the signed links of a digest, with no login.

* `/preferences/{token}`  topics, cadence, daily time, timezone, pause, unsubscribe / resubscribe (`prefs`)
* `/feedback/{token}`     not relevant / already knew this / more like this on one alert (`feedback`)
* `/story/{token}`        a story's timeline (`storypage`); admins-only by the `story_pages` setting
* `/feeds/{topic}.atom|.json?token=`  a topic's alerts for feed readers (`alertfeeds`)
* `/signup`               self sign-up with double opt-in, when `self_signup` is on (`signup`)

Every GET only shows; every change is a POST carrying the form token of the page it came from (a CSRF token
bound to the signed link). The composition root builds one `SubscriberContext` and adds `routes(ctx)`.
Turning feedback into topic changes is `suggest` (the CLI `monitor topics suggest`)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.routing import BaseRoute

from monitor.config import Config
from monitor.errors import MonitorError

if TYPE_CHECKING:
    from monitor.app.admin import AdminContext


def _nobody(_: Request) -> bool:
    return False


@dataclass
class SubscriberContext:
    """What the subscriber pages need, handed in by the composition root."""

    engine: Engine
    config: Callable[[], Config]  # the configuration in force (hot reload)
    secret_key: str  # the service's signing key (monitor.delivery.unsubscribe.signing_key)
    clock: Callable[[], datetime]
    # story_pages = "admin": whether this request comes from a signed-in admin (the admin UI's session check).
    is_admin: Callable[[Request], bool] = _nobody
    # Sends one RFC 5322 message to one address (the sign-up confirmation); None: sign-up answers 503.
    send_mail: Callable[[str, bytes], Awaitable[None]] | None = None


def routes(ctx: SubscriberContext) -> list[BaseRoute]:
    from monitor.app.subscriber import web

    return web.routes(ctx)


def service_routes(engine: Engine, config: Callable[[], Config], secret_key: str, clock: Callable[[], datetime],
                   email_sender: Callable[[], Any], *, admin: AdminContext | None = None) -> list[BaseRoute]:
    """Everything the subscriber pages add to the service's web app (one call for the composition root).
    Admins are recognised by the admin UI's session cookie (story_pages = "admin"); `email_sender()` is the
    service's e-mail sender once it runs (None before), used for the sign-up confirmation. With `admin`, the
    service's admin context (monitor.app.admin.service_context), also the admin pages of `adminpages`
    (suggestions with their backtest, suppressed addresses), on that context: the topic editor's backtester
    (its cache and model handle) and its sessions."""
    from monitor.app.admin.auth import SessionKeeper
    from monitor.delivery import Outgoing

    sessions = admin.sessions if admin is not None else SessionKeeper(
        secret_key, secure=config().settings.base_url.lower().startswith("https://"), engine=engine)

    def is_admin(request: Request) -> bool:
        return sessions.read(request).user is not None

    async def send_mail(address: str, message: bytes) -> None:
        sender = email_sender()
        if sender is None:
            raise MonitorError("the e-mail sender is not running yet")
        await sender.send(Outgoing(delivery_id=0, kind="email", target=address,
                                   idempotency_key=f"signup-{uuid.uuid4().hex}", payload=message, attempt=1))

    out = routes(SubscriberContext(engine=engine, config=config, secret_key=secret_key, clock=clock,
                                   is_admin=is_admin, send_mail=send_mail))
    if admin is not None:
        from monitor.app.subscriber.adminpages import admin_routes

        out += admin_routes(admin)
    return out
