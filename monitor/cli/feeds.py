"""CLI commands for the feed side: `poll`, `feeds list|import|export`, `replay-server`."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from sqlalchemy import select

from monitor.errors import ConfigError, MonitorError
from monitor.storage import db, store

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _safe(text: str | None, width: int | None = None) -> str:
    """Untrusted text (feed titles, errors) made safe for a terminal: no control/escape characters."""
    out = _CONTROL.sub(" ", text or "")
    if width is not None and len(out) > width:
        out = out[: width - 1] + "…"
    return out


def _when(dt: datetime | None, now: datetime) -> str:
    if dt is None:
        return "-"
    secs = (dt - now).total_seconds()
    word = "in " if secs > 0 else ""
    secs = abs(secs)
    span = f"{secs:.0f}s" if secs < 120 else f"{secs / 60:.0f}m" if secs < 7200 else f"{secs / 3600:.1f}h" \
        if secs < 172800 else f"{secs / 86400:.0f}d"
    return f"{word}{span}" + ("" if word else " ago")


def register(main: click.Group, eval_group: click.Group) -> None:
    from monitor.cli import CliContext, pass_ctx

    @main.command(name="poll")
    @click.option("--once", is_flag=True, help="Run one polling pass and exit (the service is `monitor run`).")
    @click.option("--feed", "feed_urls", multiple=True, metavar="URL", help="Poll only this feed (repeatable).")
    @click.option("--due", is_flag=True, help="Poll only feeds whose next check is due (default: every enabled feed).")
    @click.option("--json", "as_json", is_flag=True, help="JSON lines; the last line is the totals object.")
    @pass_ctx
    def poll(ctx: CliContext, once: bool, feed_urls: tuple[str, ...], due: bool, as_json: bool) -> None:
        """Fetch feeds once, store new items and print what happened."""
        from monitor.ingest.poll import poll_once

        if not once:
            raise click.UsageError("`monitor poll` runs one pass: add --once (use `monitor run` to keep polling)")
        config = ctx.config
        engine = ctx.engine()
        now = db.utcnow()
        with db.write_transaction(engine) as s:
            store.sync_feeds(s, config.feeds, now)
        if feed_urls:
            known = {f.url for f in config.feeds}
            with db.session_factory(engine)() as s:
                from monitor.storage.tables import Feed

                known |= set(s.scalars(select(Feed.url)))
            unknown = [u for u in feed_urls if u not in known]
            if unknown:
                raise ConfigError(f"not in {ctx.config_file}: {', '.join(unknown)}; add it as a [[feeds]] entry first")
        report = asyncio.run(poll_once(engine, config.settings, feeds_filter=list(feed_urls) or None,
                                       all_feeds=not due))
        if as_json:
            for row in report.rows:
                click.echo(json.dumps({"feed_id": row.feed_id, "feed": row.name or row.url, "url": row.url,
                                       "status": row.status, "http_status": row.http_status,
                                       "new_items": row.new_items, "seconds": round(row.seconds, 3),
                                       "error": row.error}, ensure_ascii=False))
            click.echo(json.dumps(report.totals))
            return
        if not report.rows:
            click.echo("no feeds to poll (none enabled in the configuration, or none due with --due)")
        else:
            click.echo(f"{'feed':<48} {'status':<16} {'new':>5} {'time':>7}")
            for row in sorted(report.rows, key=lambda r: (r.name or r.url).lower()):
                status = row.status + (f" {row.http_status}" if row.http_status and row.status == "error" else "")
                click.echo(f"{_safe(row.name or row.url, 48):<48} {status:<16} {row.new_items:>5} {row.seconds:>6.2f}s")
                if row.error:
                    click.echo(f"    {_safe(row.error, 200)}")
        t = report.totals
        click.echo(f"total: {t['polled']} polled, {t['new_items']} new items, {t['not_modified']} not modified, "
                   f"{t['errors']} errors in {report.elapsed_s:.1f} s")

    @main.group(name="feeds")
    def feeds_group() -> None:
        """Feed health, OPML import and export."""

    @feeds_group.command(name="list")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per feed.")
    @pass_ctx
    def feeds_list(ctx: CliContext, as_json: bool) -> None:
        """Each feed's health: last status, last success, errors, next check."""
        engine = ctx.engine()
        now = db.utcnow()
        with db.write_transaction(engine) as s:
            store.sync_feeds(s, ctx.config.feeds, now)
        with db.session_factory(engine)() as s:
            rows = store.feed_health(s)
        if as_json:
            for h in rows:
                click.echo(json.dumps({
                    "feed_id": h.feed_id, "url": h.url, "name": h.display_name, "enabled": h.enabled,
                    "state": h.state, "healthy": h.healthy, "last_status": h.last_status, "last_error": h.last_error,
                    "error_count": h.error_count, "items": h.item_count,
                    "last_success_at": h.last_success_at.isoformat() if h.last_success_at else None,
                    "next_check_at": h.next_check_at.isoformat() if h.next_check_at else None,
                    "publish_interval_s": h.publish_interval_s,
                }, ensure_ascii=False))
            return
        click.echo(f"{'feed':<40} {'state':<9} {'last status':<18} {'last success':<13} {'errors':>6} "
                   f"{'next check':<11} {'items':>6}")
        for h in rows:
            click.echo(f"{_safe(h.display_name, 40):<40} {h.state:<9} {_safe(h.last_status or 'never', 18):<18} "
                       f"{_when(h.last_success_at, now):<13} {h.error_count:>6} "
                       f"{_when(h.next_check_at, now) if h.enabled else '-':<11} {h.item_count:>6}")
            if h.last_error and (h.error_count or not h.healthy):
                click.echo(f"    {_safe(h.last_error, 200)}")

    @feeds_group.command(name="import")
    @click.argument("opml_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--dry-run", is_flag=True, help="Only print the [[feeds]] blocks; change nothing.")
    @pass_ctx
    def feeds_import(ctx: CliContext, opml_file: Path, dry_run: bool) -> None:
        """Add the feeds of an OPML file: appended as [[feeds]] to the config file (the source of truth, its
        comments kept), then added to the database."""
        from monitor.config import load_config
        from monitor.ingest.opml import append_to_config, new_feeds, read_opml, toml_blocks

        imported = read_opml(opml_file.read_bytes(), str(opml_file))
        fresh = new_feeds(imported, [f.url for f in ctx.config.feeds])
        click.echo(f"{opml_file}: {len(imported)} feeds, {len(imported) - len(fresh)} already configured, "
                   f"{len(fresh)} new")
        if not fresh:
            return
        if dry_run:
            click.echo(toml_blocks(fresh), nl=False)
            return
        added = append_to_config(ctx.config_file, fresh, opml_file.name)
        click.echo(f"appended {len(fresh)} [[feeds]] entries to {ctx.config_file}:")
        click.echo(added.strip("\n"))
        config = load_config(ctx.config_file)
        engine = db.make_engine(config.settings.database_url)
        if db.has_schema(engine):
            with db.write_transaction(engine) as s:
                r = store.sync_feeds(s, config.feeds, db.utcnow())
            click.echo(f"database: {r.added} feeds added (polled from the next pass)")
        else:
            click.echo("database has no schema yet: run `monitor db upgrade`; the feeds are polled from then on")

    @feeds_group.command(name="export")
    @click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
    @pass_ctx
    def feeds_export(ctx: CliContext, output: Path | None) -> None:
        """The configured feeds as OPML (titles from the database when known)."""
        from monitor.ingest.opml import OpmlFeed, write_opml

        titles: dict[str, str] = {}
        engine = db.make_engine(ctx.config.settings.database_url)
        if db.has_schema(engine):
            from monitor.storage.tables import Feed

            with db.session_factory(engine)() as s:
                titles = {r.config_url: r.title for r in s.execute(select(Feed.config_url, Feed.title)) if r.title}
        data = write_opml([OpmlFeed(url=f.url, title=f.name or titles.get(f.url)) for f in ctx.config.feeds],
                          now=db.utcnow())
        if output:
            output.write_bytes(data)
            click.echo(f"wrote {len(ctx.config.feeds)} feeds to {output}", err=True)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()

    @main.command(name="replay-server")
    @click.option("--data", "data_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="JSONL of items (.xz or plain), e.g. ../shared/data/stream/items_2023_worldnews.jsonl.xz.")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=8081, show_default=True, type=int)
    @click.option("--speed", default=1.0, show_default=True, type=float, help="Simulated seconds per real second.")
    @click.option("--start", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
                  help="Simulated start time, UTC (default: the first item's date).")
    @click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="Load only items published on or after this day.")
    @click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Load only items published before this day.")
    @click.option("--window", default=50, show_default=True, type=int, help="Items per feed document.")
    def replay_server(data_file: Path, host: str, port: int, speed: float, start: datetime | None,
                      since: datetime | None, until: datetime | None, window: int) -> None:
        """Serve a JSONL capture as real RSS feeds on a simulated clock (tests, demo, benchmarks)."""
        from monitor.clock import SimulatedClock
        from monitor.lab.replay import ATTRIBUTION, ReplayFeeds, ReplayServer, load_items

        def utc(d: datetime | None) -> datetime | None:
            return d.replace(tzinfo=UTC) if d is not None else None

        if speed <= 0:
            raise click.BadParameter("must be positive", param_hint="--speed")
        items = load_items(data_file, since=utc(since), until=utc(until))
        if not items:
            raise MonitorError(f"{data_file}: no items to replay (check the file and --since/--until)")
        feeds = ReplayFeeds(items, window=window)
        first = feeds.first_time()
        assert first is not None
        clock = SimulatedClock(start=utc(start) or first, speed=speed)
        server = ReplayServer(feeds, clock.now)

        async def serve() -> None:
            base = await server.start(host, port)
            click.echo(f"replaying {len(items):,} items from {len(feeds.feeds)} feeds at {base} "
                       f"(clock {clock.now().isoformat()}, x{speed:g}); feed list: {base}/feeds.opml")
            click.echo(ATTRIBUTION)
            try:
                await asyncio.Event().wait()
            finally:
                await server.close()

        try:
            asyncio.run(serve())
        except KeyboardInterrupt:
            click.echo("stopped")
        except OSError as e:
            raise MonitorError(f"cannot listen on {host}:{port}: {e}") from e
