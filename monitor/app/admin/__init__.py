"""The admin web UI (server-rendered pages under /admin) and JSON API (/api/v1, OpenAPI at /openapi.json).

The composition root builds one `AdminContext` (`service_context`) and adds `routes(ctx)` to the web app. Pages for other
audiences reuse the pieces: `auth.SessionKeeper` (session cookie + CSRF), `pages.guarded` (login required,
CSRF checked on every POST, security headers), the layout `templates/admin/base.html` and the assets under
/admin/static (see CONTRIBUTING.md, "Web pages").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine
from starlette.routing import BaseRoute

from monitor.app.admin.auth import LoginLimiter, SessionKeeper
from monitor.app.admin.backtest import Backtester
from monitor.config import Config, Settings
from monitor.signal.embed import Embedder


@dataclass
class AdminContext:
    """What the admin pages and API need, handed in by the composition root."""

    engine: Engine
    config_path: Path  # feeds.toml: read and written by the pages
    config: Callable[[], Config]  # the configuration in force in this process
    backtester: Callable[[], Backtester | None]  # None until the embedding model is loaded
    sessions: SessionKeeper
    clock: Callable[[], datetime]
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    limiter: LoginLimiter = field(init=False)
    test_sender: Callable[..., object] | None = None  # deliveries page: send a test message (see pages)

    def __post_init__(self) -> None:
        self.limiter = LoginLimiter(self.engine)  # failed logins counted in the database, shared by every host


def routes(ctx: AdminContext) -> list[BaseRoute]:
    from monitor.app.admin import api, pages

    return [*pages.routes(ctx), *api.routes(ctx)]


def make_context(engine: Engine, config_path: Path, config: Callable[[], Config], secret_key: str,
                 backtester: Callable[[], Backtester | None], clock: Callable[[], datetime]) -> AdminContext:
    """The usual context: Secure cookies when the public base_url is https."""
    secure = config().settings.base_url.lower().startswith("https://")
    return AdminContext(engine=engine, config_path=config_path, config=config, backtester=backtester,
                        sessions=SessionKeeper(secret_key, secure=secure, engine=engine), clock=clock)


def lazy_backtester(engine: Engine, embedder: Callable[[], Embedder | None],
                    settings: Callable[[], Settings]) -> Callable[[], Backtester | None]:
    """A Backtester made on first use once the service has loaded its embedding model (None before)."""
    made: list[Backtester] = []

    def get() -> Backtester | None:
        if not made:
            e = embedder()
            if e is None:
                return None
            made.append(Backtester(engine, e, settings()))
        return made[0]

    return get


def service_context(engine: Engine, config_path: Path, config: Callable[[], Config], secret_key: str,
                    embedder: Callable[[], Embedder | None], clock: Callable[[], datetime]) -> AdminContext:
    """The service's one admin context (built once by the composition root): `routes(ctx)` serves it, and the
    admin pages of other audiences take the same context (monitor.app.subscriber.service_routes(admin=ctx)),
    so every page shares one backtester (one cache of encoded texts, one handle on the service's model),
    one session keeper and one login limiter."""
    backtester = lazy_backtester(engine, embedder, lambda: config().settings)
    return make_context(engine, config_path, config, secret_key, backtester, clock)


def pull_revision(engine: Engine, config_path: Path, seen: int | None) -> int | None:
    """See monitor.app.admin.configfile.pull_revision: a service applies feeds.toml saved on another host."""
    from monitor.app.admin import configfile

    return configfile.pull_revision(engine, config_path, seen)
