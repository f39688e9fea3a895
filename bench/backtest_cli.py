"""`monitor backtest` (the CLI) over a long window: the editor's prefiltered path (`Backtester.matches`, what the
command runs now) against scoring every item of the window with story-level evidence (`match.match_items` over
the whole window, what the command did before), measured alternately in the same run on the same database.

Data: bench/backtest.py's (the bundled real headlines repeated with noise), N items (default 100,000) spread
over --days (default 30) before a fixed time, in a fresh SQLite database; the window is all of it. Each path
reads the window from the database and scores it; the model is loaded once, before (both encode only the
topic's own texts). Both must list the same items with the same scores and reasons (checked every round).

    .venv/bin/python bench/backtest_cli.py [--items 100000] [--days 30] [--repeats 3]

Prints one JSON object (last line): medians of --repeats, and their ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backtest import bench_args, bench_database, code_state  # the bench data and options, shared

NOW = datetime(2023, 11, 30, 12, 0, tzinfo=UTC)  # fixed: runs compare


def score_every_item(engine, embedder, topic, start: datetime) -> list[tuple[int, float, str]]:  # type: ignore[no-untyped-def]
    """The command's earlier path: every item of the window, its stored vector, `match.match_items` with
    story-level evidence from the window's own items."""
    from sqlalchemy import select

    from monitor.records import ItemRecord
    from monitor.signal import embed, match
    from monitor.storage import db
    from monitor.storage.tables import Item

    topic_set = match.compile_topics([topic], embedder)
    with db.session_factory(engine)() as s:
        rows = s.scalars(select(Item).where(Item.published_at >= db.naive_utc(start))
                         .order_by(Item.published_at, Item.id)).all()
        items = [ItemRecord(id=r.id, feed_id=r.feed_id, outlet=r.outlet, title=r.title, summary=r.summary or "",
                            link=r.link, published_at=db.aware_utc(r.published_at), content_hash=r.content_hash)  # type: ignore[arg-type]
                 for r in rows]
        stored = embed.load_vectors(s, embedder.model_id, [it.id for it in items])
    have = [it for it in items if it.id in stored]
    vectors = np.stack([stored[it.id] for it in have])
    verdicts = match.match_items(have, vectors, topic_set, match.Recent.empty(embedder.dim))
    return [(v.item_id, v.score, v.reason) for v in verdicts if v.matched]


def prefiltered(engine, embedder, settings, topic, start: datetime) -> list[tuple[int, float, str]]:  # type: ignore[no-untyped-def]
    """The command's path now: a Backtester's matches (window read, prefilter, exact verdicts)."""
    from monitor.app.admin.backtest import Backtester

    tester = Backtester(engine, embedder, settings)
    try:
        scored = tester.matches(topic, since=start)
    finally:
        tester.close()
    return [(h.item.id, h.score, h.reason) for h in scored.hits]


def main() -> None:
    args = bench_args(__doc__, days=30, repeats=3)

    start = NOW - timedelta(days=args.days)
    old_s, new_s = [], []
    with bench_database(args.items, NOW, args.days, args.topic) as (engine, embedder, settings, topic, _fill_s):
        for r in range(args.repeats):
            runs = [("old", score_every_item, (engine, embedder, topic, start)),
                    ("new", prefiltered, (engine, embedder, settings, topic, start))]
            got = {}
            for name, fn, fargs in runs if r % 2 == 0 else runs[::-1]:  # alternate which goes first
                t0 = time.perf_counter()
                got[name] = fn(*fargs)
                (old_s if name == "old" else new_s).append(time.perf_counter() - t0)
            if got["old"] != got["new"]:
                raise SystemExit(f"the two paths differ: {len(got['old'])} vs {len(got['new'])} matches")
    out = {
        "benchmark": "backtest_cli", "items": args.items, "days": args.days, "topic": topic.id,
        "matches": len(got["new"]), "same_verdicts": True,
        "score_every_item_s_median": round(statistics.median(old_s), 3),
        "prefiltered_s_median": round(statistics.median(new_s), 3),
        "speedup": round(statistics.median(old_s) / statistics.median(new_s), 2),
        "score_every_item_s": [round(x, 2) for x in old_s], "prefiltered_s": [round(x, 2) for x in new_s],
        "repeats": args.repeats, "code": code_state(), "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
