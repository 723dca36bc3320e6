"""Tables of the registry (管理系统): organisations and their holding accounts, methodologies,
VVBs, projects, instalments, public notices, CQCER issuances and blocks, locks,
cancellations, sanctions, reports of fraud.

Nothing here is ever deleted (Art. 17: records kept at least 10 years); a trigger created by
migration 0009 refuses DELETE on every registry table, and refuses any change to a block that
is cancelled (Art. 29).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from app.db import TS, Base

CATEGORIES = ("engineering", "ecological_sink", "carbon_inclusive")
"""Art. 11/14: 工程类, 生态碳汇类, 碳普惠类."""

ORG_KINDS = ("owner", "trader", "covered_entity", "individual")
STAFF_OF = ("registry_agency", "operator", "exchange")


# Serial space of one issuance inside the global exclusion range (no serial in two blocks).
SERIAL_SPACE = 1_000_000_000_000


class Organisation(Base):
    """A registry account holder (碳账户持有人): project owner, trader, covered entity, person.

    ``staff_of`` flags staff of the registry agency, operator or exchange (Art. 37: they may not
    trade CQCER).
    """

    __tablename__ = "organisations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    uscc: Mapped[str | None] = mapped_column(String(18), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    staff_of: Mapped[str | None] = mapped_column(String(16))
    district_code: Mapped[str | None] = mapped_column(String(6))
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    is_demo: Mapped[bool] = mapped_column(Boolean, server_default=false())
    created_at: Mapped[datetime] = mapped_column(TS)
    dissolved_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint(f"kind IN {ORG_KINDS}", name="kind"),
        CheckConstraint(f"staff_of IS NULL OR staff_of IN {STAFF_OF}", name="staff_of"),
        CheckConstraint("status IN ('active', 'dissolved')", name="status"),
    )


class OrgUser(Base):
    """A login of an organisation (username + argon2 password)."""

    __tablename__ = "registry_org_users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    organisation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, server_default=false())
    created_at: Mapped[datetime] = mapped_column(TS)


class Account(Base):
    """The holding account (持有账户) of an organisation: where its CQCER blocks sit."""

    __tablename__ = "registry_accounts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    organisation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organisations.id"), unique=True
    )
    opened_at: Mapped[datetime] = mapped_column(TS)


class Methodology(Base):
    """A methodology (方法学), Art. 10–13: one category and field, versioned."""

    __tablename__ = "registry_methodologies"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    title: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(20))
    field: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), server_default="draft")
    is_demo: Mapped[bool] = mapped_column(Boolean, server_default=false())
    created_at: Mapped[datetime] = mapped_column(TS)
    repealed_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint(f"category IN {CATEGORIES}", name="category"),
        CheckConstraint("status IN ('draft', 'published', 'repealed')", name="status"),
    )


class MethodologyVersion(Base):
    """One version of a methodology: baseline, additionality, formula, parameters, monitoring."""

    __tablename__ = "registry_methodology_versions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    methodology_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_methodologies.id"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    baseline: Mapped[str] = mapped_column(Text)
    additionality: Mapped[str] = mapped_column(Text)
    formula: Mapped[str] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB)
    monitoring_plan_ref: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS)
    published_at: Mapped[datetime | None] = mapped_column(TS)
    superseded_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        UniqueConstraint("methodology_id", "version", name="uq_registry_mv_version"),
        CheckConstraint(
            "status IN ('draft', 'published', 'superseded', 'repealed')", name="status"
        ),
    )


class MethodologyProposal(Base):
    """A revision proposal (修订建议) from a user of a methodology (Art. 13)."""

    __tablename__ = "registry_methodology_proposals"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    methodology_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_methodologies.id"))
    proposer: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), server_default="open")
    response: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS)
    decided_at: Mapped[datetime | None] = mapped_column(TS)


class Vvb(Base):
    """A validation and verification body (审定与核查机构) recognised by the bureau (Art. 21)."""

    __tablename__ = "registry_vvbs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    uscc: Mapped[str] = mapped_column(String(18), unique=True)
    categories: Mapped[list[str]] = mapped_column(ARRAY(String(20)))
    fields: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    valid_from: Mapped[date] = mapped_column(Date)
    valid_until: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), server_default="recognised")
    is_demo: Mapped[bool] = mapped_column(Boolean, server_default=false())
    recognised_at: Mapped[datetime] = mapped_column(TS)
    revoked_at: Mapped[datetime | None] = mapped_column(TS)


class VvbTie(Base):
    """An asset or management tie (资产、管理利益关系) between a VVB and an organisation."""

    __tablename__ = "registry_vvb_ties"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    vvb_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_vvbs.id"), index=True)
    organisation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"))
    kind: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    declared_at: Mapped[datetime] = mapped_column(TS)
    ended_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (CheckConstraint("kind IN ('asset', 'management')", name="kind"),)


class Notice(Base):
    """A public notice (公示) of 20 working days (Art. 17)."""

    __tablename__ = "registry_notices"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    subject_kind: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[uuid.UUID] = mapped_column(index=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_projects.id"))
    title: Mapped[str] = mapped_column(Text)
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    published_at: Mapped[datetime] = mapped_column(TS)


class Comment(Base):
    """A public comment on a notice; an objection (异议) needs the owner's public reply."""

    __tablename__ = "registry_comments"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    notice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_notices.id"), index=True)
    author_name: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    objection: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(TS)
    reply: Mapped[str | None] = mapped_column(Text)
    replied_at: Mapped[datetime | None] = mapped_column(TS)


