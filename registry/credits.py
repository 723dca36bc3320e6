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
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from sqlalchemy import ARRAY, Uuid, any_, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from registry import carving
from registry.errors import Conflict, Invalid, not_found
from registry.models import Account, Block, Cancellation, Lock, Organisation
from registry.schemas import BlockView, LockView, ProductFilter, serial_range

CancelPurpose = Literal["compliance", "neutrality", "judicial", "public_good", "voluntary",
                        "sanction", "owner_gone"]
PURPOSES = ("compliance", "neutrality", "judicial", "public_good", "voluntary", "sanction",
            "owner_gone")
_INSERT_LOCKS = text("""
    INSERT INTO registry_locks (id, account_id, quantity, purpose, reference, product, state,
                                created_at, closed_at, to_account_id)
    SELECT u.id, u.acc, u.q, u.purpose, u.ref, CAST(u.product AS jsonb), u.state, :at,
           u.closed, u.to_acc
    FROM unnest(CAST(:id AS uuid[]), CAST(:acc AS uuid[]), CAST(:q AS int8[]),
                CAST(:purpose AS text[]), CAST(:ref AS text[]), CAST(:product AS text[]),
                CAST(:state AS text[]), CAST(:closed AS timestamptz[]),
                CAST(:to_acc AS uuid[]))
         AS u(id, acc, q, purpose, ref, product, state, closed, to_acc)
""")


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


def _any(column: Any, name: str, ids: Iterable[UUID]) -> Any:
    """``column = ANY(:name)`` with one uuid[] parameter: the statement's text (and the
    driver's prepared plan) stays the same whatever the number of ids (``IN`` expands to one
    parameter per id, a new statement for each count)."""
    return column == any_(bindparam(name, list(ids), type_=ARRAY(Uuid())))


async def lock_accounts(session: AsyncSession, account_ids: Iterable[UUID]) -> None:
    """Take the row locks of these accounts, in id order (no deadlock between two movers)."""
    ids = sorted(set(account_ids))
    found = (
        await session.execute(
            select(Account.id).where(_any(Account.id, "ids", ids)).order_by(Account.id)
            .with_for_update()
        )
    ).scalars().all()
    if len(found) != len(ids):
        raise not_found("account")


_DEFERRED = "registry.deferred_audit"


async def _audit(session: AsyncSession, **record: Any) -> None:
    """Append the credit service's audit record now, or at the end of the enclosing
    :func:`deferred_audit` block."""
    pending: list[dict[str, Any]] | None = session.info.get(_DEFERRED)
    if pending is not None:
        pending.append(record)
    else:
        await audit.append(session, **record)


@asynccontextmanager
async def deferred_audit(session: AsyncSession) -> AsyncIterator[None]:
    """Inside this block the credit service's audit records are kept and appended, in order,
    when the block ends without error: a batch caller (the order book) takes the audit
    chain's global lock only at the end of its transaction, after its row locks and writes,
    so concurrent batches of other products are not serialised on it for their whole
    duration. On error nothing is appended (the transaction rolls back anyway)."""
    if _DEFERRED in session.info:  # nested: the outer block appends
        yield
        return
    pending: list[dict[str, Any]] = []
    session.info[_DEFERRED] = pending
    try:
        yield
    finally:
        session.info.pop(_DEFERRED, None)
    for record in pending:
        await audit.append(session, **record)


async def trading_refusals(session: AsyncSession, organisation_ids: Iterable[UUID]
                           ) -> dict[UUID, str]:
    """Which of these organisations may not move CQCER by trade or use, and why (one
    statement): ``"dissolved"`` — the registry found the owner gone (主体灭失, Art. 22) and
    its credits were cancelled, so nothing may reach or leave its account again (Art. 30);
    ``"staff"`` — staff of the registry agency, the operator or the exchange (Art. 37)."""
    ids = sorted(set(organisation_ids))
    if not ids:
        return {}
    rows = (await session.execute(
        select(Organisation.id, Organisation.status, Organisation.staff_of)
        .where(Organisation.id.in_(ids),
               (Organisation.status != "active") | Organisation.staff_of.is_not(None))
    )).all()
    return {r.id: "dissolved" if r.status != "active" else "staff" for r in rows}


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


