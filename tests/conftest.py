"""Test fixtures: a fresh database per run on the shared PostgreSQL, a Redis key prefix per
run, the real bus. Nothing here is mocked."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

RUN_ID = secrets.token_hex(4)
PG_ADMIN_URL = os.environ.get("TANHUI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_DB = f"tanhui_test_{RUN_ID}"
REDIS_URL = os.environ.get("TANHUI_TEST_REDIS", "redis://127.0.0.1:6379/0")

# Settings are read from the environment once: set them before the app is imported.
os.environ["TANHUI_DATABASE_URL"] = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + TEST_DB
os.environ["TANHUI_REDIS_URL"] = REDIS_URL
os.environ["TANHUI_REDIS_PREFIX"] = f"test:{RUN_ID}:"
os.environ["TANHUI_KAFKA_TOPIC_PREFIX"] = f"test{RUN_ID}."
os.environ["TANHUI_DATA_DIR"] = tempfile.mkdtemp(prefix=f"tanhui-{RUN_ID}-")
os.environ["TANHUI_ENV"] = "test"
os.environ["TANHUI_LOG_LEVEL"] = os.environ.get("TANHUI_LOG_LEVEL", "WARNING")
os.environ["TANHUI_RUN_WORKER"] = "0"
os.environ.pop("TANHUI_KAFKA_BOOTSTRAP", None)  # the default test bus is the PostgreSQL queue

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import pytest  # noqa: E402
from asgi_lifespan import LifespanManager  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from app.runtime import Runtime, open_runtime  # noqa: E402
from app.settings import get_settings  # noqa: E402

KAFKA_BOOTSTRAP = os.environ.get("TANHUI_TEST_KAFKA", "127.0.0.1:19092")


async def _admin_exec(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def runtime() -> AsyncIterator[Runtime]:
    """The run's own database (migrated to head), Redis prefix and bus."""
    from app.migrations import upgrade

    await _admin_exec(f'CREATE DATABASE "{TEST_DB}"')
    settings = get_settings()
    try:
        await upgrade(settings.database_url or "")
        rt = await open_runtime(settings)
        try:
            yield rt
        finally:
            keys = [k async for k in rt.redis.scan_iter(match=f"{settings.redis_prefix}*")]
            for i in range(0, len(keys), 500):
                await rt.redis.delete(*keys[i : i + 500])
            await rt.close()
    finally:
        await _admin_exec(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def app(runtime: Runtime) -> AsyncIterator[FastAPI]:
    from app.main import create_app

    application = create_app(get_settings(), runtime=runtime)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
def data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"tanhui-{RUN_ID}-"))


__all__ = ["KAFKA_BOOTSTRAP", "asyncio"]
