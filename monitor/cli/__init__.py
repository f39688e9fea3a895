"""The `monitor` command line. Each stage's commands live in their own module here and register
themselves on the root group; this module only builds the context (config path, logging)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import click
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.config import CONFIG_ENV, Config, config_path, load_config
from monitor.errors import MonitorError
from monitor.logs import setup_logging
from monitor.storage import db
from monitor.storage.tables import Item


@dataclass
class CliContext:
    """What every command gets: where the config is, and the config itself once loaded."""

    config_file: Path
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_file)
        return self._config

    def engine(self) -> Engine:
        """The configured database, which must have its schema (a clear error says how to make it)."""
        engine = db.make_engine(self.config.settings.database_url)
        if not db.has_schema(engine):
            raise MonitorError(f"the database at {engine.url.render_as_string(hide_password=True)} has no schema "
                               "yet; run `monitor db upgrade` first")
        return engine


_DURATION = re.compile(r"^\s*(\d+)\s*([dhw])\s*$")


def parse_since(text: str) -> timedelta:
    """`30d`, `12h`, `2w` -> timedelta (the --since options)."""
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"{text!r}: use a number and a unit, e.g. 30d, 12h or 2w")
    n, unit = int(m.group(1)), m.group(2)
    return {"d": timedelta(days=n), "h": timedelta(hours=n), "w": timedelta(weeks=n)}[unit]


def analog_sources(files: tuple[Path, ...], topics_override: Path | None) -> list[tuple[Path, Path]]:
    """(labels file, the configuration holding its topics) for each `--analogs` file: the topics.toml beside it,
    or `--analog-topics` when exactly one file is given."""
    if topics_override is not None and len(files) != 1:
        raise click.UsageError("--analog-topics names the topics of one --analogs file" + (
            "; give --analogs too" if not files else "; with several, each file's topics are the topics.toml "
                                                     "beside it"))
    out = [(f, topics_override or f.parent / "topics.toml") for f in files]
    for f, topics_file in out:
        if not topics_file.is_file():
            raise MonitorError(f"{f}: no {topics_file.name} beside it; an analog labels file needs the "
                               "configuration of its topics next to it (or --analog-topics FILE)")
    return out


def check_analog_topics(labels_file: Path, topics_file: Path, labelled: set[str], compiled: set[str],
                        earlier: Mapping[str, Path], configured: set[str]) -> None:
    """An analog file's topics must be in its configuration, and neither in an earlier analog file (`earlier`:
    topic -> file; it would be fitted on twice) nor among the configured topics (measured where it is fitted)."""
    unknown = sorted(labelled - compiled)
    if unknown:
        raise MonitorError(f"{labels_file}: topics {', '.join(unknown)} are not in {topics_file}")
    twice = sorted(labelled & set(earlier))
    if twice:
        raise MonitorError(f"{labels_file}: topic {twice[0]} is labelled in {earlier[twice[0]]} too; give each "
                           "analog topic one --analogs file")
    measured = sorted(labelled & configured)
    if measured:
        raise MonitorError(f"{labels_file}: topics {', '.join(measured)} are configured topics, which are "
                           "measured; analog labels must be of other topics (rename the analog topic)")


def window_start(session: Session, window: timedelta) -> tuple[datetime, str]:
    """Where a `--since` window starts, and words for it: it counts back from the newest stored item (not
    from the wall clock), so the same command works on a live database and on a replayed one (the demo's);
    on a live database the newest item is minutes old, so the two agree."""
    newest = session.scalar(select(func.max(Item.published_at)))
    now = db.utcnow()
    if newest is None or db.aware_utc(newest) >= now - timedelta(hours=1):
        return now - window, "now"
    anchor = db.aware_utc(newest)
    return anchor - window, f"the newest stored item ({anchor:%Y-%m-%d %H:%M} UTC)"


pass_ctx = click.make_pass_decorator(CliContext)


class _Group(click.Group):
    """Turns MonitorError into one clear line and exit status 2 instead of a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except MonitorError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Configuration file (default: ${CONFIG_ENV} or ./feeds.toml).",
)
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
@click.option("--log-format", type=click.Choice(["auto", "json", "text"]), default="auto", show_default=True,
              help="auto = JSON when stderr is not a terminal.")
@click.version_option(package_name="monitor")
@click.pass_context
def main(ctx: click.Context, config_file: Path | None, log_level: str, log_format: str) -> None:
    """monitor: follow news topics, get one alert per new development."""
    setup_logging(log_level, log_format, stream=sys.stderr)
    ctx.obj = CliContext(config_path(config_file, os.environ))


@main.group(name="eval")
def eval_group() -> None:
    """Measure matching and story clustering on labelled data."""


def _register() -> None:
    # Imported here so each module can import `main`, `eval_group` and `pass_ctx` from this one.
    from monitor.cli import admin, delivery, feeds, service, status, stories, subscribers, topics, webadmin

    # delivery after subscribers: it adds `subscribers resubscribe` to the group subscribers defines.
    for module in (admin, feeds, topics, stories, service, status, webadmin, subscribers, delivery):
        module.register(main, eval_group)


_register()
