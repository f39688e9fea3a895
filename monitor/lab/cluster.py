"""A local scale-out rig for the tests and bench/scale.py: one `monitor run --role scheduler` and N
`monitor run --role worker` processes sharing one database, fed by a replay server that records every feed
request, delivering to a webhook receiver.

* `spread_items`: real headlines spread over `n_feeds` synthetic feeds, re-dated around "now" so that a
  real-time service sees them as news (some already published, some appearing while it runs).
* `RecordingReplayServer`: the replay server, noting (feed slug, time) of every request.
* `cluster_config`: a feeds.toml for all of them (immediate webhook channels on one receiver).
* `Cluster`: starts, kills (SIGKILL) and stops (SIGTERM) the processes; their logs are JSON lines in files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from monitor.lab.replay import ReplayItem, ReplayServer

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec_" + "c2NhbGUtdGVzdC1zZWNyZXQ="


def spread_items(items: Sequence[ReplayItem], *, n_feeds: int, per_feed: int, now: datetime,
                 later: int = 0, later_feeds: int | None = None, later_within_s: float = 0.0,
                 seed: int = 15) -> list[ReplayItem]:
    """`n_feeds * per_feed` of `items` (in order) on synthetic feeds https://feed<i>.replay.example/rss, each
    published in the half hour before `now`; then `later` more on each of the first `later_feeds` feeds (default
    all), published at random instants within `later_within_s` seconds after `now` (they appear while the
    service runs)."""
    rng = random.Random(seed)
    later_feeds = n_feeds if later_feeds is None else later_feeds
    need = n_feeds * per_feed + later_feeds * later
    if len(items) < need:
        raise ValueError(f"need {need} items, have {len(items)}")
    out = []
    it = iter(items)
    for f in range(n_feeds):
        url = f"https://feed{f:04d}.replay.example/rss"
        for k in range(per_feed + (later if f < later_feeds else 0)):
            src = next(it)
            if k < per_feed:
                at = now - timedelta(minutes=30) + timedelta(seconds=k * 60 + f % 60)
            else:
                at = now + timedelta(seconds=rng.uniform(0.5, later_within_s))
            out.append(dataclasses.replace(src, feed=url, published=at,
                                           link=f"https://feed{f:04d}.replay.example/a/{k}"))
    return out


class RecordingReplayServer(ReplayServer):
    """The replay server, recording each feed request as (slug, time.time())."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.log: list[tuple[str, float]] = []
        self._log_lock = threading.Lock()

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        with self._log_lock:
            self.log.append((request.match_info["slug"], time.time()))
        return await super()._feed(request)

    def requests_by_feed(self) -> dict[str, list[float]]:
        with self._log_lock:
            out: dict[str, list[float]] = {}
            for slug, at in self.log:
                out.setdefault(slug, []).append(at)
        return out


def cluster_config(*, database_url: str, feed_urls: Sequence[str], interval_s: int, channels: int,
                   model_cache_dir: str, outbox_dir: str, topics: Sequence[str] = ("prisoner-exchange", "doha-talks"),
                   max_concurrency: int = 64) -> str:
    """feeds.toml: the feeds at a fixed interval, the shipped topics, `channels` immediate webhook channels
    (URL in $CLUSTER_WEBHOOK_URL, secret in $CLUSTER_WEBHOOK_SECRET), the int8 ONNX model."""
    shipped = tomllib.loads((ROOT / "feeds.toml").read_text())["topics"]
    parts = [f"""[settings]
database_url = "{database_url}"
allow_private_networks = true
metrics_port = 0
embedding_backend = "onnx-int8"
model_cache_dir = "{model_cache_dir}"
outbox_dir = "{outbox_dir}"
max_concurrency = {max_concurrency}
"""]
    parts += [f'[[feeds]]\nurl = "{u}"\ninterval = {interval_s}\n' for u in feed_urls]
    for t in shipped:
        if t["id"] in topics:
            parts.append("[[topics]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in t.items()))
    parts += [f'[[channels]]\nname = "c{i}"\nkind = "webhook"\nurl_env = "CLUSTER_WEBHOOK_URL"\n'
              f'secret_env = "CLUSTER_WEBHOOK_SECRET"\ncadence = "immediate"\n' for i in range(channels)]
    return "\n".join(parts)


@dataclass
class Proc:
    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_lines(self) -> list[dict[str, object]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    @property
    def worker_id(self) -> str | None:
        for rec in self.log_lines():
            if rec.get("msg") == "service ready":
                return str(rec.get("worker"))
        return None


@dataclass
class Cluster:
    """Processes of `monitor run` sharing one database. `extra_args` go to every `run`."""

    config_path: Path
    work_dir: Path
    env: dict[str, str]
    extra_args: Sequence[str] = ("--tick", "0.5", "--heartbeat", "0.5", "--dead-after", "3")
    procs: list[Proc] = field(default_factory=list)

    def start(self, role: str, name: str, *args: str) -> Proc:
        log_path = self.work_dir / f"{name}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        popen = subprocess.Popen(
            [sys.executable, "-m", "monitor", "--config", str(self.config_path), "--log-format", "json", "run",
             "--role", role, "--no-migrate", *self.extra_args, *args],
            cwd=self.work_dir, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
        proc = Proc(name, role, popen, log_path)
        self.procs.append(proc)
        return proc

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            while "service ready" not in p.log_path.read_text(errors="replace"):
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{p.name} exited ({p.popen.returncode}) before it was ready:\n{p.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{p.name} not ready after {timeout} s:\n{p.tail()}")
                time.sleep(0.1)

    def kill(self, proc: Proc) -> None:
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(10)

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM to every process still running; their exit codes (None: had to be killed)."""
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for p in self.procs:
            try:
                codes[p.name] = p.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(10)
                codes[p.name] = None
        return codes


def now_utc() -> datetime:
    return datetime.now(UTC)
