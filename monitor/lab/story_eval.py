"""Evaluation of story clustering and novelty: B-cubed and pairwise metrics against labelled stories
(`monitor eval stories`), and a replay of the real stream through topics + stories on a simulated clock
(`monitor eval replay`).

How the default `StoryParams` were chosen: grid search over join_threshold (0.40-0.60) x time_penalty
(0-0.5) x name terms x link (centroid / average / max) x gap reference on BASIL (300 articles, 100 events,
2010-2019) and AllSides (1,479 articles, 505 stories, 2021), with the service's item vectors
(`embed.encode_items`), picking the point that maximises the *lower* of the two B-cubed F1 scores under a
prior that the time penalty stays <= 0.1 per day of gap, and checking that neighbouring grid points are
within about a point (a flat optimum, not a spike). The baseline's one threshold (0.7) was chosen the same
way. Dev figures (B-cubed P/R/F1; pairwise F1):

    method     BASIL                     AllSides
    novelty    1.000/0.880/0.936; 0.901  0.936/0.906/0.921; 0.843
    baseline   0.991/0.729/0.840; 0.739  0.732/0.712/0.722; 0.328

Near-miss look-alike events (bench/data/stories/near_miss.jsonl, 396 items, 100 stories in 20 families, read
by hand from the stream before 2023-11-16): novelty 0.890/0.916/0.902, baseline 0.543/0.783/0.641 (the best
single baseline threshold on it, 0.75, gives 0.657). Contradicting counts/ordinals (`args_conflict` 0-0.2) and
name conflict 0.05-0.15 x time penalty 0.3-0.4 were tried on all three sets: the defaults stay (best lowest F1).

Ablation (B-cubed P/R/F1, same vectors): 72 h window + centroid at 0.5: BASIL 0.990/0.949/0.969, AllSides
0.722/0.922/0.810; + average link: 1.000/0.940/0.969, 0.814/0.917/0.863; + time penalty: 1.000/0.880/0.936,
0.931/0.916/0.923; + distinctive-name conflict: the final row (neutral on these sets, aimed at same-type
events in different places).

Caveat: in AllSides every item of a story carries the same timestamp (the roundup's), so the time term is
worth more there than it will be on a live stream; BASIL (stories spread over up to 4 days) keeps it honest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import MonitorError
from monitor.records import ItemRecord
from monitor.signal.novelty import NoveltyItem, StoryParams, cluster, novelty_item


class EvalError(MonitorError):
    """An evaluation input could not be read."""


# --- metrics ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PRF:
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4)}


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def bcubed(predicted: Sequence[Hashable], gold: Sequence[Hashable]) -> PRF:
    """B-cubed precision/recall (Bagga & Baldwin 1998): per item, the share of its predicted cluster that
    shares its gold label (precision) and the share of its gold cluster that shares its predicted cluster
    (recall), averaged over items."""
    if len(predicted) != len(gold):
        raise ValueError("predicted and gold must have the same length")
    n = len(gold)
    if n == 0:
        return PRF(0.0, 0.0, 0.0)
    both = Counter(zip(predicted, gold, strict=True))
    pred_size = Counter(predicted)
    gold_size = Counter(gold)
    p = sum(c * c / pred_size[pk] for (pk, _g), c in both.items()) / n
    r = sum(c * c / gold_size[g] for (_pk, g), c in both.items()) / n
    return PRF(p, r, _f1(p, r))


def pairwise(predicted: Sequence[Hashable], gold: Sequence[Hashable]) -> PRF:
    """Pairwise precision/recall over all item pairs put together (predicted) vs. belonging together (gold)."""
    if len(predicted) != len(gold):
        raise ValueError("predicted and gold must have the same length")

    def pairs(c: Counter[Hashable]) -> int:
        return sum(k * (k - 1) // 2 for k in c.values())

    tp = pairs(Counter(zip(predicted, gold, strict=True)))
    pp, gp = pairs(Counter(predicted)), pairs(Counter(gold))
    p = tp / pp if pp else 1.0
    r = tp / gp if gp else 1.0
    return PRF(p, r, _f1(p, r))


# --- labelled story files ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelledItem:
    item: ItemRecord
    story: str


def _parse_date(s: str) -> datetime:
    d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


def content_hash(title: str, summary: str) -> str:
    norm = re.sub(r"\W+", " ", f"{title} {summary}".lower()).strip()
    return hashlib.sha256(norm.encode()).hexdigest()


def _read_rows(path: str | Path, what: str) -> Iterator[tuple[int, dict[str, Any], ItemRecord]]:
    """(line number, the JSON row, its item) for each non-empty line of a labelled JSONL file; a line that
    cannot be read is an EvalError naming the file, the line and `what` it should hold."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EvalError(f"cannot read {path}: {e}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            title, summary = str(r["title"]), str(r.get("summary") or "")
            item = ItemRecord(id=n, feed_id=0, outlet=str(r.get("source") or ""), title=title, summary=summary,
                              link=r.get("link"), published_at=_parse_date(str(r["date"])),
                              content_hash=content_hash(title, summary))
        except (ValueError, KeyError, TypeError) as e:
            raise EvalError(f"{path}:{n}: not {what}: {e}") from e
        yield n, r, item


