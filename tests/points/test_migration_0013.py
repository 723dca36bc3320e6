"""Migration 0013 (the ledger keyed by account) on a scratch database, with data: a lot held by
an active hold keeps its points, its hold allocation and its link to the credit entry through an
upgrade, a downgrade and an upgrade again."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from tests.conftest import PG_ADMIN_URL, RUN_ID, _admin_exec

ACCOUNT = uuid.UUID(int=1)
HOLD = uuid.UUID(int=0xAA)

# At 0012: two credits of 4 points, a lot each (ids 1 and 2, not their entries' ids 101 and
# 102), and an active hold of 3 points that took them from the second lot.
AT_0012 = """
INSERT INTO points_accounts (id, citizen_id, available, held)
    VALUES ('00000000-0000-0000-0000-000000000001', gen_random_uuid(), 5, 3);
INSERT INTO points_entries (id, account_id, kind, points, created_at, scene_id, event_id,
    behaviour, occurred_at, grams, grams_per_point, reduction_rule_version_id,
    conversion_rule_version_id)
SELECT 100 + g, '00000000-0000-0000-0000-000000000001', 'credit', 4, now(),
       gen_random_uuid(), 'e' || g, 'walk', now(), 400, 100, gen_random_uuid(), gen_random_uuid()
FROM generate_series(1, 2) g;
INSERT INTO points_lots (account_id, entry_id, points, remaining, credited_at, expires_at)
SELECT '00000000-0000-0000-0000-000000000001', 100 + g, 4, CASE g WHEN 1 THEN 4 ELSE 1 END, now(),
       now() + interval '1000 days' FROM generate_series(1, 2) g;
INSERT INTO points_holds VALUES ('00000000-0000-0000-0000-0000000000aa',
    '00000000-0000-0000-0000-000000000001', 3, 'active', 'order-1', now(),
    now() + interval '1 day', NULL);
INSERT INTO points_hold_allocations
SELECT '00000000-0000-0000-0000-0000000000aa', id, 3 FROM points_lots WHERE entry_id = 102;
"""


async def test_migration_0013_carries_lots_and_allocations_both_ways() -> None:
    from alembic import command

    from app.migrations import alembic_config

    name = f"tanhui_test_{RUN_ID}_m0013"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    await _admin_exec(f'CREATE DATABASE "{name}"')
    try:
        cfg = alembic_config(url)
        await asyncio.to_thread(command.upgrade, cfg, "0012")
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(AT_0012)
        finally:
            await conn.close()

        async def rows(sql: str) -> list[tuple[object, ...]]:
            c = await asyncpg.connect(url)
            try:
                return [tuple(r) for r in await c.fetch(sql)]
            finally:
                await c.close()

        await asyncio.to_thread(command.upgrade, cfg, "head")
        # a lot's id is its entry's id; the allocation names the lot by its whole key
        assert await rows("SELECT id, remaining FROM points_lots ORDER BY id") == [
            (101, 4), (102, 1)]
        assert await rows(
            "SELECT a.hold_id, a.lot_id, a.points, a.account_id, a.lot_expires_at = l.expires_at"
            " FROM points_hold_allocations a JOIN points_lots l ON l.account_id = a.account_id"
            " AND l.expires_at = a.lot_expires_at AND l.id = a.lot_id") == [
            (HOLD, 102, 3, ACCOUNT, True)]
        assert await rows(
            "SELECT conname FROM pg_constraint WHERE conname IN"
            " ('pk_points_entries', 'pk_points_lots', 'fk_points_hold_allocations_lot_points_lots')"
            " ORDER BY 1") == [("fk_points_hold_allocations_lot_points_lots",),
                               ("pk_points_entries",), ("pk_points_lots",)]

        await asyncio.to_thread(command.downgrade, cfg, "0012")
        assert await rows("SELECT id, entry_id, remaining FROM points_lots ORDER BY id") == [
            (101, 101, 4), (102, 102, 1)]
        assert await rows("SELECT hold_id, lot_id, points FROM points_hold_allocations") == [
            (HOLD, 102, 3)]
        # the lots' identity continues after the highest id
        c = await asyncpg.connect(url)
        try:
            new = await c.fetchval(
                "INSERT INTO points_lots (account_id, entry_id, points, remaining, credited_at,"
                " expires_at) VALUES ($1, 103, 1, 1, now(), now() + interval '1 day')"
                " RETURNING id", ACCOUNT)
        finally:
            await c.close()
        assert new > 102

        await asyncio.to_thread(command.upgrade, cfg, "head")
        assert await rows("SELECT id FROM points_lots ORDER BY id") == [(101,), (102,), (103,)]
    finally:
        await _admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
