"""Tables of CQCER uses (Art. 24–29): the bureau's per-category compliance caps and the verified
emissions they apply to, compliance offset requests, and the retirements (neutrality, judicial
purchase, public-good cancellation) and donations with their certificates.

The credits themselves stay in the registry; a record here names the registry lock or
cancellation and copies the serial ranges for the certificate and the public record.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import TS, Base


class Cap(Base):
    """The bureau's compliance offset cap (抵销比例) for one compliance year and category: a
    share, in basis points, of a covered entity's verified emissions (Art. 24, 26)."""

    __tablename__ = "offsets_caps"

    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    category: Mapped[str] = mapped_column(String(20), primary_key=True)
    cap_bps: Mapped[int] = mapped_column(Integer)
    set_by: Mapped[str] = mapped_column(Text)
    set_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint("cap_bps >= 0 AND cap_bps <= 10000", name="cap"),
        CheckConstraint(
            "category IN ('engineering', 'ecological_sink', 'carbon_inclusive')", name="category"
        ),
    )


class Emissions(Base):
    """A covered entity's verified emissions (核查排放量) for a compliance year, in tonnes,
    entered by the bureau; the caps are shares of it."""

    __tablename__ = "offsets_emissions"

    organisation_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    verified_tonnes: Mapped[int] = mapped_column(BigInteger)
    set_by: Mapped[str] = mapped_column(Text)
    set_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (CheckConstraint("verified_tonnes >= 0", name="verified"),)


class ComplianceRequest(Base):
    """A compliance offset application (履约抵销申请, Art. 26): credits locked until the bureau
    confirms (cancelled with purpose ``compliance``) or refuses (unlocked)."""

    __tablename__ = "offsets_compliance"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    organisation_id: Mapped[uuid.UUID] = mapped_column()
    account_id: Mapped[uuid.UUID] = mapped_column()
    year: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(20))
    vintage: Mapped[int | None] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(BigInteger)
    lock_id: Mapped[uuid.UUID] = mapped_column()
    state: Mapped[str] = mapped_column(String(12))
    reason: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(TS)
    cancellation_id: Mapped[uuid.UUID | None] = mapped_column()
    serials: Mapped[list[str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint("state IN ('pending', 'confirmed', 'refused')", name="state"),
        Index("ix_offsets_compliance_entity", "organisation_id", "year", "category"),
        Index("ix_offsets_compliance_pending", "created_at",
              postgresql_where=text("state = 'pending'")),
    )


class Retirement(Base):
    """A use of CQCER with a certificate: carbon neutrality (碳中和, Art. 27), judicial purchase
    (司法认购, Art. 24), public-good cancellation or donation (公益注销 / 捐赠, Art. 27).

    A person's name (neutrality subject, judicial defendant) is stored encrypted; the public
    record shows it masked.
    """

    __tablename__ = "offsets_retirements"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(12))
    certificate_no: Mapped[str] = mapped_column(String(32), unique=True)
    organisation_id: Mapped[uuid.UUID] = mapped_column()
    account_id: Mapped[uuid.UUID] = mapped_column()
    holder_name: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(BigInteger)
    category: Mapped[str | None] = mapped_column(String(20))
    vintage: Mapped[int | None] = mapped_column(Integer)
    beneficiary: Mapped[str] = mapped_column(Text)
    subject_kind: Mapped[str | None] = mapped_column(String(12))
    subject_public: Mapped[str | None] = mapped_column(Text)
    subject_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    emission_tonnes: Mapped[int | None] = mapped_column(BigInteger)
    case_no: Mapped[str | None] = mapped_column(Text)
    court: Mapped[str | None] = mapped_column(Text)
    ordered_tonnes: Mapped[int | None] = mapped_column(BigInteger)
    to_organisation_id: Mapped[uuid.UUID | None] = mapped_column()
    cancellation_id: Mapped[uuid.UUID | None] = mapped_column()
    serials: Mapped[list[str]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint("kind IN ('neutrality', 'judicial', 'public_good', 'donation')",
                        name="kind"),
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint("kind <> 'neutrality' OR quantity >= emission_tonnes", name="neutral"),
        CheckConstraint("kind <> 'judicial' OR (category = 'ecological_sink' AND case_no IS NOT"
                        " NULL AND court IS NOT NULL AND quantity = ordered_tonnes)",
                        name="judicial"),
        CheckConstraint("(kind = 'donation') = (cancellation_id IS NULL)", name="cancelled"),
        Index("ix_offsets_retirements_kind", "kind", "created_at"),
        Index("ix_offsets_retirements_org", "organisation_id"),
    )