def read_labelled(path: str | Path) -> list[LabelledItem]:
    """Items of a same-story file (`id, date, source, title, summary, story`), sorted by date (stable)."""
    what = "a same-story item (needs id, date, source, title, story)"
    out = []
    for n, r, item in _read_rows(path, what):
        if "story" not in r:
            raise EvalError(f"{path}:{n}: not {what}: no story")
        out.append(LabelledItem(item, str(r["story"])))
    out.sort(key=lambda li: li.item.published_at)
    return out


@dataclass(frozen=True, slots=True)
class StoryEvalResult:
    bcubed: PRF
    pairwise: PRF
    items: int
    stories: int
    gold_stories: int
    decisions: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {"bcubed": self.bcubed.as_dict(), "pairwise": self.pairwise.as_dict(), "items": self.items,
                "stories": self.stories, "gold_stories": self.gold_stories, "decisions": self.decisions}


def evaluate_stories(labelled: Sequence[LabelledItem], vectors: np.ndarray, params: StoryParams) -> StoryEvalResult:
    """Replay labelled items (already in date order, `vectors` row-aligned) through story clustering with
    no topic filter (one topic for all) and score the clusters against the labels."""
    items: list[NoveltyItem] = [novelty_item(li.item, "all", vectors[i]) for i, li in enumerate(labelled)]
    steps = cluster(items, params)
    predicted = [k for k, _a in steps]
    gold = [li.story for li in labelled]
    return StoryEvalResult(
        bcubed=bcubed(predicted, gold), pairwise=pairwise(predicted, gold), items=len(gold),
        stories=len(set(predicted)), gold_stories=len(set(gold)),
        decisions=dict(Counter(a.decision for _k, a in steps)),
    )


# --- timelines: is each alert a material development? -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineItem:
    item: ItemRecord
    timeline: str
    topic: str
    development: bool  # labelled a material development (else a repeat, reaction or commentary)


def read_timelines(path: str | Path) -> list[TimelineItem]:
    """Items of a timeline file (`timeline, topic, id, date, source, title, summary, label` with label
    development|repeat), sorted by date (stable)."""
    what = "a timeline item (needs timeline, topic, date, title, label)"
    out = []
    for n, r, item in _read_rows(path, what):
        label = str(r.get("label"))
        if label not in ("development", "repeat") or "timeline" not in r or "topic" not in r:
            raise EvalError(f"{path}:{n}: not {what}: label {label!r} must be development or repeat")
        out.append(TimelineItem(item, str(r["timeline"]), str(r["topic"]), label == "development"))
    out.sort(key=lambda t: t.item.published_at)
    return out


@dataclass(frozen=True, slots=True)
class UpdateEvalResult:
    items: int
    developments: int  # items labelled development
    decisions: dict[str, int]
    update_precision: float  # labelled developments among the items decided `update`
    alert_precision: float  # labelled developments among all alerts (new_story + update)
    development_recall: float  # labelled developments that alerted
    mistakes: tuple[tuple[str, str, str], ...]  # (decision, label, headline) of each wrong alert / missed development

    def as_dict(self) -> dict[str, object]:
        return {"items": self.items, "developments": self.developments, "decisions": self.decisions,
                "update_precision": round(self.update_precision, 4), "alert_precision": round(self.alert_precision, 4),
                "development_recall": round(self.development_recall, 4)}


