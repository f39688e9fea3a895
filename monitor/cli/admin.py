"""CLI commands: `config check` and `db upgrade`."""

from __future__ import annotations

import click
from sqlalchemy.engine import make_url

from monitor.signal import match
from monitor.storage import db


def register(main: click.Group, eval_group: click.Group) -> None:
    from monitor.cli import CliContext, pass_ctx

    @main.group(name="config")
    def config_group() -> None:
        """Inspect the configuration."""

    @config_group.command(name="check")
    @pass_ctx
    def config_check(ctx: CliContext) -> None:
        """Validate the configuration file and print a summary, then any warnings: what is valid but probably
        unintended (an example without its topic's keywords). Warnings do not fail the check."""
        c = ctx.config
        s = c.settings
        warnings = [w for t in c.topics for w in match.example_warnings(t)]
        click.echo(f"{ctx.config_file}: OK" + (f" ({len(warnings)} warning{'s' * (len(warnings) != 1)})"
                                               if warnings else ""))
        click.echo(f"  database:    {make_url(s.database_url).render_as_string(hide_password=True)}")
        enabled = sum(f.enabled for f in c.feeds)
        click.echo(f"  feeds:       {len(c.feeds)} ({enabled} enabled)")
        click.echo(f"  topics:      {len(c.topics)} ({', '.join(t.id for t in c.topics) or 'none'})")
        click.echo(f"  subscribers: {len(c.subscribers)}")
        click.echo(f"  channels:    {len(c.channels)}")
        click.echo(f"  mail:        {'SMTP ' + s.smtp.host if s.smtp else 'files in ' + s.outbox_dir}")
        click.echo(f"  model:       {s.embedding_model} ({s.embedding_backend})")
        for w in warnings:
            click.echo(f"warning: {w}")

    @main.group(name="db")
    def db_group() -> None:
        """Database maintenance."""

    @db_group.command(name="upgrade")
    @pass_ctx
    def db_upgrade(ctx: CliContext) -> None:
        """Create or migrate the database schema to the newest version."""
        engine = db.make_engine(ctx.config.settings.database_url)
        db.upgrade(engine)
        click.echo(f"database at {engine.url.render_as_string(hide_password=True)} is up to date")
