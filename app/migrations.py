"""Alembic from code: upgrade to head, and refuse to serve a database that is behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from app.db import Database, asyncpg_url

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.set_main_option("sqlalchemy.url", asyncpg_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("postgresql://x@localhost/x"))
    head = script.get_current_head()
    assert head is not None
    return head


async def upgrade(url: str) -> None:
    """``tanhui migrate``: upgrade the database to head."""
    cfg = alembic_config(url)
    await asyncio.to_thread(command.upgrade, cfg, "head")


class DatabaseBehind(RuntimeError):
    pass


async def check_current(db: Database) -> None:
    """Raise :class:`DatabaseBehind` unless the database is at the head revision."""
    head = head_revision()
    async with db.session() as s:
        exists = (await s.execute(text("SELECT to_regclass('alembic_version')"))).scalar()
        current = (
            (await s.execute(text("SELECT version_num FROM alembic_version"))).scalar()
            if exists else None
        )
    if current != head:
        raise DatabaseBehind(
            f"the database is at revision {current or 'none'} but the code needs {head}: "
            "run `tanhui migrate` first"
        )