def evaluate_updates(timeline: Sequence[TimelineItem], vectors: np.ndarray, params: StoryParams) -> UpdateEvalResult:
    """Run the labelled timeline items (date order, `vectors` aligned) through novelty per topic, as the
    service would see them (stories found by clustering, not given), and score the alerts against the labels:
    an alert is right when the item is a labelled development. The match margin is unknown here (every item
    counts as clearly on topic), so only the second-outlet part of corroboration is exercised."""
    items = [novelty_item(t.item, t.topic, vectors[i]) for i, t in enumerate(timeline)]
    steps = cluster(items, params)
    dec = [a.decision for _k, a in steps]
    gold = [t.development for t in timeline]
    updates = [g for d, g in zip(dec, gold, strict=True) if d == "update"]
    alerts = [g for d, g in zip(dec, gold, strict=True) if d in ("new_story", "update")]
    mistakes = tuple((d, "development" if g else "repeat", t.item.title)
                     for d, g, t in zip(dec, gold, timeline, strict=True)
                     if (d in ("new_story", "update")) != g)
    return UpdateEvalResult(
        items=len(timeline), developments=sum(gold), decisions=dict(Counter(dec)),
        update_precision=sum(updates) / len(updates) if updates else 0.0,
        alert_precision=sum(alerts) / len(alerts) if alerts else 0.0,
        development_recall=sum(alerts) / sum(gold) if sum(gold) else 0.0,
        mistakes=mistakes,
    )


SWEEP_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def at_alert_threshold(params: StoryParams, threshold: float) -> StoryParams:
    """`params` with the alert model's p(new) threshold set to `threshold` (0.0: every decision alerts)."""
    return replace(params, alert_model=replace(params.alert_model, threshold=threshold))


def sweep_thresholds(params: StoryParams, thresholds: Sequence[float] = SWEEP_THRESHOLDS) -> list[float]:
    """`thresholds` and the shipped one, in order: the rows of a threshold sweep."""
    return sorted({*thresholds, params.alert_model.threshold})


def by_alert_threshold(timeline: Sequence[TimelineItem], vectors: np.ndarray, params: StoryParams,
                       thresholds: Sequence[float] = SWEEP_THRESHOLDS) -> dict[float, UpdateEvalResult]:
    """`evaluate_updates` at each of `thresholds` and the shipped alert threshold: the trade-off the alert
    model's ranking allows. When update precision stays flat across thresholds, the model does not rank
    material updates above repeats, and no threshold reaches a precision target."""
    return {th: evaluate_updates(timeline, vectors, at_alert_threshold(params, th))
            for th in sweep_thresholds(params, thresholds)}


# --- replay of the real stream (topics + stories on a simulated clock) ------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayAlert:
    """One alert of a replay, with what a person needs to judge it (JUDGING.md): the headline, the teaser
    and "what's new" as the subscriber would see them, and why the service decided so."""

    topic: str
    decision: str
    published: datetime
    title: str
    link: str | None
    story: int
    outlet: str
    what_is_new: str | None
    summary: str = ""
    reason: str = ""
    waited_h: float = 0.0  # hours between the story's first report and this alert (0 unless it was held)

    def as_dict(self) -> dict[str, object]:
        return {"topic": self.topic, "time": self.published.isoformat(), "decision": self.decision,
                "headline": self.title, "teaser": self.summary, "what_is_new": self.what_is_new,
                "outlet": self.outlet, "link": self.link, "story": self.story, "reason": self.reason,
                "waited_h": round(self.waited_h, 2)}


@dataclass(frozen=True, slots=True)
class ReplayResult:
    items: int
    topics: dict[str, dict[str, int]]  # topic -> matches, stories, alerts, repeats, updates, new_stories, held
    alerts: tuple[ReplayAlert, ...]
    held_stories: int = 0  # stories that started on weak evidence and waited
    held_alerted: int = 0  # of those, corroborated in time (they alerted, late)
    wait_hours: tuple[float, ...] = ()  # the delay each corroborated story's alert took

    def per_day(self) -> dict[str, dict[str, int]]:
        """topic -> day (YYYY-MM-DD) -> alerts."""
        out: dict[str, dict[str, int]] = {t: {} for t in self.topics}
        for a in self.alerts:
            day = a.published.strftime("%Y-%m-%d")
            out.setdefault(a.topic, {})[day] = out.get(a.topic, {}).get(day, 0) + 1
        return out

    def as_dict(self) -> dict[str, object]:
        waits = sorted(self.wait_hours)
        return {"items": self.items, "topics": self.topics, "per_day": self.per_day(),
                "corroboration": {"held_stories": self.held_stories, "alerted_after_wait": self.held_alerted,
                                  "median_wait_h": round(float(np.median(waits)), 2) if waits else None,
                                  "max_wait_h": round(waits[-1], 2) if waits else None},
                "alerts": [a.as_dict() for a in self.alerts]}


