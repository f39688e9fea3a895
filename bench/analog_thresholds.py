"""Label-free thresholds of the analog topics (bench/data/analogs, topics written from their definitions as an
admin would) and the precision they give on the hand-read candidates, with the former rule (every example in
the threshold's sample) measured in the same run as the baseline.

    rule        the shipped rule (`match.compile_topics`): the examples that miss a keyword group of their topic
                are left out of the threshold's sample (`match.threshold_sample`)
    every       the former rule: every example counts, so one without the keywords drags the 10th percentile
                down (docs/topic-relevance.md, scorer step 4 and "Third round")

Precision = matched and on topic / matched, on the candidates of each topic (own evidence, shipped combiner,
keyword veto applied), pooled over the five topics. Recall is not measurable here (bench/data/analogs README).
Candidates are encoded once (`embed.encode_items`, cached in --cache-dir).

    .venv/bin/python bench/analog_thresholds.py --cache-dir /tmp/monitor-cache

Prints one JSON object (last line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from monitor.config import load_config
from monitor.records import item_text
from monitor.signal import embed, match

ROOT = Path(__file__).resolve().parent.parent
ANALOGS = ROOT / "bench" / "data" / "analogs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/monitor-cache"))
    args = ap.parse_args()
    config = load_config(ANALOGS / "topics.toml")
    on_topic = {}
    for line in (ANALOGS / "development_labels.jsonl").read_text().splitlines():
        r = json.loads(line)
        on_topic[(r["topic"], r["cid"])] = int(r["on_topic"])
    rows = [json.loads(line) for t in config.topics
            for line in (ANALOGS / "candidates" / f"{t.id}.jsonl").read_text().splitlines()]
    texts = [item_text(r["title"], r["summary"] or "") for r in rows]
    embedder = embed.load_embedder(config.settings)
    key = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
    cache = args.cache_dir / f"analog-cands-{embedder.model_id}-{key}.npy"
    if cache.exists():
        vectors = np.load(cache)
    else:
        vectors = embed.encode_items(embedder, [r["title"] for r in rows], texts)
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache, vectors)
    compiled = match.compile_topics(config.topics, embedder)
    out: dict[str, object] = {"topics": {}}
    pooled = {"rule": [0, 0], "every": [0, 0]}
    for topic, ct in zip(config.topics, compiled.topics, strict=True):
        idx = [i for i, r in enumerate(rows) if r["topic"] == topic.id]
        gold = np.array([on_topic[(topic.id, rows[i]["cid"])] for i in idx])
        every = match.label_free_threshold(ct.prototypes, ct.counters, match.keyword_features(ct.gate, topic.examples),
                                           ct.combiner)
        verdicts = match.match_texts(idx, [texts[i] for i in idx], vectors[idx],
                                     match.TopicSet(compiled.model_id, (ct,)))
        scores = np.array([v.score for v in verdicts])
        usable = np.array(["excluded keyword" not in v.reason for v in verdicts])
        entry: dict[str, object] = {"source": ct.threshold_source, "candidates": len(idx),
                                    "warnings": len(match.example_warnings(topic))}
        for name, th in (("rule", ct.threshold), ("every", every)):
            hit = usable & (scores >= th)
            tp, n = int(gold[hit].sum()), int(hit.sum())
            pooled[name][0] += tp
            pooled[name][1] += n
            entry[name] = {"threshold": th, "precision": round(tp / n, 3) if n else None, "on_topic": tp,
                           "matched": n}
        out["topics"][topic.id] = entry  # type: ignore[index]
    out["pooled"] = {name: {"precision": round(tp / n, 3) if n else None, "on_topic": tp, "matched": n}
                     for name, (tp, n) in pooled.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
