"""CLI commands: `admin create-user` (accounts of the admin web pages)."""

from __future__ import annotations

import os
import sys

import click


def register(main: click.Group, eval_group: click.Group) -> None:
    from monitor.cli import CliContext, pass_ctx

    @main.group(name="admin")
    def admin_group() -> None:
        """Accounts of the admin web pages (/admin)."""

    @admin_group.command(name="create-user")
    @click.argument("username")
    @click.option("--password-env", default=None, metavar="VAR",
                  help="Read the password from this environment variable (default: prompt, or stdin when piped).")
    @click.option("--replace", is_flag=True, help="Set a new password for an existing user.")
    @pass_ctx
    def create_user(ctx: CliContext, username: str, password_env: str | None, replace: bool) -> None:
        """Create an admin account; only an argon2id hash of the password is stored in the database."""
        from monitor.app.admin.auth import create_user as store_user

        if password_env:
            password = os.environ.get(password_env, "")
            if not password:
                raise click.ClickException(f"the environment variable {password_env} is not set")
        elif sys.stdin.isatty():
            password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        else:
            password = sys.stdin.readline().rstrip("\n")
        store_user(ctx.engine(), username, password, replace=replace)
        click.echo(f"admin user {username!r} {'updated' if replace else 'created'}; log in at "
                   f"{ctx.config.settings.base_url.rstrip('/')}/admin/login")

    @admin_group.command(name="end-sessions")
    @click.argument("username")
    @pass_ctx
    def end_sessions(ctx: CliContext, username: str) -> None:
        """Log USERNAME out of every browser and host now (a lost laptop, a shared session)."""
        from monitor.app.admin.auth import end_sessions as end

        if not end(ctx.engine(), username):
            raise click.ClickException(f"no admin user {username!r}")
        click.echo(f"every session of admin user {username!r} has ended; they log in again with their password")
