"""Publish throughput of the two bus adapters: batches of 1,000 messages, ~200-byte values.

Run: ``scripts/with-kafka.sh .venv/bin/python scripts/bench_bus.py`` (``BATCHES=200`` sets the
number of batches). Kafka is the broker at ``TANHUI_TEST_KAFKA``; pgqueue uses a throwaway
database on the PostgreSQL at ``TANHUI_TEST_PG`` (default 127.0.0.1:5432), migrated to head.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import asyncpg

from app.bus import Bus, Message
from app.bus.kafka import KafkaBus
from app.bus.pgqueue import PgQueueBus
from app.db import Database
from app.migrations import upgrade
from app.settings import Settings

BATCHES = int(os.environ.get("BATCHES", "100"))
SIZE = 1000
KAFKA = os.environ.get("TANHUI_TEST_KAFKA", "127.0.0.1:19092")
PG_ADMIN = os.environ.get("TANHUI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def batch() -> list[Message]:
    return [
        Message(f"citizen-{secrets.randbelow(10**6):07d}".encode(),
                os.urandom(100).hex().encode())
        for _ in range(SIZE)
    ]


async def run(bus: Bus, topic: str, concurrency: int) -> float:
    """Messages per second over BATCHES publishes, ``concurrency`` publishers at once."""
    batches = [batch() for _ in range(BATCHES)]
    await bus.publish(topic, batches[0])  # connections, topic
    started = time.perf_counter()

    async def publisher(i: int) -> None:
        for b in batches[i::concurrency]:
            await bus.publish(topic, b)

    await asyncio.gather(*(publisher(i) for i in range(concurrency)))
    return BATCHES * SIZE / (time.perf_counter() - started)


async def main() -> None:
    topic = f"bench{secrets.token_hex(3)}.events"
    kafka = KafkaBus(Settings(kafka_bootstrap=KAFKA, kafka_partitions=8))
    await kafka.start()
    try:
        for c in (1, 4, 16):
            print(f"kafka   publishers {c:2}: {await run(kafka, topic, c):9,.0f} msg/s")
    finally:
        await kafka.stop()

    name = f"bench_bus_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
        await upgrade(url)
        db = Database(url)
        pg = PgQueueBus(db)
        await pg.start()
        try:
            for c in (1, 4, 16):
                print(f"pgqueue publishers {c:2}: {await run(pg, topic, c):9,.0f} msg/s")
        finally:
            await pg.stop()
            await db.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
