"""Draw the development candidates of one analog topic from the captured stream (no label comes from code).

The stream items of [START, END) whose headline + teaser a broad regex keeps (only to bound encoding on two
cores) are encoded and scored by the topic on their OWN evidence (`match.own_logits`, shipped combiner, the
topic's label-free threshold, keyword veto); the candidates are the items it matches or scores at least
0.6 x its threshold (the rule used for every hand-read candidate set), deduplicated by (outlet, headline),
in time order. `matched` and `score` are written for the record and hidden from the readers' judgement.

    .venv/bin/python bench/data/analogs2/draw.py bench/data/analogs2/topics.toml yemen-prisoner-exchange \
        2023-01-01 2023-11-15 'yemen|houthi|sanaa|aden\\b' ye bench/data/analogs2/candidates/yemen-prisoner-exchange.jsonl \
        --cache-dir /tmp/monitor-cache

Dev period only: END must be on or before 2023-11-16 (the evaluation protocol's cut-off).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from monitor.config import load_config
from monitor.lab import story_eval
from monitor.lab.topic_eval import FIT_CUTOFF
from monitor.signal import embed, match

ROOT = Path(__file__).resolve().parents[3]
STREAM = ROOT.parent / "shared" / "data" / "stream" / "items_2023_worldnews.jsonl.xz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("topics", "topic", "start", "end", "regex", "prefix", "out"):
        ap.add_argument(name)
    ap.add_argument("--stream", type=Path, default=STREAM)
    ap.add_argument("--cache-dir", type=Path, default=None)
    a = ap.parse_args()
    if a.end > FIT_CUTOFF:
        ap.error(f"END {a.end} is after the dev period's end {FIT_CUTOFF}")
    config = load_config(Path(a.topics))
    topic = next((t for t in config.topics if t.id == a.topic), None)
    if topic is None:
        ap.error(f"{a.topics} has no topic {a.topic!r}")
    day = lambda s: datetime.fromisoformat(s).replace(tzinfo=UTC)  # noqa: E731
    keep = re.compile(a.regex, re.I)
    records = [r for r in story_eval.read_stream(a.stream, day(a.start), day(a.end))
               if keep.search(f"{r.title} {r.summary}")]
    embedder = embed.load_embedder(config.settings)
    compiled = match.compile_topics([topic], embedder).topics[0]
    vectors = story_eval.cached_vectors(embedder, records, a.cache_dir)
    prob = 1.0 / (1.0 + np.exp(-match.own_logits(compiled, [r.text for r in records], vectors)))
    seen: set[tuple[str, str]] = set()
    rows = []
    for r, p in zip(records, prob, strict=True):
        key = (r.outlet, r.title.lower())
        if p < 0.6 * compiled.threshold or key in seen:
            continue
        seen.add(key)
        rows.append({"cid": f"{a.prefix}{len(rows) + 1:04d}", "topic": a.topic,
                     "id": hashlib.sha1((r.link or r.title).encode()).hexdigest()[:12],
                     "date": r.published_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), "source": r.outlet,
                     "title": r.title, "summary": r.summary, "matched": bool(p >= compiled.threshold),
                     "score": round(float(p), 3)})
    Path(a.out).write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
    print(json.dumps({"topic": a.topic, "regex_kept": len(records), "threshold": round(compiled.threshold, 4),
                      "candidates": len(rows), "matched": sum(x["matched"] for x in rows)}))


if __name__ == "__main__":
    main()