class Opinion(Base):
    """An expert opinion (专家意见) in a technical assessment round (Art. 20)."""

    __tablename__ = "registry_opinions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    subject_kind: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[uuid.UUID] = mapped_column(index=True)
    round: Mapped[int] = mapped_column(Integer)
    expert: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(8))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS)


class Lifecycle:
    """Columns shared by projects and instalments: the Art. 17/20 application path."""

    state: Mapped[str] = mapped_column(String(24))
    submitted_at: Mapped[datetime | None] = mapped_column(TS)
    applied_at: Mapped[datetime | None] = mapped_column(TS)
    comment_handling: Mapped[str | None] = mapped_column(Text)
    assessment_round: Mapped[int] = mapped_column(Integer, server_default="0")
    revision_deadline: Mapped[date | None] = mapped_column(Date)
    withheld_reason: Mapped[str | None] = mapped_column(Text)
    letter_at: Mapped[datetime | None] = mapped_column(TS)
    registered_at: Mapped[datetime | None] = mapped_column(TS)
    closed_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS)
    updated_at: Mapped[datetime] = mapped_column(TS)

    @declared_attr
    def notice_id(cls) -> Mapped[uuid.UUID | None]:
        return mapped_column(ForeignKey("registry_notices.id", use_alter=True))


class Project(Lifecycle, Base):
    """A reduction project (减排项目), Art. 14–22."""

    __tablename__ = "registry_projects"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    no: Mapped[int] = mapped_column(
        BigInteger, server_default=text("nextval('registry_project_no_seq')"), unique=True
    )
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    title: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(20))
    methodology_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_methodologies.id"))
    methodology_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registry_methodology_versions.id")
    )
    district_code: Mapped[str] = mapped_column(String(6))
    site: Mapped[str] = mapped_column(Text)
    operation_start: Mapped[date] = mapped_column(Date)
    crediting_start: Mapped[date] = mapped_column(Date)
    crediting_end: Mapped[date] = mapped_column(Date)
    description: Mapped[str] = mapped_column(Text, server_default="")
    design_document_ref: Mapped[str] = mapped_column(Text)
    declarations: Mapped[dict[str, Any]] = mapped_column(JSONB)
    validator_vvb_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_vvbs.id"))
    validation_conclusion: Mapped[str | None] = mapped_column(String(8))
    validation_report_ref: Mapped[str | None] = mapped_column(Text)
    validated_at: Mapped[datetime | None] = mapped_column(TS)
    legacy_approved_on: Mapped[date | None] = mapped_column(Date)
    cancelled_at: Mapped[datetime | None] = mapped_column(TS)
    cancel_ground: Mapped[str | None] = mapped_column(String(16))
    revoked_at: Mapped[datetime | None] = mapped_column(TS)
    is_demo: Mapped[bool] = mapped_column(Boolean, server_default=false())

    __table_args__ = (
        CheckConstraint(f"category IN {CATEGORIES}", name="category"),
        Index("ix_registry_projects_identity", "owner_id", "district_code", "methodology_id"),
    )


