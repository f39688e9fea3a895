"""The README's command list names every command the CLI has (a new command must be documented)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from monitor.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out.extend(_commands(command, (*prefix, name)))
        else:
            out.append((*prefix, name))
    return out


def test_readme_lists_every_command() -> None:
    text = README.read_text()
    block = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in block.splitlines() if line.strip().startswith("monitor ")]
    missing = []
    for path in _commands(main):
        # `monitor feeds list | import F.opml | export` documents three commands of one group on one line.
        group, name = " ".join(path[:-1]), path[-1]
        if not any(re.search(rf"^monitor {re.escape(group + ' ' if group else '')}(?:.*\| )?{re.escape(name)}\b", line)
                   or (group and line.startswith(f"monitor {group} ") and re.search(rf"\| (?:{group} )?{re.escape(name)}\b", line))
                   for line in lines):
            missing.append(" ".join(path))
    assert missing == [], f"README.md 'Command line' does not list: {missing}"
