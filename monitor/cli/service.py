"""CLI commands: `run` (the service) and `demo` (the offline tour)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

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
    @click.option("--clock-start", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]),
                  default=None, help="Run on a simulated clock starting at this UTC time (demos, tests).")
    @click.option("--clock-speed", type=float, default=1.0, show_default=True,
                  help="Simulated seconds per real second (with --clock-start).")
    @pass_ctx
    def run(ctx: CliContext, host: str | None, port: int | None, tick_s: float, no_migrate: bool,
            clock_start: datetime | None, clock_speed: float) -> None:
        """Run the service: poll feeds, match, build and deliver digests, serve /healthz, /metrics."""
        from monitor.service import ServiceOptions, run_service

        ctx.config  # noqa: B018 - validate before anything starts; errors exit 2 with the message
        options = ServiceOptions(config_path=ctx.config_file, host=host, port=port, tick_s=tick_s,
                                 migrate=not no_migrate)
        sys.exit(run_service(options, _clock(clock_start, clock_speed)))