class Instalment(Lifecycle, Base):
    """One instalment (分期) of a project's reductions applied for registration (Art. 16–20)."""

    __tablename__ = "registry_instalments"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_projects.id"))
    no: Mapped[int] = mapped_column(Integer)
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    district_code: Mapped[str] = mapped_column(String(6))
    claimed_tonnes: Mapped[int] = mapped_column(BigInteger)
    accounting_report_ref: Mapped[str] = mapped_column(Text)
    verifier_vvb_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_vvbs.id"))
    verified_tonnes: Mapped[int | None] = mapped_column(BigInteger)
    verification_report_ref: Mapped[str | None] = mapped_column(Text)
    verified_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        UniqueConstraint("project_id", "no", name="uq_registry_instalments_no"),
        CheckConstraint("claimed_tonnes > 0", name="claimed"),
        CheckConstraint("verified_tonnes IS NULL OR verified_tonnes >= 0", name="verified"),
    )


class Issuance(Base):
    """The CQCER issued for one registered instalment: serials 1..quantity (Art. 26)."""

    __tablename__ = "registry_issuances"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    no: Mapped[int] = mapped_column(
        BigInteger, server_default=text("nextval('registry_issuance_no_seq')"), unique=True
    )
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_projects.id"), index=True)
    instalment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registry_instalments.id"), unique=True
    )
    vintage: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(20))
    quantity: Mapped[int] = mapped_column(BigInteger)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_accounts.id"))
    issued_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (CheckConstraint("quantity > 0", name="quantity"),)


class Block(Base):
    """A block of CQCER (one tonne = one serial) in one account and one state (Art. 30).

    The blocks of an issuance partition its serials 1..quantity: a tonne is in exactly one
    block, so it has exactly one holder and one state. ``gserial`` places every block in one
    global serial space so PostgreSQL itself refuses two blocks sharing a serial.
    """

    __tablename__ = "registry_blocks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    issuance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_issuances.id"))
    issuance_no: Mapped[int] = mapped_column(BigInteger)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_projects.id"))
    project_no: Mapped[int] = mapped_column(BigInteger)
    instalment_no: Mapped[int] = mapped_column(Integer)
    vintage: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(20))
    serial_start: Mapped[int] = mapped_column(BigInteger)
    serial_end: Mapped[int] = mapped_column(BigInteger)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_accounts.id"))
    state: Mapped[str] = mapped_column(String(12))
    lock_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("registry_locks.id"))
    cancellation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("registry_cancellations.id")
    )
    created_at: Mapped[datetime] = mapped_column(TS)
    updated_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint("serial_start >= 1 AND serial_start <= serial_end", name="range"),
        CheckConstraint("state IN ('held', 'locked', 'cancelled')", name="state"),
        CheckConstraint("(state = 'locked') = (lock_id IS NOT NULL)", name="lock"),
        CheckConstraint("(state = 'cancelled') = (cancellation_id IS NOT NULL)", name="cancel"),
        Index("ix_registry_blocks_account", "account_id", "state", "vintage", "serial_start"),
        Index("ix_registry_blocks_lock", "lock_id"),
        Index("ix_registry_blocks_issuance", "issuance_id", "serial_start"),
        Index("ix_registry_blocks_serial", "project_no", "instalment_no", "serial_start"),
    )


