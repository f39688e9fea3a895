"""CLI command: `monitor status`: the processes sharing the work (heartbeats, leases) and the queue depths."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime

import click
from sqlalchemy.orm import Session

from monitor.storage import db, workers


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _json(status: workers.ClusterStatus) -> str:
    def default(o: object) -> object:
        if isinstance(o, datetime):
            return o.isoformat()
        raise TypeError(type(o).__name__)

    d = asdict(status)
    d["live_workers"] = len(status.live_workers)
    return json.dumps(d, default=default, indent=2)


def render_text(status: workers.ClusterStatus) -> list[str]:
    """The table `monitor status` prints (one string per line)."""
    q = status.queues
    lines = [f"workers: {len(status.live_workers)} live"
             + (f", {len(status.workers) - len(status.live_workers)} presumed dead (not reaped yet)"
                if len(status.workers) > len(status.live_workers) else "")]
    if status.workers:
        lines.append(f"  {'worker':<32} {'roles':<22} {'heartbeat':<12} {'state':<6} "
                     f"{'leases: feeds':>13} {'items':>6} {'sends':>6}   done: feeds/items/deliveries")
        for w in status.workers:
            done = "/".join(str(w.stats.get(k, 0)) for k in ("feeds", "items", "deliveries"))
            lines.append(f"  {w.id[:32]:<32} {','.join(w.roles)[:22]:<22} {_ago(w.heartbeat_age_s):<12} "
                         f"{'live' if w.alive else 'DEAD':<6} {w.leases.feeds:>13} {w.leases.items:>6} "
                         f"{w.leases.deliveries:>6}   {done}")
    else:
        lines.append("  (none: start `monitor run`)")
    u = status.unowned
    if u.feeds or u.items or u.deliveries:
        lines.append(f"  leases held by no registered worker: {u.feeds} feeds, {u.items} items, {u.deliveries} sends "
                     "(they lapse by themselves)")
    lines += [
        "queues:",
        f"  feeds due now:        {q.due_feeds:>7}   (being fetched: {q.leased_feeds})",
        f"  items not processed:  {q.unprocessed_items:>7}   (being encoded: {q.claimed_items})",
        f"  deliveries pending:   {q.pending_deliveries:>7}   (due now: {q.due_deliveries}, being sent: "
        f"{q.sending_deliveries}, failed: {q.failed_deliveries})",
    ]
    return lines


def register(main: click.Group, eval_group: click.Group) -> None:
    from monitor.cli import CliContext, pass_ctx

    @main.command(name="status")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @pass_ctx
    def status(ctx: CliContext, as_json: bool) -> None:
        """Live workers (heartbeats, the leases they hold) and queue depths: due feeds, unprocessed items,
        pending deliveries."""
        engine = ctx.engine()
        try:
            with Session(engine) as s:
                snapshot = workers.cluster_status(s, db.utcnow())
        finally:
            engine.dispose()
        if as_json:
            click.echo(_json(snapshot))
            return
        for line in render_text(snapshot):
            click.echo(line)
