"""`monitor run`: the composition root of the long-running service.

One process, one asyncio loop: an in-memory APScheduler (3.x) fires local timers, and the database holds
the shared truth (which feed is due, which delivery is due, who holds a lease), so a restart loses nothing
and several processes can share the work. Jobs:

* poll      every `tick_s`: fetch due feeds -> store -> embed/match/novelty; wakes `deliver` on new alerts
* deliver   every `tick_s`: build the digests that are due, then drain the outbox (retries included)
* config    every 2 s: hot reload of feeds.toml (an invalid edit is logged and the last good config stays)
* housekeeping hourly: close stories past their window, prune old items and vectors

SIGTERM/SIGINT: stop claiming new work, let running jobs finish (bounded), stop the web server, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import text

from monitor.app import pipeline
from monitor.app.metrics import Metrics
from monitor.app.web import create_app
from monitor.clock import Clock, SimulatedClock
from monitor.config import Config, load_config
from monitor.delivery import unsubscribe
from monitor.delivery.outbox import open_senders
from monitor.errors import MonitorError
from monitor.ingest.fetch import Fetcher
from monitor.signal import embed, match
from monitor.storage import db

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 8.0  # under `docker stop`'s 10 s
PROCESS_PER_TICK = 1024  # items embedded per poll tick, so polling and shutdown never wait long


# Settings read once at start-up (the HTTP client, the senders, the model, the listening socket): a reload
# that changes them is applied to the rest and logs that these need a restart.
RESTART_SETTINGS = ("database_url", "host", "port", "allow_private_networks", "fetch_timeout_s", "max_feed_bytes",
                    "max_concurrency", "per_host_concurrency", "user_agent", "smtp", "mail_from",
                    "embedding_model", "embedding_backend", "model_cache_dir", "secret_key_env", "outbox_dir")


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class ServiceOptions:
    config_path: Path
    host: str | None = None
    port: int | None = None
    tick_s: float = 1.0
    config_watch_s: float = 2.0
    migrate: bool = True


@dataclass
class _State:
    config_fingerprint: str = ""
    ready: dict[str, bool] = field(default_factory=lambda: {"database": False, "model": False, "scheduler": False})


class Service:
    def __init__(self, options: ServiceOptions, config: Config, clock: Clock) -> None:
        self.options = options
        self.config = config
        self.clock = clock
        self.engine = db.make_engine(config.settings.database_url)
        self.metrics = Metrics(self.engine, clock.now)
        self.worker_id = f"{socket.gethostname()[:100]}:{os.getpid()}"  # fits deliveries.lease_owner (128)
        self.state = _State(config_fingerprint=_file_digest(options.config_path))
        # Computed once: links signed by digests and the routes that check them must use the same key.
        self.signing_key = unsubscribe.signing_key(config.settings)
        self.rt: pipeline.Runtime | None = None
        self.fetcher: Fetcher | None = None
        self.senders: dict[str, Any] | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self._stopping = asyncio.Event()
        self._running: set[asyncio.Task[object]] = set()

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        if self.options.migrate:
            await asyncio.to_thread(db.upgrade, self.engine)
        self.state.ready["database"] = await asyncio.to_thread(self._database_ok)

        settings = self.config.settings
        host = self.options.host or settings.host
        port = self.options.port if self.options.port is not None else settings.port
        server = _QuietServer(uvicorn.Config(self._app(), host=host, port=port, log_config=None,
                                             access_log=False, lifespan="off"))
        server_task = asyncio.create_task(server.serve(), name="web")
        log.info("service starting", extra={"host": host, "port": port, "worker": self.worker_id,
                                            "feeds": len(self.config.feeds), "topics": len(self.config.topics)})
        try:
            embedder = await asyncio.to_thread(embed.load_embedder, settings)
            self.state.ready["model"] = True
            topics = await asyncio.to_thread(match.compile_topics, self.config.topics, embedder)
            if isinstance(self.clock, SimulatedClock):
                self.clock.restart()
            self.rt = await asyncio.to_thread(pipeline.build_runtime, self.engine, self.config, embedder,
                                              self.clock, self.metrics, self.worker_id, topics, self.signing_key)
            async with Fetcher(settings) as fetcher, open_senders(lambda: self.config) as senders:
                self.fetcher, self.senders = fetcher, senders
                self._start_scheduler()
                log.info("service ready", extra={"worker": self.worker_id, "clock": self.clock.now().isoformat()})
                await self._stopping.wait()
                await self._drain()
        except MonitorError as e:
            log.error("service cannot start: %s", e)
            server.should_exit = True
            await server_task
            return 2
        finally:
            if self.scheduler is not None and self.scheduler.running:
                self.scheduler.shutdown(wait=False)
        server.should_exit = True
        await server_task
        self.engine.dispose()
        log.info("service stopped cleanly", extra={"worker": self.worker_id})
        return 0

    def stop(self) -> None:
        self._stopping.set()

    def _on_signal(self, sig: int) -> None:
        log.info("signal received, shutting down", extra={"signal": signal.Signals(sig).name})
        self.stop()

    async def _drain(self) -> None:
        """Stop claiming new work and let the jobs in flight finish (their claims are then released)."""
        if self.scheduler is not None:
            self.scheduler.pause()
        running = [t for t in self._running if not t.done()]
        if running:
            log.info("waiting for running jobs", extra={"jobs": [t.get_name() for t in running]})
            _done, pending = await asyncio.wait(running, timeout=SHUTDOWN_GRACE_S)
            for t in pending:  # leases expire by themselves; nothing is lost, at worst re-sent with the same id
                t.cancel()

    # --- scheduler ---------------------------------------------------------------------------------------

    def _start_scheduler(self) -> None:
        sched = AsyncIOScheduler(timezone="UTC", job_defaults={"max_instances": 1, "coalesce": True,
                                                               "misfire_grace_time": None})
        tick = self.options.tick_s
        sched.add_job(self._guard("poll", self._poll_job), "interval", seconds=tick, id="poll")
        sched.add_job(self._guard("deliver", self._deliver_job), "interval", seconds=tick, id="deliver")
        sched.add_job(self._guard("config", self._config_job), "interval", seconds=self.options.config_watch_s,
                      id="config")
        sched.add_job(self._guard("retention", self._retention_job), "interval", hours=1, id="retention")
        sched.start()
        for job in sched.get_jobs():
            if job.id in ("poll", "deliver"):
                job.modify(next_run_time=_now_local())
        self.scheduler = sched
        self.state.ready["scheduler"] = True

    def _guard(self, name: str, job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """One job's failure is logged and counted; the scheduler and the other jobs go on."""

        async def run() -> None:
            if self._stopping.is_set():
                return
            task = asyncio.current_task()
            if task is not None:
                task.set_name(name)
                self._running.add(task)
            try:
                await job()
            except Exception:
                self.metrics.cycle_errors.labels(job=name).inc()
                log.exception("scheduled job failed; it will run again at its next tick", extra={"job": name})
            finally:
                if task is not None:
                    self._running.discard(task)

        return run

    async def _poll_job(self) -> None:
        assert self.rt is not None
        await pipeline.poll_feeds(self.rt, fetcher=self.fetcher)
        report = await asyncio.to_thread(pipeline.process_pending, self.rt, limit=PROCESS_PER_TICK,
                                         should_stop=self._stopping.is_set)
        if report.alerts and self.scheduler is not None and not self._stopping.is_set():
            self.scheduler.get_job("deliver").modify(next_run_time=_now_local())  # immediate cadence: no wait

    async def _deliver_job(self) -> None:
        assert self.rt is not None
        await asyncio.to_thread(pipeline.build_digests, self.rt)
        await pipeline.deliver(self.rt, senders=self.senders)

    async def _retention_job(self) -> None:
        assert self.rt is not None
        await asyncio.to_thread(pipeline.housekeeping, self.rt)

    async def _config_job(self) -> None:
        fp = _file_digest(self.options.config_path)
        if fp == self.state.config_fingerprint:
            return
        try:
            new = load_config(self.options.config_path)
        except MonitorError as e:
            self.state.config_fingerprint = fp  # said once; the next edit is looked at again
            log.error("configuration change rejected, the last good configuration stays in force: %s", e,
                      extra={"config": str(self.options.config_path)})
            return
        restart_needed = [k for k in RESTART_SETTINGS if getattr(new.settings, k) != getattr(self.config.settings, k)]
        if restart_needed:
            log.warning("these settings change only after a restart", extra={"settings": restart_needed})
        assert self.rt is not None
        await asyncio.to_thread(self.rt.reload, new)  # if this fails, the fingerprint is unchanged: retried
        self.config = new
        self.state.config_fingerprint = fp
        log.info("configuration reloaded", extra={"feeds": len(new.feeds), "topics": len(new.topics),
                                                  "subscribers": len(new.subscribers), "channels": len(new.channels)})

    # --- web ---------------------------------------------------------------------------------------------

    def _app(self):  # type: ignore[no-untyped-def]
        routes = unsubscribe.routes(self.engine, lambda: self.config, self.signing_key, clock=self.clock.now)
        return create_app(self.metrics, self._readiness, routes)

    def _readiness(self) -> dict[str, bool]:
        checks = dict(self.state.ready)
        checks["database"] = self._database_ok()
        checks["scheduler"] = checks["scheduler"] and not self._stopping.is_set()
        return checks

    def _database_ok(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1 FROM alembic_version"))
            return True
        except Exception:
            return False


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _now_local() -> datetime:
    """APScheduler's own notion of now (real time: jobs tick in real seconds whatever the service clock)."""
    return datetime.now().astimezone()


def run_service(options: ServiceOptions, clock: Clock) -> int:
    config = load_config(options.config_path)
    service = Service(options, config, clock)
    return asyncio.run(service.run())