@dataclass(frozen=True, slots=True)
class LockRequest:
    """Lock ``quantity`` tonnes held by ``account_id`` (of ``product`` if given) for
    ``purpose`` (``reference`` names the trade or offset).

    ``deliver`` lists deliveries out of the new lock made at once, in order, as
    ``(to_account_id, tonnes)`` (a sell order that fills on entry): the registry records the
    lock and each delivery, and the rest stays locked (a lock delivered in full is closed)."""

    account_id: UUID
    quantity: int
    purpose: str
    reference: str
    product: ProductFilter | None = None
    deliver: tuple[tuple[UUID, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Delivery:
    """Deliver ``quantity`` tonnes of a lock (everything still under it if None) to the
    account ``to_account_id``, where they are held afterwards."""

    lock_id: UUID
    to_account_id: UUID
    quantity: int | None = None


def _product_key(p: ProductFilter | None) -> tuple[str, int | None, UUID | None] | None:
    return (p.category, p.vintage, p.project_id) if p is not None else None


async def held_quantities(
    session: AsyncSession, account_ids: Iterable[UUID], product: ProductFilter | None = None,
) -> dict[UUID, int]:
    """Tonnes held (not locked, not cancelled) by each account, of ``product`` if given; one
    statement. Stable for as long as the caller holds the accounts' row locks."""
    ids = sorted(set(account_ids))
    size = Block.serial_end - Block.serial_start + 1
    cond = [_any(Block.account_id, "ids", ids), Block.state == "held"]
    if product is not None:
        cond.append(Block.category == product.category)
        if product.vintage is not None:
            cond.append(Block.vintage == product.vintage)
        if product.project_id is not None:
            cond.append(Block.project_id == product.project_id)
    found = dict((await session.execute(
        select(Block.account_id, func.sum(size)).where(*cond).group_by(Block.account_id)
    )).all())
    return {a: int(found.get(a, 0)) for a in ids}


def _segments(requests: Sequence[LockRequest]) -> list[list[int]]:
    """Split the requests into consecutive segments in which no account is asked for two
    different products: within one, each account's requests draw on one run of blocks."""
    out: list[list[int]] = [[]]
    seen: dict[UUID, object] = {}
    for i, r in enumerate(requests):
        key = _product_key(r.product)
        if seen.get(r.account_id, key) != key:
            out.append([])
            seen = {}
        seen[r.account_id] = key
        out[-1].append(i)
    return out


async def lock_many(
    session: AsyncSession, requests: Sequence[LockRequest], *, now: datetime | None = None,
) -> list[LockView]:
    """Lock credits for many requests at once (锁定), in a few set-based statements; the
    result is what the same :func:`lock` calls (and :func:`deliver` calls for the requests'
    ``deliver``) in this order would give: each request takes the account's held credits (of
    its product) oldest vintage first, splitting the last block if needed; each block is
    written once. All or nothing: ``registry.quantity_invalid``,
    ``registry.account_not_found`` or ``registry.insufficient_credits`` (with the request's
    ``index``), and nothing is locked.

    Takes the row locks of every account involved once, in id order; one audit record for
    the batch. Each view lists the blocks still under its lock."""
    return (await _lock_many(session, requests, now))[0]


async def _lock_many(session: AsyncSession, requests: Sequence[LockRequest],
                     now: datetime | None) -> tuple[list[LockView], list[list[carving.Take]]]:
    if not requests:
        return [], []
    for i, r in enumerate(requests):
        if r.quantity < 1 or any(q < 1 for _, q in r.deliver) \
                or sum(q for _, q in r.deliver) > r.quantity:
            raise Invalid("registry.quantity_invalid",
                          "Quantities are whole tonnes, at least 1, and a lock delivers at "
                          "most what it locks.", index=i)
    at = now or clock.now()
    await lock_accounts(session, [a for r in requests
                                  for a in (r.account_id, *(to for to, _ in r.deliver))])
    ids = [uuid.uuid4() for _ in requests]
    parts: list[list[carving.Take]] = []
    for r, lid in zip(requests, ids, strict=True):
        mine = [carving.Take(run=0, quantity=q, account_id=to, state="held", lock_id=None,
                             kinds=("lock", "deliver"), from_account=r.account_id,
                             via_lock=lid) for to, q in r.deliver]
        rest = r.quantity - sum(q for _, q in r.deliver)
        if rest:
            mine.append(carving.Take(run=0, quantity=rest, account_id=r.account_id,
                                     state="locked", lock_id=lid, kinds=("lock",),
                                     from_account=r.account_id, via_lock=lid))
        parts.append(mine)
    segments = _segments(requests)
    if len(segments) == 1:
        await _lock_segment(session, requests, ids, parts, segments[0], at)
    else:
        async with session.begin_nested():  # all or nothing across segments
            for seg in segments:
                await _lock_segment(session, requests, ids, parts, seg, at)
    await _audit(
        session, actor="registry", action="credits.lock", entity="registry_lock",
        entity_id=str(ids[0]), now=at,
        data={"locks": [{"id": str(lid), "account_id": str(r.account_id),
                         "quantity": r.quantity, "purpose": r.purpose,
                         "reference": r.reference,
                         **({"delivered": [[str(to), q] for to, q in r.deliver]}
                            if r.deliver else {})}
                        for r, lid in zip(requests, ids, strict=True)]})
    return [LockView(id=lid, account_id=r.account_id, quantity=r.quantity, purpose=r.purpose,
                     reference=r.reference, state=_lock_state(r), created_at=at,
                     blocks=[b for t in mine if t.state == "locked" for b in t.blocks])
            for r, lid, mine in zip(requests, ids, parts, strict=True)], parts


def _lock_state(r: LockRequest) -> str:
    return "delivered" if sum(q for _, q in r.deliver) == r.quantity else "active"


async def _lock_segment(
    session: AsyncSession, requests: Sequence[LockRequest], ids: list[UUID],
    parts: list[list[carving.Take]], seg: list[int], at: datetime,
) -> None:
    runs: dict[UUID, int] = {}
    of: dict[int, int] = {}  # request -> its run
    need: list[int] = []
    keys: list[tuple[UUID, ProductFilter | None]] = []
    for i in seg:
        r = requests[i]
        g = runs.setdefault(r.account_id, len(keys))
        if g == len(keys):
            keys.append((r.account_id, r.product))
            need.append(0)
        need[g] += r.quantity
        of[i] = g
        for t in parts[i]:
            t.run = g
    found = await carving.held_runs(session, keys, need)
    for g, run in enumerate(found):
        if run.total < need[g]:
            upto = 0
            for i in seg:  # the first request of the run that cannot be served
                if of[i] == g:
                    upto += requests[i].quantity
                    if upto > run.total:
                        break
            raise Conflict(
                "registry.insufficient_credits",
                f"The account holds {run.total} matching tonnes, fewer than {need[g]}.",
                available=run.total, requested=need[g], index=i,
            )
    mine = [requests[i] for i in seg]
    closed = [_lock_state(r) == "delivered" for r in mine]
    await session.execute(_INSERT_LOCKS, {
        "at": at, "id": [ids[i] for i in seg], "acc": [r.account_id for r in mine],
        "q": [r.quantity for r in mine], "purpose": [r.purpose for r in mine],
        "ref": [r.reference for r in mine],
        "product": [r.product.model_dump_json() if r.product is not None else None
                    for r in mine],
        "state": ["delivered" if c else "active" for c in closed],
        "closed": [at if c else None for c in closed],
        "to_acc": [r.deliver[-1][0] if c else None for r, c in zip(mine, closed, strict=True)],
    })
    await carving.write(session, carving.plan(found, [t for i in seg for t in parts[i]]), at)


async def lock(
    session: AsyncSession, *, account_id: UUID, quantity: int, purpose: str, reference: str,
    product: ProductFilter | None = None, now: datetime | None = None,
) -> LockView:
    """Lock ``quantity`` tonnes held by the account (锁定), oldest vintage first, splitting the
    last block if needed. ``Conflict("registry.insufficient_credits")`` if it holds too few."""
    return (await lock_many(session, [LockRequest(account_id, quantity, purpose, reference,
                                                  product)], now=now))[0]


async def _blocks_of_lock(session: AsyncSession, lock_id: UUID) -> list[BlockView]:
    rows = (await session.execute(
        select(Block).where(Block.lock_id == lock_id).order_by(Block.vintage, Block.issuance_no,
                                                               Block.serial_start)
        .execution_options(populate_existing=True)
    )).scalars().all()
    return [block_view(b) for b in rows]


async def _active_locks(session: AsyncSession, lock_ids: Sequence[UUID],
                        other_accounts: Iterable[UUID] = ()) -> dict[UUID, Any]:
    """The locks (id → row with ``account_id``), with their accounts' (and
    ``other_accounts``') row locks taken in id order; every one must be active."""
    wanted = set(lock_ids)
    holders = dict((await session.execute(
        select(Lock.id, Lock.account_id).where(_any(Lock.id, "ids", wanted))
    )).all())
    if len(holders) != len(wanted):
        raise not_found("lock")
    await lock_accounts(session, [*holders.values(), *other_accounts])
    rows = {r.id: r for r in (await session.execute(
        select(Lock.id, Lock.account_id, Lock.state).where(_any(Lock.id, "ids", sorted(wanted)))
        .order_by(Lock.id).with_for_update()
    )).all()}
    for r in rows.values():
        if r.state != "active":
            # Art. 29: a cancelled lock (and its cancelled credits) can never be used again.
            raise Conflict("registry.lock_not_active", f"The lock is {r.state}.",
                           state=r.state, lock_id=str(r.id))
    return rows


async def unlock_many(session: AsyncSession, lock_ids: Sequence[UUID], *,
                      now: datetime | None = None) -> None:
    """Release locks: their credits are held again by the same accounts. One audit record."""
    if not lock_ids:
        return
    at = now or clock.now()
    ids = sorted(set(lock_ids))
    await _active_locks(session, ids)
    await session.execute(text(
        "INSERT INTO registry_movements (kind, issuance_id, serial_start, serial_end, "
        "from_account_id, to_account_id, lock_id, at) SELECT 'unlock', issuance_id, "
        "serial_start, serial_end, account_id, account_id, lock_id, :at FROM registry_blocks "
        "WHERE lock_id = ANY(:ids)"), {"ids": ids, "at": at})
    await session.execute(
        update(Block).where(Block.lock_id.in_(ids))
        .values(state="held", lock_id=None, updated_at=at)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Lock).where(Lock.id.in_(ids)).values(state="released", closed_at=at)
        .execution_options(synchronize_session=False)
    )
    await _audit(session, actor="registry", action="credits.unlock",
                       entity="registry_lock", entity_id=str(ids[0]), now=at,
                       data={"locks": [str(i) for i in ids]})


async def unlock(session: AsyncSession, lock_id: UUID, *, now: datetime | None = None) -> None:
    """Release a lock: its credits are held again by the same account."""
    await unlock_many(session, [lock_id], now=now)


async def deliver_many(
    session: AsyncSession, deliveries: Sequence[Delivery], *, now: datetime | None = None,
) -> list[list[BlockView]]:
    """Deliver locked credits (DvP delivery, 交割) in a few set-based statements, in this
    order: each delivery takes the next tonnes under its lock (oldest vintage first) to its
    account, where they are held afterwards; the rest stays locked under the same lock. A lock
    whose last tonne is delivered is closed as ``delivered``. Returns each delivery's blocks.

    All or nothing: ``registry.lock_not_found``, ``registry.lock_not_active``,
    ``registry.quantity_invalid``, ``registry.account_not_found``, or
    ``registry.delivery_exceeds_lock`` (more than the lock holds), and nothing moves.
    Takes the row locks of every holder and receiver once, in id order; one audit record."""
    if not deliveries:
        return []
    at = now or clock.now()
    runs: dict[UUID, int] = {}
    need: list[int] = []
    open_ended: set[int] = set()
    for i, d in enumerate(deliveries):
        g = runs.setdefault(d.lock_id, len(need))
        if g == len(need):
            need.append(0)
        if g in open_ended:
            raise Invalid("registry.quantity_invalid",
                          "A delivery of the whole rest of a lock must be its last.", index=i)
        if d.quantity is None:
            open_ended.add(g)
        elif d.quantity < 1:
            raise Invalid("registry.quantity_invalid", "The quantity must be at least 1 tonne.",
                          index=i)
        else:
            need[g] += d.quantity
    lock_ids = list(runs)
    rows = await _active_locks(session, lock_ids, (d.to_account_id for d in deliveries))
    found = await carving.lock_runs(
        session, lock_ids, [carving.ALL if g in open_ended else n for g, n in enumerate(need)])
    takes: list[carving.Take] = []
    for i, d in enumerate(deliveries):
        g = runs[d.lock_id]
        q = d.quantity if d.quantity is not None else found[g].total - need[g]
        if found[g].total < need[g] or q < 1:
            raise Conflict("registry.delivery_exceeds_lock",
                           f"The lock holds {found[g].total} tonnes, fewer than delivered.",
                           available=found[g].total, requested=need[g], index=i)
        takes.append(carving.Take(run=g, quantity=q, account_id=d.to_account_id, state="held",
                                  lock_id=None, kinds=("deliver",),
                                  from_account=rows[d.lock_id].account_id, via_lock=d.lock_id))
    await carving.write(session, carving.plan(found, takes), at)
    last: dict[UUID, UUID] = {}
    delivered = {t.via_lock: 0 for t in takes}
    for t in takes:
        delivered[t.via_lock] += t.quantity
        last[t.via_lock] = t.account_id
    closed = [lid for lid, q in delivered.items() if q == found[runs[lid]].total]
    if closed:
        await session.execute(text(
            "UPDATE registry_locks l SET state = 'delivered', closed_at = :at, "
            "to_account_id = u.to_acc FROM unnest(CAST(:ids AS uuid[]), "
            "CAST(:to_acc AS uuid[])) AS u(id, to_acc) WHERE l.id = u.id"),
            {"at": at, "ids": closed, "to_acc": [last[lid] for lid in closed]})
    await _audit(
        session, actor="registry", action="credits.deliver", entity="registry_lock",
        entity_id=str(deliveries[0].lock_id), now=at,
        data={"deliveries": [{"lock_id": str(t.via_lock), "from": str(t.from_account),
                              "to": str(t.account_id), "quantity": t.quantity}
                             for t in takes]})
    return [t.blocks for t in takes]


async def deliver(
    session: AsyncSession, lock_id: UUID, *, quantity: int, to_account_id: UUID,
    now: datetime | None = None,
) -> list[BlockView]:
    """Deliver ``quantity`` tonnes of a lock to another account (a partial fill): the rest
    stays locked under the same lock."""
    return (await deliver_many(session, [Delivery(lock_id, to_account_id, quantity)],
                               now=now))[0]


async def move_locked(
    session: AsyncSession, lock_id: UUID, *, to_account_id: UUID, now: datetime | None = None,
) -> list[BlockView]:
    """Deliver everything under a lock to another account (DvP delivery): held there
    afterwards; the lock is closed as ``delivered``."""
    return (await deliver_many(session, [Delivery(lock_id, to_account_id)], now=now))[0]


async def transfer(
    session: AsyncSession, *, from_account_id: UUID, to_account_id: UUID, quantity: int,
    purpose: str, reference: str, product: ProductFilter | None = None,
    now: datetime | None = None,
) -> list[BlockView]:
    """Lock and deliver ``quantity`` held tonnes to another account in one go (a free
    transfer); returns the delivered blocks. Both accounts' row locks are taken first, in id
    order, so two opposite transfers between the same accounts never deadlock."""
    _, parts = await _lock_many(session, [LockRequest(
        from_account_id, quantity, purpose, reference, product,
        deliver=((to_account_id, quantity),))], now)
    return [b for t in parts[0] for b in t.blocks]


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
    row = (await _active_locks(session, [lock_id]))[lock_id]
    holder = (await session.execute(
        select(Organisation.name).join(Account, Account.organisation_id == Organisation.id)
        .where(Account.id == row.account_id)
    )).scalar_one()
    # What is still under the lock (a partly delivered lock holds less than it locked).
    quantity = int((await session.execute(
        select(func.sum(Block.serial_end - Block.serial_start + 1))
        .where(Block.lock_id == lock_id, Block.state == "locked")
    )).scalar_one())
    cancellation = Cancellation(
        id=uuid.uuid4(), account_id=row.account_id, holder_name=holder, quantity=quantity,
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
    await session.execute(
        update(Lock).where(Lock.id == lock_id).values(state="cancelled", closed_at=at)
        .execution_options(synchronize_session=False)
    )
    await _audit(session, actor="registry", action="credits.cancel",
                       entity="registry_cancellation", entity_id=str(cancellation.id), now=at,
                       data={"lock_id": str(lock_id), "quantity": quantity,
                             "purpose": purpose, "beneficiary": beneficiary})
    return sorted((block_view(b) for b in done),
                  key=lambda v: (v.vintage, v.project_no, v.serial_start))


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
