"""The carbon points ledger (碳积分账本): credit, hold, release, redeem (注销), expire, check.

Rules (DOMAIN.md, Art. 31–34):

- Points are integers converted from integer grams of CO2e by the conversion rule in force
  when the behaviour occurred; grams below one point are carried on the account, never lost
  (Art. 31/34). The carry is kept in grams, so it stays exact when the rate changes: grams
  carried from credits at an earlier rate are converted at the rate of the next credit.
- Every credit is a lot valid at most 5 years (Art. 34; also a CHECK in the database).
- Art. 34: points have no money value and cannot be transferred or traded; the operator may
  not move or cancel a citizen's points. Points leave an account only by the citizen's
  redemption (a citizen-initiated :func:`hold`, then :func:`redeem`) or by expiry
  (:func:`expire_due`). This module has no other function that lowers a balance, and none
  that moves points between accounts.

Every function takes the caller's session and never commits; each write is one set-based
statement or one binary COPY (a credit batch's entries and lots), under the lock order
accounts (by citizen) → holds → lots.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.db import array_text, asyncpg_connection
from app.settings import get_settings
from points import binary, sql
from points.errors import (
    AccountNotFound,
    AmountInvalid,
    ConcurrentCredit,
    CreditInvalid,
    CursorInvalid,
    HoldInvalid,
    HoldNotActive,
    HoldNotFound,
    Insufficient,
)

__all__ = [
    "AccountDiff",
    "BalanceView",
    "CreditColumns",
    "CreditIn",
    "CreditResult",
    "EntryView",
    "HoldView",
    "LotView",
    "StatementPage",
    "balance",
    "check",
    "credit_batch",
    "credit_columns",
    "expire_due",
    "export_ledger",
    "get_hold",
    "hold",
    "known_credits",
    "list_lots",
    "open_holds",
    "redeem",
    "release",
    "statement",
]

EXPIRING_WINDOW = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class CreditIn:
    """One accepted behaviour event to credit (the source of a credit entry)."""

    citizen_id: UUID
    scene_id: UUID
    event_id: str
    behaviour: str
    occurred_at: datetime
    grams: int  # CO2e grams of this event after caps (>= 0)
    grams_per_point: int  # from the conversion rule in force at occurred_at (> 0)
    reduction_rule_version_id: UUID
    conversion_rule_version_id: UUID


@dataclass(frozen=True, slots=True)
class CreditResult:
    new: list[tuple[UUID, str]]  # (scene_id, event_id) credited by this call
    duplicates: list[tuple[UUID, str]]  # already in the ledger (or repeated in the batch)
    points: int  # total points credited by this call


@dataclass(frozen=True, slots=True)
class HoldView:
    """A hold (冻结) of points for a redemption."""

    id: UUID
    citizen_id: UUID
    points: int
    status: str  # active | released | redeemed
    expires_at: datetime
    reference: str


@dataclass(frozen=True, slots=True)
class BalanceView:
    citizen_id: UUID
    available: int
    held: int
    expiring_30d: int


@dataclass(frozen=True, slots=True)
class LotView:
    """A lot (积分批次): the points of one credit and how long they are valid. Its id is
    the credit's entry id (``entry_id``, kept for the API's clients)."""

    id: int
    points: int
    remaining: int
    expired: int
    credited_at: datetime
    expires_at: datetime
    entry_id: int


@dataclass(frozen=True, slots=True)
class EntryView:
    """One statement line; a credit names its source (scene, event, rules, grams)."""

    id: int
    kind: str
    points: int
    created_at: datetime
    hold_id: UUID | None = None
    reference: str | None = None
    scene_id: UUID | None = None
    event_id: str | None = None
    behaviour: str | None = None
    occurred_at: datetime | None = None
    grams: int | None = None
    grams_per_point: int | None = None
    reduction_rule_version_id: UUID | None = None
    conversion_rule_version_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class StatementPage:
    items: list[EntryView]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class AccountDiff:
    """An account whose balances disagree with its entries, lots or holds."""

    account_id: UUID
    citizen_id: UUID
    available: int
    held: int
    credited: int
    redeemed: int
    expired: int
    lots_remaining: int
    holds_held: int
    problems: list[str] = field(default_factory=list)


def _now(now: datetime | None) -> datetime:
    return now or clock.now()


MAX_POINTS = 10**12  # far past any balance: keeps a request's amount inside BIGINT arithmetic


def _positive(points: int) -> int:
    if isinstance(points, bool) or not isinstance(points, int) or not 0 < points <= MAX_POINTS:
        raise AmountInvalid()
    return points


# --------------------------------------------------------------------------- credit


@dataclass(slots=True)
class CreditColumns:
    """Fresh credits as aligned columns: the points worker's form (no object per event).

    ``citizen`` holds 16-byte citizen ids (``UUID.bytes``); ``scene``, ``reduction_rule`` and
    ``conversion_rule`` hold UUIDs or UUID strings (asyncpg encodes either). The events are
    distinct and not yet in the ledger, as far as the caller knows (see :func:`known_credits`).
    """

    citizen: list[bytes] = field(default_factory=list)
    scene: list[Any] = field(default_factory=list)
    event_id: list[str] = field(default_factory=list)
    behaviour: list[str] = field(default_factory=list)
    occurred_at: list[datetime] = field(default_factory=list)
    grams: list[int] = field(default_factory=list)
    grams_per_point: list[int] = field(default_factory=list)
    reduction_rule: list[Any] = field(default_factory=list)
    conversion_rule: list[Any] = field(default_factory=list)
    # ``occurred_at`` as PostgreSQL's binary timestamptz (``binary.timestamptz``), when the
    # caller has it: integers sort faster than aware datetimes, and the COPY writes them.
    occurred_us: list[int] | None = None

    def __len__(self) -> int:
        return len(self.event_id)


async def known_credits(
    session: AsyncSession, scenes: Sequence[Any], event_ids: Sequence[str]
) -> set[int]:
    """The positions of the ``(scene, event id)`` pairs already in the ledger (one probe of
    the unique index each, whatever the ledger's size)."""
    driver = await asyncpg_connection(session)
    rows = await driver.fetch(sql.LEDGER_DUPLICATES, scenes, event_ids,
                              list(range(len(event_ids))))
    return {r[0] for r in rows}


async def credit_batch(
    session: AsyncSession, credits: Sequence[CreditIn], *, now: datetime | None = None,
    probe: bool = True,
) -> CreditResult:
    """Credit a batch of events in the caller's transaction, set-based.

    Unique on ``(scene_id, event_id)``: an event already in the ledger (or repeated within
    the batch) is a no-op reported in ``duplicates``. Each new event becomes a credit entry
    naming its source; one with at least one point also becomes a lot expiring
    ``points_validity_days`` after now (Art. 34: at most 5 years). Missing accounts are
    created. After any sequence of credits at one rate, the points credited to an account
    equal floor(total grams / grams_per_point); the remainder is the account's gram carry.

    ``probe=True`` looks the events up in the ledger once their accounts are locked; with
    ``probe=False`` an event already in the ledger makes :func:`credit_columns` refuse the
    whole batch (:class:`ConcurrentCredit`).
    """
    if not credits:
        return CreditResult(new=[], duplicates=[], points=0)
    seen: set[tuple[UUID, str]] = set()
    kept: list[int] = []
    for i, c in enumerate(credits):
        key = (c.scene_id, c.event_id)
        if key not in seen:  # repeated within the batch: the first occurrence counts
            seen.add(key)
            kept.append(i)
    cols = CreditColumns()
    for i in kept:
        c = credits[i]
        cols.citizen.append(c.citizen_id.bytes)
        cols.scene.append(c.scene_id)
        cols.event_id.append(c.event_id)
        cols.behaviour.append(c.behaviour)
        cols.occurred_at.append(c.occurred_at)
        cols.grams.append(c.grams)
        cols.grams_per_point.append(c.grams_per_point)
        cols.reduction_rule.append(c.reduction_rule_version_id)
        cols.conversion_rule.append(c.conversion_rule_version_id)
    points, known = await credit_columns(session, cols, now=now, skip_known=probe)
    if known:
        kept = [i for j, i in enumerate(kept) if j not in known]
    new_ords = set(kept)
    new: list[tuple[UUID, str]] = []
    duplicates: list[tuple[UUID, str]] = []
    for i, c in enumerate(credits):
        (new if i in new_ords else duplicates).append((c.scene_id, c.event_id))
    return CreditResult(new=new, duplicates=duplicates, points=points)


async def credit_columns(
    session: AsyncSession, credits: CreditColumns, *, now: datetime | None = None,
    skip_known: bool = False,
) -> tuple[int, set[int]]:
    """Credit fresh events given as columns, in the caller's transaction; the points credited
    and the positions left out as already in the ledger (``skip_known``: looked up once the
    accounts are locked, so a batch of the same citizens committed meanwhile is seen).

    The accounts are locked (the missing ones created) in citizen order; each account's
    credits are converted in (occurred_at, batch order) order and get ascending entry ids.
    The entries and lots are written with binary COPY (multi-row heap inserts; the rows are
    encoded by :mod:`points.binary`), so the unique index refuses the whole write if an event
    is already in the ledger: that raises :class:`ConcurrentCredit`, and the caller's
    transaction is lost (the caller redoes the batch after :func:`known_credits`).
    """
    if len(credits) == 0:
        return 0, set()
    grams, rates = credits.grams, credits.grams_per_point
    if min(grams) < 0 or min(rates) <= 0:
        bad = next(k for k in range(len(credits)) if grams[k] < 0 or rates[k] <= 0)
        raise CreditInvalid(
            f"event {credits.event_id[bad]}: grams must be >= 0 and grams_per_point > 0")
    now = _now(now)
    expires_at = now + timedelta(days=get_settings().points_validity_days)
    driver = await asyncpg_connection(session)
    accounts = await _lock_accounts(driver, list(dict.fromkeys(credits.citizen)), now)
    known: set[int] = set()
    if skip_known:
        known = await known_credits(session, credits.scene, credits.event_id)
    occurred = credits.occurred_us
    if occurred is None:
        occurred = [binary.timestamptz(t) for t in credits.occurred_at]
    # stable: ties stay in batch order
    order = sorted((k for k in range(len(credits)) if k not in known) if known
                   else range(len(credits)), key=occurred.__getitem__)
    n = len(order)
    if n == 0:
        return 0, known
    citizen = credits.citizen
    account_of = [accounts[citizen[k]][0] for k in order]
    points, carries = _convert(
        account_of, [grams[k] for k in order], [rates[k] for k in order],
        dict(accounts.values()))
    ids = sorted(await driver.fetchval(sql.ENTRY_IDS, n))
    raw = {a: a.bytes for a in carries}  # each credited account's id as 16 bytes
    account_raw = [raw[a] for a in account_of]
    try:
        await driver.copy_to_table(
            "points_entries", columns=sql.CREDIT_COLUMNS, format="binary",
            source=memoryview(binary.entry_rows(
                ids, account_raw, points, now, order, credits.scene, credits.event_id,
                credits.behaviour, occurred, grams, rates, credits.reduction_rule,
                credits.conversion_rule)))
    except asyncpg.UniqueViolationError as exc:
        raise ConcurrentCredit() from exc
    if any(points):
        await driver.copy_to_table(
            "points_lots", columns=sql.LOT_COLUMNS, format="binary",
            source=memoryview(binary.lot_rows(account_raw, ids, points, now, expires_at)))
    added: dict[Any, int] = dict.fromkeys(carries, 0)
    for account, p in zip(account_of, points, strict=True):
        added[account] += p
    await driver.execute(sql.ADD_CREDITS, list(added),
                         array_text(map(str, added.values())),
                         array_text([str(carries[a]) for a in added]))
    return sum(points), known


async def _lock_accounts(
    driver: asyncpg.Connection, citizens: list[bytes], now: datetime
) -> dict[bytes, tuple[Any, int]]:
    """Lock (creating the missing ones) the citizens' accounts in ascending citizen order;
    citizen (16 bytes) → (account id, gram carry) as locked."""
    wanted = sorted(set(citizens))  # byte order is UUID order
    found: dict[bytes, tuple[Any, int]] = {}
    while wanted:
        rows = await driver.fetch(sql.LOCK_ACCOUNTS, [c.hex() for c in wanted], now)
        for citizen, account, carry in rows:
            found[citizen.bytes] = (account, carry)
        # An account another transaction created after the statement's snapshot: again.
        wanted = [c for c in wanted if c not in found]
    return found


def _convert(
    accounts: list[UUID], grams: list[int], rates: list[int], carry0: dict[UUID, int]
) -> tuple[list[int], dict[UUID, int]]:
    """Points of each fresh credit (given in (occurred_at, batch order) order) and each
    credited account's new gram carry (Art. 31/34, rounding never loses a citizen's grams).

    Per account, the credits at the rate (grams per point) of its latest credit convert
    ``carry + grams`` with a running sum, so credits at one rate yield exactly
    floor((carry + sum of grams) / rate) points and leave the rest as the new carry; grams
    left over by credits at another rate in the same batch join the carry first (they are
    converted at the latest rate)."""
    n = len(accounts)
    points = [0] * n
    latest: dict[UUID, int] = {}  # account → rate of its latest credit
    for j in range(n):
        latest[accounts[j]] = rates[j]
    init: dict[tuple[UUID, int], int] = {}
    if any(rates[j] != rates[0] for j in range(n)):
        # Grams another rate leaves over join the carry converted at the latest rate.
        totals: dict[tuple[UUID, int], int] = {}
        for j in range(n):
            key = (accounts[j], rates[j])
            totals[key] = totals.get(key, 0) + grams[j]
        for (account, rate), total in totals.items():
            if rate != latest[account]:
                last = (account, latest[account])
                init[last] = init.get(last, 0) + total % rate
    # running: grams converted so far at (account, rate) and the points they gave.
    running: dict[tuple[UUID, int], tuple[int, int]] = {}
    for j in range(n):
        account, rate = accounts[j], rates[j]
        key = (account, rate)
        state = running.get(key)
        if state is None:
            start = (carry0[account] + init.get(key, 0)) if rate == latest[account] else 0
            state = (start, 0)
        total = state[0] + grams[j]
        floor = total // rate
        points[j] = floor - state[1]
        running[key] = (total, floor)
    carries = {account: running[(account, rate)][0] % rate for account, rate in latest.items()}
    return points, carries


# --------------------------------------------------------------------------- holds


def _hold_view(row: asyncpg.Record) -> HoldView:
    return HoldView(
        id=row["id"], citizen_id=row["citizen_id"], points=row["points"],
        status=row["status"], expires_at=row["expires_at"], reference=row["reference"],
    )


async def hold(
    session: AsyncSession,
    citizen_id: UUID,
    points: int,
    *,
    reference: str,
    ttl_s: int | None = None,
    now: datetime | None = None,
) -> HoldView:
    """The citizen sets ``points`` aside for a redemption (冻结), taking lots
    first-expiring-first. The hold lapses after ``ttl_s`` (default ``hold_ttl_s``) and is
    then released by :func:`expire_due`. Art. 34: this citizen-initiated hold is the only
    way points can later leave an account other than by expiry."""
    _positive(points)
    if (not isinstance(reference, str) or not reference.strip() or len(reference) > 200
            or "\x00" in reference):
        raise HoldInvalid("A hold needs a reference of 1 to 200 characters (no NUL).")
    ttl = get_settings().hold_ttl_s if ttl_s is None else ttl_s
    if ttl <= 0:
        raise HoldInvalid("The hold's time to live must be positive.")
    now = _now(now)
    driver = await asyncpg_connection(session)
    account = await driver.fetchrow(sql.ACCOUNT_FOR_UPDATE, citizen_id)
    if account is None:
        raise AccountNotFound()
    hold_id = uuid.uuid4()
    expires_at = now + timedelta(seconds=ttl)
    ok, live = await driver.fetchrow(
        sql.PLACE_HOLD, account["id"], now, points, hold_id, reference, expires_at
    )
    if not ok:
        raise Insufficient(available=live, requested=points)
    return HoldView(hold_id, citizen_id, points, "active", expires_at, reference)


async def _locked_hold(
    driver: asyncpg.Connection, hold_id: UUID, citizen_id: UUID | None
) -> asyncpg.Record:
    """Lock the hold's account, then the hold (the global lock order)."""
    if not isinstance(hold_id, UUID):
        raise HoldNotFound()
    found = await driver.fetchrow(sql.HOLD_BY_ID, hold_id)
    if found is None or (citizen_id is not None and found["citizen_id"] != citizen_id):
        raise HoldNotFound()
    await driver.execute(sql.ACCOUNT_BY_ID_FOR_UPDATE, found["account_id"])
    row = await driver.fetchrow(sql.HOLD_FOR_UPDATE, hold_id)
    assert row is not None
    return row


async def release(
    session: AsyncSession,
    hold_id: UUID,
    *,
    citizen_id: UUID | None = None,
    now: datetime | None = None,
) -> HoldView:
    """Give a hold's points back to the lots they came from; a part whose lot expired
    meanwhile expires instead. ``citizen_id`` restricts it to that citizen's holds."""
    now = _now(now)
    driver = await asyncpg_connection(session)
    row = await _locked_hold(driver, hold_id, citizen_id)
    if row["status"] != "active":
        raise HoldNotActive(row["status"])
    await driver.fetch(sql.RELEASE_HOLDS.format(which="id = $2"), now, hold_id)
    return HoldView(
        row["id"], row["citizen_id"], row["points"], "released", row["expires_at"],
        row["reference"],
    )


async def redeem(
    session: AsyncSession, hold_id: UUID, *, now: datetime | None = None
) -> HoldView:
    """Redeem a hold: its points are cancelled (注销, Art. 34). Only a hold the citizen
    placed and that is still active can be redeemed; nothing else debits an account."""
    now = _now(now)
    driver = await asyncpg_connection(session)
    row = await _locked_hold(driver, hold_id, None)
    if row["status"] != "active":
        raise HoldNotActive(row["status"])
    if row["expires_at"] <= now:
        raise HoldNotActive("lapsed")
    await driver.fetchval(sql.REDEEM_HOLD, hold_id, now)
    return HoldView(
        row["id"], row["citizen_id"], row["points"], "redeemed", row["expires_at"],
        row["reference"],
    )


async def get_hold(session: AsyncSession, hold_id: UUID) -> HoldView:
    driver = await asyncpg_connection(session)
    row = await driver.fetchrow(sql.HOLD_BY_ID, hold_id)
    if row is None:
        raise HoldNotFound()
    return _hold_view(row)


async def open_holds(session: AsyncSession, citizen_id: UUID) -> list[HoldView]:
    """The citizen's active holds, oldest first."""
    driver = await asyncpg_connection(session)
    rows = await driver.fetch(
        "SELECT h.id, a.citizen_id, h.points, h.status, h.expires_at, h.reference"
        " FROM points_holds h JOIN points_accounts a ON a.id = h.account_id"
        " WHERE a.citizen_id = $1 AND h.status = 'active' ORDER BY h.created_at, h.id",
        citizen_id,
    )
    return [_hold_view(r) for r in rows]


# --------------------------------------------------------------------------- expiry


async def expire_due(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Release holds past their own expiry, then expire the remaining points of every lot
    past ``expires_at`` (Art. 34). Set-based and idempotent: a second run finds nothing.
    Returns the number of lots expired plus holds released."""
    now = _now(now)
    driver = await asyncpg_connection(session)
    await driver.execute(sql.LOCK_DUE_ACCOUNTS, now)
    released = await driver.fetch(sql.RELEASE_HOLDS.format(which="expires_at <= $1"), now)
    lots = await driver.fetchval(sql.EXPIRE_LOTS, now)
    return int(lots) + len(released)


# --------------------------------------------------------------------------- reads


async def balance(
    session: AsyncSession, citizen_id: UUID, *, now: datetime | None = None
) -> BalanceView:
    """Available (not counting lots already past expiry), held, and expiring within 30
    days. A citizen never credited has an empty balance."""
    now = _now(now)
    driver = await asyncpg_connection(session)
    row = await driver.fetchrow(sql.BALANCE, citizen_id, now, now + EXPIRING_WINDOW)
    if row is None:
        return BalanceView(citizen_id, 0, 0, 0)
    return BalanceView(citizen_id, row["available"] - row["due"], row["held"], row["soon"])


async def _account_id(driver: asyncpg.Connection, citizen_id: UUID) -> UUID | None:
    value: UUID | None = await driver.fetchval(
        "SELECT id FROM points_accounts WHERE citizen_id = $1", citizen_id
    )
    return value


async def list_lots(
    session: AsyncSession, citizen_id: UUID, *, include_spent: bool = False,
    now: datetime | None = None,
) -> list[LotView]:
    """The citizen's lots, first-expiring-first: by default those with points left and not
    yet past expiry."""
    now = _now(now)
    driver = await asyncpg_connection(session)
    account_id = await _account_id(driver, citizen_id)
    if account_id is None:
        return []
    if include_spent:
        rows = await driver.fetch(
            "SELECT * FROM points_lots WHERE account_id = $1 ORDER BY expires_at, id",
            account_id,
        )
    else:
        rows = await driver.fetch(
            "SELECT * FROM points_lots WHERE account_id = $1 AND remaining > 0"
            " AND expires_at > $2 ORDER BY expires_at, id",
            account_id, now,
        )
    return [
        LotView(r["id"], r["points"], r["remaining"], r["expired"], r["credited_at"],
                r["expires_at"], r["id"])
        for r in rows
    ]


def _encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"e{entry_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("e"):
            raise ValueError(raw)
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError) as exc:
        raise CursorInvalid() from exc


_ENTRY_COLUMNS = (
    "id, kind, points, created_at, hold_id, reference, scene_id, event_id, behaviour,"
    " occurred_at, grams, grams_per_point, reduction_rule_version_id,"
    " conversion_rule_version_id"
)


async def statement(
    session: AsyncSession, citizen_id: UUID, *, cursor: str | None = None, limit: int = 50
) -> StatementPage:
    """The citizen's entries, newest first, ``limit`` per page; pass ``next_cursor`` on."""
    if not 1 <= limit <= 500:
        raise AmountInvalid("limit must be between 1 and 500.")
    before = _decode_cursor(cursor) if cursor else None
    driver = await asyncpg_connection(session)
    account_id = await _account_id(driver, citizen_id)
    if account_id is None:
        return StatementPage([], None)
    rows = await driver.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM points_entries"
        " WHERE account_id = $1 AND ($2::int8 IS NULL OR id < $2)"
        " ORDER BY id DESC LIMIT $3",
        account_id, before, limit + 1,
    )
    items = [EntryView(**dict(r)) for r in rows[:limit]]
    nxt = _encode_cursor(items[-1].id) if len(rows) > limit else None
    return StatementPage(items, nxt)


async def export_ledger(session: AsyncSession, citizen_id: UUID) -> dict[str, Any]:
    """Everything the ledger holds about a citizen (PIPL 查阅复制权), JSON-ready."""
    driver = await asyncpg_connection(session)
    account = await driver.fetchrow(
        "SELECT id, available, held, gram_carry, created_at FROM points_accounts"
        " WHERE citizen_id = $1", citizen_id,
    )
    if account is None:
        return {"account": None, "entries": [], "lots": [], "holds": []}
    aid = account["id"]
    entries = await driver.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM points_entries WHERE account_id = $1 ORDER BY id", aid
    )
    lots = await driver.fetch("SELECT * FROM points_lots WHERE account_id = $1 ORDER BY id", aid)
    holds = await driver.fetch(
        "SELECT id, points, status, reference, created_at, expires_at, closed_at"
        " FROM points_holds WHERE account_id = $1 ORDER BY created_at, id", aid,
    )
    allocations = await driver.fetch(
        "SELECT x.hold_id, x.lot_id, x.lot_expires_at, x.points FROM points_hold_allocations x"
        " JOIN points_holds h ON h.id = x.hold_id WHERE h.account_id = $1"
        " ORDER BY x.hold_id, x.lot_id", aid,
    )
    return _jsonable({
        "account": dict(account),
        "entries": [dict(r) for r in entries],
        "lots": [dict(r) for r in lots],
        "holds": [dict(r) for r in holds],
        "hold_allocations": [dict(r) for r in allocations],
    })


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


