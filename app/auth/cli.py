"""``tanhui admin``: manage admin users from the command line."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True)
out = Console()


@app.command("create")
def create(
    username: Annotated[str, typer.Option(help="login name (a-z, 0-9, . _ -)")],
    role: Annotated[list[str], typer.Option(help="a role; repeat for several")],
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True,
                          help="at least 12 characters (prompted when omitted)")
    ],
    district: Annotated[
        str | None, typer.Option(help="6-digit district code, for district_bureau")
    ] = None,
    acts_for: Annotated[
        str | None, typer.Option(help="id of the body the user acts for (the VVB of a vvb)")
    ] = None,
) -> None:
    """Create an admin user with TOTP enrolled at once; prints the otpauth:// URI."""
    from app.auth.admins import create_admin_user
    from app.cli import run_with_runtime
    from app.errors import DomainError

    async def go(runtime):  # type: ignore[no-untyped-def]
        async with runtime.db.transaction() as session:
            return await create_admin_user(
                session, username=username, password=password, roles=role,
                district_code=district, actor="cli", enrol_totp=True,
                acts_for=UUID(acts_for) if acts_for else None,
            )

    try:
        user, enrolment = run_with_runtime(go)
    except DomainError as exc:
        out.print(f"[red]refused:[/red] {exc.code}: {exc.detail or ''}")
        raise typer.Exit(1) from exc
    assert enrolment is not None
    out.print(f"created admin user [bold]{user.username}[/bold] ({', '.join(user.roles)})")
    out.print("Add this to an authenticator app (shown once):")
    out.print(enrolment.otpauth_uri, soft_wrap=True, markup=False)
    out.print(f"secret: {enrolment.secret}", markup=False)


@app.command("list")
def list_users() -> None:
    """List admin users."""
    from app.auth.admins import list_admin_users
    from app.cli import run_with_runtime

    async def go(runtime):  # type: ignore[no-untyped-def]
        async with runtime.db.session() as session:
            return await list_admin_users(session)

    for u in run_with_runtime(go):
        state = "active" if u.is_active else "suspended"
        totp = "totp" if u.totp_enrolled else "no-totp"
        district = f" district={u.district_code}" if u.district_code else ""
        out.print(f"{u.username}\t{','.join(u.roles)}\t{state}\t{totp}{district}", markup=False)