def read_stream(path: str | Path, start: datetime, end: datetime) -> list[ItemRecord]:
    """Items of the captured stream (`.jsonl` or `.jsonl.xz`: capture_day, feed, title, description, link,
    date_published) published in [start, end), deduplicated (the same item is captured on several days),
    in published order. Text is cleaned like the parser cleans feed items."""
    import lzma

    from monitor.ingest.parse import MAX_SUMMARY_CHARS, MAX_TITLE_CHARS, clean_text, outlet_of, text_hash

    p = Path(path)
    opener = lzma.open if p.suffix == ".xz" else open
    seen: set[tuple[str, str]] = set()
    out: list[ItemRecord] = []
    try:
        with opener(p, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            for line in fh:
                if not line.strip():
                    continue
                r = json.loads(line)
                raw = r.get("date_published")
                if not raw:
                    continue
                try:
                    when = _parse_date(str(raw).replace(" ", "T", 1))
                except ValueError:
                    continue
                if not start <= when < end:
                    continue
                title = clean_text(str(r.get("title") or ""), MAX_TITLE_CHARS)
                if not title:
                    continue
                link = r.get("link") or None
                key = (str(r.get("feed") or ""), link or title)
                if key in seen:
                    continue
                seen.add(key)
                summary = clean_text(str(r.get("description") or ""), MAX_SUMMARY_CHARS)
                out.append(ItemRecord(
                    id=len(out) + 1, feed_id=0, outlet=outlet_of(link) or outlet_of(r.get("feed")) or "unknown",
                    title=title, summary=summary, link=link, published_at=when,
                    content_hash=text_hash(title, summary)))
    except (OSError, lzma.LZMAError, json.JSONDecodeError) as e:
        raise EvalError(f"cannot read the stream {p}: {e}") from e
    out.sort(key=lambda it: (it.published_at, it.id))
    return out


def cached_vectors(embedder, items: Sequence[ItemRecord], cache_dir: Path | None) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The service's item vectors (`embed.encode_items`: headline and headline + teaser), reusing
    `cache_dir/<model>-<digest of the texts>.npy` when present: research replays encode the same thousands
    of items again and again."""
    from monitor.signal.embed import encode_items

    titles, texts = [it.title for it in items], [it.text for it in items]
    digest = hashlib.sha256("\x1e".join(["items-v2", embedder.model_id, *titles, *texts]).encode()).hexdigest()[:20]
    name = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', embedder.model_id)}-{digest}.npy"
    path = cache_dir / name if cache_dir else None
    if path is not None and path.exists():
        v = np.load(path)
        if v.shape[0] == len(items):
            return v.astype(np.float32)
    v = encode_items(embedder, titles, texts)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, v)
    return v


def replay(items: Sequence[ItemRecord], vectors: np.ndarray, topic_set, settings,  # type: ignore[no-untyped-def]
           step_h: float = 1.0, params: StoryParams | None = None) -> ReplayResult:
    """Feed `items` (published order, `vectors` aligned) through matching and stories on a simulated
    clock that advances `step_h` hours per step (a poll tick): each step matches the items published in
    it, assigns them to stories in a throw-away SQLite database and closes expired stories, like the
    service does. `params` overrides the service's story parameters (evaluation baselines)."""
    from datetime import timedelta

    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from monitor.records import MatchedItem
    from monitor.signal import match, stories
    from monitor.storage.tables import Alert, Base, Story

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    # with story-level evidence, as the service matches (each item may borrow from similar earlier ones)
    verdicts = match.match_items(items, vectors, topic_set, recent=match.Recent.empty(vectors.shape[1]))
    index = {it.id: i for i, it in enumerate(items)}
    matched = [MatchedItem(item=items[index[m.item_id]], topic_id=m.topic_id, score=m.score,
                           vector=vectors[index[m.item_id]], threshold=topic_set.get(m.topic_id).threshold)
               for m in verdicts if m.matched]
    matched.sort(key=lambda m: (m.item.published_at, m.item.id))
    counts: dict[str, dict[str, int]] = {
        t.id: {"matches": 0, "stories": 0, "alerts": 0, "repeats": 0, "new_stories": 0, "updates": 0, "held": 0}
        for t in topic_set.topics}
    step = timedelta(hours=step_h)
    held_stories: set[int] = set()
    with Session(engine, expire_on_commit=False) as s:
        i = 0
        while i < len(matched):
            now = matched[i].item.published_at + step
            batch = []
            while i < len(matched) and matched[i].item.published_at < now:
                batch.append(matched[i])
                i += 1
            stories.close_expired(s, now, settings.story_window_h)
            known = {r[0] for r in s.execute(select(Story.id))}
            for d in stories.assign(s, batch, now, settings, params):
                c = counts[d.topic_id]
                c["matches"] += 1
                if d.story_id not in known:
                    known.add(d.story_id)
                    c["stories"] += 1
                if d.decision == "new_story":
                    c["new_stories"] += 1
                    c["alerts"] += 1
                elif d.decision == "update":
                    c["updates"] += 1
                    c["alerts"] += 1
                elif d.decision == "held":
                    c["held"] += 1
                    held_stories.add(d.story_id)
                else:
                    c["repeats"] += 1
            s.commit()
        rows = s.execute(select(Alert, Story.first_seen, Story.id).join(Story, Story.id == Alert.story_id)
                         .where(Alert.decision.in_(("new_story", "update")))
                         .order_by(Alert.published_at, Alert.id)).all()
        by_item = {it.id: it for it in items}
        alerts = tuple(ReplayAlert(
            topic=a.topic_id, decision=a.decision, published=a.published_at.replace(tzinfo=UTC), title=a.title,
            link=a.link, story=a.story_id, outlet=a.outlet, what_is_new=a.what_is_new,
            summary=by_item[a.item_id].summary if a.item_id in by_item else "", reason=a.reason,
            waited_h=(a.published_at - first).total_seconds() / 3600.0 if sid in held_stories else 0.0)
            for a, first, sid in rows)
    engine.dispose()
    waits = tuple(a.waited_h for a in alerts if a.decision == "new_story" and a.story in held_stories)
    return ReplayResult(items=len(items), topics=counts, alerts=alerts, held_stories=len(held_stories),
                        held_alerted=len(waits), wait_hours=waits)


def corroboration_cost(waited: ReplayResult, no_wait: ReplayResult) -> dict[str, object]:
    """What waiting for corroboration did, against the same replay without the wait: the alerts the no-wait
    replay sent that the waiting one never did (by item: topic + headline + time), how many the waiting one sent
    late, and the delay of those."""
    def key(a: ReplayAlert) -> tuple[str, str, str]:
        return (a.topic, a.title, a.published.isoformat())

    sent = {key(a) for a in waited.alerts}
    dropped = [a for a in no_wait.alerts if key(a) not in sent]
    waits = sorted(waited.wait_hours)
    return {"dropped": len(dropped), "dropped_alerts": [a.as_dict() for a in dropped],
            "held_stories": waited.held_stories, "alerted_after_wait": waited.held_alerted,
            "median_wait_h": round(float(np.median(waits)), 2) if waits else None,
            "max_wait_h": round(waits[-1], 2) if waits else None}


# --- alerts scored against development labels (read by hand; bench/data/stories/development_labels.jsonl) ----


@dataclass(frozen=True, slots=True)
class DevelopmentLabel:
    """One (item, topic) read by hand: on topic or not, and which development it reports (an id shared by every
    item of the topic reporting the same development), or None for commentary, reactions and recaps."""

    topic: str
    on_topic: bool
    dev: str | None
    kd: str | None  # the key development it reports, if any


@dataclass(frozen=True, slots=True)
class JudgedReplay:
    """A replay's alerts scored against development labels, as JUDGING.md scores them by reading: an alert is
    right when it is on topic and reports a development no earlier alert of its topic reported."""

    alerts: int
    right: int
    unlabelled: int  # alerts whose (item, topic) has no label: read them, or they count as wrong
    kd_pairs: int
    kd_alerted: int
    per_topic: dict[str, dict[str, int]]
    missed_kds: tuple[str, ...]  # "kd-012 prisoner-exchange"
    wrong: tuple[tuple[str, str, str], ...]  # (topic, why, headline)

    @property
    def precision(self) -> float:
        return self.right / self.alerts if self.alerts else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"alerts": self.alerts, "right": self.right, "precision": round(self.precision, 4),
                "unlabelled": self.unlabelled, "kd_pairs": self.kd_pairs, "kd_alerted": self.kd_alerted,
                "per_topic": self.per_topic, "missed_kds": list(self.missed_kds)}


