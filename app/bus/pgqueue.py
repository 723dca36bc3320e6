"""The durable PostgreSQL queue adapter of the bus (embedded default).

A message is a row; publishing commits the rows (the durable ack). A consumer takes a batch
with ``FOR UPDATE SKIP LOCKED`` inside a transaction it keeps open while the batch is
processed; committing the batch deletes the rows and ends that transaction. A consumer that
dies before committing leaves the rows locked only until its connection drops, so another
consumer takes them again. Each topic has one consumer group (the points workers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, Table, Text, func

from app.bus import Batch, BusUnavailable, Message
from app.db import Base, Database

bus_messages = Table(
    "bus_messages",
    Base.metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("key", LargeBinary, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("enqueued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_bus_messages_topic_id", "topic", "id"),
)


def _plain_url(db: Database) -> str:
    return "postgresql://" + db.url.split("://", 1)[1]


class PgQueueBus:
    name = "pgqueue"

    def __init__(self, db: Database, *, pool_size: int = 8) -> None:
        self._url = _plain_url(db)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=self._pool_size, timeout=5,
                command_timeout=30,
            )

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise BusUnavailable("the bus is not started")
        return self._pool

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Topics are rows' labels here: nothing to create."""

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO bus_messages (topic, key, value) "
                    "SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v)",
                    topic, [m.key for m in messages], [m.value for m in messages],
                )
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                TimeoutError) as exc:
            raise BusUnavailable(str(exc)) from exc

    def consumer(self, topic: str, group: str) -> PgQueueConsumer:
        return PgQueueConsumer(self, topic, group)

    async def ping(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def lag(self, topic: str, group: str) -> int:
        del group
        async with self.pool.acquire() as conn:
            n = await conn.fetchval("SELECT count(*) FROM bus_messages WHERE topic = $1", topic)
        return int(n)


class PgQueueConsumer:
    def __init__(self, bus: PgQueueBus, topic: str, group: str) -> None:
        self.bus = bus
        self.topic = topic
        self.group = group

    async def start(self) -> None:
        await self.bus.start()

    async def stop(self) -> None:
        """Nothing held between batches."""

    async def get_batch(self, max_messages: int, timeout_s: float) -> Batch | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = 0.005
        while True:
            conn: Any = await self.bus.pool.acquire()
            tx = conn.transaction()
            await tx.start()
            try:
                rows = await conn.fetch(
                    "SELECT id, key, value FROM bus_messages WHERE topic = $1 "
                    "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                    self.topic, max_messages,
                )
            except BaseException:
                await tx.rollback()
                await self.bus.pool.release(conn)
                raise
            if rows:
                messages = [Message(bytes(r["key"]), bytes(r["value"])) for r in rows]
                return Batch(messages, token=(conn, tx, [r["id"] for r in rows]))
            await tx.rollback()
            await self.bus.pool.release(conn)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.2)

    async def commit(self, batch: Batch) -> None:
        conn, tx, ids = batch.token
        try:
            await conn.execute("DELETE FROM bus_messages WHERE id = ANY($1::bigint[])", ids)
            await tx.commit()
        finally:
            await self.bus.pool.release(conn)

    async def abandon(self, batch: Batch) -> None:
        """Give the batch back (rolled back): another consumer takes it."""
        conn, tx, _ = batch.token
        try:
            await tx.rollback()
        finally:
            await self.bus.pool.release(conn)
