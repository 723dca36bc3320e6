"""The hash-chained, append-only audit log (审计日志), kept at least 10 years (Art. 17).

Every admin and registry write calls :func:`append` inside its own transaction. Each row's
``hash`` is SHA-256 over the previous row's hash and a canonical encoding (orjson, sorted
keys) of the row's own fields, so altering, removing or reordering any committed row breaks
the chain at that point and :func:`verify_chain` names it. A trigger makes PostgreSQL refuse
UPDATE, DELETE and TRUNCATE on the table.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import BigInteger, DateTime, Index, LargeBinary, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db import Base
from app.deps import Db, require
from app.errors import Invalid

GENESIS = bytes(32)
"""The ``prev_hash`` of the first row."""

# Arbitrary constant key of the transaction-scoped advisory lock that serialises appends.
_LOCK_KEY = 0x7A_75_64_69_74  # "audit"
_VERIFY_PAGE = 5_000


class AuditEntry(Base):
    """One audit record (审计记录). Never updated or deleted."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    entity: Mapped[str] = mapped_column(Text)
    entity_id: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary)
    hash: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_audit_log_entity", "entity", "entity_id", "id"),)


def _default(value: Any) -> Any:
    # Decimal, date, and anything else orjson does not encode natively: as text.
    return str(value)


def _normalise(data: dict[Any, Any] | None) -> dict[str, Any]:
    """The JSON value as PostgreSQL's jsonb will give it back (so hashing is reproducible)."""
    result = orjson.loads(
        orjson.dumps(data or {}, default=_default, option=orjson.OPT_NON_STR_KEYS)
    )
    if not isinstance(result, dict):
        raise TypeError("audit data must be a JSON object")
    return result