def _label_key(topic: str, title: str, when: datetime) -> tuple[str, str, str]:
    return (topic, " ".join(title.split()).lower(), when.astimezone(UTC).strftime("%Y-%m-%d %H:%M"))


def read_development_rows(path: str | Path) -> list[tuple[ItemRecord, DevelopmentLabel]]:
    """The rows of a development-labels file (`topic, date, title, summary, on_topic, role, dev, kd` per line;
    role development|commentary|off; a development id exactly on the on-topic development rows), checked."""
    what = "a development label (needs topic, date, title, on_topic, role, dev)"
    out = []
    for n, r, item in _read_rows(path, what):
        role = r.get("role")
        if role not in ("development", "commentary", "off") or "topic" not in r or "on_topic" not in r:
            raise EvalError(f"{path}:{n}: not {what}: role {role!r} must be development, commentary or off")
        developing = role == "development" and bool(r.get("on_topic"))
        if developing and not r.get("dev"):
            raise EvalError(f"{path}:{n}: a development row needs its development id (dev)")
        out.append((item, DevelopmentLabel(str(r["topic"]), bool(r["on_topic"]), str(r["dev"]) if developing else None,
                                           r.get("kd") or None)))
    return out


def read_development_labels(path: str | Path) -> dict[tuple[str, str, str], DevelopmentLabel]:
    """Development labels keyed by (topic, headline, minute published), to score alerts by."""
    return {_label_key(lab.topic, item.title, item.published_at): lab for item, lab in read_development_rows(path)}


