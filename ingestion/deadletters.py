"""Dead letters (死信): events the worker could not process, kept with the reason.

An operator lists them and, once the cause is fixed (say, the missing rule is published),
replays them: the payload goes back on the bus under its original key, so it takes the normal
path through the worker (and its dedupe) again. A replayed row stays, marked ``replayed_at``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.bus import Message
from app.runtime import Runtime
from ingestion.service import bucket_message, ensure_topic


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    id: int
    topic: str
    scene_id: UUID | None
    event_id: str | None
    reason_code: str
    reason: str
    created_at: dt.datetime
    replayed_at: dt.datetime | None
    replays: int
    size: int


async def list_dead_letters(
    session: AsyncSession, *, include_replayed: bool = False, reason_code: str | None = None,
    limit: int = 100,
) -> list[DeadLetterView]:
    rows = await session.execute(text("""
        SELECT id, topic, scene_id, event_id, reason_code, reason, created_at, replayed_at,
               replays, length(payload) AS size
          FROM ingest_dead_letters
         WHERE (CAST(:all AS boolean) OR replayed_at IS NULL)
           AND (CAST(:code AS text) IS NULL OR reason_code = :code)
         ORDER BY id LIMIT :limit
    """), {"all": include_replayed, "code": reason_code, "limit": limit})
    return [DeadLetterView(**r._mapping) for r in rows]


async def count_open(session: AsyncSession) -> int:
    n = await session.scalar(
        text("SELECT count(*) FROM ingest_dead_letters WHERE replayed_at IS NULL")
    )
    return int(n or 0)


async def replay_dead_letters(
    session: AsyncSession, runtime: Runtime, *, ids: list[int] | None = None,
    reason_code: str | None = None, limit: int = 10_000, now: dt.datetime | None = None,
) -> int:
    """Put open dead letters back on the bus; mark them replayed. Returns how many.

    The rows are locked while they are published (two operators never replay one twice);
    if the bus refuses, the transaction rolls back and nothing is marked.
    """
    now = now or clock.now()
    rows = (await session.execute(text("""
        SELECT id, topic, key, payload FROM ingest_dead_letters
         WHERE replayed_at IS NULL
           AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(CAST(:ids AS bigint[])))
           AND (CAST(:code AS text) IS NULL OR reason_code = :code)
         ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED
    """), {"ids": ids, "code": reason_code, "limit": limit})).all()
    if not rows:
        return 0
    by_topic: dict[str, list[Message]] = {}
    for r in rows:
        by_topic.setdefault(r.topic, []).append(bucket_message(bytes(r.key), bytes(r.payload)))
    for topic, messages in by_topic.items():
        await ensure_topic(runtime, topic)
        await runtime.bus.publish(topic, messages)
    await session.execute(text("""
        UPDATE ingest_dead_letters SET replayed_at = :now, replays = replays + 1
         WHERE id = ANY(CAST(:ids AS bigint[]))
    """), {"now": now, "ids": [r.id for r in rows]})
    return len(rows)
