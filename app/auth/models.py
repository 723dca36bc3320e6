"""Tables of authentication: citizens, refresh tokens, partner clients, merchant keys, admins."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    LargeBinary,
    String,
    Text,
    false,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db import TS, Base


class Citizen(Base):
    """A citizen (公众) of the platform: the phone only encrypted, found by its blind index.

    Erasure (PIPL 删除权) nulls the phone and keeps the pseudonym, so the ledger's
    pseudonymous entries stay consistent.
    """

    __tablename__ = "citizens"
    __table_args__ = (
        # PIPL: an erased citizen holds no personal information.
        CheckConstraint(
            "erased_at IS NULL OR (phone_enc IS NULL AND phone_bidx IS NULL)",
            name="erased_has_no_pii",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone_bidx: Mapped[bytes | None] = mapped_column(LargeBinary, unique=True)
    pseudonym: Mapped[str] = mapped_column(String(32), unique=True)
    is_demo: Mapped[bool] = mapped_column(Boolean, server_default=false())
    created_at: Mapped[datetime] = mapped_column(TS)
    erased_at: Mapped[datetime | None] = mapped_column(TS)


class RefreshToken(Base):
    """One refresh token of a rotation family; only its SHA-256 is stored."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    citizen_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("citizens.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    issued_at: Mapped[datetime] = mapped_column(TS)
    expires_at: Mapped[datetime] = mapped_column(TS)
    used_at: Mapped[datetime | None] = mapped_column(TS)
    revoked_at: Mapped[datetime | None] = mapped_column(TS)


class ApiClient(Base):
    """An OAuth2 client of a scene partner (低碳场景运营方), scoped to one scene."""

    __tablename__ = "api_clients"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    scope_id: Mapped[uuid.UUID] = mapped_column(index=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32), server_default=text("'partner'"))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=true())
    created_at: Mapped[datetime] = mapped_column(TS)


class ApiClientKey(Base):
    """An Ed25519 public key a partner signs requests with; rotation keeps an overlap."""

    __tablename__ = "api_client_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    client_pk: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_clients.id", ondelete="CASCADE"), index=True
    )
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(TS)
    retires_at: Mapped[datetime | None] = mapped_column(TS)


class ApiKey(Base):
    """A merchant's API key (权益提供单位); only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    merchant_id: Mapped[uuid.UUID] = mapped_column(index=True)
    label: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    created_at: Mapped[datetime] = mapped_column(TS)
    revoked_at: Mapped[datetime | None] = mapped_column(TS)


class AdminUser(Base):
    """A staff user of the operator, bureau, registry agency, exchange, VVBs or experts."""

    __tablename__ = "admin_users"
    __table_args__ = (
        # A district bureau user acts for exactly one district.
        CheckConstraint(
            "NOT ('district_bureau' = ANY(roles)) OR district_code IS NOT NULL",
            name="district_bureau_has_district",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    totp_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    totp_enrolled_at: Mapped[datetime | None] = mapped_column(TS)
    # The last accepted TOTP time step: a code is never accepted twice.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    roles: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    district_code: Mapped[str | None] = mapped_column(String(12))
    # The body the user acts for, where the role needs one (the VVB of a `vvb` user).
    acts_for: Mapped[uuid.UUID | None] = mapped_column()
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=true())
    created_at: Mapped[datetime] = mapped_column(TS)

