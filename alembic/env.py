"""Alembic environment: async engine, one linear history, every domain's tables."""

from __future__ import annotations

import asyncio
import importlib

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import Base

# Every package that declares tables.
for _module in (
    "app.auth.models", "app.audit", "app.idempotency", "app.calendar.models",
    "app.bus.pgqueue", "scenes.models", "points.models", "ingestion.models",
    "mall.models", "registry.models", "trading.models", "offsets.models",
):
    importlib.import_module(_module)

metadata = Base.metadata

config = context.config
target_metadata = metadata


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from app.db import asyncpg_url
        from app.settings import get_settings

        url = get_settings().database_url
        if not url:
            raise SystemExit("set TANHUI_DATABASE_URL or run `tanhui migrate`")
        url = asyncpg_url(url)
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_async_migrations())
