"""The durable PostgreSQL queue adapter of the bus (embedded default).

A message is a row; publishing commits the rows in one statement (the durable ack). Like a
Kafka topic, a topic here has :data:`PARTITIONS` partitions and a message's partition is a
hash of its key, so one citizen's events stay in one partition in publish order.

A consumer takes a batch inside a transaction that it keeps open while the batch is
processed: it takes a transaction-scoped advisory lock on one or more partitions that have
messages (``pg_try_advisory_xact_lock``, never waiting: a partition another consumer holds is
skipped, as ``SKIP LOCKED`` skips rows) and reads their oldest rows. So several consumers
share the load, never see the same message twice at once, and never process one key's
messages in parallel. Committing the batch deletes its rows and ends the transaction, which
releases the locks. A consumer that dies or stops before committing rolls back (or its
connection drops), so the rows are delivered again. Each topic has one consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import zlib
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    SmallInteger,
    Table,
    Text,
    func,
)

from app.bus import Batch, BusUnavailable, Message
from app.db import Base, Database

PARTITIONS = 16

bus_messages = Table(
    "bus_messages",
    Base.metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("part", SmallInteger, nullable=False),
    Column("key", LargeBinary, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("enqueued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_bus_messages_topic_part_id", "topic", "part", "id"),
)

_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
)

# The non-empty partitions of a topic, each with its backlog counted up to the batch size.
_BACKLOG = """
SELECT p, n FROM (
  SELECT p, (SELECT count(*) FROM (SELECT 1 FROM bus_messages m
                                   WHERE m.topic = $1 AND m.part = p LIMIT $3) s) AS n
  FROM generate_series(0, $2 - 1) AS p
) c WHERE n > 0
"""


def partition_of(key: bytes) -> int:
    """The partition of a key (CRC-32, stable across processes and versions)."""
    return zlib.crc32(key) % PARTITIONS


def _plain_url(db: Database) -> str:
    return "postgresql://" + db.url.split("://", 1)[1]


class PgQueueBus:
    name = "pgqueue"

    def __init__(self, db: Database, *, pool_size: int = 8, timeout_s: float = 5.0) -> None:
        self._url = _plain_url(db)
        self._pool_size = pool_size
        self.timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        return f"PostgreSQL queue (table bus_messages, {PARTITIONS} partitions, same database)"

    async def start(self) -> None:
        """Open the connection pool; raises :class:`BusUnavailable` if the database is down."""
        await self._get_pool()

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.timeout_s)
            except _DOWN:
                pool.terminate()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    try:
                        self._pool = await asyncio.wait_for(
                            asyncpg.create_pool(
                                self._url, min_size=1, max_size=self._pool_size,
                                timeout=self.timeout_s, command_timeout=30,
                            ),
                            self.timeout_s,
                        )
                    except _DOWN as exc:
                        raise BusUnavailable(
                            f"the queue's database is unreachable: {type(exc).__name__}"
                        ) from exc
        return self._pool

    async def acquire(self) -> Any:
        """A pooled connection, or :class:`BusUnavailable` within ``timeout_s``."""
        pool = await self._get_pool()
        try:
            return await pool.acquire(timeout=self.timeout_s)
        except _DOWN as exc:
            raise BusUnavailable(
                f"the queue's database is unreachable: {type(exc).__name__}"
            ) from exc

    async def release(self, conn: Any) -> None:
        pool = self._pool
        if pool is None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
            return
        with contextlib.suppress(Exception):
            await pool.release(conn, timeout=self.timeout_s)

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Topics are rows' labels here: nothing to create."""

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        keys = [m.key for m in messages]
        conn = await self.acquire()
        try:
            await conn.execute(
                "INSERT INTO bus_messages (topic, part, key, value) "
                "SELECT $1, p, k, v FROM unnest($2::int2[], $3::bytea[], $4::bytea[]) "
                "AS t(p, k, v)",
                topic, [partition_of(m.key) if m.shard is None else m.shard % PARTITIONS
                        for m in messages], keys, [m.value for m in messages],
                timeout=self.timeout_s,
            )
        except _DOWN as exc:
            raise BusUnavailable(f"the queue did not take the batch: {type(exc).__name__}") \
                from exc
        finally:
            await self.release(conn)

    def consumer(self, topic: str, group: str) -> PgQueueConsumer:
        return PgQueueConsumer(self, topic, group)

    async def ping(self) -> None:
        conn = await self.acquire()
        try:
            await conn.fetchval("SELECT 1", timeout=min(self.timeout_s, 2.0))
        except _DOWN as exc:
            raise BusUnavailable(type(exc).__name__) from exc
        finally:
            await self.release(conn)

    async def lag(self, topic: str, group: str) -> int:
        """Messages of ``topic`` not yet committed (one group per topic here)."""
        del group
        conn = await self.acquire()
        try:
            n = await conn.fetchval(
                "SELECT count(*) FROM bus_messages WHERE topic = $1", topic,
                timeout=self.timeout_s,
            )
        except _DOWN as exc:
            raise BusUnavailable(type(exc).__name__) from exc
        finally:
            await self.release(conn)
        return int(n)


