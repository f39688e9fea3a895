"""CLI commands: `digest preview`, `deliveries list`, `deliver --once`."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import click
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from monitor.delivery import digest, render, unsubscribe
from monitor.storage import db
from monitor.storage.tables import Delivery, Subscription


def register(main: click.Group, eval_group: click.Group) -> None:
    from monitor.cli import CliContext, pass_ctx

    @main.group(name="digest")
    def digest_group() -> None:
        """Digests: what subscribers and channels receive."""

    @digest_group.command(name="preview")
    @click.option("--subscriber", metavar="EMAIL", help="Preview the digest of this e-mail subscriber.")
    @click.option("--channel", metavar="NAME", help="Preview the digest of this Slack/webhook channel.")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
                  help="Write the rendered files here (.eml/.html/.txt or .json) instead of printing.")
    @pass_ctx
    def digest_preview(ctx: CliContext, subscriber: str | None, channel: str | None, out_dir: Path | None) -> None:
        """Render what would be sent now (the alerts since the last digest) without sending or recording."""
        if (subscriber is None) == (channel is None):
            raise click.UsageError("give exactly one of --subscriber EMAIL or --channel NAME")
        config = ctx.config
        spec = digest.find_spec(config, subscriber=subscriber, channel=channel)
        engine = ctx.engine()
        now = db.utcnow()
        with Session(engine) as s:
            content = digest.preview(s, config, spec, now)
        if content is None:
            click.echo(f"nothing new for {spec.kind} {spec.target}: no digest would be sent now")
            return
        renderer = render.Renderer()
        files: dict[str, bytes] = {}
        if spec.kind == "email":
            key = unsubscribe.signing_key(config.settings)
            with Session(engine) as s:
                sub_id = s.scalar(select(Subscription.id).where(Subscription.kind == "email",
                                                                Subscription.target == spec.target)) or 0
            url = unsubscribe.unsubscribe_url(config.settings.base_url, key, sub_id, spec.target, now)
            mail = renderer.email(content, mail_from=config.settings.mail_from, now=now, cadence=spec.cadence,
                                  message_id=f"<preview@{render.message_id_domain(config.settings.mail_from)}>",
                                  unsubscribe_url=url)
            parts = renderer.email_parts(content, cadence=spec.cadence, unsubscribe_url=url)
            files = {"digest.eml": mail.message, "digest.html": parts.html.encode(), "digest.txt": parts.text.encode()}
            shown = f"Subject: {parts.subject}\n\n{parts.text}"
        elif spec.kind == "slack":
            messages = renderer.slack_messages(content)
            for i, m in enumerate(messages, 1):
                files[f"slack-part{i}.json"] = json.dumps(m, indent=2, ensure_ascii=False).encode()
            shown = "\n".join(json.dumps(m, indent=2, ensure_ascii=False) for m in messages)
        else:
            body = renderer.webhook_payload(content, digest_id=0, now=now, cadence=spec.cadence)
            files["webhook.json"] = json.dumps(body, indent=2, ensure_ascii=False).encode()
            shown = files["webhook.json"].decode()
        click.echo(f"{content.alert_count} alert(s), {content.story_count} stor(ies) since alert "
                   f"#{content.first_alert_id - 1 if content.first_alert_id else 0} for {spec.kind} {spec.target}",
                   err=out_dir is None)
        if out_dir is None:
            click.echo(shown)
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out_dir / name).write_bytes(data)
            click.echo(f"wrote {out_dir / name}")

    @digest_group.command(name="status")
    @pass_ctx
    def digest_status(ctx: CliContext) -> None:
        """Each subscription: cadence, cursor, next digest, and whether it is unsubscribed or disabled."""
        config = ctx.config
        engine = ctx.engine()
        with db.write_transaction(engine) as s:
            digest.sync_subscriptions(s, config, db.utcnow())
        with Session(engine) as s:
            rows = {(r.kind, r.target): r for r in s.scalars(select(Subscription))}
        click.echo(f"{'KIND':<7} {'TARGET':<32} {'SCHEDULE':<28} {'CURSOR':>6}  {'NEXT DIGEST (UTC)':<17}  STATE")
        for spec in digest.subscription_specs(config):
            r = rows[(spec.kind, spec.target)]
            state = ("unsubscribed " + r.unsubscribed_at.strftime("%Y-%m-%d") if r.unsubscribed_at
                     else f"disabled: {r.disabled_reason}" if r.disabled_at else "active")
            nxt = r.next_digest_at.strftime("%Y-%m-%d %H:%M") if r.next_digest_at else "on new alerts"
            click.echo(f"{spec.kind:<7} {spec.target[:32]:<32} {spec.schedule[:28]:<28} {r.cursor_alert_id:>6}  {nxt:<17}  {state}")

    @digest_group.command(name="enable")
    @click.argument("channel")
    @pass_ctx
    def digest_enable(ctx: CliContext, channel: str) -> None:
        """Re-enable a channel that was disabled (HTTP 410, channel_not_found...) once its URL is fixed."""
        spec = digest.find_spec(ctx.config, channel=channel)
        with db.write_transaction(ctx.engine()) as s:
            row = s.scalar(select(Subscription).where(Subscription.kind == spec.kind, Subscription.target == spec.target))
            if row is None or row.disabled_at is None:
                click.echo(f"channel {channel} is not disabled")
                return
            reason = row.disabled_reason
            row.disabled_at, row.disabled_reason = None, None
            # What was held back when the channel went away goes out again (same webhook-ids).
            requeued = s.execute(
                update(Delivery)
                .where(Delivery.subscription_id == row.id, Delivery.status.in_(("failed", "cancelled")),
                       or_(Delivery.last_error == reason, Delivery.last_error == f"channel disabled: {reason}"))
                .values(status="pending", next_attempt_at=db.naive_utc(db.utcnow()), last_error=None)
            ).rowcount
        click.echo(f"channel {channel} enabled again (it was disabled: {reason}); {requeued} held-back "
                   "deliveries queued again; later alerts follow with its next digest")

    @main.group(name="deliveries")
    def deliveries_group() -> None:
        """The outbox: deliveries and their attempts."""

    @deliveries_group.command(name="list")
    @click.option("--failed", is_flag=True, help="Only deliveries that failed for good (or were cancelled).")
    @click.option("--limit", default=50, show_default=True, help="Newest N deliveries.")
    @pass_ctx
    def deliveries_list(ctx: CliContext, failed: bool, limit: int) -> None:
        """List deliveries, newest first, with attempts and the last error."""
        from monitor.delivery import outbox

        with Session(ctx.engine()) as s:
            rows = outbox.list_deliveries(s, failed_only=failed, limit=limit)
        if not rows:
            click.echo("no failed deliveries" if failed else "no deliveries")
            return
        click.echo(f"{'ID':>6}  {'STATUS':<9} {'CHANNEL':<7} {'TARGET':<32} {'PART':>4} {'TRIES':>5}  LAST ATTEMPT / ERROR")
        for d, attempts in rows:
            last = attempts[-1] if attempts else None
            when = last.at.strftime("%Y-%m-%d %H:%M:%S") if last else "-"
            code = f" [{last.code}]" if last and last.code else ""
            click.echo(f"{d.id:>6}  {d.status:<9} {d.channel:<7} {d.target[:32]:<32} {d.part:>4} {d.attempts:>5}  {when}{code}")
            if d.last_error:
                click.echo(f"{'':>8}error: {d.last_error}")

    @main.command(name="deliver")
    @click.option("--once", is_flag=True, required=True, help="Build due digests, drain the outbox once, exit.")
    @click.option("--limit", default=200, show_default=True, help="Most deliveries to attempt.")
    @click.option("--no-build", is_flag=True, help="Only send what is already in the outbox.")
    @pass_ctx
    def deliver_once(ctx: CliContext, once: bool, limit: int, no_build: bool) -> None:
        """Build the digests that are due, then send due deliveries once (retries included)."""
        from monitor.delivery import outbox

        config = ctx.config
        engine = ctx.engine()
        now = db.utcnow()
        built = [] if no_build else digest.build_due_digests(engine, config, now)
        report = asyncio.run(outbox.deliver_due(engine, config, now, worker_id=f"cli-{os.getpid()}", limit=limit))
        click.echo(f"digests built: {len(built)}; deliveries sent: {report.sent}, retrying: {report.retried}, "
                   f"failed: {report.failed}, cancelled: {report.cancelled}")
