"""OAuth2 clients of scene partners (低碳场景运营方) and their Ed25519 request-signing keys.

A client authenticates to ``POST /v1/oauth/token`` with its secret (client-credentials grant,
RFC 6749 §4.4) and signs every request with a registered Ed25519 key. Keys rotate with an
overlap: the old key stays valid until the moment given to :func:`retire_client_key`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import clock
from app.auth.models import ApiClient, ApiClientKey
from app.errors import Invalid, NotFound

CLIENT_KINDS = ("partner",)


def _hash_secret(secret: str) -> bytes:
    # Client secrets carry 256 bits of entropy: a plain SHA-256 is enough (no brute force).
    return hashlib.sha256(secret.encode()).digest()


async def create_client(
    session: AsyncSession, *, scope_id: UUID, name: str, kind: str = "partner"
) -> tuple[str, str]:
    """Register a client for the scene ``scope_id``; returns ``(client_id, client_secret)``.

    The secret is shown once: only its hash is stored.
    """
    if kind not in CLIENT_KINDS:
        raise Invalid("auth.client_kind_invalid", f"Unknown client kind {kind!r}.")
    if not name.strip():
        raise Invalid("auth.client_name_invalid", "A client needs a name.")
    client_id = "tc_" + secrets.token_hex(12)
    secret = "tcs_" + secrets.token_urlsafe(32)
    session.add(
        ApiClient(
            id=uuid.uuid4(),
            client_id=client_id,
            secret_hash=_hash_secret(secret),
            scope_id=scope_id,
            name=name.strip(),
            kind=kind,
            is_active=True,
            created_at=clock.now(),
        )
    )
    await session.flush()
    return client_id, secret


@dataclass(frozen=True, slots=True)
class ClientView:
    id: UUID
    client_id: str
    scope_id: UUID
    name: str
    kind: str
    is_active: bool


def _view(row: ApiClient) -> ClientView:
    return ClientView(row.id, row.client_id, row.scope_id, row.name, row.kind, row.is_active)


async def _client(session: AsyncSession, client_id: str) -> ApiClient:
    row = await session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    if row is None:
        raise NotFound("auth.client_not_found", "No such API client.")
    return row


async def get_client(session: AsyncSession, client_id: str) -> ClientView:
    return _view(await _client(session, client_id))


async def authenticate_client(
    session: AsyncSession, client_id: str, client_secret: str
) -> ClientView | None:
    """The client if the secret matches and it is active, else ``None``."""
    row = await session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    given = _hash_secret(client_secret)
    if row is None:
        hmac.compare_digest(given, given)  # keep the timing of a miss close to a hit
        return None
    if not hmac.compare_digest(row.secret_hash, given) or not row.is_active:
        return None
    return _view(row)


def parse_public_key(public_key: str) -> bytes:
    """An Ed25519 public key as PEM (SubjectPublicKeyInfo) or base64 of the 32 raw bytes."""
    text = public_key.strip()
    try:
        if text.startswith("-----BEGIN"):
            loaded = serialization.load_pem_public_key(text.encode())
            if not isinstance(loaded, Ed25519PublicKey):
                raise ValueError("not Ed25519")
            return loaded.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        raw = base64.b64decode(text, validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
        return raw
    except (ValueError, binascii.Error, TypeError) as exc:
        raise Invalid(
            "auth.key_invalid", "Not an Ed25519 public key (PEM or base64 of 32 bytes)."
        ) from exc


async def add_client_key(
    session: AsyncSession, client_id: str, public_key: str, *, now: datetime | None = None
) -> UUID:
    """Register a signing key; valid from ``now`` until retired."""
    raw = parse_public_key(public_key)
    row = await _client(session, client_id)
    key_id = uuid.uuid4()
    session.add(
        ApiClientKey(
            id=key_id, client_pk=row.id, public_key=raw, created_at=now or clock.now(),
            retires_at=None,
        )
    )
    await session.flush()
    invalidate_key_cache(row.id)
    return key_id


async def retire_client_key(
    session: AsyncSession, client_id: str, key_id: UUID, *, at: datetime
) -> None:
    """Key rotation with overlap: the key stays valid until ``at``, then never again."""
    row = await _client(session, client_id)
    result = await session.execute(
        update(ApiClientKey)
        .where(ApiClientKey.id == key_id, ApiClientKey.client_pk == row.id)
        .values(retires_at=at)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound("auth.key_not_found", "No such key for this client.")
    invalidate_key_cache(row.id)


async def set_client_active(session: AsyncSession, client_id: str, active: bool) -> None:
    """Suspend or restore a client: an inactive client gets no tokens and no signed calls."""
    row = await _client(session, client_id)
    row.is_active = active
    await session.flush()
    invalidate_key_cache(row.id)


# --- the key cache of the signature check (hot ingestion path) ------------------------------

KEY_CACHE_TTL_S = 5.0


@dataclass(frozen=True, slots=True)
class SigningKey:
    id: UUID
    key: Ed25519PublicKey
    created_at: datetime
    retires_at: datetime | None

    def valid_at(self, at: datetime) -> bool:
        return self.created_at <= at and (self.retires_at is None or at < self.retires_at)


@dataclass(frozen=True, slots=True)
class ClientKeys:
    is_active: bool
    keys: tuple[SigningKey, ...]


# client uuid -> (monotonic deadline, keys). Per process and short-lived: a suspension or a
# retirement elsewhere takes effect here within KEY_CACHE_TTL_S; nothing must be shared.
_key_cache: dict[UUID, tuple[float, ClientKeys]] = {}


def invalidate_key_cache(client_pk: UUID | None = None) -> None:
    if client_pk is None:
        _key_cache.clear()
    else:
        _key_cache.pop(client_pk, None)


async def load_client_keys(session: AsyncSession, client_pk: UUID) -> ClientKeys | None:
    """The client's active flag and every key not yet retired, from the database."""
    active = await session.scalar(select(ApiClient.is_active).where(ApiClient.id == client_pk))
    if active is None:
        return None
    rows = (
        await session.execute(
            select(ApiClientKey.id, ApiClientKey.public_key, ApiClientKey.created_at,
                   ApiClientKey.retires_at)
            .where(ApiClientKey.client_pk == client_pk)
            .order_by(ApiClientKey.created_at.desc())
        )
    ).all()
    keys = tuple(
        SigningKey(r.id, Ed25519PublicKey.from_public_bytes(bytes(r.public_key)), r.created_at,
                   r.retires_at)
        for r in rows
    )
    return ClientKeys(bool(active), keys)


async def cached_client_keys(
    sessions: async_sessionmaker[AsyncSession], client_pk: UUID
) -> ClientKeys | None:
    """:func:`load_client_keys` through a per-process cache of a few seconds
    (``sessions`` is ``runtime.db.sessions``)."""
    hit = _key_cache.get(client_pk)
    mono = time.monotonic()
    if hit is not None and hit[0] > mono:
        return hit[1]
    async with sessions() as session:
        loaded = await load_client_keys(session, client_pk)
    if loaded is not None:
        if len(_key_cache) > 10_000:
            _key_cache.clear()
        _key_cache[client_pk] = (mono + KEY_CACHE_TTL_S, loaded)
    return loaded
