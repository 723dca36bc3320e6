"""Array parameters sent as their text (``app.db.array_text``) reach the server intact."""

from __future__ import annotations

import datetime as dt
from uuid import uuid4

from app.db import array_text, asyncpg_connection, quoted
from app.runtime import Runtime


async def test_uuids_dates_and_integers_round_trip(runtime: Runtime) -> None:
    ids = [uuid4() for _ in range(3)]
    days = [dt.date(2026, 1, 1), dt.date(2026, 12, 31)]
    async with runtime.db.session() as s:
        conn = await asyncpg_connection(s)
        assert await conn.fetchval("SELECT $1::text::uuid[]",
                                   array_text(u.hex for u in ids)) == ids
        assert await conn.fetchval("SELECT $1::text::date[]",
                                   array_text(d.isoformat() for d in days)) == days
        assert await conn.fetchval("SELECT $1::text::int8[]",
                                   array_text(map(str, [0, -1, 2**62]))) == [0, -1, 2**62]
        assert await conn.fetchval("SELECT $1::text::int8[]", array_text([])) == []


async def test_quoted_text_round_trips_through_the_server(runtime: Runtime) -> None:
    """Quoting survives commas, braces, quotes, backslashes, blanks and the word NULL."""
    values = ['a,b', '{x}', 'say "hi"', 'back\\slash', '\\"', ' ', '\t\n', 'NULL', '',
              '租车 km', '"', '\\']
    async with runtime.db.session() as s:
        conn = await asyncpg_connection(s)
        got = await conn.fetchval("SELECT $1::text::text[]", array_text(map(quoted, values)))
    assert got == values
