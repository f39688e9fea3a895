"""The topic editor's live backtest over N stored items (default 100,000), against a plain SQL scan of the
same rows measured in the same run.

Data: the bundled real headlines (monitor/data/demo_items.jsonl.xz, 2,939 items) encoded once with the real
model (`embed.encode_items`, cached in /tmp/monitor-cache/), then repeated up to N items with a little noise
on each vector (so no two are identical) and spread over the last 7 days, stored in a fresh SQLite database
(items + item_vectors, as the pipeline stores them). The topic is a shipped one (`--topic`, default
`prisoner-exchange`, which matches the most of these war-week headlines).

Measured (medians of --repeats):

    sql_scan_s   SELECT of the window's items joined with their vectors, rows fetched, nothing else
    cold_s       the first backtest of the saved topic: loads the window (the same scan + decoding into one
                 matrix), encodes the topic's texts, scores, clusters into stories
    live_s       (wall clock; live_cpu_s: CPU seconds of this process, telling a busy machine's waits apart)
                 what the editor answers on each (debounced) keystroke: the edited topic with one new
                 counterexample (one text to encode), the matcher's verdict on every stored item, the
                 matched items and the item diff against the saved version (cached)
    stories_s    the rest of that backtest, which the page shows as soon as it is ready: the matched items
                 clustered into stories (novelty) and the alerts diff
    refresh_s    what the first backtest after `refresh_s` (30 s) adds when no row changed: the window's ids
                 read and compared with the cached ones (an id-only query: vectors stored out of id order and
                 pruned rows are caught)
    live_no_misses_s  the same keystroke (another new counterexample) with the closest misses turned off
                 (`Backtester.closest_misses = 0`), on the same backtester in the same round, the two keystrokes
                 alternating in order from round to round: the baseline of what listing the closest misses costs

Also printed: `decisions_sha`, a fingerprint of the last backtest's matches and decisions, and `code`, the
commit and any uncommitted file of monitor/ it ran on. The result depends only on the items, the window, the
topic and the code (checked: the same fingerprint at other wall-clock times and hash seeds), so runs whose
alerts differ ran on different code.

    .venv/bin/python bench/backtest.py [--items 100000] [--repeats 7]

Prints one JSON object (last line).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path("/tmp/monitor-cache")
SQL_SCAN = ("SELECT items.id, items.feed_id, items.outlet, items.title, items.summary, items.link, "
            "items.published_at, items.content_hash, item_vectors.vector FROM items JOIN item_vectors "
            "ON item_vectors.item_id = items.id WHERE item_vectors.model_id = ? AND items.published_at >= ? "
            "ORDER BY items.published_at, items.id")


def code_state() -> str:
    """The commit the bench ran on, and the package's files that differed from it. The package is installed
    editable from a working tree that others edit too: two runs of this bench compare only on the same code
    (session 3's 88 / 137 / 162 alerts for the same 8,890 matches were runs on different alert models)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""
    changed = [line[3:] for line in git("status", "--porcelain", "--", "monitor").splitlines()]
    return (git("rev-parse", "--short", "HEAD") or "unknown") + (f" + uncommitted {', '.join(changed)}" if changed else "")


def decisions_sha(result) -> str:  # type: ignore[no-untyped-def]
    """A fingerprint of a backtest's matches and decisions (item, score, story, decision): equal on the same
    items, window, topic and code."""
    rows = [(h.item.id, h.score, h.story_key, h.decision) for h in result.hits]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def base_vectors(embedder, items) -> np.ndarray:  # type: ignore[no-untyped-def]
    from monitor.signal.embed import encode_items

    key = hashlib.sha256(("\n".join(it.title + "\t" + it.description for it in items) + embedder.model_id)
                         .encode()).hexdigest()[:16]
    path = CACHE / f"bench-backtest-{key}.npy"
    if path.exists():
        return np.load(path)
    texts = [f"{it.title}. {it.description}" if it.description else it.title for it in items]
    vecs = encode_items(embedder, [it.title for it in items], texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def fill(engine, items, base: np.ndarray, n: int, now: datetime, model_id: str,  # type: ignore[no-untyped-def]
         days: float = 7.0) -> None:
    """`n` items (the bundled headlines repeated, a little noise on each vector) spread evenly over the `days`
    before `now`, one feed, as the pipeline stores them."""
    from monitor.storage.tables import Feed, Item, ItemVector

    rng = np.random.default_rng(7)
    naive_now = now.replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(Feed.__table__.insert(), [{"id": 1, "url": "https://bench.example/rss", "config_url":
                                                "https://bench.example/rss", "enabled": True, "error_count": 0,
                                                "created_at": naive_now}])
        for start in range(0, n, 5000):
            rows, vecs = [], []
            for i in range(start, min(n, start + 5000)):
                it = items[i % len(items)]
                v = base[i % len(items)] + rng.normal(0, 0.01, base.shape[1]).astype(np.float32)
                v /= np.linalg.norm(v)
                published = naive_now - timedelta(seconds=int(i * days * 86400 / n))
                rows.append({"id": i + 1, "feed_id": 1, "outlet": it.feed.split("/")[2] if "://" in it.feed else "x",
                             "key": f"k{i}", "guid": f"g{i}", "link": it.link, "title": it.title,
                             "summary": it.description, "published_at": published, "fetched_at": published,
                             "content_hash": hashlib.sha256(f"{i}".encode()).hexdigest(), "processed_at": published})
                vecs.append({"item_id": i + 1, "model_id": model_id, "dim": base.shape[1],
                             "vector": v.astype(np.float32).tobytes()})
            conn.execute(Item.__table__.insert(), rows)
            conn.execute(ItemVector.__table__.insert(), vecs)


@contextlib.contextmanager
def bench_database(n: int, now: datetime, days: int, topic_id: str) -> Iterator[tuple[Any, Any, Any, Any, float]]:
    """A fresh SQLite database in a temporary folder holding `n` bench items (`fill`) spread over the `days`
    before `now`, with what a backtest needs: (engine, embedder, settings, the feeds.toml topic `topic_id`,
    seconds the fill took). Shared by the backtest benches."""
    from monitor.config import Settings, load_config
    from monitor.lab.demo import BUNDLED
    from monitor.lab.replay import load_items
    from monitor.signal.embed import load_embedder
    from monitor.storage import db

    settings = Settings()
    embedder = load_embedder(settings)
    items = [it for it in load_items(BUNDLED) if it.title.strip()]
    base = base_vectors(embedder, items)
    topic = load_config(ROOT / "feeds.toml").topic(topic_id)
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        db.upgrade(engine)
        t0 = time.perf_counter()
        fill(engine, items, base, n, now, embedder.model_id, days=days)
        try:
            yield engine, embedder, settings, topic, time.perf_counter() - t0
        finally:
            engine.dispose()


def bench_args(doc: str | None, *, days: int, repeats: int) -> argparse.Namespace:
    """The backtest benches' options: --items, --days, --repeats, --topic."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=days)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--topic", default="prisoner-exchange", help="A topic of feeds.toml (default: the broadest).")
    return ap.parse_args()


def main() -> None:
    args = bench_args(__doc__, days=7, repeats=7)

    from monitor.app.admin.backtest import Backtester
    from monitor.storage import db

    now = datetime.now(UTC)
    with bench_database(args.items, now, args.days, args.topic) as bench:
        engine, embedder, settings, topic, fill_s = bench
        since = db.naive_utc(now - timedelta(days=args.days)).isoformat(sep=" ")

        scans, colds, lives, stories, live_cpu, refreshes, bare = [], [], [], [], [], [], []
        result = saved = diff = None
        for r in range(args.repeats):
            t0 = time.perf_counter()
            with engine.connect() as conn:
                rows = conn.exec_driver_sql(SQL_SCAN, (embedder.model_id, since)).fetchall()
            scans.append(time.perf_counter() - t0)
            scanned = len(rows)
            del rows
            tester = Backtester(engine, embedder, settings)  # a fresh process's first backtest
            t0 = time.perf_counter()
            tester.run(topic, days=args.days, now=now)
            colds.append(time.perf_counter() - t0)
            # A keystroke: one more counterexample (a text never seen: encoded once), the rest cached.
            edited = topic.model_copy(update={"counterexamples": [*topic.counterexamples,
                                                                  f"Football club signs new striker {r}"]})
            # The baseline keystroke without the closest misses, before or after the measured one (alternating),
            # each followed by its stories, so that no story computation runs during a measured keystroke.
            plain = topic.model_copy(update={"counterexamples": [*topic.counterexamples,
                                                                 f"Tennis player wins open final {r}"]})

            def baseline(tester: Backtester = tester, plain: Any = plain) -> None:
                misses = tester.closest_misses
                tester.closest_misses = 0
                t0 = time.perf_counter()
                tester.compare(plain, topic, days=args.days, now=now, wait_s=0.0)
                bare.append(time.perf_counter() - t0)
                tester.compare(plain, topic, days=args.days, now=now, wait_s=600.0)
                tester.closest_misses = misses

            if r % 2:
                baseline()
            t0, c0 = time.perf_counter(), time.process_time()
            result, saved, diff = tester.compare(edited, topic, days=args.days, now=now, wait_s=0.0)
            lives.append(time.perf_counter() - t0)
            live_cpu.append(time.process_time() - c0)
            t0 = time.perf_counter()
            result, saved, diff = tester.compare(edited, topic, days=args.days, now=now, wait_s=600.0)
            stories.append(time.perf_counter() - t0)
            if not r % 2:
                baseline()
            tester.refresh_s = 0.0  # the next backtest refreshes its window
            t0 = time.perf_counter()
            tester.corpus(args.days, now)
            refreshes.append(time.perf_counter() - t0)
            tester.close()
    assert result is not None and saved is not None and diff is not None
    out = {
        "benchmark": "backtest", "items": args.items, "items_in_window": result.scanned, "sql_rows": scanned,
        "days": args.days, "topic": topic.id, "model": embedder.model_id,
        "live_s_median": round(statistics.median(lives), 4),
        "live_cpu_s_median": round(statistics.median(live_cpu), 4),
        "live_no_misses_s_median": round(statistics.median(bare), 4),
        "live_vs_no_misses": round(statistics.median(lives) / statistics.median(bare), 3),
        "closest_misses": len(result.misses),
        "live_s": [round(x, 3) for x in lives], "live_no_misses_s": [round(x, 3) for x in bare],
        "stories_s_median": round(statistics.median(stories), 4),
        "cold_s_median": round(statistics.median(colds), 4),
        "sql_scan_s_median": round(statistics.median(scans), 4),
        "refresh_s_median": round(statistics.median(refreshes), 4),
        "live_vs_sql_scan": round(statistics.median(lives) / statistics.median(scans), 3),
        "matched_fraction": round(len(result.hits) / max(result.scanned, 1), 4),
        "matches": len(result.hits), "stories": len(result.stories), "alerts": result.alerts,
        "decisions_sha": decisions_sha(result), "code": code_state(),
        "saved_matches": len(saved.hits), "items_lost": len(diff.lost), "items_gained": len(diff.gained),
        "target_live_s": 1.0, "ok": statistics.median(lives) < 1.0,
        "fill_s": round(fill_s, 1), "repeats": args.repeats, "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))
    if not out["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
