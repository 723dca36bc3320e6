"""Set-based carving of CQCER blocks (拆分): how the credit service changes the account and the
state of many serial ranges at once, in a fixed number of statements per batch.

A *run* is an ordered sequence of blocks: the held blocks of one account that match a product
filter, or the blocks under one lock; in both cases oldest vintage first, then issuance, then
serial. A :class:`Take` asks for the next ``quantity`` tonnes of its run and says where they
go (account, state, lock). The takes of one run are served in the order given, from the
front, so a batch of takes behaves exactly like the same calls made one after another.

1. :func:`plan` reads, in one SELECT with window functions, every block a batch touches with
   its offset in its run (tonnes before it) and the run's total, and cuts the blocks in
   memory where the takes' boundaries fall;
2. :func:`write` shrinks every cut block to its last piece in one ``UPDATE ... FROM unnest``
   (that piece gets its new account and state), inserts the other pieces in one
   ``INSERT ... SELECT``, and appends their history in one more statement.

Blocks only shrink from the front before the new pieces are inserted, so no two blocks ever
share a serial, not even for a moment (PostgreSQL's exclusion constraint checks every row).
The UPDATE matches each block on the range and state it was read with: a concurrent writer
that skipped the account lock would make it miss, and the batch fails rather than sell a
tonne twice (Art. 30).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from sqlalchemy import CursorResult, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict
from registry.schemas import BlockView, ProductFilter, serial_range

ALL = 1 << 62
"""The ``quantity`` of a take of everything left in its run."""

_COLS = ("b.id, b.issuance_id, b.issuance_no, b.project_id, b.project_no, b.instalment_no, "
         "b.vintage, b.category, b.serial_start, b.serial_end, b.account_id, b.state, b.lock_id")
_SIZE = "(b.serial_end - b.serial_start + 1)"
_ORDER = "ORDER BY b.vintage, b.issuance_no, b.serial_start"

# Each run's blocks, in order, with the tonnes before each and the run's total; only the
# blocks that the run's ``need`` reaches are returned.
_TAIL = f"""
    SELECT r.* FROM (
        SELECT g.g, g.need, {_COLS},
               sum{_SIZE} OVER (PARTITION BY g.g {_ORDER}) - {_SIZE} AS before,
               sum{_SIZE} OVER (PARTITION BY g.g) AS total
        FROM g CROSS JOIN LATERAL (
            SELECT * FROM registry_blocks b WHERE {{join}} {_ORDER} {{limit}}
        ) b
    ) r
    WHERE r.before < r.need
    ORDER BY r.g, r.before
"""

_HELD_RUNS = text("""
    WITH g AS (
        SELECT * FROM unnest(CAST(:g AS int[]), CAST(:acc AS uuid[]), CAST(:cat AS text[]),
                             CAST(:vin AS int[]), CAST(:proj AS uuid[]), CAST(:need AS int8[]))
            AS g(g, account_id, category, vintage, project_id, need)
    )""" + _TAIL.format(join=(
    "b.account_id = g.account_id AND b.state = 'held' "
    "AND (g.category IS NULL OR b.category = g.category) "
    "AND (g.vintage IS NULL OR b.vintage = g.vintage) "
    "AND (g.project_id IS NULL OR b.project_id = g.project_id)"),
    # A block holds at least one tonne, so ``need`` blocks always suffice: an account's
    # other held blocks are not read. The total is then exact whenever it is short of need.
    limit="LIMIT g.need"))

_LOCK_RUNS = text("""
    WITH g AS (
        SELECT * FROM unnest(CAST(:g AS int[]), CAST(:lock AS uuid[]), CAST(:need AS int8[]))
            AS g(g, lock_id, need)
    )""" + _TAIL.format(join="b.lock_id = g.lock_id AND b.state = 'locked'", limit=""))

_SHRINK = text("""
    UPDATE registry_blocks b
    SET serial_start = u.start, account_id = u.acc, state = u.state, lock_id = u.lock,
        updated_at = :at
    FROM unnest(CAST(:id AS uuid[]), CAST(:old_start AS int8[]), CAST(:old_end AS int8[]),
                CAST(:old_state AS text[]), CAST(:old_lock AS uuid[]), CAST(:start AS int8[]),
                CAST(:acc AS uuid[]), CAST(:state AS text[]), CAST(:lock AS uuid[]))
         AS u(id, old_start, old_end, old_state, old_lock, start, acc, state, lock)
    WHERE b.id = ANY(CAST(:id AS uuid[])) AND b.id = u.id
      AND b.serial_start = u.old_start AND b.serial_end = u.old_end
      AND b.state = u.old_state AND b.lock_id IS NOT DISTINCT FROM u.old_lock
