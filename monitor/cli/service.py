"""CLI commands: `run` (the service) and `demo` (the offline tour)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from monitor.clock import Clock, SimulatedClock, SystemClock


def _clock(start: datetime | None, speed: float) -> Clock:
    if start is None:
        return SystemClock() if speed == 1.0 else SimulatedClock(datetime.now(UTC), speed)
    return SimulatedClock(start.replace(tzinfo=UTC), speed)


def register(main: click.Group, eval_group: click.Group) -> None:
    from monitor.cli import CliContext, pass_ctx

    @main.command(name="run")
    @click.option("--host", default=None, help="Address of the HTTP endpoints (default: settings.host, 127.0.0.1).")
    @click.option("--port", type=int, default=None, help="Port of the HTTP endpoints (default: $MONITOR_PORT or 8080).")
    @click.option("--tick", "tick_s", type=float, default=1.0, show_default=True,
                  help="Seconds between scheduler ticks (due feeds and deliveries are checked each tick).")
    @click.option("--no-migrate", is_flag=True, help="Do not upgrade the database schema at start-up.")
    @click.option("--role", "roles", multiple=True, default=("all",), show_default=True,
                  help="What this process does: all, or any of scheduler (config sync, digests, housekeeping), "
                       "worker (fetch, encode and match, send; run as many as you like) and web (HTTP endpoints). "
                       "Repeat the option or separate with commas, e.g. --role scheduler,web.")
    @click.option("--heartbeat", "heartbeat_s", type=float, default=2.0, show_default=True,
                  help="Seconds between this process's heartbeats in the database (`monitor status`).")
    @click.option("--dead-after", "dead_after_s", type=float, default=20.0, show_default=True,
                  help="A process silent this many seconds is presumed dead and its leases are given to others.")
    @click.option("--batch", "process_batch", type=click.IntRange(1, 4096), default=None,
                  help="Items claimed per encode batch (default 1024; smaller spreads encoding over more workers).")
    @click.option("--clock-start", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]),
                  default=None, help="Run on a simulated clock starting at this UTC time (demos, tests).")
    @click.option("--clock-speed", type=float, default=1.0, show_default=True,
                  help="Simulated seconds per real second (with --clock-start).")
    @pass_ctx
    def run(ctx: CliContext, host: str | None, port: int | None, tick_s: float, no_migrate: bool,
            roles: tuple[str, ...], heartbeat_s: float, dead_after_s: float, process_batch: int | None,
            clock_start: datetime | None, clock_speed: float) -> None:
        """Run the service: poll feeds, match, build and deliver digests, serve /healthz, /metrics.

        With --role, one part of it: e.g. one `--role scheduler,web` and any number of `--role worker`
        processes sharing a PostgreSQL database (README: "Running on several machines")."""
        from monitor.app.pipeline import PROCESS_BATCH
        from monitor.app.service import ALL_ROLES, ServiceOptions, run_service

        ctx.config  # noqa: B018 - validate before anything starts; errors exit 2 with the message
        wanted = {r.strip().lower() for spec in roles for r in spec.split(",") if r.strip()}
        chosen = ALL_ROLES if "all" in wanted else frozenset(wanted)
        options = ServiceOptions(config_path=ctx.config_file, host=host, port=port, tick_s=tick_s,
                                 migrate=not no_migrate, roles=chosen, heartbeat_s=heartbeat_s,
                                 dead_after_s=dead_after_s, process_batch=process_batch or PROCESS_BATCH)
        sys.exit(run_service(options, _clock(clock_start, clock_speed)))

    @main.command(name="demo")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
                  show_default=True, help="Where the e-mails, Slack payloads and the demo database go.")
    @click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="Items to replay (JSONL or .xz in the stream's shape); default: the bundled excerpt.")
    @pass_ctx
    def demo(ctx: CliContext, out_dir: Path, data: Path | None) -> None:
        """Offline tour: replay 9 days of real headlines through the whole pipeline in about a minute."""
        import asyncio
        import logging
        from collections import Counter

        from monitor.lab.demo import BUNDLED, run_demo

        topics = ctx.config.enabled_topics
        if not topics:
            raise click.ClickException(f"{ctx.config_file} defines no [[topics]]; the demo uses the config's topics")
        logging.getLogger().setLevel(logging.WARNING)  # the summary below is the demo's output
        # The demo keeps its own signing key beside its e-mails; that is expected here, not a warning.
        logging.getLogger("monitor.delivery.unsubscribe").setLevel(logging.ERROR)
        click.echo(f"monitor demo: replaying {data or BUNDLED.name} with topics {', '.join(t.id for t in topics)}")
        s = asyncio.run(run_demo(topics, out_dir, data or BUNDLED, progress=click.echo))
        click.echo("")
        span = (f"published {s.first_item:%Y-%m-%d} .. {s.last_item:%Y-%m-%d}, digests until "
                f"{s.replayed_until:%Y-%m-%d %H:%M} UTC" if s.first_item and s.last_item and s.replayed_until else "no items")
        click.echo(f"Replayed {s.items} real headlines ({span}) in {s.seconds:.0f} s.")
        click.echo("Per topic: matched items -> stories -> alerts (new stories + updates) and repeats not alerted:")
        for topic in [t.id for t in topics]:  # every topic, those with nothing to report too
            c = s.topics.get(topic, Counter())
            total = sum(c.values())
            click.echo(f"  {topic:<18} {total:>4} matched   {c['new_story']:>3} new stories   "
                       f"{c['update']:>3} updates   {c['repeat']:>4} repeats (no alert)")
        click.echo("")
        click.echo("Alerts by day (what a subscriber was told, and why):")
        for day, lines in sorted(s.alerts_by_day.items()):
            click.echo(f"  {day}")
            for line in lines[:12]:
                click.echo(f"    {line}")
            if len(lines) > 12:
                click.echo(f"    ... and {len(lines) - 12} more")
        click.echo("")
        click.echo(f"Sent: {len(s.emails)} daily e-mail digests to analyst@example.org and {s.slack_messages} Slack "
                   "messages to #newsroom (hourly).")
        click.echo(f"  e-mail (.eml + .html): {out_dir / 'email'}")
        click.echo(f"  Slack payloads:        {out_dir / 'slack'}")
        if s.config_file is not None:
            cfg = s.config_file
            example = topics[0].id
            click.echo("")
            click.echo("Explore what the demo stored (its database, its embedding backend and its topics):")
            click.echo(f"  monitor --config {cfg} stories list {example} --since 3d")
            click.echo(f"  monitor --config {cfg} backtest {example} --since 7d")
            click.echo(f"  monitor --config {cfg} topics test \"Qatar says the truce is extended by two days\"")
            click.echo("  (--since windows count back from the newest stored item, so they work on replayed news.)")
            click.echo(f"  monitor --config {cfg} run     # serves the pages the demo's e-mails link to, on :8080")