# --------------------------------------------------------------------------- reconciliation


async def check(session: AsyncSession) -> list[AccountDiff]:
    """Reconcile every account (``tanhui points check``): credited = available + held +
    redeemed + expired; available = the lots' remainders = the entries replayed; held = the
    active holds = their allocations. Returns the accounts that differ."""
    driver = await asyncpg_connection(session)
    diffs: list[AccountDiff] = []
    for r in await driver.fetch(sql.CHECK):
        problems: list[str] = []
        if r["credited"] != r["available"] + r["held"] + r["redeemed"] + r["expired"]:
            problems.append("credited != available + held + redeemed + expired")
        if r["available"] != r["lots_remaining"]:
            problems.append("available != sum of lots' remaining")
        if not r["held"] == r["holds_held"] == r["allocated"]:
            problems.append("held != active holds (or their allocations)")
        replay_available = (
            r["credited"] - r["held_in"] + r["released"] - (r["expired"] - r["expired_held"])
        )
        replay_held = r["held_in"] - r["released"] - r["redeemed"] - r["expired_held"]
        if r["available"] != replay_available or r["held"] != replay_held:
            problems.append("balances != entries replayed")
        if r["lot_points"] != r["credited"] or r["lot_expired"] != r["expired"]:
            problems.append("lots != credit/expiry entries")
        if problems:
            diffs.append(AccountDiff(
                account_id=r["id"], citizen_id=r["citizen_id"], available=r["available"],
                held=r["held"], credited=r["credited"], redeemed=r["redeemed"],
                expired=r["expired"], lots_remaining=r["lots_remaining"],
                holds_held=r["holds_held"], problems=problems,
            ))
    return diffs
