"""Scale-out acceptance, on PostgreSQL: one `monitor run --role scheduler` and three `--role worker`
processes share 200 replayed feeds and an immediate webhook; one worker is killed with SIGKILL while it holds
work. Afterwards: no feed was fetched twice for one due time, every item was processed once, every delivery
reached the receiver exactly once, nothing is left pending or leased. The compose file is validated too."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.config import Settings
from monitor.lab.cluster import (
    WEBHOOK_SECRET,
    Cluster,
    RecordingReplayServer,
    cluster_config,
    now_utc,
    spread_items,
)
from monitor.lab.demo import BUNDLED
from monitor.lab.receiver import CaptureReceiver
from monitor.lab.replay import feed_slug, load_items
from monitor.signal import embed
from monitor.storage import db, workers
from monitor.storage.tables import Delivery, Feed, Item, ItemVector, Worker

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = Path("/tmp/monitor-cache/onnx-models")
N_FEEDS = 200
INTERVAL_S = 6
DEAD_AFTER_S = 10.0  # generous: on a loaded 2-core machine a live worker's beat can be late by seconds


@pytest.fixture(scope="module")
def onnx_model() -> str:
    """The int8 export, made once (the worker processes then load it in a fraction of a second)."""
    embed.load_embedder(Settings(embedding_backend="onnx-int8", model_cache_dir=str(MODEL_CACHE)))
    return str(MODEL_CACHE)


def _wait(cond, timeout: float, what: str, cluster: Cluster) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
    logs = "\n".join(f"--- {p.name}\n{p.tail(1500)}" for p in cluster.procs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


@pytest.mark.slow
@pytest.mark.databases("postgresql")
def test_three_workers_and_a_scheduler_do_the_work_once_though_one_is_killed(tmp_path: Path, engine: Engine,
                                                                            onnx_model: str) -> None:
    start = now_utc()
    items = spread_items(load_items(BUNDLED), n_feeds=N_FEEDS, per_feed=1, later=1, later_feeds=50,
                         later_within_s=12, now=start)
    # The replay's clock stands at `start` until the cluster is ready, then runs: the `later` items appear
    # while the workers run, whatever the start-up took.
    ready_at: list[float] = []

    def replay_clock():  # type: ignore[no-untyped-def]
        return start + timedelta(seconds=time.time() - ready_at[0]) if ready_at else start

    replay = RecordingReplayServer(items, replay_clock).run_in_thread()
    receiver = CaptureReceiver().start()
    config = tmp_path / "feeds.toml"
    config.write_text(cluster_config(database_url=engine.url.render_as_string(hide_password=False),
                                     feed_urls=replay.feed_urls(), interval_s=INTERVAL_S, channels=3,
                                     model_cache_dir=onnx_model, outbox_dir=str(tmp_path / "outbox")))
    cluster = Cluster(config, tmp_path, env={"CLUSTER_WEBHOOK_URL": f"{receiver.url}/hook",
                                             "CLUSTER_WEBHOOK_SECRET": WEBHOOK_SECRET, "MONITOR_SECRET_KEY": "k"},
                      extra_args=("--tick", "0.5", "--heartbeat", "0.5", "--dead-after", str(DEAD_AFTER_S),
                                  "--batch", "16"))
    try:
        cluster.start("scheduler", "scheduler")
        ws = [cluster.start("worker", f"worker{i}") for i in range(3)]
        cluster.wait_ready()
        ready_at.append(time.time())
        ids = {p.name: p.worker_id for p in ws}
        victim = ws[0]

        def victim_holds() -> bool:
            with Session(engine) as s:
                st = workers.cluster_status(s, db.utcnow())
            return any(w.id == ids[victim.name] and (w.leases.items or w.leases.feeds) for w in st.workers)

        _wait(victim_holds, 60, "the victim to hold a lease", cluster)
        cluster.kill(victim)
        killed_at = time.time()
        with Session(engine) as s:  # what it held when it died (its leases stay until it is reaped)
            held_feeds = set(s.scalars(select(Feed.url).where(Feed.lease_owner == ids[victim.name],
                                                              Feed.lease_until.is_not(None))))
            held_items = s.scalar(select(func.count()).select_from(Item).where(
                Item.claimed_by == ids[victim.name], Item.processed_at.is_(None)))
            # A message being sent at the kill may have reached the receiver before the victim could record
            # it: it is sent again (same webhook-id). A send cannot be fenced; it leaves the database.
            in_flight = set(s.scalars(select(Delivery.idempotency_key).where(
                Delivery.status == "sending", Delivery.lease_owner == ids[victim.name])))
        assert held_feeds or held_items

        # The survivors finish: every item (including those published after the kill) processed, the
        # outbox drained, and a few more due times passed for every feed.
        def done() -> bool:
            with Session(engine) as s:
                stored = s.scalar(select(func.count()).select_from(Item))
                left = s.scalar(select(func.count()).select_from(Item).where(Item.processed_at.is_(None)))
                pending = s.scalar(select(func.count()).select_from(Delivery).where(
                    Delivery.status.in_(("pending", "sending"))))
            return stored == len(items) and left == 0 and pending == 0 and time.time() > killed_at + 2 * INTERVAL_S

        _wait(done, 120, "the survivors to finish the work", cluster)
        with Session(engine) as s:  # the victim was reaped and the others are alive
            live = set(s.scalars(select(Worker.id)))
        assert ids[victim.name] not in live and {ids["worker1"], ids["worker2"]} <= live
        reaped = [rec for p in cluster.procs for rec in p.log_lines() if "presumed dead" in str(rec.get("msg"))]
        assert all(rec.get("workers") == [ids[victim.name]] for rec in reaped), reaped  # only the victim
    finally:
        codes = cluster.stop()
        replay.stop()
        receiver.stop()
    assert all(code == 0 for name, code in codes.items() if name != victim.name), codes

    # Every feed fetched once per due time: consecutive requests for one feed are an interval apart, except
    # a feed the victim was fetching when it died, which a survivor fetched again after reaping it. "Apart" is
    # at least half an interval: the next check counts from when a fetch started, before it waited for a slot of
    # the per-host limit (200 feeds on one host), so under load two requests can reach the server a slot-wait
    # closer than the interval (5.3 s of 6 seen once in CI-like load); two claims of one due time, the bug this
    # guards against, send their requests within a second of each other.
    by_slug = {slug: sorted(times) for slug, times in replay.requests_by_feed().items()}
    held_slugs = {feed_slug(u) for u in held_feeds}
    assert len(by_slug) == N_FEEDS
    refetched = 0
    for slug, times in by_slug.items():
        for a, b in zip(times, times[1:], strict=False):
            if b - a >= INTERVAL_S * 0.5:
                continue
            assert slug in held_slugs and a <= killed_at <= b, (slug, b - a, times)
            refetched += 1
    assert refetched <= len(held_slugs)
    assert min(len(t) for t in by_slug.values()) >= 2  # the run spanned at least two due times per feed

    # Every item stored once, encoded once (one vector) and processed by exactly one worker (the one whose
    # claim its processed mark was fenced by), the victim included for what it finished before it died.
    with Session(engine) as s:
        n_items = s.scalar(select(func.count()).select_from(Item))
        n_vectors = s.scalar(select(func.count()).select_from(ItemVector))
        by_worker = dict(s.execute(select(Item.claimed_by, func.count()).where(Item.processed_at.is_not(None))
                                   .group_by(Item.claimed_by)).all())
        leased = s.scalar(select(func.count()).select_from(Feed).where(Feed.lease_until.is_not(None)))
        deliveries = list(s.scalars(select(Delivery)))
        workers_left = s.scalar(select(func.count()).select_from(Worker))
    assert n_items == n_vectors == len(items)
    assert set(by_worker) <= set(ids.values()) and sum(by_worker.values()) == n_items, by_worker
    assert by_worker.get(ids["worker1"]) and by_worker.get(ids["worker2"])

    # Every delivery sent exactly once: each idempotency key reached the receiver once, and none is pending.
    assert deliveries and {d.status for d in deliveries} == {"sent"}
    got = Counter(r.headers.get("webhook-id") for r in receiver.snapshot())
    assert set(got) == {d.idempotency_key for d in deliveries}
    assert all(n == 1 or (k in in_flight and n == 2) for k, n in got.items()), got
    # Nothing left behind: no feed leased, no worker registered after the clean stops.
    assert leased == 0 and workers_left == 0


def _compose_client() -> list[str] | None:
    """`docker compose` (v2 plugin) or else `docker-compose` (v1, e.g. Debian's package): both parse and
    validate a file with no daemon."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_is_valid_and_runs_a_scheduler_web_and_scalable_workers(tmp_path: Path) -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("no compose client here (`docker compose` plugin, or Debian's docker-compose package)")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "MONITOR_SECRET_KEY": "k", "POSTGRES_PASSWORD": "p"}

    def config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*client, "-f", str(path), "--project-directory", str(ROOT), "config"],
                              capture_output=True, text=True, env=env)

    res = config(ROOT / "compose.yaml", env)
    assert res.returncode == 0, res.stderr
    rendered = yaml.safe_load(res.stdout)
    services = rendered["services"]
    assert set(services) == {"db", "web", "worker"}
    assert services["worker"]["command"][-3:] == ["--role", "worker", "--no-migrate"]
    assert "scheduler,web" in services["web"]["command"] and services["web"]["ports"]
    assert "ports" not in services["worker"]  # so `--scale worker=N` has no port clash
    assert "pgdata" in rendered["volumes"] and services["db"]["volumes"]
    for name in ("web", "worker"):
        environment = services[name]["environment"]
        assert environment["MONITOR_SECRET_KEY"] == "k" and environment["MONITOR_DATABASE_URL"].startswith("postgresql")
    # The shared secrets are required: without them the file does not even render.
    missing = config(ROOT / "compose.yaml", {"PATH": env["PATH"]})
    said = missing.stderr + missing.stdout
    assert missing.returncode != 0 and ("MONITOR_SECRET_KEY" in said or "POSTGRES_PASSWORD" in said), said
    # And the validator is a real one: a misspelt key is refused.
    broken = tmp_path / "compose.yaml"
    broken.write_text((ROOT / "compose.yaml").read_text().replace("depends_on:", "depends_onn:", 1))
    assert config(broken, env).returncode != 0