class Lock(Base):
    """Credits locked for a trade or an offset (锁定), until unlocked, delivered or cancelled."""

    __tablename__ = "registry_locks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_accounts.id"), index=True)
    quantity: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    product: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(12), server_default="active")
    to_account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("registry_accounts.id"))
    created_at: Mapped[datetime] = mapped_column(TS)
    closed_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint(
            "state IN ('active', 'released', 'delivered', 'cancelled')", name="state"
        ),
    )


class Cancellation(Base):
    """A cancellation (注销) of CQCER: final and public (Art. 29)."""

    __tablename__ = "registry_cancellations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_accounts.id"), index=True)
    holder_name: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(String(16))
    beneficiary: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    lock_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("registry_locks.id"))
    created_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint(
            "purpose IN ('compliance', 'neutrality', 'judicial', 'public_good', 'voluntary',"
            " 'sanction', 'owner_gone')",
            name="purpose",
        ),
    )


class Movement(Base):
    """The immutable history of every serial range: issue, lock, unlock, deliver, cancel."""

    __tablename__ = "registry_movements"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(12))
    issuance_id: Mapped[uuid.UUID] = mapped_column(index=True)
    serial_start: Mapped[int] = mapped_column(BigInteger)
    serial_end: Mapped[int] = mapped_column(BigInteger)
    from_account_id: Mapped[uuid.UUID | None] = mapped_column()
    to_account_id: Mapped[uuid.UUID | None] = mapped_column()
    lock_id: Mapped[uuid.UUID | None] = mapped_column()
    cancellation_id: Mapped[uuid.UUID | None] = mapped_column()
    at: Mapped[datetime] = mapped_column(TS)


class Sanction(Base):
    """A sanction on an owner (Art. 39): revocation, cancellation order, refusal period."""

    __tablename__ = "registry_sanctions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    organisation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"),
                                                       index=True)
    kind: Mapped[str] = mapped_column(String(24))
    project_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("registry_projects.id"))
    reason: Mapped[str] = mapped_column(Text)
    ordered_quantity: Mapped[int] = mapped_column(BigInteger, server_default="0")
    deadline: Mapped[date | None] = mapped_column(Date)
    state: Mapped[str] = mapped_column(String(12))
    forced_quantity: Mapped[int] = mapped_column(BigInteger, server_default="0")
    ban_until: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(TS)
    closed_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint(
            "kind IN ('falsification', 'revision_missed', 'second_assessment_failed')",
            name="kind",
        ),
        CheckConstraint("state IN ('ordered', 'complied', 'enforced', 'closed')", name="state"),
    )



REPORT_SUBJECTS = ("project", "reductions", "trading", "scene", "vvb", "other")
"""Art. 41: what may be reported — projects, reductions (CQCER), trading, scenes and their
participants, VVBs, anything else in the system."""


class FraudReport(Base):
    """A report of fraud or another violation (举报, Art. 41) from anyone, without login.

    The reporter may stay anonymous; a contact, if given, is personal information and is
    stored encrypted (AES-GCM), read only by the registry agency and the bureau. The registry
    agency closes a report with its outcome; a report is never deleted (Art. 17 trigger).
    """

    __tablename__ = "registry_fraud_reports"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    subject: Mapped[str] = mapped_column(String(16))
    reference: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    reporter_name: Mapped[str | None] = mapped_column(Text)
    contact_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(12), server_default="received")
    outcome: Mapped[str | None] = mapped_column(Text)
    handled_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS)
    closed_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint(f"subject IN {REPORT_SUBJECTS}", name="subject"),
        CheckConstraint("status IN ('received', 'closed')", name="status"),
        CheckConstraint("(status = 'closed') = (closed_at IS NOT NULL)", name="closed"),
        Index("ix_registry_fraud_reports_open", "status", "created_at"),
    )
