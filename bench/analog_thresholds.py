"""Label-free thresholds of the analog topics (bench/data/analogs and analogs2: ten topics written from their
definitions as an admin would) and the precision they give on the hand-read candidates, with the former rule
(every example in the threshold's sample) and the keyword baseline measured in the same run:

    rule        the shipped rule (`match.compile_topics`): the examples that miss a keyword group of their topic
                are left out of the threshold's sample (`match.threshold_sample`)
    every       the former rule: every example counts, so one without the keywords drags the 10th percentile
                down (docs/topic-relevance.md, scorer step 4 and "Third round")
    keyword     the topic's own keywords as hard gates (`topic_eval.baseline_gate`, what `eval topics` calls the
                keyword baseline), among the candidates only: the matcher drew them with keyword evidence in its
                score, so nearly all contain the keywords and this is about the candidates' on-topic share, not
                a keyword query over the stream (docs/topic-relevance.md)

Precision = matched and on topic / matched, on the candidates of each topic (own evidence, shipped combiner,
keyword veto applied), pooled per batch and over all. Recall is not measurable here (bench/data/analogs README).
Candidates are encoded once (`embed.encode_items`, cached in --cache-dir).

    .venv/bin/python bench/analog_thresholds.py --cache-dir /tmp/monitor-cache [--analogs DIR ...]

Prints one JSON object (last line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from monitor.config import load_config
from monitor.lab.topic_eval import baseline_gate
from monitor.records import item_text
from monitor.signal import embed, match

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (ROOT / "bench" / "data" / "analogs", ROOT / "bench" / "data" / "analogs2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/monitor-cache"))
    ap.add_argument("--analogs", type=Path, action="append", default=None,
                    help="a folder of analog labels (topics.toml, candidates/, development_labels.jsonl); "
                         "repeatable; default: bench/data/analogs and analogs2")
    args = ap.parse_args()
    args.analogs = args.analogs or list(BATCHES)
    out: dict[str, object] = {"topics": {}, "pooled": {}}
    total = {"rule": [0, 0], "every": [0, 0], "keyword": [0, 0]}
    for folder in args.analogs:
        pooled = {"rule": [0, 0], "every": [0, 0], "keyword": [0, 0]}
        for topic_id, entry in _batch(folder, args.cache_dir):
            if topic_id in out["topics"]:  # type: ignore[operator]
                raise SystemExit(f"{folder}: topic {topic_id} is in another --analogs folder too")
            out["topics"][topic_id] = entry  # type: ignore[index]
            for name in pooled:
                for k, key in enumerate(("on_topic", "matched")):
                    pooled[name][k] += entry[name][key]
                    total[name][k] += entry[name][key]
        out["pooled"][str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder)] = \
            _precision(pooled)  # type: ignore[index]
    out["pooled"]["all"] = _precision(total)  # type: ignore[index]
    print(json.dumps(out))


def _precision(pooled: dict[str, list[int]]) -> dict[str, object]:
    return {name: {"precision": round(tp / n, 3) if n else None, "on_topic": tp, "matched": n}
            for name, (tp, n) in pooled.items()}


def _batch(folder: Path, cache_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    config = load_config(folder / "topics.toml")
    on_topic = {}
    for line in (folder / "development_labels.jsonl").read_text().splitlines():
        r = json.loads(line)
        on_topic[(r["topic"], r["cid"])] = int(r["on_topic"])
    rows = [json.loads(line) for t in config.topics
            for line in (folder / "candidates" / f"{t.id}.jsonl").read_text().splitlines()]
    texts = [item_text(r["title"], r["summary"] or "") for r in rows]
    embedder = embed.load_embedder(config.settings)
    key = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
    cache = cache_dir / f"analog-cands-{embedder.model_id}-{key}.npy"
    if cache.exists():
        vectors = np.load(cache)
    else:
        vectors = embed.encode_items(embedder, [r["title"] for r in rows], texts)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache, vectors)
    compiled = match.compile_topics(config.topics, embedder)
    out = []
    for topic, ct in zip(config.topics, compiled.topics, strict=True):
        idx = [i for i, r in enumerate(rows) if r["topic"] == topic.id]
        gold = np.array([on_topic[(topic.id, rows[i]["cid"])] for i in idx])
        every = match.label_free_threshold(ct.prototypes, ct.counters, match.keyword_features(ct.gate, topic.examples),
                                           ct.combiner)
        verdicts = match.match_texts(idx, [texts[i] for i in idx], vectors[idx],
                                     match.TopicSet(compiled.model_id, (ct,)))
        scores = np.array([v.score for v in verdicts])
        usable = np.array(["excluded keyword" not in v.reason for v in verdicts])
        gate = baseline_gate(topic)
        hits = {"rule": usable & (scores >= ct.threshold), "every": usable & (scores >= every),
                "keyword": np.array([gate.check(texts[i])[0] for i in idx], dtype=bool)}
        entry: dict[str, Any] = {"batch": folder.name, "source": ct.threshold_source, "candidates": len(idx),
                                 "warnings": len(match.example_warnings(topic))}
        for name, hit in hits.items():
            tp, n = int(gold[hit].sum()), int(hit.sum())
            entry[name] = {"precision": round(tp / n, 3) if n else None, "on_topic": tp, "matched": n}
        entry["rule"]["threshold"], entry["every"]["threshold"] = ct.threshold, every
        out.append((topic.id, entry))
    return out


if __name__ == "__main__":
    main()
