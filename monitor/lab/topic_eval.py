"""Evaluation of topic matching against labelled items (pure: no I/O; the CLI reads the files).

Items are in the shape of `shared/data/topics/dev_items.jsonl` (`id, date, feed, title, summary, link`),
labels in the shape of `dev_labels.jsonl` (`id, labels: {topic_id: 0|1}`).

Keyword baseline (a Google-Alerts-style reference): an item matches a topic when the topic's own keyword
gates pass (`require_any`, every `require_all` group, no `exclude` term). A topic without any gate terms
uses a default query: every word of its `name` must occur (e.g. "Doha talks" -> Doha AND talks).

Threshold calibration (`calibrate_threshold`): on a calibration set, take the cut-off that maximises F1;
among equal F1 the highest one; the stored value is the midpoint between that score and the next lower
distinct score, so an unseen item scoring in between is treated like the admitted one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from monitor.config import TopicConfig
from monitor.errors import MonitorError
from monitor.ingest.parse import MAX_SUMMARY_CHARS, MAX_TITLE_CHARS, clean_text
from monitor.records import item_text
from monitor.signal.match import KeywordGate, compile_gate, keyword_pattern


class EvalDataError(MonitorError):
    """An evaluation file is malformed."""


@dataclass(frozen=True, slots=True)
class EvalItem:
    id: str
    date: str
    feed: str
    title: str
    summary: str

    @property
    def text(self) -> str:
        return item_text(self.title, self.summary)


@dataclass(frozen=True, slots=True)
class Scores:
    precision: float
    recall: float
    f1: float
    support: int

    def as_dict(self) -> dict[str, float | int]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "f1": round(self.f1, 4), "support": self.support}


def parse_items(lines: Iterable[str], source: str = "items") -> list[EvalItem]:
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(EvalItem(id=str(d["id"]), date=str(d.get("date", "")), feed=str(d.get("feed", "")),
                                title=clean_text(str(d["title"]), MAX_TITLE_CHARS),
                                summary=clean_text(str(d.get("summary") or ""), MAX_SUMMARY_CHARS)))
        except (ValueError, KeyError, TypeError) as e:
            raise EvalDataError(f"{source}:{n}: not an item line (needs JSON with id and title): {e}") from None
    return out


def parse_labels(lines: Iterable[str], source: str = "labels") -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out[str(d["id"])] = {str(k): int(v) for k, v in d["labels"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EvalDataError(f"{source}:{n}: not a label line (needs id and labels {{topic: 0|1}}): {e}") from None
    return out


def scores(predicted: set[str], gold: set[str]) -> Scores:
    """Precision, recall, F1 of one topic (0 where undefined) and the support (number of gold positives)."""
    tp = len(predicted & gold)
    p = tp / len(predicted) if predicted else 0.0
    r = tp / len(gold) if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return Scores(p, r, f, len(gold))


def evaluate(predicted: Mapping[str, set[str]], labels: Mapping[str, Mapping[str, int]],
             topic_ids: Sequence[str], item_ids: Iterable[str] | None = None) -> dict[str, object]:
    """{"topics": {id: scores}, "macro_f1": m} over `item_ids` (default: every labelled item)."""
    universe = set(labels) if item_ids is None else set(item_ids) & set(labels)
    topics: dict[str, dict[str, float | int]] = {}
    f1s = []
    for tid in topic_ids:
        gold = {i for i in universe if labels[i].get(tid) == 1}
        s = scores(predicted.get(tid, set()) & universe, gold)
        topics[tid] = s.as_dict()
        f1s.append(s.f1)
    return {"topics": topics, "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else 0.0}


def baseline_gate(topic: TopicConfig) -> KeywordGate:
    """The keyword-only matcher of a topic: its own gates, or all words of its name."""
    gate = compile_gate(topic)
    if gate.require_any is None and not gate.require_all:
        words = re.findall(r"\w+", topic.name)
        groups = tuple(p for p in (keyword_pattern([w]) for w in words) if p is not None)
        gate = KeywordGate(None, groups, gate.exclude)
    return gate


def keyword_baseline(items: Sequence[EvalItem], topics: Sequence[TopicConfig]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for t in topics:
        gate = baseline_gate(t)
        out[t.id] = {it.id for it in items if gate.check(it.text)[0]}
    return out


def calibrate_threshold(scored: Sequence[tuple[float, int]]) -> float:
    """The F1-maximising threshold for (score, gold 0|1) pairs, per the module docstring. 1.0 when there
    are no positives (nothing should match)."""
    if not any(g for _, g in scored):
        return 1.0
    ordered = sorted(scored, key=lambda x: -x[0])
    total_pos = sum(g for _, g in ordered)
    distinct = sorted({s for s, _ in ordered}, reverse=True)
    best_f, best_i = -1.0, 0
    tp = n = 0
    pos = 0
    for i, cut in enumerate(distinct):
        while pos < len(ordered) and ordered[pos][0] >= cut:
            tp += ordered[pos][1]
            n += 1
            pos += 1
        p, r = tp / n, tp / total_pos
        f = 2 * p * r / (p + r) if p + r else 0.0
        if f > best_f + 1e-12:
            best_f, best_i = f, i
    cut = distinct[best_i]
    lower = distinct[best_i + 1] if best_i + 1 < len(distinct) else cut
    return round((cut + lower) / 2, 5)


def before(item: EvalItem, day: datetime) -> bool:
    return item.date[:10] < day.strftime("%Y-%m-%d")