class PgQueueConsumer:
    """One consumer of ``topic``; each batch it hands out holds a connection until settled."""

    def __init__(self, bus: PgQueueBus, topic: str, group: str) -> None:
        self.bus = bus
        self.topic = topic
        self.group = group
        # Two consumers of one topic lock the same partitions; other topics use other keys.
        self._lock_space = zlib.crc32(f"tanhui.bus:{topic}".encode()) - 2**31
        self._batches: dict[int, Batch] = {}

    async def start(self) -> None:
        await self.bus.start()

    async def stop(self) -> None:
        """Give back every batch not committed: its messages are delivered again."""
        for batch in list(self._batches.values()):
            await self.abandon(batch)

    async def get_batch(self, max_messages: int, timeout_s: float) -> Batch | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = 0.005
        while True:
            batch = await self._take(max_messages)
            if batch is not None:
                return batch
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.2)

    async def _take(self, max_messages: int) -> Batch | None:
        conn = await self.bus.acquire()
        tx = conn.transaction()
        try:
            await tx.start()
            backlog = await conn.fetch(_BACKLOG, self.topic, PARTITIONS, max_messages)
            locked: list[int] = []
            if backlog:
                start = random.randrange(len(backlog))  # fair among partitions
                taken = 0
                for row in backlog[start:] + backlog[:start]:
                    if taken >= max_messages:
                        break
                    if await conn.fetchval(
                        "SELECT pg_try_advisory_xact_lock($1::int4, $2::int4)",
                        self._lock_space, row["p"],
                    ):
                        locked.append(row["p"])
                        taken += row["n"]
            rows = await conn.fetch(
                "SELECT id, key, value FROM bus_messages "
                "WHERE topic = $1 AND part = ANY($2::int2[]) ORDER BY id LIMIT $3",
                self.topic, locked, max_messages,
            ) if locked else []
        except BaseException as exc:
            await self._settle(conn, tx, commit=False)
            if isinstance(exc, _DOWN):
                raise BusUnavailable(f"cannot take a batch: {type(exc).__name__}") from exc
            raise
        if not rows:
            await self._settle(conn, tx, commit=False)
            return None
        messages = [Message(bytes(r["key"]), bytes(r["value"])) for r in rows]
        batch = Batch(messages, token=(conn, tx, [r["id"] for r in rows]))
        self._batches[id(batch)] = batch
        return batch

    async def _settle(self, conn: Any, tx: Any, *, commit: bool) -> None:
        try:
            if commit:
                await tx.commit()
            else:
                with contextlib.suppress(Exception):
                    await tx.rollback()
        finally:
            await self.bus.release(conn)

    async def commit(self, batch: Batch) -> None:
        if self._batches.pop(id(batch), None) is None:
            raise ValueError("this batch is not open on this consumer")
        conn, tx, ids = batch.token
        try:
            await conn.execute("DELETE FROM bus_messages WHERE id = ANY($1::bigint[])", ids,
                               timeout=self.bus.timeout_s)
        except BaseException as exc:
            await self._settle(conn, tx, commit=False)
            if isinstance(exc, _DOWN):
                raise BusUnavailable(f"commit failed: {type(exc).__name__}") from exc
            raise
        try:
            await self._settle(conn, tx, commit=True)
        except _DOWN as exc:
            raise BusUnavailable(f"commit failed: {type(exc).__name__}") from exc

    async def abandon(self, batch: Batch) -> None:
        """Give the batch back (rolled back): it is delivered again."""
        if self._batches.pop(id(batch), None) is None:
            return
        conn, tx, _ = batch.token
        await self._settle(conn, tx, commit=False)
