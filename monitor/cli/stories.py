"""CLI commands: `stories list`, `eval stories`, `eval alerts` and `eval replay`."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from monitor.cli import analog_sources, check_analog_topics, parse_since, window_start
from monitor.config import Config, Settings, load_config
from monitor.errors import MonitorError

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
            start, anchor = window_start(s, parse_since(since))
            views = stories.list_stories(s, topic_id, start)
        if not views:
            click.echo(f"{topic_id}: no stories with items in the {since} before {anchor}")
            return
        click.echo(f"{topic_id}: {len(views)} stor{'y' if len(views) == 1 else 'ies'} in the {since} before {anchor}"
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
    @click.option("--items", "items_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Labelled same-story items (JSON lines: id, date, source, title, summary, story); repeatable.")
    @click.option("--timelines", "timelines_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Story timelines (JSON lines: timeline, topic, date, source, title, summary, label "
                       "development|repeat): scores the alerts against the labels.")
    @click.option("--method", type=click.Choice(["novelty", "baseline"]), default="novelty", show_default=True,
                  help="Shown first; the other is always reported beside it. baseline = one cosine threshold on "
                       "centroids, no window (and, for timelines: every item alerts / any unseen fact updates).")
    @click.option("--threshold", type=float, default=None, help="Override the join threshold (for sweeps).")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=_DEFAULT_CACHE,
                  show_default=True, help="Where item vectors are cached between runs.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
    @pass_ctx
    def eval_stories(ctx: CliContext, items_files: tuple[Path, ...], timelines_file: Path | None, method: str,
                     threshold: float | None, cache_dir: Path, as_json: bool) -> None:
        """Replay labelled items in date order through story clustering (no topic filter) and score the
        clusters (B-cubed and pairwise precision/recall/F1) beside the one-threshold centroid baseline; with
        --timelines, score the alerts (new stories and updates) against items labelled development/repeat."""
        from monitor.lab import story_eval
        from monitor.signal import embed, novelty

        if not items_files and timelines_file is None:
            raise click.UsageError("give --items FILE (same-story labels) and/or --timelines FILE")
        settings = _settings(ctx)
        # read (and check) every file before loading the model
        labelled_sets = {f: story_eval.read_labelled(f) for f in items_files}
        timeline = story_eval.read_timelines(timelines_file) if timelines_file is not None else None
        embedder = embed.load_embedder(settings)
        ours = novelty.StoryParams(window_h=settings.story_window_h)
        methods = {"novelty": ours, "baseline": novelty.BASELINE}
        if threshold is not None:
            methods[method] = replace(methods[method], join_threshold=threshold)
        order = [method, *(m for m in methods if m != method)]
        report: dict[str, object] = {}
        for items_file, labelled in labelled_sets.items():
            if not labelled:
                raise MonitorError(f"{items_file}: no items")
            vectors = story_eval.cached_vectors(embedder, [li.item for li in labelled], cache_dir)
            results = {m: story_eval.evaluate_stories(labelled, vectors, methods[m]) for m in order}
            first = results[order[0]]
            click.echo(f"{items_file.name}: {first.items} items, {first.gold_stories} labelled stories")
            for m in order:
                r = results[m]
                click.echo(f"  {m:<9} -> {r.stories:>4} stories (join threshold {methods[m].join_threshold})  "
                           + _prf("B-cubed", r.bcubed.as_dict()).replace("B-cubed   ", "B-cubed "))
            report[items_file.name] = {m: {**results[m].as_dict(), "join_threshold": methods[m].join_threshold}
                                       for m in order}
        if timelines_file is not None and timeline is not None:
            tl = timeline
            if not tl:
                raise MonitorError(f"{timelines_file}: no items")
            vectors = story_eval.cached_vectors(embedder, [t.item for t in tl], cache_dir)
            earlier = replace(ours, material_updates=False, corroboration=False)
            runs = {"novelty": story_eval.evaluate_updates(tl, vectors, ours),
                    "any-new-fact": story_eval.evaluate_updates(tl, vectors, earlier)}
            every = sum(t.development for t in tl) / len(tl)
            click.echo(f"{timelines_file.name}: {len(tl)} items, {runs['novelty'].developments} labelled developments")
            click.echo(f"  {'rule':<13} {'update precision':>16} {'alert precision':>15} {'developments alerted':>20}")
            for name, r in runs.items():
                click.echo(f"  {name:<13} {r.update_precision:>16.3f} {r.alert_precision:>15.3f} "
                           f"{r.development_recall:>20.3f}   ({', '.join(f'{k} {v}' for k, v in sorted(r.decisions.items()))})")
            click.echo(f"  {'every-match':<13} {'-':>16} {every:>15.3f} {1.0:>20.3f}   (every item alerts)")
            sweep = story_eval.by_alert_threshold(tl, vectors, ours, story_eval.SWEEP_THRESHOLDS)
            click.echo(f"  novelty by alert threshold (shipped {ours.alert_model.threshold:g}): what its ranking "
                       "allows, update precision / alert precision / developments alerted:")
            click.echo("    " + "   ".join(
                f"{th:g}: {f'{r.update_precision:.2f}' if r.decisions.get('update') else '-'} / "
                f"{r.alert_precision:.2f} / {r.development_recall:.2f}" for th, r in sweep.items()))
            report[timelines_file.name] = {
                **{k: r.as_dict() for k, r in runs.items()},
                "every-match": {"alert_precision": round(every, 4), "development_recall": 1.0},
                "by_alert_threshold": {f"{th:g}": r.as_dict() for th, r in sweep.items()}}
        if as_json:
            click.echo(json.dumps(report))

    @eval_group.command(name="alerts")
    @click.option("--labels", "labels_file", required=True,
                  type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Development labels (bench/data/stories/development_labels.jsonl): topic, date, title, summary, "
                       "on_topic, role, dev, kd per (item, topic) candidate.")
    @click.option("--stream", "stream_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="The captured stream the labelled items come from: match them within it, with story-level "
                       "evidence from the items around them, as the service and `eval replay` do (otherwise each "
                       "labelled item is matched on its own evidence).")
    @click.option("--analogs", "analogs_files", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  multiple=True, help="Development labels of other topics and months (bench/data/analogs/"
                                      "development_labels.jsonl; repeat it to add bench/data/analogs2/...), each "
                                      "file matched by its own topics (topics.toml beside it, or --analog-topics) "
                                      "on their own evidence: only ever fitted on, and one more protocol fits on "
                                      "them alone.")
    @click.option("--analog-topics", "analog_topics", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  default=None, help="With one --analogs file: the configuration holding its topics (default: "
                                     "topics.toml beside it).")
    @click.option("--fit", "do_fit", is_flag=True,
                  help="Also fit the models on every label and choose the threshold across topics; print the "
                       "model to paste into monitor.signal.newsworthy.SHIPPED_ALERT_MODEL.")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=_DEFAULT_CACHE,
                  show_default=True, help="Where item vectors are cached between runs.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
    @pass_ctx
    def eval_alerts(ctx: CliContext, labels_file: Path, stream_file: Path | None, analogs_files: tuple[Path, ...],
                    analog_topics: Path | None, do_fit: bool, cache_dir: Path, as_json: bool) -> None:
        """Measure the alert model (is an item a development its topic's subscribers were not told?) on
        development labels read by hand: alert precision, developments alerted and key developments alerted,
        simulated per topic in time order over the candidates the configured topics match. Reported with the
        shipped weights and refitted per protocol: on all labels, across topics and across time."""
        from monitor.lab import alert_eval
        from monitor.signal import embed, match, newsworthy, novelty

        config: Config = ctx.config
        cands = alert_eval.read_candidates(labels_file)
        if not cands:
            raise MonitorError(f"{labels_file}: no labels")
        embedder = embed.load_embedder(config.settings)
        topic_set = match.compile_topics(config.topics, embedder)
        known = {t.id for t in topic_set.topics}
        missing = sorted({c.topic for c in cands} - known)
        if missing:
            raise MonitorError(f"{labels_file}: topics {', '.join(missing)} are not configured in {ctx.config_file}")
        cands, found = alert_eval.with_matches(cands, embedder, topic_set, cache_dir, stream_file)
        if stream_file is not None:
            click.echo(f"{found} of {len(cands)} labelled items found in {stream_file.name} and matched there")
        analogs: list[alert_eval.Candidate] = []
        seen: dict[str, Path] = {}
        for analogs_file, topics_file in analog_sources(analogs_files, analog_topics):
            analog_set = match.compile_topics(load_config(topics_file).topics, embedder)
            part = alert_eval.read_candidates(analogs_file)
            check_analog_topics(analogs_file, topics_file, {c.topic for c in part},
                                {t.id for t in analog_set.topics}, seen, known)
            seen |= {c.topic: analogs_file for c in part}
            part, _found = alert_eval.with_matches(part, embedder, analog_set, cache_dir)
            analogs += part
            click.echo(f"{analogs_file}: {len(part)} analog candidates of {len({c.topic for c in part})} "
                       f"topics, {sum(c.matched for c in part)} matched, "
                       f"{len({(c.topic, c.dev) for c in part if c.dev})} developments (fitted on only)")
        memory_h = novelty.StoryParams().memory_h
        shipped = newsworthy.SHIPPED_ALERT_MODEL
        threshold = shipped.threshold
        if do_fit:
            grid = [round(0.05 * k, 2) for k in range(2, 13)]
            threshold = alert_eval.choose_threshold(cands, memory_h, grid, analogs)
        report: dict[str, object] = {"memory_h": memory_h, "threshold": threshold}
        click.echo(f"{labels_file.name}: {len(cands)} candidates, {sum(c.matched for c in cands)} matched by the "
                   f"configured topics, {len({(c.topic, c.dev) for c in cands if c.dev})} developments")
        click.echo(f"  {'protocol':<28} {'model':<8} {'alerts':>6} {'right':>6} {'precision':>9} "
                   f"{'developments':>13} {'key developments':>17} {'AUC dev':>8}")
        protocols = alert_eval.folds(cands, analogs)
        for name, (fit_on, measure_on) in protocols.items():
            models = {"shipped": shipped, "refit": alert_eval.fit_model(fit_on, memory_h, threshold)}
            for mname, model in models.items():
                r = alert_eval.simulate(measure_on, model, memory_h)
                auc = alert_eval.development_auc(measure_on, model)
                report[f"{name} / {mname}"] = {**r.as_dict(), "development_auc": round(auc, 4)}
                click.echo(f"  {name:<28} {mname:<8} {r.alerts:>6} {r.right:>6} {r.precision:>9.3f} "
                           f"{r.developments_alerted:>6}/{r.developments:<6} {r.kd_alerted:>8}/{r.kd_pairs:<8} "
                           f"{auc:>8.3f}")
            b = alert_eval.simulate(measure_on, replace(shipped, threshold=0.0), memory_h)
            report[f"{name} / every match"] = b.as_dict()
            click.echo(f"  {name:<28} {'every':<8} {b.alerts:>6} {b.right:>6} {b.precision:>9.3f} "
                       f"{b.developments_alerted:>6}/{b.developments:<6} {b.kd_alerted:>8}/{b.kd_pairs:<8}")
        click.echo("  shipped = the shipped weights, fitted on every label (in-sample on every row); refit = fitted "
                   "on the row's first half only; every = every match of the measured half alerts (the baseline); "
                   "AUC dev = p(development) on the measured half's matched candidates")
        if do_fit:
            model = alert_eval.fit_model(protocols["all -> all"][0], memory_h, threshold)  # analogs de-duplicated
            click.echo(f"threshold chosen across topics: {threshold} (the best lower development F1 of the two "
                       "cross-topic rows' measured halves: those rows are not blind to it)")
            click.echo(alert_eval.dump_model(model))
        if as_json:
            click.echo(json.dumps(report))

    @eval_group.command(name="replay")
    @click.option("--stream", "stream_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Captured stream (.jsonl or .jsonl.xz: capture_day, feed, title, description, link, date_published).")
    @click.option("--from", "start", required=True, help="First day (UTC), e.g. 2023-11-20.")
    @click.option("--to", "end", required=True, help="Last day (UTC, inclusive), e.g. 2023-12-02.")
    @click.option("--topic", "only", multiple=True, help="Only these topic ids in the timeline (all are counted).")
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=_DEFAULT_CACHE,
                  show_default=True, help="Where item vectors are cached between runs.")
    @click.option("--alerts-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Also write every alert as one JSON line (topic, time, decision, headline, teaser, "
                       "what_is_new, ...) for judging by reading (JUDGING.md).")
    @click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  default=None, help="Development labels read by hand (bench/data/stories/development_labels.jsonl): "
                                     "score the alerts as JUDGING.md does (on topic and a development not alerted "
                                     "before).")
    @click.option("--key-developments", "kd_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  default=None, help="Key developments (bench/data/stories/key_developments.jsonl): with --labels, "
                                     "count the (development, topic) pairs that alerted.")
    @click.option("--sweep", is_flag=True, help="With --labels: judge the replay again at several alert thresholds "
                                                 "(what the alert model's ranking allows; ~10 s each).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
    @pass_ctx
    def eval_replay(ctx: CliContext, stream_file: Path, start: str, end: str, only: tuple[str, ...],
                    cache_dir: Path, alerts_out: Path | None, labels_file: Path | None, kd_file: Path | None,
                    sweep: bool, as_json: bool) -> None:
        """Replay the real stream through the configured topics and story clustering on a simulated clock;
        report per topic matches (the baseline: every match alerts), stories, alerts (new stories + updates),
        repeats and held stories, alerts per day, what waiting for corroboration cost (alerts dropped, delay)
        against the same replay without the wait, and a day-by-day timeline of the alerts."""
        from monitor.lab import story_eval
        from monitor.signal import embed, match, novelty

        config: Config = ctx.config
        if not config.enabled_topics:  # a disabled topic matches nothing in service: not replayed
            raise MonitorError(f"{ctx.config_file}: no enabled [[topics]] to replay against")
        if sweep and labels_file is None:
            raise click.UsageError("--sweep judges each replay with the development labels: add --labels FILE")
        t0, t1 = _day(start), _day(end) + timedelta(days=1)
        labels = story_eval.read_development_labels(labels_file) if labels_file is not None else None
        kds = story_eval.read_key_developments(kd_file) if kd_file is not None else []
        items = story_eval.read_stream(stream_file, t0, t1)
        if not items:
            raise MonitorError(f"{stream_file}: no items published between {start} and {end}")
        embedder = embed.load_embedder(config.settings)
        vectors = story_eval.cached_vectors(embedder, items, cache_dir)
        topic_set = match.compile_topics(config.enabled_topics, embedder)
        params = novelty.StoryParams(window_h=config.settings.story_window_h)
        r = story_eval.replay(items, vectors, topic_set, config.settings, params=params)
        no_wait = story_eval.replay(items, vectors, topic_set, config.settings,
                                    params=replace(params, corroboration=False))
        earlier = story_eval.replay(items, vectors, topic_set, config.settings,
                                    params=replace(params, corroboration=False, material_updates=False))
        days_n = (t1 - t0).days
        click.echo(f"replayed {r.items} items published {start} .. {end} ({days_n} days)")
        click.echo(f"{'topic':<20} {'matches':>8} {'stories':>8} {'alerts':>7} {'(updates)':>10} {'repeats':>8} "
                   f"{'held':>5} {'max/day':>8} {'no wait':>8} {'earlier rule':>13}")
        per_day = r.per_day()
        for tid, c in r.topics.items():
            top = max(per_day.get(tid, {}).values(), default=0)
            click.echo(f"{tid:<20} {c['matches']:>8} {c['stories']:>8} {c['alerts']:>7} {c['updates']:>10} "
                       f"{c['repeats']:>8} {c['held']:>5} {top:>8} {no_wait.topics[tid]['alerts']:>8} "
                       f"{earlier.topics[tid]['alerts']:>13}")
        click.echo("baseline (every match alerts) = the matches column; 'no wait' = the same without waiting for "
                   "corroboration; 'earlier rule' = every new story alerts and any unseen figure/name/quote updates")
        corr = story_eval.corroboration_cost(r, no_wait)
        click.echo(f"corroboration: {r.held_stories} stories waited, {r.held_alerted} alerted after a median "
                   f"{corr['median_wait_h']} h (max {corr['max_wait_h']} h); {corr['dropped']} alerts of the no-wait "
                   f"replay never sent")
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
        judged: dict[str, object] = {}
        if labels is not None:
            click.echo("")
            click.echo("judged with the development labels (right = on topic and a development no earlier alert of "
                       "its topic reported):")
            every = story_eval.replay(items, vectors, topic_set, config.settings,
                                      params=story_eval.at_alert_threshold(replace(params, corroboration=False), 0.0))
            for name, run in (("shipped", r), ("no wait", no_wait), ("earlier rule", earlier), ("every match", every)):
                jr = story_eval.judge_replay(run.alerts, labels, kds)
                judged[name] = jr.as_dict()
                kd = f", key developments {jr.kd_alerted}/{jr.kd_pairs}" if jr.kd_pairs else ""
                click.echo(f"  {name:<13} {jr.right}/{jr.alerts} = {jr.precision:.3f}{kd}"
                           + (f"  ({jr.unlabelled} alerts have no label: read them)" if jr.unlabelled else ""))
            jr = story_eval.judge_replay(r.alerts, labels, kds)
            if jr.missed_kds:
                click.echo(f"  key developments with no alert: {', '.join(jr.missed_kds)}")
            if sweep:
                click.echo(f"  by alert threshold (shipped {params.alert_model.threshold:g}): right / alerts, key "
                           "developments alerted")
                swept: dict[str, object] = {}
                for th in story_eval.sweep_thresholds(params, story_eval.SWEEP_THRESHOLDS):
                    at_th = r if th == params.alert_model.threshold else story_eval.replay(
                        items, vectors, topic_set, config.settings, params=story_eval.at_alert_threshold(params, th))
                    jt = story_eval.judge_replay(at_th.alerts, labels, kds)
                    swept[f"{th:g}"] = jt.as_dict()
                    click.echo(f"    {th:<5g} {jt.right}/{jt.alerts} = {jt.precision:.3f}, key developments "
                               f"{jt.kd_alerted}/{jt.kd_pairs}")
                judged["by_alert_threshold"] = swept
        if alerts_out is not None:
            alerts_out.parent.mkdir(parents=True, exist_ok=True)
            with alerts_out.open("w", encoding="utf-8") as fh:
                for a in r.alerts:
                    fh.write(json.dumps(a.as_dict(), ensure_ascii=False) + "\n")
        if as_json:
            click.echo(json.dumps({
                **r.as_dict(),
                "baseline_every_match_alerts": {t: c["matches"] for t, c in r.topics.items()},
                "no_wait": {t: c["alerts"] for t, c in no_wait.topics.items()},
                "earlier_rule": {t: c["alerts"] for t, c in earlier.topics.items()},
                "corroboration_cost": corr,
                "judged": judged,
            }, ensure_ascii=False))