def read_key_developments(path: str | Path) -> list[tuple[str, str]]:
    """(kd, topic) pairs of a key-developments file (`kd, topics` per line)."""
    try:
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        return [(str(r["kd"]), str(t)) for r in rows for t in r["topics"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalError(f"cannot read key developments from {path}: {e}") from e


def judge_replay(alerts: Sequence[ReplayAlert], labels: dict[tuple[str, str, str], DevelopmentLabel],
                 key_developments: Sequence[tuple[str, str]] = ()) -> JudgedReplay:
    """Score `alerts` (time order) with the labels: per topic, an alert is right when its item is on topic and
    reports a development (`dev`) that no earlier alert of the topic reported; a key development is alerted
    when an alert of one of its topics reports a development carrying its kd id (any development of that id
    counts, repeats included: the subscriber heard of it)."""
    told: dict[str, set[str]] = {}
    kd_told: set[tuple[str, str]] = set()
    per_topic: dict[str, dict[str, int]] = {}
    wrong: list[tuple[str, str, str]] = []
    right = unlabelled = 0
    dev_kd = {(lab.topic, lab.dev): lab.kd for lab in labels.values() if lab.dev and lab.kd}
    for a in sorted(alerts, key=lambda a: a.published):
        c = per_topic.setdefault(a.topic, {"alerts": 0, "right": 0, "off_topic": 0, "repeat": 0, "commentary": 0,
                                           "unlabelled": 0})
        c["alerts"] += 1
        lab = labels.get(_label_key(a.topic, a.title, a.published))
        if lab is None:
            unlabelled += 1
            c["unlabelled"] += 1
            wrong.append((a.topic, "unlabelled", a.title))
            continue
        kd = lab.kd or (dev_kd.get((a.topic, lab.dev)) if lab.dev else None)
        if kd:
            kd_told.add((kd, a.topic))
        seen = told.setdefault(a.topic, set())
        why = ("off topic" if not lab.on_topic else "commentary" if lab.dev is None
               else "repeat" if lab.dev in seen else "")
        if why:
            c[why.replace(" ", "_")] += 1
            wrong.append((a.topic, why, a.title))
            continue
        seen.add(lab.dev)  # type: ignore[arg-type]
        right += 1
        c["right"] += 1
    pairs = sorted(set(key_developments))
    missed = tuple(f"{kd} {t}" for kd, t in pairs if (kd, t) not in kd_told)
    return JudgedReplay(alerts=len(alerts), right=right, unlabelled=unlabelled, kd_pairs=len(pairs),
                        kd_alerted=len(pairs) - len(missed), per_topic=per_topic, missed_kds=missed,
                        wrong=tuple(wrong))
