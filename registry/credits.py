"""The credit service (CQCER 持有与状态): lock, unlock, move and cancel credits; holdings.

Trading and offsets change the state of CQCER only through these functions, so Art. 30 ("one
lifecycle per credit") holds by construction: a tonne is one serial, a serial lies in exactly
one block (PostgreSQL's exclusion constraint), and a block has one account and one state.
Splitting a block shrinks it and inserts the split-off part; nothing is deleted.

Concurrency: every change to the credits of an account first takes that account's row lock
(``SELECT ... FOR UPDATE``, accounts in id order), so two transactions working on the same
credits run one after the other, and the second reads the first's committed blocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from registry.errors import Conflict, Invalid, not_found
from registry.models import Account, Block, Cancellation, Lock, Organisation
from registry.schemas import BlockView, LockView, ProductFilter, serial_range

CancelPurpose = Literal["compliance", "neutrality", "judicial", "public_good", "voluntary",
                        "sanction", "owner_gone"]
PURPOSES = ("compliance", "neutrality", "judicial", "public_good", "voluntary", "sanction",
            "owner_gone")


def block_view(b: Block) -> BlockView:
    return BlockView(
        id=b.id, serial=serial_range(b.project_no, b.instalment_no, b.vintage, b.serial_start,
                                     b.serial_end),
        serial_start=b.serial_start, serial_end=b.serial_end,
        quantity=b.serial_end - b.serial_start + 1, project_id=b.project_id,
        project_no=b.project_no, instalment_no=b.instalment_no, vintage=b.vintage,
        category=b.category,  # type: ignore[arg-type]
        state=b.state,  # type: ignore[arg-type]
        account_id=b.account_id, lock_id=b.lock_id, cancellation_id=b.cancellation_id,
    )


async def lock_accounts(session: AsyncSession, account_ids: Iterable[UUID]) -> None:
    """Take the row locks of these accounts, in id order (no deadlock between two movers)."""
    ids = sorted(set(account_ids))
    found = (
        await session.execute(
            select(Account.id).where(Account.id.in_(ids)).order_by(Account.id).with_for_update()
        )
    ).scalars().all()
    if len(found) != len(ids):
        raise not_found("account")


async def record_movements(
    session: AsyncSession, kind: str, *, where: str, params: dict[str, Any],
    from_account: UUID | None, to_account: UUID | None, at: datetime,
    lock_id: UUID | None = None, cancellation_id: UUID | None = None,
) -> None:
    """Append the history of the blocks matching ``where`` in one statement."""
    await session.execute(
        text(
            "INSERT INTO registry_movements (kind, issuance_id, serial_start, serial_end, "
            "from_account_id, to_account_id, lock_id, cancellation_id, at) "
            "SELECT :kind, issuance_id, serial_start, serial_end, :from_acc, :to_acc, :lock, "
            f":cancel, :at FROM registry_blocks WHERE {where}"
        ),
        {"kind": kind, "from_acc": from_account, "to_acc": to_account, "lock": lock_id,
         "cancel": cancellation_id, "at": at, **params},
    )


async def _take(
    session: AsyncSession, account_id: UUID, quantity: int, product: ProductFilter | None,
) -> tuple[list[UUID], Block | None, int]:
    """Choose held blocks, oldest vintage first, in one statement: whole blocks, and the one to
    split (with how many tonnes to take from it). Refuses when the account holds too few."""
    size = Block.serial_end - Block.serial_start + 1
    cond = [Block.account_id == account_id, Block.state == "held"]
    if product is not None:
        cond.append(Block.category == product.category)
        if product.vintage is not None:
            cond.append(Block.vintage == product.vintage)
        if product.project_id is not None:
            cond.append(Block.project_id == product.project_id)
    running = func.sum(size).over(order_by=(Block.vintage, Block.issuance_no, Block.serial_start))
    inner = select(Block.id, size.label("size"), running.label("running")).where(*cond).subquery()
    rows = (await session.execute(
        select(inner.c.id, inner.c.size, inner.c.running)
        .where(inner.c.running - inner.c.size < quantity).order_by(inner.c.running)
    )).all()
    available = int(rows[-1].running) if rows else 0
    if available < quantity:
        raise Conflict(
            "registry.insufficient_credits",
            f"The account holds {available} matching tonnes, fewer than {quantity}.",
            available=available, requested=quantity,
        )
    # The account's row lock already serialises writers; lock the chosen blocks as well.
    await session.execute(
        select(Block.id).where(Block.id.in_([r.id for r in rows])).with_for_update()
    )
    last = rows[-1]
    if int(last.running) == quantity:
        return [r.id for r in rows], None, 0
    partial = await session.get(Block, last.id, populate_existing=True)
    assert partial is not None
    return [r.id for r in rows[:-1]], partial, quantity - (int(last.running) - int(last.size))


async def split(session: AsyncSession, block: Block, take: int, at: datetime) -> Block:
    """Split ``take`` tonnes off the front of ``block``: the block keeps the rest, the split-off
    part is a new block in the same account and state (returned)."""
    head = Block(
        id=uuid.uuid4(), issuance_id=block.issuance_id, issuance_no=block.issuance_no,
        project_id=block.project_id, project_no=block.project_no,
        instalment_no=block.instalment_no, vintage=block.vintage, category=block.category,
        serial_start=block.serial_start, serial_end=block.serial_start + take - 1,
        account_id=block.account_id, state=block.state, lock_id=block.lock_id,
        cancellation_id=block.cancellation_id, created_at=at, updated_at=at,
    )
    # Shrink first, then insert: the two ranges never overlap, even for a moment.
    await session.execute(
        update(Block).where(Block.id == block.id)
        .values(serial_start=block.serial_start + take, updated_at=at)
    )
    session.add(head)
    await session.flush()
    return head


async def lock(
    session: AsyncSession, *, account_id: UUID, quantity: int, purpose: str, reference: str,
    product: ProductFilter | None = None, now: datetime | None = None,
) -> LockView:
    """Lock ``quantity`` tonnes held by the account (锁定), oldest vintage first, splitting the
    last block if needed. ``Conflict("registry.insufficient_credits")`` if it holds too few."""
    if quantity < 1:
        raise Invalid("registry.quantity_invalid", "The quantity must be at least 1 tonne.")
    at = now or clock.now()
    await lock_accounts(session, [account_id])
    whole, partial, take = await _take(session, account_id, quantity, product)
    row = Lock(
        id=uuid.uuid4(), account_id=account_id, quantity=quantity, purpose=purpose,
        reference=reference, product=product.model_dump(mode="json") if product else None,
        state="active", created_at=at,
    )
    session.add(row)
    await session.flush()
    ids = list(whole)
    if partial is not None:
        ids.append((await split(session, partial, take, at)).id)
    await session.execute(
        update(Block).where(Block.id.in_(ids), Block.state == "held")
        .values(state="locked", lock_id=row.id, updated_at=at)
    )
    await record_movements(session, "lock", where="lock_id = :l", params={"l": row.id},
                           from_account=account_id, to_account=account_id, lock_id=row.id, at=at)
    blocks = await _blocks_of_lock(session, row.id)
    await audit.append(session, actor="registry", action="credits.lock", entity="registry_lock",
                       entity_id=str(row.id), now=at,
                       data={"account_id": str(account_id), "quantity": quantity,
                             "purpose": purpose, "reference": reference})
    return LockView(id=row.id, account_id=account_id, quantity=quantity, purpose=purpose,
                    reference=reference, state="active", created_at=at, blocks=blocks)


async def _blocks_of_lock(session: AsyncSession, lock_id: UUID) -> list[BlockView]:
    rows = (await session.execute(
        select(Block).where(Block.lock_id == lock_id).order_by(Block.vintage, Block.issuance_no,
                                                               Block.serial_start)
    )).scalars().all()
    return [block_view(b) for b in rows]


async def _active_lock(session: AsyncSession, lock_id: UUID,
                       other_accounts: Sequence[UUID] = ()) -> Lock:
    """The lock, with its account's (and ``other_accounts``') row locks taken; must be active."""
    found = await session.get(Lock, lock_id)
    if found is None:
        raise not_found("lock")
    await lock_accounts(session, [found.account_id, *other_accounts])
    row = (await session.execute(
        select(Lock).where(Lock.id == lock_id).with_for_update()
        .execution_options(populate_existing=True)
    )).scalar_one()
    if row.state != "active":
        # Art. 29: a cancelled lock (and its cancelled credits) can never be used again.
        raise Conflict("registry.lock_not_active", f"The lock is {row.state}.", state=row.state)
    return row


async def unlock(session: AsyncSession, lock_id: UUID, *, now: datetime | None = None) -> None:
    """Release a lock: its credits are held again by the same account."""
    at = now or clock.now()
    row = await _active_lock(session, lock_id)
    await record_movements(session, "unlock", where="lock_id = :l", params={"l": lock_id},
                           from_account=row.account_id, to_account=row.account_id,
                           lock_id=lock_id, at=at)
    await session.execute(
        update(Block).where(Block.lock_id == lock_id)
        .values(state="held", lock_id=None, updated_at=at)
    )
    row.state, row.closed_at = "released", at
    await audit.append(session, actor="registry", action="credits.unlock",
                       entity="registry_lock", entity_id=str(lock_id), now=at)


async def move_locked(
    session: AsyncSession, lock_id: UUID, *, to_account_id: UUID, now: datetime | None = None,
) -> list[BlockView]:
    """Deliver locked credits to another account (DvP delivery): held there afterwards."""
    at = now or clock.now()
    row = await _active_lock(session, lock_id, [to_account_id])
    await record_movements(session, "deliver", where="lock_id = :l", params={"l": lock_id},
                           from_account=row.account_id, to_account=to_account_id,
                           lock_id=lock_id, at=at)
    moved = (await session.execute(
        update(Block).where(Block.lock_id == lock_id)
        .values(state="held", lock_id=None, account_id=to_account_id, updated_at=at)
        .returning(Block).execution_options(populate_existing=True)
    )).scalars().all()
    row.state, row.closed_at, row.to_account_id = "delivered", at, to_account_id
    await audit.append(session, actor="registry", action="credits.move",
                       entity="registry_lock", entity_id=str(lock_id), now=at,
                       data={"from": str(row.account_id), "to": str(to_account_id),
                             "quantity": row.quantity})
    return sorted((block_view(b) for b in moved), key=lambda v: (v.vintage, v.serial))


async def cancel_locked(
    session: AsyncSession, lock_id: UUID, *, purpose: CancelPurpose, beneficiary: str,
    detail: dict[str, Any] | None = None, now: datetime | None = None,
) -> list[BlockView]:
    """Cancel (注销) locked credits for a purpose and a beneficiary: final and public (Art. 29)."""
    if purpose not in PURPOSES:
        raise Invalid("registry.purpose_invalid", f"Unknown purpose {purpose!r}.")
    if not beneficiary.strip():
        raise Invalid("registry.beneficiary_required", "Name the beneficiary.")
    at = now or clock.now()
    row = await _active_lock(session, lock_id)
    holder = (await session.execute(
        select(Organisation.name).join(Account, Account.organisation_id == Organisation.id)
        .where(Account.id == row.account_id)
    )).scalar_one()
    cancellation = Cancellation(
        id=uuid.uuid4(), account_id=row.account_id, holder_name=holder, quantity=row.quantity,
        purpose=purpose, beneficiary=beneficiary, detail=detail, lock_id=lock_id,
        created_at=at,
    )
    session.add(cancellation)
    await session.flush()
    await record_movements(session, "cancel", where="lock_id = :l", params={"l": lock_id},
                           from_account=row.account_id, to_account=None, lock_id=lock_id,
                           cancellation_id=cancellation.id, at=at)
    done = (await session.execute(
        update(Block).where(Block.lock_id == lock_id)
        .values(state="cancelled", lock_id=None, cancellation_id=cancellation.id, updated_at=at)
        .returning(Block).execution_options(populate_existing=True)
    )).scalars().all()
    row.state, row.closed_at = "cancelled", at
    await audit.append(session, actor="registry", action="credits.cancel",
                       entity="registry_cancellation", entity_id=str(cancellation.id), now=at,
                       data={"lock_id": str(lock_id), "quantity": row.quantity,
                             "purpose": purpose, "beneficiary": beneficiary})
    return sorted((block_view(b) for b in done), key=lambda v: (v.vintage, v.serial))


async def holdings(session: AsyncSession, account_id: UUID) -> list[BlockView]:
    """Every block of the account, in any state (held, locked, cancelled)."""
    if await session.get(Account, account_id) is None:
        raise not_found("account")
    rows = (await session.execute(
        select(Block).where(Block.account_id == account_id)
        .order_by(Block.state, Block.vintage, Block.issuance_no, Block.serial_start)
    )).scalars().all()
    return [block_view(b) for b in rows]


def parse_serial(serial: str) -> tuple[int, int, int, int, int]:
    """``CQCER-p-i-v-n`` (one tonne) or ``CQCER-p-i-v-start-end`` → (p, i, v, start, end)."""
    parts = serial.strip().upper().split("-")
    try:
        if parts[0] != "CQCER" or len(parts) not in (5, 6):
            raise ValueError
        nums = [int(p) for p in parts[1:]]
    except ValueError as exc:
        raise Invalid("registry.serial_invalid",
                      "A serial reads CQCER-<project>-<instalment>-<vintage>-<n>[-<end>].") from exc
    p, i, v, start = nums[:4]
    end = nums[4] if len(nums) == 5 else start
    if start < 1 or end < start:
        raise Invalid("registry.serial_invalid", "The serial range is empty.")
    return p, i, v, start, end


async def find_serial(session: AsyncSession, serial: str) -> BlockView | None:
    """The block holding serial ``serial`` (or the whole range ``start-end``), else None."""
    p, i, v, start, end = parse_serial(serial)
    row = (await session.execute(
        select(Block).where(
            Block.project_no == p, Block.instalment_no == i, Block.vintage == v,
            Block.serial_start <= start, Block.serial_end >= end,
        )
    )).scalar_one_or_none()
    return block_view(row) if row else None
