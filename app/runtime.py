"""The composition of backing services for one process: database, Redis, bus.

Unset URLs select the embedded default; set URLs select real servers. The API, the worker,
the CLI and the tests all open the same :class:`Runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from redis.asyncio import Redis

from app.db import Database
from app.embedded import EmbeddedServices
from app.settings import Settings

if TYPE_CHECKING:
    from app.bus import Bus

log = structlog.get_logger()


@dataclass
class Runtime:
    settings: Settings
    db: Database
    redis: Redis
    bus: Bus
    embedded: EmbeddedServices | None

    @property
    def mode(self) -> str:
        return "embedded" if self.embedded and self.embedded.database_url else "full"

    def key(self, *parts: object) -> str:
        """A Redis key under this deployment's prefix."""
        return self.settings.redis_prefix + ":".join(str(p) for p in parts)

    def describe(self) -> dict[str, str]:
        db = self.db.url.split("@")[-1]
        return {
            "mode": self.mode,
            "database": db,
            "redis": (self.settings.redis_url or (self.embedded and self.embedded.redis_url) or "")
            .split("@")[-1],
            "bus": self.bus.name,
        }

    async def close(self) -> None:
        try:
            await self.bus.stop()
        finally:
            await self.redis.aclose()
            await self.db.dispose()
            if self.embedded is not None:
                self.embedded.stop()


def make_bus(settings: Settings, db: Database) -> Bus:
    if settings.kafka_bootstrap:
        from app.bus.kafka import KafkaBus

        return KafkaBus(settings)
    from app.bus.pgqueue import PgQueueBus

    return PgQueueBus(db)


async def open_runtime(settings: Settings, *, start_bus: bool = True) -> Runtime:
    """Start (or connect to) every backing service this process needs."""
    embedded: EmbeddedServices | None = None
    if settings.database_url is None or settings.redis_url is None:
        embedded = EmbeddedServices(settings.data_dir)
        embedded.start(postgres=settings.database_url is None, redis=settings.redis_url is None)
    db_url = settings.database_url or (embedded and embedded.database_url)
    redis_url = settings.redis_url or (embedded and embedded.redis_url)
    assert db_url and redis_url
    db = Database(db_url, pool_size=settings.db_pool_size)
    redis = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=3)
    bus = make_bus(settings, db)
    runtime = Runtime(settings=settings, db=db, redis=redis, bus=bus, embedded=embedded)
    if start_bus:
        await bus.start()
    log.info("runtime_started", **runtime.describe())
    return runtime
