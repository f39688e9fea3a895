"""CLI commands: `topics test`, `backtest`, `reembed` and `eval topics`."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import click
import numpy as np
from sqlalchemy import delete, func, select

from monitor.cli import parse_since
from monitor.config import TopicConfig, load_config
from monitor.errors import ConfigError, MonitorError
from monitor.lab import topic_eval
from monitor.records import ItemRecord
from monitor.signal import embed, match
from monitor.storage import db
from monitor.storage.tables import Feed, Item, ItemVector


def _record(item: Item) -> ItemRecord:
    return ItemRecord(id=item.id, feed_id=item.feed_id, outlet=item.outlet, title=item.title,
                      summary=item.summary or "", link=item.link,
                      published_at=db.aware_utc(item.published_at) or datetime.now(UTC),
                      content_hash=item.content_hash)


def _without_threshold(topics: list[TopicConfig]) -> list[TopicConfig]:
    return [t.model_copy(update={"threshold": None}) for t in topics]


def _eval_scores(items: list[topic_eval.EvalItem], vectors: np.ndarray, topic_set: match.TopicSet,
                 use_gates: bool) -> dict[str, dict[str, float]]:
    """Effective score per topic per item id: the semantic score, or -1 where a gate refuses the item."""
    out: dict[str, dict[str, float]] = {t.id: {} for t in topic_set.topics}
    verdicts = match.match_texts(list(range(len(items))), [it.text for it in items], vectors, topic_set,
                                 use_gates=use_gates)
    for v in verdicts:
        out[v.topic_id][items[v.item_id].id] = v.score if "; gate: " not in v.reason else -1.0
    return out


def _predict(eff: dict[str, dict[str, float]], thresholds: dict[str, float], ids: set[str]) -> dict[str, set[str]]:
    return {tid: {i for i in ids if s[i] >= thresholds[tid]} for tid, s in eff.items()}


def _print_table(title: str, result: dict[str, object]) -> None:
    click.echo(title)
    click.echo(f"  {'topic':<20} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}")
    topics = result["topics"]
    assert isinstance(topics, dict)
    for tid, s in topics.items():
        click.echo(f"  {tid:<20} {s['precision']:>9.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} {s['support']:>8}")
    click.echo(f"  {'macro-F1':<20} {result['macro_f1']:>33.3f}")


def register(main: click.Group, eval_group: click.Group) -> None:
    from monitor.cli import CliContext, pass_ctx

    @main.group(name="topics")
    def topics_group() -> None:
        """Try topics against headlines."""

    @topics_group.command(name="test")
    @click.argument("headline")
    @click.option("--summary", default="", help="Teaser text, matched together with the headline.")
    @pass_ctx
    def topics_test(ctx: CliContext, headline: str, summary: str) -> None:
        """Print every topic's score, decision and reason for HEADLINE."""
        config = ctx.config
        if not config.topics:
            raise ConfigError(f"{ctx.config_file}: no [[topics]] defined")
        embedder = embed.load_embedder(config.settings)
        topic_set = match.compile_topics(config.topics, embedder)
        text = f"{headline}. {summary}" if summary else headline
        vec = embed.encode_items(embedder, [headline], [text])
        for v in match.match_texts([0], [text], vec, topic_set):
            decision = "MATCH" if v.matched else "no"
            click.echo(f"{v.topic_id:<20} {v.score:.3f}  {decision:<5}  {v.reason}")

    @main.command(name="backtest")
    @click.argument("topic_id")
    @click.option("--since", "since", default="30d", show_default=True, help="How far back (e.g. 30d, 12h, 2w).")
    @click.option("--limit", default=200, show_default=True, help="Most matching items listed.")
    @pass_ctx
    def backtest(ctx: CliContext, topic_id: str, since: str, limit: int) -> None:
        """What TOPIC would have matched among stored items (stored vectors only; nothing is re-encoded)."""
        config = ctx.config
        topic = config.topic(topic_id)
        window = parse_since(since)
        embedder = embed.load_embedder(config.settings)  # encodes the topic's own texts only
        topic_set = match.compile_topics([topic], embedder)
        engine = ctx.engine()
        cutoff = db.naive_utc(datetime.now(UTC) - window)
        with db.session_factory(engine)() as s:
            rows = s.execute(select(Item, func.coalesce(Feed.name, Feed.title, Feed.url))
                             .join(Feed, Feed.id == Item.feed_id)
                             .where(Item.published_at >= cutoff).order_by(Item.published_at)).all()
            items = [_record(r[0]) for r in rows]
            feed_names = {r[0].id: r[1] for r in rows}
            stored = embed.load_vectors(s, embedder.model_id, [it.id for it in items])
        have = [it for it in items if it.id in stored]
        skipped = len(items) - len(have)
        vectors = np.stack([stored[it.id] for it in have]) if have else np.zeros((0, embedder.dim), np.float32)
        verdicts = match.match_items(have, vectors, topic_set)
        by_id = {it.id: it for it in have}
        hits = [v for v in verdicts if v.matched]
        click.echo(f"topic {topic.id} ({topic.name}), threshold {topic_set.topics[0].threshold:.3f}, "
                   f"since {since}: {len(hits)} of {len(have)} items would match")
        if skipped:
            click.echo(f"skipped {skipped} items without a stored vector for {embedder.model_id!r} "
                       "(run `monitor reembed`)")
        for v in hits[:limit]:
            it = by_id[v.item_id]
            click.echo(f"{it.published_at:%Y-%m-%d %H:%M}  {feed_names[it.id][:28]:<28}  {v.score:.3f}  {it.title}")
        per_day = Counter(by_id[v.item_id].published_at.strftime("%Y-%m-%d") for v in hits)
        if per_day:
            click.echo("per day:")
            for day in sorted(per_day):
                click.echo(f"  {day}  {per_day[day]}")

    @main.command(name="reembed")
    @click.option("--all", "everything", is_flag=True, help="Recompute vectors that already exist too.")
    @pass_ctx
    def reembed(ctx: CliContext, everything: bool) -> None:
        """Encode every stored item for the configured model (after changing `embedding_model`)."""
        from tqdm import tqdm

        config = ctx.config
        embedder = embed.load_embedder(config.settings)
        engine = ctx.engine()
        batch = config.settings.embedding_batch_size
        with db.session_factory(engine)() as s:
            if everything:
                s.execute(delete(ItemVector).where(ItemVector.model_id == embedder.model_id))
                s.commit()
            have = select(ItemVector.item_id).where(ItemVector.model_id == embedder.model_id)
            todo = list(s.scalars(select(Item.id).where(Item.id.not_in(have)).order_by(Item.id)))
        done = 0
        with tqdm(total=len(todo), unit="item", desc=f"reembed {embedder.model_id}") as bar:
            for start in range(0, len(todo), batch * 8):
                chunk = todo[start:start + batch * 8]
                with db.write_transaction(engine) as s:
                    rows = s.scalars(select(Item).where(Item.id.in_(chunk)).order_by(Item.id)).all()
                    embed.ensure_vectors(s, embedder, [_record(r) for r in rows], batch)
                done += len(chunk)
                bar.update(len(chunk))
        click.echo(f"encoded {done} items with {embedder.model_id}")

    @eval_group.command(name="topics")
    @click.option("--items", "items_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Items JSONL (id, date, feed, title, summary, link).")
    @click.option("--labels", "labels_path", required=True,
                  type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Labels JSONL (id, labels: {topic: 0|1}).")
    @click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  default=None, help="Topics from this file (default: the main configuration).")
    @click.option("--json", "as_json", is_flag=True, help="Last line of output: one JSON object.")
    @click.option("--calibrate", is_flag=True,
                  help="Also report F1-maximising thresholds (with and without gates) and the time split.")
    @click.option("--split-date", default="2023-11-01", show_default=True,
                  help="With --calibrate: calibrate on items before this day, measure on the rest.")
    @pass_ctx
    def eval_topics(ctx: CliContext, items_path: Path, labels_path: Path, config_path: Path | None,
                    as_json: bool, calibrate: bool, split_date: str) -> None:
        """Per-topic precision, recall, F1 and macro-F1 of the matcher and of a keyword baseline."""
        config = load_config(config_path) if config_path else ctx.config
        if not config.topics:
            raise ConfigError("the configuration defines no [[topics]] to evaluate")
        with items_path.open(encoding="utf-8") as f:
            items = topic_eval.parse_items(f, str(items_path))
        with labels_path.open(encoding="utf-8") as f:
            labels = topic_eval.parse_labels(f, str(labels_path))
        items = [it for it in items if it.id in labels]
        if not items:
            raise MonitorError(f"no item of {items_path} has a label in {labels_path}")
        ids = {it.id for it in items}
        topic_ids = [t.id for t in config.topics]
        embedder = embed.load_embedder(config.settings)
        topic_set = match.compile_topics(config.topics, embedder)
        vectors = embed.encode_items(embedder, [it.title for it in items], [it.text for it in items])
        thresholds = {t.id: t.threshold for t in topic_set.topics}
        eff = _eval_scores(items, vectors, topic_set, use_gates=True)
        result = topic_eval.evaluate(_predict(eff, thresholds, ids), labels, topic_ids, ids)
        baseline = topic_eval.evaluate(topic_eval.keyword_baseline(items, config.topics), labels, topic_ids, ids)
        result["baseline"] = baseline
        result["thresholds"] = thresholds
        _print_table(f"semantic matcher ({len(items)} items, configured thresholds, with gates)", result)
        _print_table("keyword baseline (each topic's keyword gates)", baseline)
        if calibrate:
            result["calibration"] = _calibration(items, labels, vectors, config, embedder, topic_ids, split_date)
        if as_json:
            click.echo(json.dumps(result, sort_keys=False))

    def _calibration(items, labels, vectors, config, embedder, topic_ids, split_date):  # type: ignore[no-untyped-def]
        ids = {it.id for it in items}
        early = {it.id for it in items if it.date[:10] < split_date}
        late = ids - early
        label_free_set = match.compile_topics(_without_threshold(config.topics), embedder)
        out: dict[str, object] = {}
        for use_gates in (True, False):
            eff = _eval_scores(items, vectors, label_free_set, use_gates)
            tag = "gates" if use_gates else "no_gates"
            full_th = {t: topic_eval.calibrate_threshold([(eff[t][i], labels[i].get(t, 0)) for i in ids])
                       for t in topic_ids}
            split_th = {t: topic_eval.calibrate_threshold([(eff[t][i], labels[i].get(t, 0)) for i in early])
                        for t in topic_ids}
            lf_th = {t.id: t.threshold for t in label_free_set.topics}
            runs = {
                "calibrated_full": (topic_eval.evaluate(_predict(eff, full_th, ids), labels, topic_ids, ids), full_th),
                "time_split": (topic_eval.evaluate(_predict(eff, split_th, late), labels, topic_ids, late), split_th),
                "label_free": (topic_eval.evaluate(_predict(eff, lf_th, ids), labels, topic_ids, ids), lf_th),
            }
            for name, (res, th) in runs.items():
                res["thresholds"] = {k: round(v, 5) for k, v in th.items()}
                out[f"{tag}.{name}"] = res
                where = {"calibrated_full": "thresholds calibrated and measured on all items",
                         "time_split": f"calibrated before {split_date}, measured on {len(late)} items from then",
                         "label_free": "label-free thresholds (no labels used)"}[name]
                _print_table(f"[{tag}] {where}; thresholds {res['thresholds']}", res)
        base_late = topic_eval.evaluate(topic_eval.keyword_baseline([i for i in items if i.id in late], config.topics),
                                        labels, topic_ids, late)
        out["baseline.time_split"] = base_late
        _print_table(f"keyword baseline on the {len(late)} items from {split_date}", base_late)
        return out