def _canonical_at(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def compute_hash(
    prev_hash: bytes, *, id: int, at: datetime, actor: str, action: str, entity: str,
    entity_id: str, data: dict[str, Any],
) -> bytes:
    """SHA-256 over ``prev_hash`` and the canonical encoding of one row's fields."""
    body = orjson.dumps(
        {
            "id": id, "at": _canonical_at(at), "actor": actor, "action": action,
            "entity": entity, "entity_id": entity_id, "data": data,
            "prev_hash": prev_hash.hex(),
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(prev_hash + body).digest()


async def append(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    entity: str,
    entity_id: str,
    data: dict[Any, Any] | None = None,
    now: datetime | None = None,
) -> int:
    """Append one record to the chain in the caller's transaction; return its id.

    Appends are serialised by a transaction-scoped advisory lock held until the caller
    commits or rolls back, so concurrent writers extend one linear chain. The caller's
    transaction must run at READ COMMITTED (the default) so that, once it holds the lock,
    it sees the head written by the previous holder.
    """
    at = (now or clock.now()).astimezone(UTC)
    payload = _normalise(data)
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    prev = (
        await session.execute(text("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1"))
    ).scalar()
    prev_hash = bytes(prev) if prev is not None else GENESIS
    new_id = int(
        (await session.execute(text("SELECT nextval(pg_get_serial_sequence('audit_log', 'id'))")))
        .scalar_one()
    )
    digest = compute_hash(
        prev_hash, id=new_id, at=at, actor=actor, action=action, entity=entity,
        entity_id=entity_id, data=payload,
    )
    await session.execute(
        text(
            "INSERT INTO audit_log (id, at, actor, action, entity, entity_id, data, prev_hash, "
            "hash) VALUES (:id, :at, :actor, :action, :entity, :entity_id, "
            "CAST(:data AS jsonb), :prev_hash, :hash)"
        ),
        {
            "id": new_id, "at": at, "actor": actor, "action": action, "entity": entity,
            "entity_id": entity_id, "data": orjson.dumps(payload).decode(),
            "prev_hash": prev_hash, "hash": digest,
        },
    )
    return new_id


def actor_of(principal: Any) -> str:
    """How a principal is named in the log: ``"<kind>:<id>"`` (e.g. ``admin:<uuid>``)."""
    if principal is None:
        return "system"
    return f"{principal.kind}:{principal.id}"


async def verify_chain(session: AsyncSession) -> list[int]:
    """Ids of rows whose hash does not verify or whose link to the previous row is broken.

    A row altered in place fails its own hash; a row removed, inserted or re-hashed breaks
    the next row's ``prev_hash`` link. Reads the table in pages, in id order.
    """
    bad: list[int] = []
    prev_hash = GENESIS
    last_id = 0
    while True:
        rows = (
            await session.execute(
                text(
                    "SELECT id, at, actor, action, entity, entity_id, data::text, prev_hash, "
                    "hash FROM audit_log WHERE id > :after ORDER BY id LIMIT :n"
                ),
                {"after": last_id, "n": _VERIFY_PAGE},
            )
        ).all()
        for id_, at, actor, action, entity, entity_id, data, stored_prev, stored in rows:
            stored_prev, stored = bytes(stored_prev), bytes(stored)
            expected = compute_hash(
                stored_prev, id=id_, at=at, actor=actor, action=action, entity=entity,
                entity_id=entity_id, data=orjson.loads(data),
            )
            if stored != expected or stored_prev != prev_hash:
                bad.append(id_)
            prev_hash = stored
            last_id = id_
        if len(rows) < _VERIFY_PAGE:
            return bad


# --- read API: GET /v1/admin/audit --------------------------------------------------------


class AuditRecord(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditRecord]
    next_cursor: str | None


def _encode_cursor(id_: int) -> str:
    return base64.urlsafe_b64encode(f"a:{id_}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, value = raw.partition(":")
        if tag != "a" or not value.isdigit():
            raise ValueError(raw)
        return int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid("audit.cursor_invalid", "The cursor is not valid.") from exc


async def list_entries(
    session: AsyncSession,
    *,
    limit: int = 50,
    before_id: int | None = None,
    entity: str | None = None,
    entity_id: str | None = None,
    actor: str | None = None,
    action: str | None = None,
) -> list[AuditRecord]:
    """Newest first, ids below ``before_id``, optionally filtered."""
    clauses = ["TRUE"]
    params: dict[str, Any] = {"n": limit}
    for name, value in (("entity", entity), ("entity_id", entity_id), ("actor", actor),
                        ("action", action)):
        if value is not None:
            clauses.append(f"{name} = :{name}")
            params[name] = value
    if before_id is not None:
        clauses.append("id < :before")
        params["before"] = before_id
    rows = (
        await session.execute(
            text(
                "SELECT id, at, actor, action, entity, entity_id, data, prev_hash, hash "
                f"FROM audit_log WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT :n"
            ),
            params,
        )
    ).all()
    return [
        AuditRecord(
            id=r.id, at=r.at, actor=r.actor, action=r.action, entity=r.entity,
            entity_id=r.entity_id, data=r.data, prev_hash=bytes(r.prev_hash).hex(),
            hash=bytes(r.hash).hex(),
        )
        for r in rows
    ]


router = APIRouter(tags=["audit"])


@router.get("/v1/admin/audit", response_model=AuditPage, summary="Read the audit log")
async def read_audit_log(
    admin: require("audit.read"),  # type: ignore[valid-type]
    db: Db,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    entity: str | None = None,
    entity_id: str | None = None,
    actor: str | None = None,
    action: str | None = None,
) -> AuditPage:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    before = _decode_cursor(cursor) if cursor else None
    async with db.transaction() as session:
        items = await list_entries(
            session, limit=limit + 1, before_id=before, entity=entity, entity_id=entity_id,
            actor=actor, action=action,
        )
    more = len(items) > limit
    items = items[:limit]
    return AuditPage(items=items, next_cursor=_encode_cursor(items[-1].id) if more else None)
