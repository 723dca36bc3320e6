"""``Idempotency-Key`` for every state-changing request (幂等键): a pure ASGI middleware.

A POST, PUT, PATCH or DELETE carrying ``Idempotency-Key`` runs at most once per caller and
key. The caller is the SHA-256 of its ``Authorization`` (or ``X-Api-Key``) header, with the
method and path, so two callers never share keys. The first request claims the key in its own
short transaction, runs, and stores its response (if the status is below 500; a 5xx or a
crash frees the key so a retry can proceed). A repeat with the same body then gets the stored
response byte for byte with ``Idempotent-Replayed: true``; the same key with another body is
``409 idempotency.key_reused``; a repeat while the first is still running is
``409 idempotency.in_progress``.

Keys live ``settings.idempotency_ttl_s`` (24 h): an older key is ignored (overwritten by the
next claim) and purged, opportunistically on the claim path and by :func:`purge_expired`.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import DateTime, LargeBinary, SmallInteger, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import clock
from app.db import Base, Database
from app.settings import get_settings

log = structlog.get_logger()

METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HEADER = b"idempotency-key"
REPLAYED = (b"idempotent-replayed", b"true")
MAX_KEY_LENGTH = 255
# A claim still "in progress" this long after it was made belongs to a process that died
# mid-request (every request is bounded far below this by the database's command timeout);
# the next request may take the key over instead of waiting for the 24 h expiry.
IN_PROGRESS_LEASE_S = 300
# One claim in this many also purges a bounded batch of expired keys.
PURGE_EVERY = 64
PURGE_BATCH = 1_000


class IdempotencyKey(Base):
    """A claimed key and, once the request completed, its stored response."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(Text)
    response_status: Mapped[int | None] = mapped_column(SmallInteger)
    response_headers: Mapped[list[list[str]] | None] = mapped_column(JSONB)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def valid_key(key: bytes) -> bool:
    """1–255 visible ASCII characters (no spaces, no control characters)."""
    return 1 <= len(key) <= MAX_KEY_LENGTH and all(0x21 <= b <= 0x7E for b in key)


def caller_scope(headers: dict[bytes, bytes], method: str, path: str) -> bytes:
    """SHA-256 of the caller's credential, the method and the path."""
    credential = headers.get(b"authorization") or headers.get(b"x-api-key") or b""
    h = hashlib.sha256()
    for part in (credential, method.encode(), path.encode()):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def fingerprint(query_string: bytes, body: bytes) -> bytes:
    """SHA-256 of the request body (and its query string, which changes its meaning too)."""
    h = hashlib.sha256()
    h.update(len(query_string).to_bytes(4, "big"))
    h.update(query_string)
    h.update(body)
    return h.digest()


