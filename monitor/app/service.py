"""`monitor run`: the composition root of the long-running service.

One process, one asyncio loop: an in-memory APScheduler (3.x) fires local timers, and the database holds
the shared truth (which feed is due, which delivery is due, who holds a lease), so a restart loses nothing
and several processes can share the work. Jobs:

* poll      every `tick_s`: fetch due feeds -> store -> embed/match/novelty; wakes `deliver` on new alerts
* deliver   every `tick_s`: build the digests that are due, then drain the outbox (retries included)
* config    every 2 s: hot reload of feeds.toml (an invalid edit is logged and the last good config stays)
* housekeeping hourly: close stories past their window, prune old items and vectors
* heartbeat every `heartbeat_s`, on a thread of its own (not the scheduler, not the shared thread pool: a
  pool busy encoding or sending must not make a live worker look dead): this process's row in `workers`;
  workers presumed dead are reaped (their leases given back at once, see monitor.storage.workers)

Roles (`monitor run --role`, default all three in one process): the *scheduler* owns the configuration
(syncs feeds.toml into the database), builds the digests that are due (their outbox rows) and runs the
housekeeping; *workers* claim what is due in the database (feeds to fetch, items to encode and match,
outbox rows to send), any number of them, on any hosts; *web* serves the HTTP endpoints (health, readiness,
pages) and the metrics listener. Roles can share a process or a host; only processes with the web role
listen on a port.

SIGTERM/SIGINT: stop claiming new work, let running jobs finish (bounded), give back the leases still
held, stop the web server, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from monitor.app import admin, pipeline, subscriber
from monitor.app.metrics import Metrics
from monitor.app.web import create_app, create_metrics_app
from monitor.clock import Clock, SimulatedClock
from monitor.config import PORT_ENV, Config, load_config
from monitor.delivery import unsubscribe
from monitor.delivery.outbox import open_senders
from monitor.errors import MonitorError
from monitor.ingest.fetch import Fetcher
from monitor.signal import embed, match
from monitor.storage import db, workers

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 8.0  # under `docker stop`'s 10 s
READINESS_WRITE_WAIT_S = 1.0  # /readyz: a database that cannot take a write lock this fast is not ready
PROCESS_PER_TICK = 1024  # items embedded per poll tick, so polling and shutdown never wait long
ALL_ROLES = frozenset(workers.ROLES)


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
    roles: frozenset[str] = ALL_ROLES  # any of scheduler, worker, web
    heartbeat_s: float = 2.0  # how often this process says it is alive
    dead_after_s: float = 20.0  # a process silent this long is presumed dead: its leases are taken back
    process_batch: int = pipeline.PROCESS_BATCH  # items per encode claim (smaller: spread over more workers)

    def __post_init__(self) -> None:
        unknown = set(self.roles) - ALL_ROLES
        if unknown or not self.roles:
            raise MonitorError(f"unknown role(s) {sorted(unknown)}: use all, or any of {', '.join(workers.ROLES)}")
        if self.dead_after_s < 2 * self.heartbeat_s:
            raise MonitorError("dead_after_s must be at least twice heartbeat_s, or live workers get reaped")


@dataclass
class _State:
    config_fingerprint: str = ""
    config_revision: int | None = None  # newest feeds.toml revision saved by the admin pages, seen here
    ready: dict[str, bool] = field(default_factory=lambda: {"database": False, "model": False, "scheduler": False})


@dataclass
class _Failure:
    signature: str
    first_at: float
    count: int = 1
    last_report_at: float = 0.0


class JobFailures:
    """What the scheduled jobs' failures say, for the log and for /readyz.

    The first failure of a kind is logged with its traceback and a hint for the operator; the same failure
    repeated (a locked or broken database fails every tick) is counted and summarised at most every
    `repeat_report_s`; a recovery is logged once with the count. A job whose last run failed on the database
    marks the database as failing until it succeeds again."""

    def __init__(self, logger: logging.Logger, now: Callable[[], float] = time.monotonic,
                 repeat_report_s: float = 300.0) -> None:
        self._log = logger
        self._now = now
        self._repeat_report_s = repeat_report_s
        self._failures: dict[str, _Failure] = {}
        self._database_failing: set[str] = set()

    @property
    def database_failing(self) -> bool:
        return bool(self._database_failing)

    def failed(self, job: str, exc: BaseException) -> None:
        now = self._now()
        if isinstance(exc, DBAPIError):
            self._database_failing.add(job)
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        signature = f"{type(exc).__name__}: {first_line}"[:300]
        failure = self._failures.get(job)
        if failure is None or failure.signature != signature:
            self._failures[job] = _Failure(signature, first_at=now, last_report_at=now)
            self._log.error("scheduled job failed; it will run again at its next tick", exc_info=exc,
                            extra={"job": job, "hint": _failure_hint(exc)})
            return
        failure.count += 1
        if now - failure.last_report_at >= self._repeat_report_s:
            failure.last_report_at = now
            self._log.error("scheduled job still failing the same way", extra={
                "job": job, "failures": failure.count, "failing_for_s": round(now - failure.first_at, 1),
                "error": signature, "hint": _failure_hint(exc)})

    def succeeded(self, job: str) -> None:
        self._database_failing.discard(job)
        if (failure := self._failures.pop(job, None)) is not None:
            self._log.info("scheduled job recovered", extra={
                "job": job, "failures": failure.count, "failing_for_s": round(self._now() - failure.first_at, 1)})


def _failure_hint(exc: BaseException) -> str:
    """What an operator can do about a failure, in words (the log line carries it as `hint`)."""
    text_ = str(exc).lower()
    if "database is locked" in text_:
        return ("another process holds the SQLite write lock for too long: look for a stuck `monitor` or a manual "
                "sqlite3 session on the file; several processes sharing work want PostgreSQL")
    if "disk i/o error" in text_ or "readonly" in text_ or "read-only" in text_ or "no space" in text_:
        return "the database file cannot be written: check free disk space, permissions and the file system"
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "the database connection was lost: check that the database server is up and reachable"
    if isinstance(exc, DBAPIError):
        return "the database refused the operation: check that it is up, writable and migrated (`monitor db upgrade`)"
    return "see the traceback logged with the first failure"


class Service:
    def __init__(self, options: ServiceOptions, config: Config, clock: Clock) -> None:
        self.options = options
        self.config = config
        self.clock = clock
        self.roles = options.roles
        self.engine = db.make_engine(config.settings.database_url)
        self.metrics = Metrics(self.engine, clock.now)
        self.worker_id = _new_worker_id()
        self.state = _State(config_fingerprint=_file_digest(options.config_path))
        self.failures = JobFailures(log)
        # Computed once: links signed by digests and the routes that check them must use the same key. With
        # any database but SQLite it must come from the environment (a ConfigError says why), checked here,
        # before anything loads.
        self.signing_key = unsubscribe.signing_key(config.settings)
        self.rt: pipeline.Runtime | None = None
        self.fetcher: Fetcher | None = None
        self.senders: dict[str, Any] | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self._stopping = asyncio.Event()
        self._running: set[asyncio.Task[object]] = set()
        self.work_done: dict[str, int] = {"feeds": 0, "items": 0, "alerts": 0, "digests": 0, "deliveries": 0}
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        settings = self.config.settings
        host = self.options.host or settings.host
        port = self.options.port if self.options.port is not None else settings.port
        # The ports are taken first, so a second `monitor run` says "port N is in use" at once instead of
        # loading the model and then dying.
        sockets: list[tuple[str, socket.socket]] = []
        try:
            if "web" in self.roles:
                sockets.append(("web", _listen(host, port, f"--port or {PORT_ENV}")))
            if "web" in self.roles and settings.metrics_port:
                sockets.append(("metrics", _listen(settings.metrics_host, settings.metrics_port,
                                                   "settings.metrics_port (0 turns the metrics listener off)")))
        except MonitorError as e:
            log.error("service cannot start: %s", e)
            return 2
        if self.options.migrate:
            await asyncio.to_thread(db.upgrade, self.engine)
        self.state.ready["database"] = await asyncio.to_thread(self._database_ok)

        apps = {"web": self._app(), "metrics": create_metrics_app(self.metrics)}
        servers = [_QuietServer(uvicorn.Config(apps[name], log_config=None, access_log=False, lifespan="off"))
                   for name, _ in sockets]
        server_tasks = [asyncio.create_task(server.serve(sockets=[sock]), name=name)
                        for server, (name, sock) in zip(servers, sockets, strict=True)]
        ports = {name: sock.getsockname()[1] for name, sock in sockets}
        log.info("service starting", extra={
            "host": host, "port": ports.get("web", "off"), "worker": self.worker_id, "roles": sorted(self.roles),
            "metrics": f"{settings.metrics_host}:{ports['metrics']}" if "metrics" in ports else "off",
            "feeds": len(self.config.feeds), "topics": len(self.config.topics)})

        async def stop_servers() -> None:
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*server_tasks)
            for _, sock in sockets:
                sock.close()

        try:
            embedder = await asyncio.to_thread(embed.load_embedder, settings)
            self.state.ready["model"] = True
            topics = await asyncio.to_thread(match.compile_topics, self.config.enabled_topics, embedder)
            if isinstance(self.clock, SimulatedClock):
                self.clock.restart()
            # Only the scheduler writes the configuration into the database (the others read it).
            self.rt = await asyncio.to_thread(pipeline.build_runtime, self.engine, self.config, embedder,
                                              self.clock, self.metrics, self.worker_id, topics, self.signing_key,
                                              sync="scheduler" in self.roles)
            async with Fetcher(settings) as fetcher, open_senders(lambda: self.config) as senders:
                self.fetcher, self.senders = fetcher, senders
                await asyncio.to_thread(self._register)  # once it can work: loading the model takes a while
                self._start_scheduler()
                log.info("service ready", extra={"worker": self.worker_id, "clock": self.clock.now().isoformat()})
                await self._stopping.wait()
                await self._drain()
        except MonitorError as e:
            log.error("service cannot start: %s", e)
            await stop_servers()
            return 2
        finally:
            if self.scheduler is not None and self.scheduler.running:
                self.scheduler.shutdown(wait=False)
            self._stop_heartbeat()  # before unregistering: a last beat must not register it again
            await asyncio.to_thread(db.try_write, self.engine, partial(workers.unregister, worker_id=self.worker_id),
                                    "could not unregister this worker (it is reaped once its heartbeat is old)")
        await stop_servers()
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
        if "worker" in self.roles:
            sched.add_job(self._guard("poll", self._poll_job), "interval", seconds=tick, id="poll")
        if self.roles & {"worker", "scheduler"}:  # the scheduler builds digests, workers send them
            sched.add_job(self._guard("deliver", self._deliver_job), "interval", seconds=tick, id="deliver")
        sched.add_job(self._guard("config", self._config_job), "interval", seconds=self.options.config_watch_s,
                      id="config")
        if "scheduler" in self.roles:
            sched.add_job(self._guard("retention", self._retention_job), "interval", hours=1, id="retention")
        sched.start()
        self._start_heartbeat()
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
            except Exception as e:
                self.metrics.cycle_errors.labels(job=name).inc()
                self.failures.failed(name, e)
            else:
                self.failures.succeeded(name)
            finally:
                if task is not None:
                    self._running.discard(task)

        return run

    async def _poll_job(self) -> None:
        assert self.rt is not None
        polled = await pipeline.poll_feeds(self.rt, fetcher=self.fetcher)
        self.work_done["feeds"] += len(polled.rows)
        report = await asyncio.to_thread(pipeline.process_pending, self.rt, limit=PROCESS_PER_TICK,
                                         should_stop=self._stopping.is_set, batch=self.options.process_batch)
        self.work_done["items"] += report.items
        self.work_done["alerts"] += report.alerts
        if report.alerts and self.scheduler is not None and not self._stopping.is_set():
            self.scheduler.get_job("deliver").modify(next_run_time=_now_local())  # immediate cadence: no wait

    async def _deliver_job(self) -> None:
        assert self.rt is not None
        if "scheduler" in self.roles:
            self.work_done["digests"] += len(await asyncio.to_thread(pipeline.build_digests, self.rt))
        if "worker" in self.roles:
            report = await pipeline.deliver(self.rt, senders=self.senders)
            self.work_done["deliveries"] += report.claimed

    def _start_heartbeat(self) -> None:
        """Beat every `heartbeat_s` on a dedicated thread, until `_stop_heartbeat`: jobs that fill the shared
        thread pool (encoding, sending) or hold the event loop cannot delay it past `dead_after_s`, so a live
        worker is never reaped for being busy. It goes on while the service drains its jobs at shutdown."""
        if self._heartbeat_thread is not None:
            return
        self._heartbeat_stop.clear()

        def beat_forever() -> None:
            while not self._heartbeat_stop.wait(self.options.heartbeat_s):
                try:
                    self._beat_and_reap()
                except Exception as e:  # a failed beat is retried at the next one, like any job
                    self.metrics.cycle_errors.labels(job="heartbeat").inc()
                    self.failures.failed("heartbeat", e)
                else:
                    self.failures.succeeded("heartbeat")

        self._heartbeat_thread = threading.Thread(target=beat_forever, name="monitor-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def _stop_heartbeat(self) -> None:
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=30)
            self._heartbeat_thread = None

    # --- this process in the `workers` table -------------------------------------------------------------

    def _register(self) -> None:
        with db.write_transaction(self.engine) as s:
            workers.register(s, self.worker_id, roles=sorted(self.roles), host=socket.gethostname(), pid=os.getpid(),
                             now=db.utcnow(), dead_after_s=self.options.dead_after_s)

    def _beat_and_reap(self) -> None:
        """Say this process is alive (with what it has done), and reap the processes that stopped saying so."""
        with db.write_transaction(self.engine) as s:
            alive = workers.beat(s, self.worker_id, db.utcnow(), stats=self.work_done)
        if not alive:
            old = self.worker_id
            # A new id: a write still in flight under the old one must stay fenced out, even if this process
            # claims the same feed or item again.
            self.worker_id = _new_worker_id()
            if self.rt is not None:
                self.rt.worker_id = self.worker_id
            log.warning("this worker was presumed dead (no heartbeat for dead_after_s) and its leases were taken "
                        "back; results it held were refused; registering again under a new id",
                        extra={"worker": self.worker_id, "previous": old, "dead_after_s": self.options.dead_after_s})
            self._register()
        with db.write_transaction(self.engine) as s:
            dead = workers.reap(s, db.utcnow())
        if dead:
            log.warning("workers presumed dead (no heartbeat): their leases were taken back",
                        extra={"workers": dead})

    async def _retention_job(self) -> None:
        assert self.rt is not None
        await asyncio.to_thread(pipeline.housekeeping, self.rt)

    async def _config_job(self) -> None:
        # An admin save on another host is written to this host's file first, then reloaded like any edit.
        self.state.config_revision = await asyncio.to_thread(admin.pull_revision, self.engine,
                                                             self.options.config_path, self.state.config_revision)
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
        # If this fails, the fingerprint is unchanged: retried. Only the scheduler writes it to the database.
        await asyncio.to_thread(partial(self.rt.reload, new, sync="scheduler" in self.roles))
        self.config = new
        self.state.config_fingerprint = fp
        log.info("configuration reloaded", extra={"feeds": len(new.feeds), "topics": len(new.topics),
                                                  "subscribers": len(new.subscribers), "channels": len(new.channels)})

    # --- web ---------------------------------------------------------------------------------------------

    def _app(self):  # type: ignore[no-untyped-def]
        routes = unsubscribe.routes(self.engine, lambda: self.config, self.signing_key, clock=self.clock.now)
        # One admin context for every admin page: the topic editor and the suggestions pages share its
        # backtester (one cache of encoded texts on the service's model) and its sessions.
        admin_ctx = admin.service_context(self.engine, self.options.config_path, lambda: self.config,
                                          self.signing_key, lambda: self.rt.embedder if self.rt else None,
                                          self.clock.now)
        routes += admin.routes(admin_ctx)
        routes += subscriber.service_routes(self.engine, lambda: self.config, self.signing_key, self.clock.now,
                                            lambda: (self.senders or {}).get("email"), admin=admin_ctx)
        return create_app(self._readiness, routes)

    def _readiness(self) -> dict[str, bool]:
        checks = dict(self.state.ready)
        # Reading is not enough: a database that answers SELECT 1 while writes fail or wait is not ready.
        checks["database"] = self._database_ok() and not self.failures.database_failing
        checks["scheduler"] = checks["scheduler"] and not self._stopping.is_set()
        return checks

    def _database_ok(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1 FROM alembic_version"))
        except Exception:
            return False
        return db.probe_writable(self.engine, wait_s=READINESS_WRITE_WAIT_S) is None


def _listen(host: str, port: int, how_to_change: str) -> socket.socket:
    """A listening socket on host:port, or a MonitorError that names the port and what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise MonitorError(f"port {port} on {host} is in use (another `monitor run`?): stop that process or "
                               f"choose another port with {how_to_change}") from None
        raise MonitorError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(False)
    return sock


def _new_worker_id() -> str:
    """host:pid:random. The random part keeps ids unique across restarts that reuse a pid (a container's pid 1
    under the same hostname) and across re-registrations, so a lease fence never mistakes an old holder for
    the new one. Fits deliveries.lease_owner (128)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
