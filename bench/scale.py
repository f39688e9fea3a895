"""Scale-out throughput: 1, 2 and 4 worker processes (`monitor run --role worker`) on PostgreSQL, over the
same replayed feeds and items, in one run.

Each pass: a fresh database (private PostgreSQL 16 from the pgserver wheel, as `make test` uses), the replay
server (HTTP on 127.0.0.1) serving `--feeds` feeds of which `--items` carry one new real headline each (the
others answer an empty feed), N workers started and ready (model loaded), then the feeds are written into the
database at once (what the scheduler's config sync does: every feed due now) and the clock starts.

    feeds/s  feeds fetched, parsed and recorded (each feed once) / seconds until the last one was
    items/s  items encoded, matched against two topics and run through novelty / seconds until the last one

`ratio` = the figure with N workers / the figure with 1 worker, medians of `--repeats` passes (worker counts
interleaved, so drift on a shared machine hits all). Workers use the int8 ONNX backend and
`max_concurrency` = 8 (a claim round is 8 x 32 = 256 feeds, so several workers share one pass's feeds).
Note: on a machine with C cores, CPU-bound work (parsing, encoding, PostgreSQL itself, the replay server
in this process) cannot go faster than C cores allow: expect the ratio to flatten from about C workers.

    .venv/bin/python bench/scale.py [--workers 1,2,4] [--feeds 800] [--items 300] [--repeats 3]

Prints one JSON object (last line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = Path("/tmp/monitor-cache/onnx-models")


def postgres() -> tuple[object, str]:
    """A private PostgreSQL server (pgserver) on a unix socket; returns (server, URL of its admin database)."""
    runtime_dir = tempfile.mkdtemp(prefix="pgrt-")
    os.environ.setdefault("XDG_RUNTIME_DIR", runtime_dir)
    import pgserver
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    server = pgserver.get_server(tempfile.mkdtemp(prefix="pg-bench-"), cleanup_mode="delete")
    url = make_url(server.get_uri()).set(drivername="postgresql+psycopg")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # as in the tests: throwaway databases need no durability
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.exec_driver_sql(f"ALTER SYSTEM SET {setting} = off")
        conn.exec_driver_sql("SELECT pg_reload_conf()")
    admin.dispose()
    return server, url.render_as_string(hide_password=False)


def one_pass(admin_url: str, n_workers: int, feeds: list, visible: int, work: Path) -> dict[str, float]:  # type: ignore[type-arg]
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.engine import make_url
    from sqlalchemy.orm import Session

    from monitor.app import pipeline
    from monitor.config import parse_config
    from monitor.lab.cluster import Cluster, RecordingReplayServer, cluster_config
    from monitor.storage import db
    from monitor.storage.tables import Feed, Item

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    db.upgrade(engine)
    go: list[datetime] = []
    start = datetime.now(UTC)

    def clock() -> datetime:  # the items appear when the clock starts
        return start + timedelta(seconds=time.time() - go[0].timestamp()) if go else start - timedelta(hours=2)

    replay = RecordingReplayServer(feeds, clock).run_in_thread()
    run_dir = work / f"{name}-{n_workers}w"
    run_dir.mkdir()
    text = cluster_config(database_url=url, feed_urls=replay.feed_urls(), interval_s=3600, channels=0,
                          model_cache_dir=str(MODEL_CACHE), outbox_dir=str(run_dir / "outbox"), max_concurrency=8)
    config_path = run_dir / "feeds.toml"
    config_path.write_text(text)
    cluster = Cluster(config_path, run_dir, env={"MONITOR_SECRET_KEY": "bench"},
                      extra_args=("--tick", "0.25", "--heartbeat", "1", "--dead-after", "30", "--batch", "64"))
    try:
        for i in range(n_workers):
            cluster.start("worker", f"worker{i}")
        cluster.wait_ready(300)
        go.append(datetime.now(UTC))
        t0 = time.perf_counter()
        pipeline.sync_config(engine, parse_config(text, str(config_path), env={}), datetime.now(UTC))
        n_feeds = len(replay.feed_urls())
        t_feeds = t_items = None
        while t_items is None or t_feeds is None:
            with Session(engine) as s:
                checked = s.scalar(select(func.count()).select_from(Feed).where(Feed.last_checked_at.is_not(None)))
                done = s.scalar(select(func.count()).select_from(Item).where(Item.processed_at.is_not(None)))
            now = time.perf_counter() - t0
            if t_feeds is None and checked == n_feeds:
                t_feeds = now
            if t_items is None and done >= visible:
                t_items = now
            if now > 900:
                raise SystemExit(f"pass with {n_workers} workers did not finish in 900 s "
                                 f"({checked}/{n_feeds} feeds, {done}/{visible} items)")
            time.sleep(0.05)
        per_worker = {}
        with Session(engine) as s:
            for owner, n in s.execute(select(Item.claimed_by, func.count()).group_by(Item.claimed_by)):
                per_worker[str(owner)] = n
    finally:
        cluster.stop()
        replay.stop()
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"workers": n_workers, "feeds_per_s": n_feeds / t_feeds, "items_per_s": visible / t_items,
            "feeds_s": round(t_feeds, 2), "items_s": round(t_items, 2), "items_by_worker": sorted(per_worker.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--feeds", type=int, default=800)
    ap.add_argument("--items", type=int, default=300, help="feeds that carry one new item (the rest are empty)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from monitor.config import Settings
    from monitor.lab.cluster import spread_items
    from monitor.lab.demo import BUNDLED
    from monitor.lab.replay import load_items
    from monitor.signal import embed

    embed.load_embedder(Settings(embedding_backend="onnx-int8", model_cache_dir=str(MODEL_CACHE)))  # export once
    counts = [int(x) for x in args.workers.split(",")]
    now = datetime.now(UTC)
    base = load_items(BUNDLED)
    # `items` feeds carry one item published an hour before the clock starts; the rest carry one dated far
    # in the future, so they answer an empty feed (fetched and recorded like any other).
    visible = spread_items(base, n_feeds=args.items, per_feed=1, now=now)
    hidden = [dataclasses.replace(it, published=now + timedelta(days=3650))
              for it in spread_items(base[args.items:], n_feeds=args.feeds, per_feed=1, now=now)[args.items:]]
    feeds = visible + hidden
    server, admin_url = postgres()
    runs = []
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        for r in range(args.repeats):
            for n in counts:
                result = one_pass(admin_url, n, feeds, args.items, work)
                result["repeat"] = r
                runs.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    finally:
        server.cleanup()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)
    by: dict[str, dict[str, float]] = {}
    for n in counts:
        mine = [x for x in runs if x["workers"] == n]
        by[str(n)] = {"feeds_per_s": round(statistics.median(x["feeds_per_s"] for x in mine), 1),
                      "items_per_s": round(statistics.median(x["items_per_s"] for x in mine), 1)}
    base1 = by[str(counts[0])]
    for n in counts:
        by[str(n)]["feeds_ratio"] = round(by[str(n)]["feeds_per_s"] / base1["feeds_per_s"], 2)
        by[str(n)]["items_ratio"] = round(by[str(n)]["items_per_s"] / base1["items_per_s"], 2)
    print(json.dumps({"bench": "scale", "database": "postgresql 16 (pgserver)", "cpu_cores": os.cpu_count(),
                      "load_avg_before": [round(x, 1) for x in load_before],
                      "load_avg_after": [round(x, 1) for x in os.getloadavg()],
                      "feeds": args.feeds, "items": args.items, "repeats": args.repeats,
                      "baseline": f"{counts[0]} worker(s), same run", "by_workers": by, "runs": runs}))


if __name__ == "__main__":
    main()