""")

_INSERT = text("""
    INSERT INTO registry_blocks (id, issuance_id, issuance_no, project_id, project_no,
        instalment_no, vintage, category, serial_start, serial_end, account_id, state,
        lock_id, created_at, updated_at)
    SELECT u.id, b.issuance_id, b.issuance_no, b.project_id, b.project_no, b.instalment_no,
           b.vintage, b.category, u.start, u.end_, u.acc, u.state, u.lock, :at, :at
    FROM unnest(CAST(:id AS uuid[]), CAST(:src AS uuid[]), CAST(:start AS int8[]),
                CAST(:end_ AS int8[]), CAST(:acc AS uuid[]), CAST(:state AS text[]),
                CAST(:lock AS uuid[])) AS u(id, src, start, end_, acc, state, lock)
    JOIN registry_blocks b ON b.id = u.src
    WHERE b.id = ANY(CAST(:src AS uuid[]))
""")

_MOVEMENTS = text("""
    INSERT INTO registry_movements (kind, issuance_id, serial_start, serial_end,
        from_account_id, to_account_id, lock_id, at)
    SELECT * , CAST(:at AS timestamptz) FROM unnest(CAST(:kind AS text[]),
        CAST(:iss AS uuid[]), CAST(:start AS int8[]), CAST(:end_ AS int8[]),
        CAST(:src AS uuid[]), CAST(:dst AS uuid[]), CAST(:lock AS uuid[]))