@pytest.mark.slow
@pytest.mark.databases("postgresql")
def test_a_worker_that_stalls_past_its_lease_cannot_commit_what_it_held(tmp_path: Path, engine: Engine,
                                                                        onnx_model: str) -> None:
    """SIGSTOP a worker while it holds a batch of items; it is presumed dead and the other worker takes the
    batch over. SIGCONT: the stalled one finishes encoding, but its write is refused (fenced) and it
    registers again; every item is processed once, by the worker that held it last."""
    from monitor.app import pipeline
    from monitor.config import parse_config

    start = now_utc()
    items = spread_items(load_items(BUNDLED), n_feeds=60, per_feed=1, now=start)
    replay = RecordingReplayServer(items, now_utc).run_in_thread()
    text = cluster_config(database_url=engine.url.render_as_string(hide_password=False),
                          feed_urls=replay.feed_urls(), interval_s=3600, channels=0,
                          model_cache_dir=onnx_model, outbox_dir=str(tmp_path / "outbox"))
    config = tmp_path / "feeds.toml"
    config.write_text(text)
    cluster = Cluster(config, tmp_path, env={"MONITOR_SECRET_KEY": "k"},
                      extra_args=("--tick", "0.5", "--heartbeat", "0.5", "--dead-after", "4", "--batch", "8"))
    try:
        a, b = cluster.start("worker", "a"), cluster.start("worker", "b")
        cluster.wait_ready()
        ids = {a.name: a.worker_id, b.name: b.worker_id}
        pipeline.sync_config(engine, parse_config(text, str(config), env={}), now_utc())  # the scheduler's job

        def a_holds_items() -> set[int]:
            with Session(engine) as s:
                return set(s.scalars(select(Item.id).where(Item.claimed_by == ids["a"], Item.processed_at.is_(None))))

        _wait(a_holds_items, 60, "worker a to hold a batch", cluster)
        a.popen.send_signal(signal.SIGSTOP)
        held = a_holds_items()
        assert held
        try:
            def b_finished_all() -> bool:
                with Session(engine) as s:
                    left = s.scalar(select(func.count()).select_from(Item).where(Item.processed_at.is_(None)))
                    stored = s.scalar(select(func.count()).select_from(Item))
                return stored == len(items) and left == 0

            _wait(b_finished_all, 90, "worker b to take over a's batch and finish", cluster)
        finally:
            a.popen.send_signal(signal.SIGCONT)
        _wait(lambda: "registering again" in a.tail(100_000), 60, "worker a to learn it was reaped", cluster)
        _wait(lambda: "no longer ours" in a.tail(100_000) or "fetch result dropped" in a.tail(100_000), 60,
              "worker a's late write to be refused", cluster)
    finally:
        codes = cluster.stop()
        replay.stop()
    assert codes == {"a": 0, "b": 0}, codes
    with Session(engine) as s:
        owners = dict(s.execute(select(Item.id, Item.claimed_by).where(Item.id.in_(held))).all())
        n_items = s.scalar(select(func.count()).select_from(Item))
        n_vectors = s.scalar(select(func.count()).select_from(ItemVector))
    assert set(owners.values()) == {ids["b"]}  # the batch a held was written by b, not by a after it woke
    assert n_items == n_vectors == len(items)
