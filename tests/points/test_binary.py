"""The credit batch's own binary COPY encoding reads back exactly as written."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta, timezone

from app.db import Database
from points import binary, sql

TIMES = [
    datetime(2026, 11, 26, 6, 0, 0, 1, tzinfo=UTC),
    datetime(2000, 1, 1, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=8))),
    datetime(2099, 2, 28, 12, 30, 45, 123_456, tzinfo=timezone(timedelta(hours=-5))),
]


async def test_entry_and_lot_rows_read_back_exactly(db: Database) -> None:
    accounts = [uuid.uuid4() for _ in TIMES]
    scene, rrv, crv = uuid.uuid4(), str(uuid.uuid4()), uuid.uuid4().hex
    events = ["e-1", "事件-二", "x" * 300, "e-4"]
    behaviours = ["metro_ride", "bus", "metro_ride", "步行"]
    order = [3, 0, 2, 1]  # row j is source credit order[j]
    ids = [10, 11, 12, 13]
    points = [5, 0, 7, 1]
    created, expires = TIMES[0], TIMES[0] + timedelta(days=1825)
    async with db.transaction() as s:
        conn = await s.connection()
        await conn.exec_driver_sql("SELECT 1")  # the transaction begins (SQLAlchemy is lazy)
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.execute("CREATE TEMP TABLE e (LIKE points_entries INCLUDING ALL) ON COMMIT DROP")
        await raw.execute("CREATE TEMP TABLE l (LIKE points_lots INCLUDING ALL) ON COMMIT DROP")
        await raw.copy_to_table("e", columns=sql.CREDIT_COLUMNS, format="binary",
                                source=io.BytesIO(binary.entry_rows(
                                    ids, [a.bytes for a in accounts], points, created, order,
                                    [scene] * 4, events, behaviours,
                                    [binary.timestamptz(t) for t in TIMES], [1, 22, 333, 0],
                                    [100, 7, 1, 2], [rrv] * 4, [crv] * 4)))
        await raw.copy_to_table("l", columns=sql.LOT_COLUMNS, format="binary",
                                source=io.BytesIO(binary.lot_rows(
                                    [a.bytes for a in accounts], ids, points, created,
                                    expires)))
        rows = await raw.fetch("SELECT * FROM e ORDER BY id")
        lots = await raw.fetch("SELECT * FROM l ORDER BY id")
    assert [(r["id"], r["account_id"], r["kind"], r["points"], r["created_at"], r["scene_id"],
             r["event_id"], r["behaviour"], r["occurred_at"], r["grams"], r["grams_per_point"],
             str(r["reduction_rule_version_id"]), r["conversion_rule_version_id"].hex)
            for r in rows] == [
        (ids[j], accounts[j], "credit", points[j], created, scene, events[k], behaviours[k],
         TIMES[k], [1, 22, 333, 0][k], [100, 7, 1, 2][k], rrv, crv)
        for j, k in enumerate(order)]
    assert [(r["account_id"], r["id"], r["points"], r["remaining"], r["credited_at"],
             r["expires_at"]) for r in lots] == [
        (accounts[j], ids[j], p, p, created, expires) for j, p in enumerate(points) if p > 0]