""")


@dataclass(slots=True)
class Take:
    """The next ``quantity`` tonnes of run ``run`` go to ``account_id`` in ``state`` (under
    ``lock_id`` when locked). The history records, per piece, one movement per entry of
    ``kinds`` by lock ``via_lock``: ``lock`` (within ``from_account``), then ``deliver``
    (from ``from_account`` to ``account_id``). A lock and an at-once delivery out of it are
    one take, so each block is written once however many steps it goes through."""

    run: int
    quantity: int
    account_id: UUID
    state: str
    lock_id: UUID | None
    kinds: tuple[str, ...]
    from_account: UUID
    via_lock: UUID
    blocks: list[BlockView] = field(default_factory=list)


@dataclass(slots=True)
class Run:
    """What a run holds in total, and the blocks a batch needs from it. For held runs the
    total counts only the blocks read (those ``need`` reaches): exact when it is less than
    ``need``; for lock runs it is always exact."""

    total: int = 0
    rows: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Plan:
    """The cuts of one batch: per cut block its last piece (an update) and the other pieces
    (inserts), each with its take (None for the part that stays as it was)."""

    updates: list[tuple[Any, int, Take | None]] = field(default_factory=list)
    inserts: list[tuple[Any, UUID, int, int, Take]] = field(default_factory=list)


async def held_runs(session: AsyncSession, runs: Sequence[tuple[UUID, ProductFilter | None]],
                    need: Sequence[int]) -> list[Run]:
    """The held blocks of each (account, product) run, up to ``need`` tonnes of each."""
    rows = (await session.execute(_HELD_RUNS, {
        "g": list(range(len(runs))), "acc": [a for a, _ in runs],
        "cat": [p.category if p else None for _, p in runs],
        "vin": [p.vintage if p else None for _, p in runs],
        "proj": [p.project_id if p else None for _, p in runs], "need": list(need),
    })).all()
    return _group(rows, len(runs))


async def lock_runs(session: AsyncSession, lock_ids: Sequence[UUID],
                    need: Sequence[int]) -> list[Run]:
    """The blocks under each lock, up to ``need`` tonnes of each."""
    rows = (await session.execute(_LOCK_RUNS, {
        "g": list(range(len(lock_ids))), "lock": list(lock_ids), "need": list(need),
    })).all()
    return _group(rows, len(lock_ids))


def _group(rows: Sequence[Any], n: int) -> list[Run]:
    runs = [Run() for _ in range(n)]
    for r in rows:
        run = runs[r.g]
        run.total = int(r.total)
        run.rows.append(r)
    return runs


def plan(runs: Sequence[Run], takes: Sequence[Take]) -> Plan:
    """Cut the runs' blocks for ``takes`` (each run's takes in order, from its front). The
    caller has checked that every run holds enough."""
    by_run: dict[int, list[Take]] = {}
    for t in takes:
        by_run.setdefault(t.run, []).append(t)
    out = Plan()
    for g, mine in by_run.items():
        bounds: list[tuple[int, Take]] = []  # (end offset, take), ascending
        upto = 0
        for t in mine:
            upto += t.quantity
            bounds.append((upto, t))
        k = 0
        for row in runs[g].rows:
            start, end = int(row.before), int(row.before) + row.serial_end - row.serial_start + 1
            pieces: list[tuple[int, int, Take | None]] = []  # serial start, end, take
            pos = start
            while pos < end:
                while k < len(bounds) and bounds[k][0] <= pos:
                    k += 1
                if k < len(bounds):
                    stop, take = min(end, bounds[k][0]), bounds[k][1]
                    pieces.append((row.serial_start + pos - start,
                                   row.serial_start + stop - start - 1, take))
                else:
                    stop = end
                    pieces.append((row.serial_start + pos - start, row.serial_end, None))
                pos = stop
            *heads, last = pieces
            out.updates.append((row, last[0], last[2]))
            for s, e, head in heads:
                assert head is not None  # the untaken part is always the last piece
                out.inserts.append((row, uuid.uuid4(), s, e, head))
    return out


async def write(session: AsyncSession, p: Plan, at: datetime) -> None:
    """Apply the plan: shrink, insert, record the movements; fills each take's ``blocks``."""
    if not p.updates:
        return
    up = p.updates
    done = cast(CursorResult[Any], await session.execute(_SHRINK, {
        "at": at, "id": [r.id for r, _, _ in up],
        "old_start": [r.serial_start for r, _, _ in up],
        "old_end": [r.serial_end for r, _, _ in up], "old_state": [r.state for r, _, _ in up],
        "old_lock": [r.lock_id for r, _, _ in up], "start": [s for _, s, _ in up],
        "acc": [t.account_id if t else r.account_id for r, _, t in up],
        "state": [t.state if t else r.state for r, _, t in up],
        "lock": [t.lock_id if t else r.lock_id for r, _, t in up],
    })).rowcount
    if done != len(up):
        # Art. 30: a block changed under us (a writer without the account lock): refuse.
        raise Conflict("registry.concurrent_change",
                       "Credits changed while they were being moved; try again.")
    ins = p.inserts
    if ins:
        await session.execute(_INSERT, {
            "at": at, "id": [i for _, i, _, _, _ in ins], "src": [r.id for r, _, _, _, _ in ins],
            "start": [s for _, _, s, _, _ in ins], "end_": [e for _, _, _, e, _ in ins],
            "acc": [t.account_id for *_, t in ins], "state": [t.state for *_, t in ins],
            "lock": [t.lock_id for *_, t in ins],
        })
    moved: list[tuple[Any, UUID, int, int, Take]] = [
        (r, r.id, s, r.serial_end, t) for r, s, t in up if t is not None]
    moved += ins
    moved.sort(key=lambda m: (m[0].vintage, m[0].issuance_no, m[2]))
    for r, block_id, s, e, t in moved:
        # Values read from the database: no validation needed (a hot path).
        t.blocks.append(BlockView.model_construct(
            id=block_id, serial=serial_range(r.project_no, r.instalment_no, r.vintage, s, e),
            serial_start=s, serial_end=e, quantity=e - s + 1, project_id=r.project_id,
            project_no=r.project_no, instalment_no=r.instalment_no, vintage=r.vintage,
            category=r.category, state=t.state,  # type: ignore[arg-type]
            account_id=t.account_id, lock_id=t.lock_id,
        ))
    steps = [(r, s, e, t, kind) for r, _, s, e, t in moved for kind in t.kinds]
    await session.execute(_MOVEMENTS, {
        "at": at, "kind": [k for *_, k in steps], "iss": [r.issuance_id for r, *_ in steps],
        "start": [s for _, s, _, _, _ in steps], "end_": [e for _, _, e, _, _ in steps],
        "src": [t.from_account for *_, t, _ in steps],
        "dst": [t.from_account if k == "lock" else t.account_id for *_, t, k in steps],
        "lock": [t.via_lock for *_, t, _ in steps],
    })
