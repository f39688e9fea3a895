"""CLI commands: `stories list`, `eval stories` and `eval replay`."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from monitor.cli import parse_since
from monitor.config import Config, Settings
from monitor.errors import MonitorError
from monitor.storage import db

_DURATION = re.compile(r"^\s*(\d+)\s*([dhw])\s*$")
_DEFAULT_CACHE = Path("var/cache")


def _day(text: str) -> datetime:
    try:
        d = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use a date like 2023-11-20") from None
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


def _settings(ctx) -> Settings:  # type: ignore[no-untyped-def]
    """The configured settings, or the defaults when there is no configuration file (evaluation only)."""
    return ctx.config.settings if ctx.config_file.exists() else Settings()


def _prf(name: str, d: dict[str, float]) -> str:
    return f"{name:<9} precision {d['precision']:.3f}  recall {d['recall']:.3f}  F1 {d['f1']:.3f}"


def register(main: click.Group, eval_group: click.Group) -> None:
    from monitor.cli import CliContext, pass_ctx

    @main.group(name="stories")
    def stories_group() -> None:
        """Stories (clusters of items about one event) and the novelty decision of each item."""

    @stories_group.command(name="list")
    @click.argument("topic_id")
    @click.option("--since", default="3d", show_default=True, help="Stories with an item this recent (3d, 12h, 2w).")
    @click.option("--limit", default=50, show_default=True, help="Most stories shown.")
    @pass_ctx
    def stories_list(ctx: CliContext, topic_id: str, since: str, limit: int) -> None:
        """Show the stories of TOPIC_ID with their items, sources and the decision + reason for each item."""
        from sqlalchemy.orm import Session

        from monitor.signal import stories

        config: Config = ctx.config
        config.topic(topic_id)  # unknown topic -> ConfigError with the known ones
        engine = ctx.engine()
        with Session(engine) as s:
            views = stories.list_stories(s, topic_id, db.utcnow() - parse_since(since))
        if not views:
            click.echo(f"{topic_id}: no stories with items in the last {since}")
            return
        click.echo(f"{topic_id}: {len(views)} stor{'y' if len(views) == 1 else 'ies'} in the last {since}"
                   + (f" (showing {limit})" if len(views) > limit else ""))
        for v in views[:limit]:
            state = "closed" if v.closed else "open"
            click.echo("")
            click.echo(f"story {v.story_id} [{state}] {v.title}")
            click.echo(f"  {v.first_seen:%Y-%m-%d %H:%M} .. {v.last_seen:%Y-%m-%d %H:%M} UTC, {len(v.items)} item(s), "
                       f"{len(v.sources)} source(s): {', '.join(v.sources)}")
            for it in v.items:
                click.echo(f"  {it.published_at:%m-%d %H:%M} {it.decision:<9} {it.outlet:<22} {it.title}")
                click.echo(f"  {'':<11} {'':<9} why: {it.reason}")
                if it.link:
                    click.echo(f"  {'':<11} {'':<9} {it.link}")

    @eval_group.command(name="stories")
    @click.option("--items", "items_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Labelled items (JSON lines: id, date, source, title, summary, story).")
    @click.option("--method", type=click.Choice(["novelty", "baseline"]), default="novelty", show_default=True,
                  help="novelty = the service's clustering; baseline = one cosine threshold on centroids, no window.")
    @click.option("--threshold", type=float, default=None, help="Override the join threshold (for sweeps).")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=_DEFAULT_CACHE,
                  show_default=True, help="Where item vectors are cached between runs.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
    @pass_ctx
    def eval_stories(ctx: CliContext, items_file: Path, method: str, threshold: float | None, cache_dir: Path,
                     as_json: bool) -> None:
        """Replay labelled items in date order through story clustering (no topic filter) and score the
        clusters: B-cubed and pairwise precision/recall/F1."""
        from monitor.lab import story_eval
        from monitor.signal import embed, novelty

        settings = _settings(ctx)
        labelled = story_eval.read_labelled(items_file)
        if not labelled:
            raise MonitorError(f"{items_file}: no items")
        embedder = embed.load_embedder(settings)
        vectors = story_eval.cached_vectors(embedder, [li.item for li in labelled], cache_dir)
        params = novelty.BASELINE if method == "baseline" else novelty.StoryParams(window_h=settings.story_window_h)
        if threshold is not None:
            params = replace(params, join_threshold=threshold)
        r = story_eval.evaluate_stories(labelled, vectors, params)
        click.echo(f"{items_file.name}: {r.items} items, {r.gold_stories} labelled stories -> {r.stories} stories "
                   f"({method}, join threshold {params.join_threshold})")
        click.echo(_prf("B-cubed", r.bcubed.as_dict()))
        click.echo(_prf("pairwise", r.pairwise.as_dict()))
        click.echo("decisions: " + ", ".join(f"{k} {v}" for k, v in sorted(r.decisions.items())))
        if as_json:
            click.echo(json.dumps({**r.as_dict(), "method": method}))

    @eval_group.command(name="replay")
    @click.option("--stream", "stream_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Captured stream (.jsonl or .jsonl.xz: capture_day, feed, title, description, link, date_published).")
    @click.option("--from", "start", required=True, help="First day (UTC), e.g. 2023-11-20.")
    @click.option("--to", "end", required=True, help="Last day (UTC, inclusive), e.g. 2023-12-02.")
    @click.option("--topic", "only", multiple=True, help="Only these topic ids in the timeline (all are counted).")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=_DEFAULT_CACHE,
                  show_default=True, help="Where item vectors are cached between runs.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
    @pass_ctx
    def eval_replay(ctx: CliContext, stream_file: Path, start: str, end: str, only: tuple[str, ...],
                    cache_dir: Path, as_json: bool) -> None:
        """Replay the real stream through the configured topics and story clustering on a simulated clock;
        report per topic matches, stories, alerts (new stories + updates) and repeats, and a day-by-day
        timeline of the alerts' headlines."""
        from monitor.lab import story_eval
        from monitor.signal import embed, match

        config: Config = ctx.config
        if not config.topics:
            raise MonitorError(f"{ctx.config_file}: no [[topics]] to replay against")
        t0, t1 = _day(start), _day(end) + timedelta(days=1)
        items = story_eval.read_stream(stream_file, t0, t1)
        if not items:
            raise MonitorError(f"{stream_file}: no items published between {start} and {end}")
        embedder = embed.load_embedder(config.settings)
        vectors = story_eval.cached_vectors(embedder, items, cache_dir)
        topic_set = match.compile_topics(config.topics, embedder)
        r = story_eval.replay(items, vectors, topic_set, config.settings)
        click.echo(f"replayed {r.items} items published {start} .. {end}")
        click.echo(f"{'topic':<20} {'matches':>8} {'stories':>8} {'alerts':>7} {'(updates)':>10} {'repeats':>8}")
        for tid, c in r.topics.items():
            click.echo(f"{tid:<20} {c['matches']:>8} {c['stories']:>8} {c['alerts']:>7} {c['updates']:>10} "
                       f"{c['repeats']:>8}")
        days: dict[str, list[story_eval.ReplayAlert]] = defaultdict(list)
        for a in r.alerts:
            if not only or a.topic in only:
                days[a.published.strftime("%Y-%m-%d")].append(a)
        for day in sorted(days):
            click.echo("")
            click.echo(f"== {day}")
            for a in days[day]:
                tag = "NEW" if a.decision == "new_story" else "UPD"
                extra = f"  [{a.what_is_new}]" if a.what_is_new else ""
                click.echo(f"  {a.published:%H:%M} {a.topic:<18} {tag} s{a.story:<4} {a.title} ({a.outlet}){extra}")
        if as_json:
            click.echo(json.dumps({
                "topics": {t: {k: c[k] for k in ("matches", "stories", "alerts", "repeats")} for t, c in r.topics.items()},
                "alerts": [{k: v for k, v in a.as_dict().items() if k in ("topic", "decision", "published", "title",
                                                                          "link", "story", "what_is_new")}
                           for a in r.alerts],
            }))
