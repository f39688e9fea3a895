"""Embedding throughput: raw encoding vs the whole ingest path, in one run.

    raw     the embedder encoding N stream items exactly as the pipeline does (`embed.encode_items`:
            headline and headline + teaser, batch 64), nothing else
    ingest  replay server (HTTP on 127.0.0.1) -> the service's own pipeline.poll_feeds (fetch + parse +
            store in SQLite) and pipeline.process_pending (embed, vectors stored; match against the three
            default topics; stories/novelty), into a fresh database

Passes alternate ingest / raw and torch / onnx-int8 inside each of `--repeats` rounds (default 2), so
drift in the load of a shared machine hits every path and backend alike; the figures are medians. `ratio` = ingest items/s / raw items/s (target >= 0.8). With `--agreement` the mean
cosine between the onnx-int8 and torch item vectors of the dev items is measured too.

    .venv/bin/python bench/embed.py [--items 1000] [--backend torch|onnx-int8|both] [--agreement]

Prints one JSON object (last line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "stream" / "items_2023_worldnews.jsonl.xz"
DEV_ITEMS = ROOT.parent / "shared" / "data" / "topics" / "dev_items.jsonl"
BATCH = 64


def stream_items(data: Path, n: int, per_feed: int):  # type: ignore[no-untyped-def]
    """n real items from the war weeks, spread over feeds of at most per_feed items (one RSS document each)."""
    from monitor.lab.replay import load_items

    items = load_items(data, since=datetime(2023, 11, 20, tzinfo=UTC), until=datetime(2023, 12, 10, tzinfo=UTC))
    items = [it for it in items if it.title.strip()][:n]
    if len(items) < n:
        raise SystemExit(f"{data}: only {len(items)} items in the window, need {n}")
    return [replace(it, feed=f"https://bench.example/feed{i // per_feed}") for i, it in enumerate(items)]


def raw_pass(embedder, titles: list[str], texts: list[str]) -> float:  # type: ignore[no-untyped-def]
    from monitor.signal import embed

    # One call over every item: the embedder sorts by length and encodes in batches of its batch size (64),
    # the best case for padding, so raw is the ceiling the pipeline's per-batch encoding is held against.
    t = time.perf_counter()
    embed.encode_items(embedder, titles, texts)
    return len(texts) / (time.perf_counter() - t)


def ingest_pass(embedder, topic_set, topics, items, tmp: Path, settings_kw: dict) -> tuple[float, list, int, dict]:  # type: ignore[no-untyped-def]
    """One full ingest into a fresh database through the service's own code (`pipeline.poll_feeds` and
    `pipeline.process_pending`: embed -> match -> stories/novelty); returns (items/s, the stored
    ItemRecords, matches, seconds per step)."""
    from monitor.app import pipeline
    from monitor.clock import ManualClock
    from monitor.config import Config, FeedConfig, Settings
    from monitor.lab.replay import ReplayServer
    from monitor.storage import db

    end = max(it.published for it in items) + timedelta(minutes=1)
    per_feed = max(sum(1 for x in items if x.feed == f) for f in {x.feed for x in items})
    path = tmp / f"bench-{time.monotonic_ns()}.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    settings = Settings(database_url=f"sqlite:///{path}", allow_private_networks=True, **settings_kw)
    with ReplayServer(items, lambda: end, window=per_feed) as server:
        # aggregator: the replay server serves every outlet from 127.0.0.1; each item's link names its outlet
        config = Config(settings=settings, feeds=[FeedConfig(url=u, aggregator=True) for u in server.feed_urls()],
                        topics=topics)
        rt = pipeline.build_runtime(engine, config, embedder, ManualClock(end), topics=topic_set,
                                    signing_key="bench")
        t = time.perf_counter()
        report = asyncio.run(pipeline.poll_feeds(rt, all_feeds=True))
        t1 = time.perf_counter()
        processed = pipeline.process_pending(rt)
        elapsed = time.perf_counter() - t
        steps = {"poll_store": t1 - t, "embed_match_stories": elapsed - (t1 - t)}
    engine.dispose()
    stored = list(report.new_items)
    if processed.items != len(stored) or not stored:
        raise SystemExit(f"ingest stored {len(stored)} items but processed {processed.items}")
    return len(stored) / elapsed, stored, processed.matches, {k: round(v, 2) for k, v in steps.items()}


def agreement(torch_embedder, onnx_embedder) -> dict[str, float]:  # type: ignore[no-untyped-def]

    from monitor.lab import topic_eval
    from monitor.signal import embed

    with DEV_ITEMS.open(encoding="utf-8") as f:
        items = topic_eval.parse_items(f)
    titles, texts = [it.title for it in items], [it.text for it in items]
    a = embed.encode_items(torch_embedder, titles, texts)
    b = embed.encode_items(onnx_embedder, titles, texts)
    cos = (a * b).sum(axis=1)
    return {"items": len(items), "mean_cosine": round(float(cos.mean()), 4), "min_cosine": round(float(cos.min()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--per-feed", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backend", choices=["torch", "onnx-int8", "both"], default="both")
    ap.add_argument("--agreement", action="store_true", help="Also measure onnx-int8 vs torch on the dev items.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from monitor.config import Settings, load_config
    from monitor.signal import embed, match

    topics = load_config(ROOT / "feeds.toml").topics
    items = stream_items(args.data, args.items, args.per_feed)
    result: dict[str, object] = {"items": len(items), "batch": BATCH, "cpus": os.cpu_count(), "backends": {}}
    embedders = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        backends = ["torch", "onnx-int8"] if args.backend == "both" else [args.backend]
        kws, sets, loads = {}, {}, {}
        for backend in backends:
            kws[backend] = {"embedding_backend": backend, "model_cache_dir": str(ROOT / "var" / "models")}
            t = time.perf_counter()
            embedders[backend] = embed.load_embedder(Settings(**kws[backend]))
            loads[backend] = time.perf_counter() - t
            sets[backend] = match.compile_topics(topics, embedders[backend])
        runs: dict[str, dict[str, list]] = {b: {"raw": [], "ingest": [], "steps": [], "matches": []} for b in backends}
        # Backends alternate inside each repeat (torch ingest, torch raw, onnx ingest, onnx raw, then again), so
        # drift in the load of a shared machine hits both backends and both paths alike.
        for _ in range(args.repeats):
            for backend in backends:
                embedder = embedders[backend]
                rate, records, matches, steps = ingest_pass(embedder, sets[backend], topics, items, tmp, kws[backend])
                runs[backend]["ingest"].append(rate)
                runs[backend]["steps"].append(steps)
                runs[backend]["matches"].append(matches)
                runs[backend]["raw"].append(raw_pass(embedder, [r.title for r in records], [r.text for r in records]))
        for backend in backends:
            r = runs[backend]
            raw, ingest = statistics.median(r["raw"]), statistics.median(r["ingest"])
            result["backends"][backend] = {  # type: ignore[index]
                "model_id": embedders[backend].model_id, "load_s": round(loads[backend], 2),
                "raw_items_per_s": round(raw, 1), "ingest_items_per_s": round(ingest, 1),
                "ratio": round(ingest / raw, 3), "matches_per_pass": r["matches"][-1],
                "raw_passes": [round(x, 1) for x in r["raw"]], "ingest_passes": [round(x, 1) for x in r["ingest"]],
                "ingest_seconds_by_step": r["steps"],
            }
        if len(embedders) == 2:
            b = result["backends"]
            result["onnx_int8_vs_torch_raw_speedup"] = round(
                b["onnx-int8"]["raw_items_per_s"] / b["torch"]["raw_items_per_s"], 2)  # type: ignore[index]
            # the same ratio pass by pass (each onnx pass against the torch pass next to it), median
            result["onnx_int8_vs_torch_raw_speedup_paired_median"] = round(statistics.median(
                o / t for o, t in zip(runs["onnx-int8"]["raw"], runs["torch"]["raw"], strict=True)), 2)
            if args.agreement:
                result["agreement"] = agreement(embedders["torch"], embedders["onnx-int8"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
