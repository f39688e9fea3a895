"""CLI commands for subscribers (issue 14): `topics suggest` (reader feedback -> proposed topic changes, with
their backtest effect, applied on request), `subscribers list`, `subscribers feed-urls`, `subscribers bounce`
and `subscribers unsuppress`."""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from monitor.app.subscriber import signup, suggest
from monitor.delivery import digest, links, unsubscribe
from monitor.storage.db import aware_utc, write_transaction
from monitor.storage.tables import SubscriberPrefs, Subscription, Suppression


def register(main: click.Group, eval_group: click.Group) -> None:
    from monitor.cli import CliContext, pass_ctx

    topics_group = main.commands.get("topics")
    if not isinstance(topics_group, click.Group):
        @main.group(name="topics")
        def topics_group() -> None:
            """Try topics against headlines."""

    @topics_group.command(name="suggest")  # type: ignore[union-attr]
    @click.argument("topic_id")
    @click.option("--apply", "apply_id", type=int, default=None, help="Apply suggestion #ID to the topic (audited).")
    @click.option("--days", default=suggest.DAYS, show_default=True, help="Backtest window in days.")
    @click.option("--actor", default=None, help="Who applies it, for the audit log (default: your user name).")
    @click.option("--no-backtest", is_flag=True, help="List the suggestions without their effect (no model load).")
    @pass_ctx
    def topics_suggest(ctx: CliContext, topic_id: str, apply_id: int | None, days: int, actor: str | None,
                       no_backtest: bool) -> None:
        """Counterexamples and examples proposed by readers' feedback on TOPIC, each with its backtest effect
        over the last DAYS days (items and alerts gained / lost); --apply ID adds one to the topic."""
        config = ctx.config
        topic = config.topic(topic_id)
        engine = ctx.engine()
        now = datetime.now(UTC)
        if apply_id is not None:
            who = actor or f"cli:{getpass.getuser()}"
            diff = suggest.apply(engine, ctx.config_file, config, topic_id, apply_id, actor=who, now=now)
            click.echo(f"applied suggestion #{apply_id} to topic {topic_id} ({ctx.config_file}), audited as {who}:")
            click.echo("  " + diff.replace("\n", "\n  "))
            return
        with Session(engine) as s:
            found = suggest.suggestions(s, config, topic_id)
        if not found:
            click.echo(f"topic {topic_id}: no open suggestions from reader feedback")
            return
        if not no_backtest:
            from monitor.app.admin.backtest import Backtester
            from monitor.signal import embed

            backtester = Backtester(engine, embed.load_embedder(config.settings), config.settings)
            found = suggest.with_effects(found, topic, backtester, now, days)
        click.echo(f"topic {topic_id} ({topic.name}): {len(found)} suggestion(s) from reader feedback")
        for sg in found:
            click.echo(f"#{sg.id}  {sg.action}: {sg.text!r}  ({sg.votes} reader{'s' if sg.votes != 1 else ''})")
            e = sg.effect
            if e is not None:
                click.echo(f"      last {e.days} days: items +{e.items_gained} / -{e.items_lost}, "
                           f"alerts +{e.alerts_gained} / -{e.alerts_lost}")
                for t in e.lost_titles:
                    click.echo(f"        would no longer match: {t}")
                for t in e.gained_titles:
                    click.echo(f"        would match: {t}")
        click.echo(f"apply one with: monitor topics suggest {topic_id} --apply ID")

    @main.group(name="subscribers")
    def subscribers_group() -> None:
        """Subscribers: state, alert feed addresses, bounces."""

    @subscribers_group.command(name="list")
    @pass_ctx
    def subscribers_list(ctx: CliContext) -> None:
        """Every e-mail subscription with its source, topics, cadence and state; suppressed addresses."""
        config = ctx.config
        engine = ctx.engine()
        with Session(engine) as s:
            specs = {sp.target: sp for sp in digest.effective_specs(s, config) if sp.kind == "email"}
            rows = s.scalars(select(Subscription).where(Subscription.kind == "email").order_by(Subscription.target)).all()
            prefs = {p.subscription_id: p for p in s.scalars(select(SubscriberPrefs))}
            supp = {x.address: x for x in s.scalars(select(Suppression))}
        for r in rows:
            sp = specs.get(r.target)
            p = prefs.get(r.id)
            state = ("suppressed (" + supp[r.target].reason + ")" if r.target in supp
                     else "unsubscribed" if r.unsubscribed_at else
                     "unconfirmed" if p is not None and p.source == "signup" and p.confirmed_at is None
                     else f"paused until {sp.paused_until:%Y-%m-%d %H:%M}Z" if sp and sp.paused_until
                     else "active" if sp else "not in feeds.toml")
            what = f"{sp.schedule} topics={','.join(sp.topics)}" if sp else ""
            click.echo(f"{r.target:<40} {(p.source if p else 'config'):<7} {state:<28} {what}")
        for a, x in sorted(supp.items()):
            click.echo(f"suppressed: {a} ({x.reason}, {aware_utc(x.created_at):%Y-%m-%d %H:%M}Z): {x.detail}")

    @subscribers_group.command(name="feed-urls")
    @pass_ctx
    def feed_urls(ctx: CliContext) -> None:
        """The Atom and JSON Feed address of each topic's alerts (secret while alert_feeds = "token")."""
        config = ctx.config
        s = config.settings
        key = unsubscribe.signing_key(s)
        base = s.base_url.rstrip("/")
        if s.alert_feeds == "off":
            click.echo("alert feeds are off (settings.alert_feeds)")
            return
        for t in config.topics:
            q = f"?token={links.feed_token(key, t.id)}" if s.alert_feeds == "token" else ""
            click.echo(f"{t.id}\n  atom: {base}/feeds/{t.id}.atom{q}\n  json: {base}/feeds/{t.id}.json{q}")

    @subscribers_group.command(name="bounce")
    @click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @pass_ctx
    def bounce(ctx: CliContext, files: tuple[Path, ...]) -> None:
        """Read delivery status notifications (bounces) or complaint reports from FILES (or stdin, e.g. piped
        by the MTA of settings.bounce_address) and suppress every permanently failed address."""
        engine = ctx.engine()
        raws = [f.read_bytes() for f in files] if files else [sys.stdin.buffer.read()]
        now = datetime.now(UTC)
        found = [f for raw in raws for f in signup.parse_dsn(raw)]
        if not found:
            click.echo("no permanent failure or complaint found")
            return
        with write_transaction(engine) as s:
            for f in found:
                new = signup.suppress(s, f.address, f.reason, f.detail, now)
                click.echo(f"{'suppressed' if new else 'already suppressed'}: {f.address} ({f.reason}: {f.detail})")

    @subscribers_group.command(name="unsuppress")
    @click.argument("address")
    @pass_ctx
    def unsuppress(ctx: CliContext, address: str) -> None:
        """Send to ADDRESS again (after its mailbox was fixed)."""
        with write_transaction(ctx.engine()) as s:
            n = s.execute(delete(Suppression).where(Suppression.address == address.strip().lower())).rowcount  # type: ignore[attr-defined]
        click.echo(f"{address}: {'no longer suppressed' if n else 'was not suppressed'}")
