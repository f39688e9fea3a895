"""CLI commands: `digest preview|status|enable`, `deliveries list|retry`, `deliver --once`,
`subscribers resubscribe`. Changes an operator makes here are recorded in the audit log (who, when)."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from pathlib import Path

import click
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from monitor.delivery import digest, outbox, render, unsubscribe
from monitor.errors import MonitorError
from monitor.storage import db
from monitor.storage.tables import AuditEntry, Delivery, Subscription, Suppression


def _operator(by: str | None) -> str:
    """Who is acting, for the audit log: --by, else the login name."""
    if by:
        return by[:128]
    try:
        return f"cli:{getpass.getuser()}"[:128]
    except Exception:  # no login name (a container without a passwd entry)
        return "cli"


def _audit(session: Session, actor: str, action: str, target: str, detail: str = "") -> None:
    session.add(AuditEntry(at=db.naive_utc(db.utcnow()), actor=actor, action=action, target=target[:2048],
                           diff=detail))


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
            url = unsubscribe.unsubscribe_url(config.settings.base_url, key, sub_id, now)
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
    @click.option("--by", metavar="NAME", help="Who asks, for the audit log (default: cli:<login name>).")
    @pass_ctx
    def digest_enable(ctx: CliContext, channel: str, by: str | None) -> None:
        """Re-enable a channel that was disabled (HTTP 410, channel_not_found...) once its URL is fixed."""
        spec = digest.find_spec(ctx.config, channel=channel)
        with db.write_transaction(ctx.engine()) as s:
            row = s.scalar(select(Subscription).where(Subscription.kind == spec.kind, Subscription.target == spec.target))
            if row is None or row.disabled_at is None:
                click.echo(f"channel {channel} is not disabled")
                return
            reason = row.disabled_reason
            # What was held back when the channel went away goes out again (same webhook-ids).
            requeued = outbox.reenable(s, row, db.utcnow())
            _audit(s, _operator(by), "subscription.re-enabled", f"{spec.kind} {spec.target}",
                   f"was disabled: {reason}; {requeued} deliveries queued again")
        click.echo(f"channel {channel} enabled again (it was disabled: {reason}); {requeued} held-back "
                   "deliveries queued again; later alerts follow with its next digest")

    @main.group(name="deliveries")
    def deliveries_group() -> None:
        """The outbox: deliveries and their attempts."""

    @deliveries_group.command(name="list")
    @click.option("--failed", is_flag=True, help="Only deliveries that failed for good (or were cancelled).")
    @click.option("--limit", default=50, show_default=True, help="Newest N deliveries.")
    @click.option("--all", "show_all", is_flag=True, help="Every delivery (no limit).")
    @pass_ctx
    def deliveries_list(ctx: CliContext, failed: bool, limit: int, show_all: bool) -> None:
        """List deliveries, newest first, with attempts and the last error."""
        with Session(ctx.engine()) as s:
            total = outbox.count_deliveries(s, failed_only=failed)
            rows = outbox.list_deliveries(s, failed_only=failed, limit=None if show_all else limit)
        if not rows:
            click.echo("no failed deliveries" if failed else "no deliveries")
            return
        if len(rows) < total:
            click.echo(f"showing the newest {len(rows)} of {total} {'failed or cancelled ' if failed else ''}"
                       "deliveries; use --limit N or --all for more")
        click.echo(f"{'ID':>6}  {'STATUS':<9} {'CHANNEL':<7} {'TARGET':<32} {'PART':>4} {'TRIES':>5}  LAST ATTEMPT / ERROR")
        for d, attempts in rows:
            last = attempts[-1] if attempts else None
            when = last.at.strftime("%Y-%m-%d %H:%M:%S") if last else "-"
            code = f" [{last.code}]" if last and last.code else ""
            click.echo(f"{d.id:>6}  {d.status:<9} {d.channel:<7} {d.target[:32]:<32} {d.part:>4} {d.attempts:>5}  {when}{code}")
            if d.last_error:
                click.echo(f"{'':>8}error: {d.last_error}")
        if len(rows) < total:
            click.echo(f"(showing {len(rows)} of {total}; use --limit N or --all)")

    @deliveries_group.command(name="retry")
    @click.argument("delivery_ids", nargs=-1, type=int, metavar="[ID]...")
    @click.option("--failed", "all_failed", is_flag=True, help="Every delivery that failed for good.")
    @click.option("--by", metavar="NAME", help="Who asks, for the audit log (default: cli:<login name>).")
    @pass_ctx
    def deliveries_retry(ctx: CliContext, delivery_ids: tuple[int, ...], all_failed: bool, by: str | None) -> None:
        """Send failed deliveries again (same Message-ID / webhook-id), at the next outbox pass of
        `monitor run` or `monitor deliver --once`, with a fresh retry span."""
        if bool(delivery_ids) == all_failed:
            raise click.UsageError("give delivery ids (see `monitor deliveries list --failed`) or --failed")
        with db.write_transaction(ctx.engine()) as s:
            wanted = list(delivery_ids) if delivery_ids else None
            queued = outbox.requeue(s, db.utcnow(), delivery_ids=wanted)
            others = {} if wanted is None else dict(s.execute(
                select(Delivery.id, Delivery.status).where(Delivery.id.in_(wanted), Delivery.id.not_in(queued))).all())
            blocked = s.scalar(select(func.count()).select_from(Delivery).join(Subscription).where(
                Delivery.id.in_(queued), or_(Subscription.unsubscribed_at.is_not(None),
                                             Subscription.disabled_at.is_not(None))))
            if queued:
                _audit(s, _operator(by), "delivery.retry", ", ".join(f"delivery {i}" for i in sorted(queued)))
        click.echo(f"{len(queued)} deliver{'y' if len(queued) == 1 else 'ies'} queued again"
                   + (f": {', '.join(map(str, sorted(queued)))}" if queued and len(queued) <= 20 else ""))
        for i in delivery_ids:
            if i in others:
                click.echo(f"delivery {i} is {others[i]}, not failed: left as it is")
            elif i not in queued:
                click.echo(f"no delivery {i}")
        if blocked:
            click.echo(f"note: {blocked} of them belong to an unsubscribed or disabled subscription and will be "
                       "cancelled, not sent (`monitor subscribers resubscribe EMAIL`, `monitor digest enable CHANNEL`)")
        if delivery_ids and not queued:
            raise MonitorError("nothing to retry")

    subscribers_group = main.commands.get("subscribers")
    if not isinstance(subscribers_group, click.Group):
        @main.group(name="subscribers")
        def subscribers_group() -> None:
            """Subscribers."""

    @subscribers_group.command(name="resubscribe")
    @click.argument("email")
    @click.option("--by", metavar="NAME", help="Who asks, for the audit log (default: cli:<login name>).")
    @pass_ctx
    def subscribers_resubscribe(ctx: CliContext, email: str, by: str | None) -> None:
        """Subscribe EMAIL again after it unsubscribed (from now on: what was alerted meanwhile is not
        sent). Recorded with who and when."""
        from monitor.app.subscriber import prefs

        address = email.strip().lower()
        now = db.utcnow()
        with db.write_transaction(ctx.engine()) as s:
            row = s.scalar(select(Subscription).where(Subscription.kind == "email",
                                                      func.lower(Subscription.target) == address))
            if row is None:
                raise MonitorError(f"no subscription for {email}; subscribers come from [[subscribers]] in "
                                   f"{ctx.config_file} (or the sign-up page)")
            if row.unsubscribed_at is None:
                click.echo(f"{row.target} is subscribed (nothing to do)")
                return
            left = db.aware_utc(row.unsubscribed_at)
            prefs.resubscribe(s, row.id, now)  # as the subscriber's own page does it (a subscriber event)
            _audit(s, _operator(by), "subscription.resubscribed", f"email {row.target}",
                   f"unsubscribed since {left:%Y-%m-%d %H:%M}Z")
            suppressed = s.get(Suppression, row.target) is not None
        click.echo(f"{row.target} subscribed again (had unsubscribed {left:%Y-%m-%d %H:%M} UTC); digests resume "
                   "with the alerts from now on")
        if suppressed:
            click.echo(f"note: {row.target} is also suppressed after a bounce or complaint: nothing is sent to it "
                       f"until `monitor subscribers unsuppress {row.target}`")

    @main.command(name="deliver")
    @click.option("--once", is_flag=True, required=True, help="Build due digests, drain the outbox once, exit.")
    @click.option("--limit", default=200, show_default=True, help="Most deliveries to attempt.")
    @click.option("--no-build", is_flag=True, help="Only send what is already in the outbox.")
    @pass_ctx
    def deliver_once(ctx: CliContext, once: bool, limit: int, no_build: bool) -> None:
        """Build the digests that are due, then send due deliveries once (retries included)."""
        config = ctx.config
        engine = ctx.engine()
        now = db.utcnow()
        built = [] if no_build else digest.build_due_digests(engine, config, now)
        report = asyncio.run(outbox.deliver_due(engine, config, now, worker_id=f"cli-{os.getpid()}", limit=limit))
        click.echo(f"digests built: {len(built)}; deliveries sent: {report.sent}, retrying: {report.retried}, "
                   f"failed: {report.failed}, cancelled: {report.cancelled}")
