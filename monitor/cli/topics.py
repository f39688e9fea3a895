"""CLI commands: `topics test`, `backtest`, `reembed`, `eval topics` and `eval rulings`."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click
import numpy as np
from sqlalchemy import delete, exists, func, make_url, select
from sqlalchemy.exc import SQLAlchemyError

from monitor.cli import analog_sources, check_analog_topics, parse_since, window_start
from monitor.config import load_config
from monitor.errors import ConfigError, MonitorError
from monitor.lab import topic_eval
from monitor.records import ItemRecord
from monitor.signal import embed, match, relevance
from monitor.storage import db
from monitor.storage.tables import Feed, Item, ItemVector


def _record(item: Item) -> ItemRecord:
    return ItemRecord(id=item.id, feed_id=item.feed_id, outlet=item.outlet, title=item.title,
                      summary=item.summary or "", link=item.link,
                      published_at=db.aware_utc(item.published_at) or datetime.now(UTC),
                      content_hash=item.content_hash)


def _print_table(title: str, result: dict[str, object]) -> None:
    click.echo(title)
    click.echo(f"  {'topic':<20} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}")
    topics = result["topics"]
    assert isinstance(topics, dict)
    for tid, s in topics.items():
        click.echo(f"  {tid:<20} {s['precision']:>9.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} {s['support']:>8}")
    click.echo(f"  {'macro-F1':<20} {result['macro_f1']:>33.3f}")


def _labelled_options(f: Callable[..., None]) -> Callable[..., None]:
    """--items / --labels (repeatable, paired) and --config: the options of the commands that read labelled items."""
    for option in reversed((
            click.option("--items", "items_paths", required=True, multiple=True,
                         type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         help="Items JSONL (id, date, feed, title, summary, link); repeat for several files."),
            click.option("--labels", "labels_paths", required=True, multiple=True,
                         type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         help="Labels JSONL (id, labels: {topic: 0|1}); one per --items, in the same order."),
            click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         default=None, help="Topics from this file (default: the main configuration).")),
    ):
        f = option(f)
    return f


def register(main: click.Group, eval_group: click.Group) -> None:
    from monitor.cli import CliContext, pass_ctx

    @main.group(name="topics")
    def topics_group() -> None:
        """Try topics against headlines."""

    @topics_group.command(name="test")
    @click.argument("headline")
    @click.option("--summary", default="", help="Teaser text, matched together with the headline.")
    @click.option("--at", "at", default=None, metavar="ISO-TIME",
                  help="Score HEADLINE as if published at this time (UTC unless it says otherwise; default: "
                       "now): story-level evidence comes from the stored matches of the 72 h before it.")
    @pass_ctx
    def topics_test(ctx: CliContext, headline: str, summary: str, at: str | None) -> None:
        """Print every enabled topic's score, decision and reason for HEADLINE (`monitor backtest TOPIC`
        tries a disabled one). As in the service, the configured database's matches of the 72 h before
        HEADLINE lend it story-level evidence; without a database or such matches the score is HEADLINE's
        own evidence only (the last line says which)."""
        config = ctx.config
        if not config.enabled_topics:
            raise ConfigError(f"{ctx.config_file}: no enabled [[topics]] defined")
        when = _parse_at(at)
        embedder = embed.load_embedder(config.settings)
        topic_set = match.compile_topics(config.enabled_topics, embedder)
        record = ItemRecord(id=0, feed_id=0, outlet="", title=headline, summary=summary, link=None,
                            published_at=when, content_hash="")
        vec = embed.encode_items(embedder, [headline], [record.text])
        recent, note = _recent_matches(config.settings.database_url, embedder, record)
        verdicts = match.match_items([record], vec, topic_set, recent) if recent is not None \
            else match.match_texts([0], [record.text], vec, topic_set)
        for v in verdicts:
            decision = "MATCH" if v.matched else "no"
            click.echo(f"{v.topic_id:<20} {v.score:.3f}  {decision:<5}  {v.reason}")
        click.echo(note)

    def _parse_at(at: str | None) -> datetime:
        if at is None:
            return db.utcnow()
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise click.BadParameter(f"{at!r}: use an ISO time, e.g. 2023-11-24T12:00 or 2023-11-24T12:00+02:00",
                                     param_hint="--at") from None
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)

    def _recent_matches(url: str, embedder: embed.Embedder, record: ItemRecord) -> tuple[match.Recent | None, str]:
        """The stored matches of the 72 h before `record` (`match.recent_matches`, as the service reads them)
        and a line saying what the scores count; None when there is no database to read or no such match.
        A missing SQLite file is not created."""
        window_h = relevance.NEIGHBOUR_WINDOW_H
        before = f"the {window_h:g} h before {record.published_at:%Y-%m-%d %H:%M} UTC"
        own = "scores are own evidence only (no story-level evidence): "
        try:
            parsed = make_url(url)
            path = parsed.database if parsed.get_backend_name() == "sqlite" else None
            if path is not None and (path in ("", ":memory:") or not Path(path).exists()):
                return None, own + f"no database at {path or ':memory:'}"
            engine = db.make_engine(url)
            try:
                if not db.has_schema(engine):
                    return None, own + "the database has no schema (`monitor db upgrade`)"
                with db.session_factory(engine)() as s:
                    recent = match.recent_matches(s, embedder.model_id, embedder.dim, [record], window_h)
            finally:
                engine.dispose()
        except (SQLAlchemyError, MonitorError, OSError) as e:
            first = (str(e).splitlines() or [""])[0]
            return None, own + f"the database could not be read ({type(e).__name__}: {first})"
        if not recent.texts:
            return None, own + f"no stored match in {before}"
        n = len(recent.texts)
        return recent, (f"story-level evidence counted, as in the service: {n} stored match{'es' if n != 1 else ''} "
                        f"of {before}")

    @main.command(name="backtest")
    @click.argument("topic_id")
    @click.option("--since", "since", default="30d", show_default=True, help="How far back (e.g. 30d, 12h, 2w).")
    @click.option("--limit", default=200, show_default=True, help="Most matching items listed.")
    @pass_ctx
    def backtest(ctx: CliContext, topic_id: str, since: str, limit: int) -> None:
        """What TOPIC would have matched among stored items (stored vectors only; nothing is re-encoded)."""
        from monitor.app.admin.backtest import Backtester

        config = ctx.config
        topic = config.topic(topic_id)
        window = parse_since(since)
        embedder = embed.load_embedder(config.settings)  # encodes the topic's own texts only
        engine = ctx.engine()
        with db.session_factory(engine)() as s:
            start, anchor = window_start(s, window)
            # what the backtest cannot score: items of the window with no vector for this model (counted as
            # such, not as a difference with the load below, which items stored meanwhile would skew)
            skipped = s.scalar(select(func.count()).select_from(Item).where(
                Item.published_at >= db.naive_utc(start),
                ~exists().where(ItemVector.item_id == Item.id, ItemVector.model_id == embedder.model_id))) or 0
        # The editor's backtest, matches only: the items that can match found by its prefilter, each given the
        # matcher's verdict with story-level evidence as the service counts it (each item's lenders: the window's
        # earlier items of the 72 h before it, on the topic by their own evidence), so it lists what scoring
        # every item of the window with `match.match_items` lists.
        tester = Backtester(engine, embedder, config.settings)
        try:
            scored = tester.matches(topic, since=start)
        finally:
            tester.close()
        hits = scored.hits
        with db.session_factory(engine)() as s:
            feed_names = {fid: name for fid, name in s.execute(
                select(Feed.id, func.coalesce(Feed.name, Feed.title, Feed.url))
                .where(Feed.id.in_({h.item.feed_id for h in hits[:limit]})))}
        click.echo(f"topic {topic.id} ({topic.name}), threshold {scored.threshold:.3f}, "
                   f"in the {since} before {anchor}: {len(hits)} of {scored.scanned} items would match")
        if skipped:
            click.echo(f"skipped {skipped} items without a stored vector for {embedder.model_id!r} "
                       "(run `monitor reembed`)")
        for h in hits[:limit]:
            it = h.item
            click.echo(f"{it.published_at:%Y-%m-%d %H:%M}  {feed_names[it.feed_id][:28]:<28}  {h.score:.3f}  {it.title}")
        per_day = Counter(h.item.published_at.strftime("%Y-%m-%d") for h in hits)
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
    @_labelled_options
    @click.option("--json", "as_json", is_flag=True, help="Last line of output: one JSON object.")
    @click.option("--calibrate", is_flag=True,
                  help="Also report the three honest figures: dev, time split, new topic with no labels.")
    @click.option("--split-date", default=topic_eval.SPLIT_DAY, show_default=True,
                  help="Time split: fit and calibrate before this day, measure from it.")
    @click.option("--features", default=",".join(match.SHIPPED_COMBINER.names), show_default=True,
                  help="With --calibrate: the combiner's features (among " + ", ".join(relevance.FEATURES) + ").")
    @click.option("--l2", default=10.0, show_default=True, help="With --calibrate: the combiner's L2 penalty.")
    @click.option("--fit", "show_fit", is_flag=True,
                  help="With --calibrate: print the combiner fitted on every labelled item before 2023-11-16.")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Keep the items' vectors here (npy, keyed by model and texts) instead of re-encoding.")
    @click.option("--stream", "stream_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  default=None, help="With --calibrate: the captured stream (.jsonl[.xz]) around the labelled "
                                     "items, for story-level evidence (each item lifted by its on-topic "
                                     "neighbours of the 72 h before it, as in the service).")
    @click.option("--stream-from", default="2023-10-01", show_default=True,
                  help="With --stream: first day of the stream read (it ends the day after the last labelled "
                       "item); labelled items before it + 3 days have fewer neighbours than in the service.")
    @click.option("--analogs", "analogs_files", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  multiple=True, help="With --calibrate: on-topic labels of OTHER topics (bench/data/analogs/"
                                      "development_labels.jsonl, bench/data/analogs2/...; repeatable), each scored "
                                      "against its own topic (topics.toml beside the file): added to every "
                                      "combiner fit (those dated before its cut-off), never measured.")
    @pass_ctx
    def eval_topics(ctx: CliContext, items_paths: tuple[Path, ...], labels_paths: tuple[Path, ...],
                    config_path: Path | None, as_json: bool, calibrate: bool, split_date: str, features: str,
                    l2: float, show_fit: bool, cache_dir: Path | None, stream_file: Path | None,
                    stream_from: str, analogs_files: tuple[Path, ...]) -> None:
        """Per-topic precision, recall, F1 and macro-F1 of the matcher and of a keyword baseline.

        Labels dated from 2023-11-16 on are never used to fit or calibrate: such items are reported
        separately, with the shipped configuration only."""
        config = load_config(config_path) if config_path else ctx.config
        if not config.enabled_topics:  # a disabled topic matches nothing in service: not evaluated
            raise ConfigError("the configuration defines no enabled [[topics]] to evaluate")
        if analogs_files and not calibrate:
            raise click.UsageError("--analogs adds labels to the combiner's fits, which only --calibrate makes; "
                                   "add --calibrate")
        items, labels = _read_labelled(items_paths, labels_paths)
        ids = {it.id for it in items}
        topic_ids = [t.id for t in config.enabled_topics]
        embedder = embed.load_embedder(config.settings)
        topic_set = match.compile_topics(config.enabled_topics, embedder)
        vectors = _item_vectors(embedder, items, cache_dir)
        predicted = _matched(items, vectors, topic_set)
        result = topic_eval.evaluate(predicted, labels, topic_ids, ids)
        keyword = topic_eval.keyword_baseline(items, config.enabled_topics)
        baseline = topic_eval.evaluate(keyword, labels, topic_ids, ids)
        result["baseline"] = baseline
        result["thresholds"] = {t.id: t.threshold for t in topic_set.topics}
        result["threshold_sources"] = {t.id: t.threshold_source for t in topic_set.topics}
        _print_table(f"matcher as configured ({len(items)} items, thresholds "
                     f"{ {t.id: round(t.threshold, 4) for t in topic_set.topics} })", result)
        _print_table("keyword baseline (each topic's keywords as hard gates)", baseline)
        if calibrate:
            names = [n.strip() for n in features.split(",") if n.strip()]
            pairs = topic_eval.topic_pairs(items, labels, vectors, topic_set)
            near = _neighbourhood(embedder, items, vectors, topic_set, stream_file, stream_from, cache_dir) \
                if stream_file is not None else None
            fit_only = _fit_only(embedder, analogs_files, set(topic_ids), cache_dir) if analogs_files else None
            try:
                out = topic_eval.protocols(items, pairs, keyword, names=names, l2=l2, split_day=split_date,
                                           near=near, fit_only=fit_only)
            except ValueError as e:
                raise click.UsageError(str(e)) from None
            fitted = out.pop("fitted")
            out["story_evidence"] = near is not None
            late = np.array([it.date[:10] >= topic_eval.FIT_CUTOFF for it in items])
            if late.any():
                out["reporting_only"] = topic_eval.shipped(items, pairs, keyword, late, near)
            _print_protocols(out, names, l2, split_date)
            if show_fit:
                click.echo("combiner fitted on every labelled item before "
                           f"{topic_eval.FIT_CUTOFF} (paste into match.SHIPPED_COMBINER):")
                click.echo(repr(fitted))
            result["protocols"] = out
            result["fitted"] = {"names": fitted.names, "mean": fitted.mean, "scale": fitted.scale,
                                "weights": fitted.weights, "bias": fitted.bias}
        if as_json:
            click.echo(json.dumps(result, sort_keys=False))

    @eval_group.command(name="rulings", short_help="Per ruling of the topics' guide: what the topics match.")
    @click.argument("check_paths", nargs=-1, required=True,
                    type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  default=None, help="Topics from this file (default: the main configuration).")
    @click.option("--json", "as_json", is_flag=True, help="Last line of output: one JSON object.")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Keep the items' vectors here (npy, keyed by model and texts) instead of re-encoding.")
    @pass_ctx
    def eval_rulings(ctx: CliContext, check_paths: tuple[Path, ...], config_path: Path | None, as_json: bool,
                     cache_dir: Path | None) -> None:
        """Check the topics against their written specification, ruling by ruling. CHECK_PATHS are JSONL files
        of items written from the topics' guide (bench/data/topics/rulings_check*.jsonl), one per line:
        id, title, summary, published, labels {topic: 0|1}, ruling (any tag: "R1".."R6", "def" for the
        guide's definitions; "-" when absent). Per file: precision, recall and F1 of the configured matcher
        (each item's own evidence) and of the topics' keyword query, then per ruling and topic the positives
        matched and the negatives wrongly matched by each. Only the configured topics the file labels are
        measured (the others are named). Never fitted or calibrated on: the items are not a sample of news,
        so the per-ruling counts, not the F1, are what they measure."""
        config = load_config(config_path) if config_path else ctx.config
        if not config.enabled_topics:
            raise ConfigError("the configuration defines no enabled [[topics]] to check")
        configured = [t.id for t in config.enabled_topics]
        embedder = embed.load_embedder(config.settings)
        topic_set = match.compile_topics(config.enabled_topics, embedder)
        report: dict[str, object] = {}
        for path in check_paths:
            with path.open(encoding="utf-8") as f:
                checks = topic_eval.parse_checks(f, str(path))
            if not checks:
                raise MonitorError(f"{path}: no check items")
            topic_ids, unknown = topic_eval.checked_topics(checks, configured)
            if not topic_ids:
                raise MonitorError(f"{path}: labels none of the enabled topics ({', '.join(configured)}); "
                                   "its labels name " + (", ".join(unknown) or "no topic"))
            skipped = [t for t in configured if t not in topic_ids]
            if skipped or unknown:
                click.echo(f"{path}: not measured: " + "; ".join(
                    part for part in (f"configured, not labelled here: {', '.join(skipped)}" if skipped else "",
                                      f"labelled, not an enabled topic: {', '.join(unknown)}" if unknown else "")
                    if part))
            items = [c.item for c in checks]
            labels = {c.item.id: c.labels for c in checks}
            predicted = _matched(items, _item_vectors(embedder, items, cache_dir), topic_set)
            keyword = topic_eval.keyword_baseline(items, config.enabled_topics)
            result = topic_eval.evaluate(predicted, labels, topic_ids)
            baseline = topic_eval.evaluate(keyword, labels, topic_ids)
            result["baseline"] = baseline
            ours = topic_eval.ruling_counts(checks, predicted, topic_ids)
            theirs = topic_eval.ruling_counts(checks, keyword, topic_ids)
            _print_table(f"{path}: matcher as configured ({len(items)} items, own evidence)", result)
            _print_table("keyword baseline (each topic's keywords as hard gates)", baseline)
            click.echo(f"  {'ruling':<8} {'topic':<20} {'positives matched (keywords)':>30} "
                       f"{'negatives wrongly matched (keywords)':>38}")
            for ruling, cells in ours.items():
                for tid, c in cells.items():
                    k = theirs[ruling][tid]
                    click.echo(f"  {ruling:<8} {tid:<20} {f'{c.matched} of {c.positives} ({k.matched})':>30} "
                               f"{f'{c.wrongly_matched} of {c.negatives} ({k.wrongly_matched})':>38}")
            result["rulings"] = {r: {t: {"matcher": c.as_dict(), "keywords": theirs[r][t].as_dict()}
                                     for t, c in cells.items()} for r, cells in ours.items()}
            result["not_measured"] = {"not_labelled": skipped, "not_configured": unknown}
            report[str(path)] = result
        if as_json:
            click.echo(json.dumps(report))

    @eval_group.command(name="editor", short_help="Simulate an admin improving topics in the topic editor.")
    @_labelled_options
    @click.option("--split-date", default=topic_eval.SPLIT_DAY, show_default=True,
                  help="The admin reads items before this day; the topics are measured on the items from it.")
    @click.option("--rounds", default=6, show_default=True, type=click.IntRange(0, 50),
                  help="Rounds of reading (round 0 is the topic as written).")
    @click.option("--matches-read", default=10, show_default=True, type=click.IntRange(0, 1000),
                  help="Listed matches read per round (the newest first, as the editor lists them).")
    @click.option("--misses-read", default=10, show_default=True, type=click.IntRange(0, 1000),
                  help="Closest misses read per round (the highest scores below the threshold first).")
    @click.option("--weakest-first", is_flag=True,
                  help="Read the lowest-scoring matches first instead of the newest (the hardest cases).")
    @click.option("--careful", is_flag=True,
                  help="The admin reads each click's diff over the items before --split-date (gained / lost, as "
                       "the editor shows it) and undoes a click that gains an off-topic item or loses an on-topic "
                       "one (the strictest reader).")
    @click.option("--clicks", type=click.Choice(["both", "examples", "near-misses"]), default="both",
                  show_default=True, help="Which buttons the admin clicks: both, only example, only near miss.")
    @click.option("--features", default=",".join(match.SHIPPED_COMBINER.names), show_default=True,
                  help="The combiner's features (fitted on the other topics).")
    @click.option("--l2", default=10.0, show_default=True, help="The combiner's L2 penalty.")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Keep the items' vectors here (npy, keyed by model and texts) instead of re-encoding.")
    @click.option("--json", "as_json", is_flag=True, help="Last line of output: one JSON object.")
    @pass_ctx
    def eval_editor(ctx: CliContext, items_paths: tuple[Path, ...], labels_paths: tuple[Path, ...],
                    config_path: Path | None, split_date: str, rounds: int, matches_read: int, misses_read: int,
                    weakest_first: bool, careful: bool, clicks: str, features: str, l2: float,
                    cache_dir: Path | None, as_json: bool) -> None:
        """How far each topic gets when its admin reads the topic editor's lists and clicks: each round the
        admin reads some listed matches and the closest misses among the labelled items dated before
        --split-date, marks each match labelled off topic as a near miss (a counterexample) and adds each miss
        labelled on topic as an example; the topic is compiled again (label-free threshold) and measured on the
        items from --split-date, which the admin never read, beside the topic's keyword query on them. The
        combiner is fitted on the OTHER topics (a new topic has no labels); each item's own evidence is scored.
        Labels dated from 2023-11-16 on are never read or measured."""
        from monitor.app.admin.backtest import CachedEncoder
        from monitor.lab import editor_loop

        config = load_config(config_path) if config_path else ctx.config
        if len(config.enabled_topics) < 2:
            raise ConfigError("the simulation fits each topic's combiner on the other topics: the configuration "
                              "needs at least two enabled [[topics]]")
        items, labels = _read_labelled(items_paths, labels_paths)
        try:  # compared as text with the items' days: it must be written as they are
            if datetime.strptime(split_date, "%Y-%m-%d").strftime("%Y-%m-%d") != split_date:
                raise ValueError(split_date)
        except ValueError:
            raise click.BadParameter(f"{split_date!r} is not a day written YYYY-MM-DD",
                                     param_hint="--split-date") from None
        names = [n.strip() for n in features.split(",") if n.strip()]
        dates = np.array([it.date[:10] for it in items])
        usable = dates < topic_eval.FIT_CUTOFF
        read_mask, measure_mask = usable & (dates < split_date), usable & (dates >= split_date)
        if not read_mask.any() or not measure_mask.any():
            raise MonitorError(f"the simulation needs labelled items both before and from {split_date} "
                               f"(and before {topic_eval.FIT_CUTOFF})")
        embedder = embed.load_embedder(config.settings)
        topic_set = match.compile_topics(config.enabled_topics, embedder)
        vectors = _item_vectors(embedder, items, cache_dir)
        pairs = topic_eval.topic_pairs(items, labels, vectors, topic_set)
        titles, texts = [it.title for it in items], [it.text for it in items]
        times = np.array([topic_eval.item_time(it) for it in items])
        encode = CachedEncoder(embedder).encode  # the editor's: each topic text is encoded once

        reader = editor_loop.Reader(matches_read, misses_read, weakest_first, examples=clicks != "near-misses",
                                    near_misses=clicks != "examples", careful=careful)
        keyword = topic_eval.keyword_baseline(items, config.enabled_topics)
        measured = {it.id for it, m in zip(items, measure_mask, strict=True) if m}
        runs: dict[str, list[editor_loop.Round]] = {}
        report: dict[str, object] = {"read_items": int(read_mask.sum()), "measured_items": int(measure_mask.sum()),
                                     "topics": {}}
        click.echo(f"the admin reads {int(read_mask.sum())} labelled items before {split_date} "
                   f"({matches_read} listed matches{' (weakest first)' if weakest_first else ''} and "
                   f"{misses_read} closest misses a round; clicks: {clicks}{', careful' if careful else ''}); "
                   f"measured on {int(measure_mask.sum())} items from it "
                   "(own evidence, combiner fitted on the other topics)")
        for t in config.enabled_topics:
            combiner = editor_loop.leave_one_out_combiner(pairs, t.id, usable, names, l2)
            gold = np.array([labels[it.id].get(t.id, 0) for it in items])
            runs[t.id] = editor_loop.simulate(t, titles, texts, vectors, times, gold, read_mask, measure_mask,
                                              encode, combiner, rounds, reader)
            base = topic_eval.scores(keyword[t.id] & measured,
                                     {i for i in measured if labels[i].get(t.id) == 1})
            click.echo(f"{t.id}  (keyword query: P {base.precision:.3f} R {base.recall:.3f} F1 {base.f1:.3f})")
            click.echo(f"  {'round':>5} {'read':>5} {'diffs read':>10} {'+examples':>9} {'+near misses':>12} "
                       f"{'threshold':>9} {'precision':>9} {'recall':>7} {'F1':>6}")
            for r in runs[t.id]:
                click.echo(f"  {r.number:>5} {r.read:>5} {r.diff_read:>10} {r.examples_added:>9} "
                           f"{r.counterexamples_added:>12} {r.threshold:>9.4f} {r.scores.precision:>9.3f} "
                           f"{r.scores.recall:>7.3f} {r.scores.f1:>6.3f}")
            report["topics"][t.id] = {"rounds": [r.as_dict() for r in runs[t.id]],  # type: ignore[index]
                                      "keyword_baseline": base.as_dict()}
        per_round = editor_loop.macro(runs)
        kw_macro = float(np.mean([d["keyword_baseline"]["f1"]  # type: ignore[index]
                                  for d in report["topics"].values()]))  # type: ignore[attr-defined]
        click.echo("macro-F1 per round: " + " ".join(f"{m:.3f}" for m in per_round)
                   + f"  (keyword query {kw_macro:.3f})")
        report["macro_f1"] = [round(m, 4) for m in per_round]
        report["keyword_macro_f1"] = round(kw_macro, 4)
        if as_json:
            click.echo(json.dumps(report))

    def _matched(items: list[topic_eval.EvalItem], vectors: np.ndarray, topic_set: match.TopicSet
                 ) -> dict[str, set[str]]:
        """Topic id -> ids of the items the compiled topics match (own evidence)."""
        predicted: dict[str, set[str]] = {t.id: set() for t in topic_set.topics}
        for v in match.match_texts(list(range(len(items))), [it.text for it in items], vectors, topic_set):
            if v.matched:
                predicted[v.topic_id].add(items[v.item_id].id)
        return predicted

    def _neighbourhood(embedder: embed.Embedder, items: list[topic_eval.EvalItem], vectors: np.ndarray,
                       topic_set: match.TopicSet, stream_file: Path, stream_from: str,
                       cache_dir: Path | None) -> topic_eval.Neighbourhood:
        from datetime import timedelta

        from monitor.lab import story_eval

        start = datetime.fromisoformat(stream_from).replace(tzinfo=UTC)
        last = max(datetime.fromisoformat(it.date[:10]) for it in items)
        end = last.replace(tzinfo=UTC) + timedelta(days=1)
        records = story_eval.read_stream(stream_file, start, end)
        stream_vectors = story_eval.cached_vectors(embedder, records, cache_dir)
        stream = topic_eval.Stream(tuple(r.text for r in records), stream_vectors,
                                   np.array([r.published_at.timestamp() for r in records]))
        click.echo(f"story-level evidence: {len(records)} stream items {start:%Y-%m-%d} .. {end:%Y-%m-%d}")
        return topic_eval.neighbourhood(items, vectors, stream, topic_set)

    def _fit_only(embedder: embed.Embedder, files: tuple[Path, ...], configured: set[str],
                  cache_dir: Path | None) -> topic_eval.FitOnly:
        from monitor.lab import story_eval

        seen: dict[str, Path] = {}
        parts: list[topic_eval.FitOnly] = []
        for labels_file, topics_file in analog_sources(files, None):
            topic_set = match.compile_topics(load_config(topics_file).topics, embedder)
            part = story_eval.read_development_rows(labels_file)
            check_analog_topics(labels_file, topics_file, {lab.topic for _it, lab in part},
                                {t.id for t in topic_set.topics}, seen, configured)
            seen |= {lab.topic: labels_file for _it, lab in part}
            records = [it for it, _lab in part]
            parts.append(topic_eval.fit_only_pairs(
                [it.text for it in records], story_eval.cached_vectors(embedder, records, cache_dir),
                [lab.topic for _it, lab in part], [int(lab.on_topic) for _it, lab in part],
                [it.published_at.strftime("%Y-%m-%d") for it in records], topic_set))
            click.echo(f"{labels_file}: {len(part)} labelled pairs of {len({lab.topic for _it, lab in part})} other "
                       f"topics ({sum(lab.on_topic for _it, lab in part)} on topic), fitted on only")
        return topic_eval.FitOnly.join(parts)

    def _print_protocols(out: dict, names: list[str], l2: float, split_date: str) -> None:  # type: ignore[type-arg]
        click.echo(f"\ncombiner features {names}, l2 {l2}; labels used only before {topic_eval.FIT_CUTOFF}; "
                   f"story-level evidence {'on' if out.get('story_evidence') else 'off (no --stream)'}")
        for key, title in (("dev", "dev: fitted and calibrated on all labelled items"),
                           ("time_split", f"time split: fitted before {split_date}, measured from it"),
                           ("no_label", "new topic, no labels: combiner fitted on the other topics, "
                                        "label-free threshold")):
            block = out[key]
            click.echo(f"\n{title} ({block['items']} items)")
            for variant in ("calibrated", "label_free"):
                if variant in block:
                    _print_table(f" [{variant}] thresholds {block[variant]['thresholds']}", block[variant])
            if "ceiling" in block:
                c = block["ceiling"]
                lent = ", neighbours lent at the label-free threshold" if out.get("story_evidence") else ""
                click.echo(f" [ranking ceiling] best cut chosen on these items themselves (an oracle{lent}): "
                           f"macro-F1 {c['macro_f1']:.3f}  "
                           + "  ".join(f"{t} {v['f1']:.3f}" for t, v in c["topics"].items()))
            _print_table(" [keyword baseline]", block["baseline"])
        if "reporting_only" in out:
            r = out["reporting_only"]
            _print_table(f"\nreporting only: items from {topic_eval.FIT_CUTOFF} ({r['items']}), as configured", r)
            _print_table(" [keyword baseline]", r["baseline"])

    def _read_labelled(items_paths: tuple[Path, ...], labels_paths: tuple[Path, ...]
                       ) -> tuple[list[topic_eval.EvalItem], dict[str, dict[str, int]]]:
        """The labelled items of `--items` / `--labels` file pairs (one --labels per --items, same order)."""
        if len(items_paths) != len(labels_paths):
            raise click.UsageError("give one --labels file per --items file, in the same order")
        parts = []
        for ip, lp in zip(items_paths, labels_paths, strict=True):
            with ip.open(encoding="utf-8") as f:
                its = topic_eval.parse_items(f, str(ip))
            with lp.open(encoding="utf-8") as f:
                parts.append((its, topic_eval.parse_labels(f, str(lp))))
        items, labels = topic_eval.merge(parts)
        if not items:
            raise MonitorError("no item of the --items files has a label in the --labels files")
        return items, labels

    def _item_vectors(embedder: embed.Embedder, items: list[topic_eval.EvalItem], cache_dir: Path | None) -> np.ndarray:
        titles, texts = [it.title for it in items], [it.text for it in items]
        if cache_dir is None:
            return embed.encode_items(embedder, titles, texts)
        key = hashlib.sha1("\n".join([embedder.model_id, *titles, *texts]).encode()).hexdigest()[:20]
        path = cache_dir / f"eval-items-{key}.npy"
        if path.exists():
            return np.load(path)
        vectors = embed.encode_items(embedder, titles, texts)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
        return vectors
