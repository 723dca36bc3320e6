"""Tables of the scenes domain: scenes, behaviours, partner credentials, consent and links,
and the versioned reduction and conversion rules (Art. 31–36).

Fixed-point conventions (never floats):
- reduction factors: ``grams_per_unit_milli`` = milligrams CO2e per unit (26.9 g → 26_900);
- quantities: milli-units (2.5 km → 2_500);
- caps: whole grams; conversion: whole grams per point.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

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
from sqlalchemy.orm import Mapped, mapped_column

from app.db import TS, Base

SCENE_STATUSES = ("active", "suspended", "ended")
RULE_STATUSES = ("draft", "published")


class SceneCategory(Base):
    """A category of low-carbon scene (场景类别): bus, metro, shared bicycle, … held as data."""

    __tablename__ = "scene_categories"
    __table_args__ = (CheckConstraint("code ~ '^[a-z][a-z0-9_]{1,31}$'", name="code_format"),)

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name_zh: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=text("now()"))


class Scene(Base):
    """A low-carbon scene (低碳场景) joined after an agreement with the operator (Art. 32)."""

    __tablename__ = "scenes"
    __table_args__ = (
        CheckConstraint("code ~ '^[a-z0-9][a-z0-9_-]{1,31}$'", name="code_format"),
        CheckConstraint("status IN ('active', 'suspended', 'ended')", name="status_known"),
        CheckConstraint("claim_window_days BETWEEN 1 AND 365", name="claim_window_range"),
        CheckConstraint(
            "agreement_ends_on IS NULL OR agreement_ends_on >= agreement_starts_on",
            name="agreement_dates_ordered",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name_zh: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(200))
    category_code: Mapped[str] = mapped_column(
        ForeignKey("scene_categories.code"), index=True
    )
    partner_name: Mapped[str] = mapped_column(String(200))
    partner_credit_code: Mapped[str | None] = mapped_column(String(18))
    agreement_ref: Mapped[str] = mapped_column(String(64))
    agreement_signed_on: Mapped[date] = mapped_column(Date)
    agreement_starts_on: Mapped[date] = mapped_column(Date)
    agreement_ends_on: Mapped[date | None] = mapped_column(Date)
    claim_window_days: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    status_changed_at: Mapped[datetime] = mapped_column(TS)
    is_demo: Mapped[bool] = mapped_column(Boolean, server_default=false())
    created_at: Mapped[datetime] = mapped_column(TS)
    updated_at: Mapped[datetime] = mapped_column(TS)
    # Bumped by a trigger on every change of the scene's consents or partner links (0011);
    # never written by the application.
    links_version: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class SceneClient(Base):
    """Which OAuth client (kept by ``app.auth.clients``) acts for which scene."""

    __tablename__ = "scene_clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scene_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scenes.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(TS)


class Behaviour(Base):
    """A behaviour type of a scene (低碳行为类型), e.g. a bus ride or a metro passenger-km."""

    __tablename__ = "scene_behaviours"
    __table_args__ = (
        UniqueConstraint("scene_id", "code", name="uq_scene_behaviours_scene_code"),
        CheckConstraint("code ~ '^[a-z][a-z0-9_]{1,47}$'", name="code_format"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    scene_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scenes.id"))
    code: Mapped[str] = mapped_column(String(48))
    name_zh: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS)


class ReductionRuleVersion(Base):
    """One version of a scene behaviour's reduction rule (场景评价规范 / 减排量计算规则, Art. 31).

    A draft may be edited; a published version never changes, except that an open end
    (``valid_to`` NULL) is closed once, when its successor is published (``superseded_by``).
    A database trigger enforces that.
    """

    __tablename__ = "reduction_rules"
    __table_args__ = (
        UniqueConstraint("behaviour_id", "version", name="uq_reduction_rules_behaviour_version"),
        CheckConstraint("status IN ('draft', 'published')", name="status_known"),
        CheckConstraint("grams_per_unit_milli > 0", name="factor_positive"),
        CheckConstraint("max_quantity_milli IS NULL OR max_quantity_milli > 0",
                        name="max_quantity_positive"),
        CheckConstraint("cap_grams_per_event IS NULL OR cap_grams_per_event > 0",
                        name="cap_event_positive"),
        CheckConstraint("cap_grams_per_day IS NULL OR cap_grams_per_day > 0",
                        name="cap_day_positive"),
        CheckConstraint("cap_grams_per_year IS NULL OR cap_grams_per_year > 0",
                        name="cap_year_positive"),
        CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="window_ordered"),
        CheckConstraint("unit ~ '^[a-z][a-z0-9_]{0,31}$'", name="unit_format"),
        CheckConstraint("(status = 'published') = (version IS NOT NULL)",
                        name="published_has_version"),
        Index("ix_reduction_rules_lookup", "scene_id", "behaviour_id", "status", "valid_from"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    scene_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scenes.id"))
    behaviour_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scene_behaviours.id"))
    version: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str] = mapped_column(String(32))
    grams_per_unit_milli: Mapped[int] = mapped_column(BigInteger)
    max_quantity_milli: Mapped[int | None] = mapped_column(BigInteger)
    cap_grams_per_event: Mapped[int | None] = mapped_column(BigInteger)
    cap_grams_per_day: Mapped[int | None] = mapped_column(BigInteger)
    cap_grams_per_year: Mapped[int | None] = mapped_column(BigInteger)
    valid_from: Mapped[datetime] = mapped_column(TS)
    valid_to: Mapped[datetime | None] = mapped_column(TS)
    basis: Mapped[str | None] = mapped_column(Text)
    superseded_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("reduction_rules.id"))
    created_at: Mapped[datetime] = mapped_column(TS)
    created_by: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime | None] = mapped_column(TS)
    published_by: Mapped[str | None] = mapped_column(Text)


class ConversionRuleVersion(Base):
    """One version of the grams → points conversion rule (碳积分转换规则, Art. 31/34).

    Versioned like reduction rules; an exclusion constraint also keeps published windows
    from overlapping.
    """

    __tablename__ = "conversion_rules"
    __table_args__ = (
        UniqueConstraint("version", name="uq_conversion_rules_version"),
        CheckConstraint("status IN ('draft', 'published')", name="status_known"),
        CheckConstraint("grams_per_point > 0", name="factor_positive"),
        CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="window_ordered"),
        CheckConstraint("(status = 'published') = (version IS NOT NULL)",
                        name="published_has_version"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    version: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    grams_per_point: Mapped[int] = mapped_column(BigInteger)
    valid_from: Mapped[datetime] = mapped_column(TS)
    valid_to: Mapped[datetime | None] = mapped_column(TS)
    basis: Mapped[str | None] = mapped_column(Text)
    superseded_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("conversion_rules.id"))
    created_at: Mapped[datetime] = mapped_column(TS)
    created_by: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime | None] = mapped_column(TS)
    published_by: Mapped[str | None] = mapped_column(Text)


class Consent(Base):
    """One grant of consent (授权) by a citizen to a scene; revocation is a timestamp.

    Art. 34 / PIPL: only behaviour data the citizen authorised is used. A re-grant is a new
    row, so the history stays whole. Rows are never deleted (a trigger refuses it).
    """

    __tablename__ = "consents"
    __table_args__ = (
        CheckConstraint("revoked_at IS NULL OR revoked_at >= granted_at", name="revoked_after"),
        CheckConstraint("scope ~ '^[a-z][a-z0-9_.:-]{0,63}$'", name="scope_format"),
        CheckConstraint("channel ~ '^[a-z][a-z0-9_]{0,31}$'", name="channel_format"),
        Index("ix_consents_citizen_scene", "citizen_id", "scene_id", "granted_at"),
        Index("uq_consents_one_active", "citizen_id", "scene_id", unique=True,
              postgresql_where=text("revoked_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    citizen_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("citizens.id"))
    scene_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scenes.id"))
    scope: Mapped[str] = mapped_column(String(64))
    privacy_notice_version: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(32))
    granted_at: Mapped[datetime] = mapped_column(TS)
    revoked_at: Mapped[datetime | None] = mapped_column(TS)


class LinkCode(Base):
    """A one-time account-link code (绑定码); only its keyed hash is stored."""

    __tablename__ = "link_codes"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    code_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    consent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("consents.id"), index=True)
    citizen_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("citizens.id"))
    scene_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scenes.id"))
    created_at: Mapped[datetime] = mapped_column(TS)
    expires_at: Mapped[datetime] = mapped_column(TS)
    used_at: Mapped[datetime | None] = mapped_column(TS)


class PartnerLink(Base):
    """A citizen's account at a scene partner, known to us only by ``partner_user_ref``."""

    __tablename__ = "partner_links"
    __table_args__ = (
        UniqueConstraint("scene_id", "partner_user_ref", name="uq_partner_links_scene_ref"),
        UniqueConstraint("scene_id", "citizen_id", name="uq_partner_links_scene_citizen"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    scene_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scenes.id"))
    citizen_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("citizens.id"))
    partner_user_ref: Mapped[str] = mapped_column(String(128))
    consent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("consents.id"))
    linked_at: Mapped[datetime] = mapped_column(TS)


class SceneLinkChange(Base):
    """One change of a scene's consents or partner links, logged by a trigger (0011) under
    the scene's new ``links_version``; ingestion's link cache replays these to drop exactly
    the entries that changed. Trimmed after a day (:func:`scenes.lookup.trim_link_changes`).
    """

    __tablename__ = "scene_link_changes"
    __table_args__ = (Index("ix_scene_link_changes_changed_at", "changed_at"),)

    scene_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    citizen_id: Mapped[uuid.UUID] = mapped_column()
    partner_user_ref: Mapped[str | None] = mapped_column(String(128))
    changed_at: Mapped[datetime] = mapped_column(TS, server_default=text("now()"))
