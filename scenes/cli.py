"""``tanhui scenes list|rules``: the scenes and the published rules, as the public sees them;
``tanhui scenes trim-link-changes``: the link cache's change log, trimmed by hand (``serve``
also trims it every hour)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from app.runtime import Runtime
from scenes.schemas import ConversionRuleOut, PublicScene, ReductionRuleOut

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("list")
def list_scenes() -> None:
    """Every scene with its category, partner, status and behaviours."""
    from app.cli import run_with_runtime
    from scenes import service

    async def go(runtime: Runtime) -> list[PublicScene]:
        async with runtime.db.transaction() as session:
            return await service.public_scenes(session)

    table = Table("code", "name", "category", "partner", "status", "behaviours")
    for s in run_with_runtime(go):
        table.add_row(s.code, s.name_zh, s.category.code, s.partner_name, s.status,
                      ", ".join(b.code for b in s.behaviours))
    console.print(table)


@app.command()
def rules(
    scene: str | None = typer.Option(None, help="only this scene code"),
    in_force: bool = typer.Option(False, "--in-force", help="only versions in force now"),
) -> None:
    """Published reduction rules (with history) and conversion rules."""
    from app.cli import run_with_runtime
    from scenes import rules as rule_service
    from scenes import service

    async def go(runtime: Runtime) -> tuple[list[ReductionRuleOut], list[ConversionRuleOut]]:
        async with runtime.db.transaction() as session:
            scene_id = await service.scene_id_by_code(session, scene) if scene else None
            reduction = await rule_service.list_reduction_rules(
                session, scene_id=scene_id, published_only=True)
            conversion = await rule_service.list_conversion_rules(session, published_only=True)
        return reduction, conversion

    reduction, conversion = run_with_runtime(go)
    table = Table("scene", "behaviour", "v", "g CO2e / unit", "unit", "caps event/day/year",
                  "from", "to", "in force")
    for r in reduction:
        if in_force and not r.in_force:
            continue
        caps = "/".join(str(c) if c is not None else "-" for c in (
            r.cap_grams_per_event, r.cap_grams_per_day, r.cap_grams_per_year))
        table.add_row(r.scene_code, r.behaviour, str(r.version), r.grams_per_unit, r.unit, caps,
                      r.valid_from.isoformat(), r.valid_to.isoformat() if r.valid_to else "-",
                      "yes" if r.in_force else "")
    console.print(table)
    conv = Table("v", "g CO2e / point", "from", "to", "in force")
    for c in conversion:
        if in_force and not c.in_force:
            continue
        conv.add_row(str(c.version), str(c.grams_per_point), c.valid_from.isoformat(),
                     c.valid_to.isoformat() if c.valid_to else "-",
                     "yes" if c.in_force else "")
    console.print(conv)


@app.command("trim-link-changes")
def trim_link_changes(
    keep_hours: int = typer.Option(24, min=1, help="keep the changes of the last N hours"),
) -> None:
    """Delete the logged link and consent changes older than ``--keep-hours``."""
    from datetime import timedelta

    from app.cli import run_with_runtime
    from scenes import service

    async def go(runtime: Runtime) -> int:
        async with runtime.db.transaction() as session:
            return await service.trim_link_changes(session, keep=timedelta(hours=keep_hours))

    console.print(f"deleted {run_with_runtime(go)} link change(s)")
