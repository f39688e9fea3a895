"""CLI commands: stories."""

from __future__ import annotations

import click


def register(main: click.Group, eval_group: click.Group) -> None:
    pass