async def purge_expired(
    session: AsyncSession, *, now: datetime | None = None, limit: int = PURGE_BATCH
) -> int:
    """Delete up to ``limit`` keys older than the TTL; return how many. Safe to run anywhere
    at once (rows another purge holds are skipped)."""
    cutoff = (now or clock.now()) - timedelta(seconds=get_settings().idempotency_ttl_s)
    result = await session.execute(
        text(
            "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM idempotency_keys WHERE created_at < :cutoff "
            "LIMIT :n FOR UPDATE SKIP LOCKED))"
        ),
        {"cutoff": cutoff, "n": limit},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _problem(status: int, code: str, title: str, detail: str, path: str) -> tuple[int, bytes]:
    return status, orjson.dumps({
        "type": f"https://tanhui.cq/problems/{code}", "title": title, "status": status,
        "code": code, "detail": detail, "instance": path,
    })


async def _send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_problem(send: Send, status: int, body: bytes) -> None:
    await _send_whole(send, status, [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ], body)


class IdempotencyMiddleware:
    """Runs a state-changing request at most once per (caller, ``Idempotency-Key``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        key_raw = headers.get(HEADER)
        if key_raw is None:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if not valid_key(key_raw):
            await _send_problem(send, *_problem(
                400, "idempotency.key_invalid", "Bad request",
                f"Idempotency-Key must be 1–{MAX_KEY_LENGTH} visible ASCII characters.", path))
            return

        body, more = await _read_body(receive)
        key = key_raw.decode("ascii")
        scope_hash = caller_scope(headers, scope["method"], path)
        print_ = fingerprint(scope.get("query_string", b""), body)
        db: Database = scope["app"].state.runtime.db

        for _ in range(3):
            if await _claim(db, scope_hash, key, print_):
                await self._run_and_store(scope, _replay_receive(body, more, receive), send, db,
                                          scope_hash, key)
                return
            row = await _load(db, scope_hash, key)
            if row is None:
                continue  # the holder failed and freed the key between our two statements
            if bytes(row.fingerprint) != print_:
                await _send_problem(send, *_problem(
                    409, "idempotency.key_reused", "Conflict",
                    "This Idempotency-Key was used with a different request.", path))
                return
            if row.status != "completed":
                await _send_problem(send, *_problem(
                    409, "idempotency.in_progress", "Conflict",
                    "A request with this Idempotency-Key is still being processed.", path))
                return
            stored = [(k.encode("latin-1"), v.encode("latin-1"))
                      for k, v in row.response_headers or ()]
            await _send_whole(send, row.response_status, [*stored, REPLAYED],
                              bytes(row.response_body or b""))
            return
        await _send_problem(send, *_problem(
            409, "idempotency.in_progress", "Conflict",
            "A request with this Idempotency-Key is still being processed.", path))

    async def _run_and_store(self, scope: Scope, receive: Receive, send: Send, db: Database,
                             scope_hash: bytes, key: str) -> None:
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        completed = False

        async def capture(message: Message) -> None:
            nonlocal status, headers, completed
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    # Store before the client sees the end of the answer, so a retry made
                    # after the answer arrived always finds it.
                    completed = True
                    await _finish(db, scope_hash, key, status, headers, b"".join(chunks))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            if not completed:
                await _release(db, scope_hash, key)
            raise
        if not completed:
            await _release(db, scope_hash, key)


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole request body; also any non-body message that arrived while reading."""
    parts: list[bytes] = []
    extra: list[Message] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        else:
            extra.append(message)
            break
    return b"".join(parts), extra


def _replay_receive(body: bytes, extra: list[Message], receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False},
                              *extra]

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _claim(db: Database, scope_hash: bytes, key: str, print_: bytes) -> bool:
    """Insert the key as in progress (or take over an expired or abandoned one)."""
    now = clock.now()
    ttl = get_settings().idempotency_ttl_s
    async with db.transaction() as session:
        claimed = (
            await session.execute(
                text(
                    "INSERT INTO idempotency_keys (scope, key, fingerprint, status, created_at) "
                    "VALUES (:scope, :key, :fp, 'in_progress', :now) "
                    "ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, "
                    "status = 'in_progress', created_at = EXCLUDED.created_at, "
                    "response_status = NULL, response_headers = NULL, response_body = NULL, "
                    "completed_at = NULL "
                    "WHERE idempotency_keys.created_at < :expired OR "
                    "(idempotency_keys.status = 'in_progress' "
                    "AND idempotency_keys.created_at < :abandoned) "
                    "RETURNING 1"
                ),
                {
                    "scope": scope_hash, "key": key, "fp": print_, "now": now,
                    "expired": now - timedelta(seconds=ttl),
                    "abandoned": now - timedelta(seconds=IN_PROGRESS_LEASE_S),
                },
            )
        ).scalar() is not None
        if claimed and random.randrange(PURGE_EVERY) == 0:  # sampling, not security
            await purge_expired(session, now=now)
    return claimed


async def _load(db: Database, scope_hash: bytes, key: str) -> Any:
    now = clock.now()
    async with db.transaction() as session:
        return (
            await session.execute(
                text(
                    "SELECT fingerprint, status, response_status, response_headers, "
                    "response_body FROM idempotency_keys WHERE scope = :scope AND key = :key "
                    "AND created_at >= :expired"
                ),
                {"scope": scope_hash, "key": key,
                 "expired": now - timedelta(seconds=get_settings().idempotency_ttl_s)},
            )
        ).first()


async def _finish(db: Database, scope_hash: bytes, key: str, status: int,
                  headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Keep a response below 500 for replay; free the key after a 5xx so a retry can run.

    A response marked ``Cache-Control: no-store`` (tokens, secrets shown once) is never kept:
    the key is freed instead, so credentials are not stored at rest for replay.
    """
    no_store = any(
        k.lower() == b"cache-control" and b"no-store" in v.lower() for k, v in headers
    )
    if status >= 500 or no_store:
        await _release(db, scope_hash, key)
        return
    async with db.transaction() as session:
        await session.execute(
            text(
                "UPDATE idempotency_keys SET status = 'completed', response_status = :status, "
                "response_headers = CAST(:headers AS jsonb), response_body = :body, "
                "completed_at = :now WHERE scope = :scope AND key = :key"
            ),
            {
                "status": status, "body": body, "now": clock.now(), "scope": scope_hash,
                "key": key,
                "headers": orjson.dumps(
                    [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]
                ).decode(),
            },
        )


async def _release(db: Database, scope_hash: bytes, key: str) -> None:
    try:
        async with db.transaction() as session:
            await session.execute(
                text("DELETE FROM idempotency_keys WHERE scope = :scope AND key = :key "
                     "AND status = 'in_progress'"),
                {"scope": scope_hash, "key": key},
            )
    except Exception:
        # The key stays "in progress" until its lease runs out; never mask the real error.
        log.warning("idempotency_release_failed", exc_info=True)
