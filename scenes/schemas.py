"""Request and response models of the scenes domain.

Factors and quantities travel as decimal strings or numbers with at most three decimals and
are stored as integer milli-units; no float ever reaches a rule.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

SceneStatus = Literal["active", "suspended", "ended"]
RuleStatus = Literal["draft", "published"]

SCENE_CODE = r"^[a-z0-9][a-z0-9_-]{1,31}$"
SLUG = r"^[a-z][a-z0-9_]{1,47}$"
UNIT = r"^[a-z][a-z0-9_]{0,31}$"
PARTNER_REF = r"^[\x21-\x7e]{1,128}$"  # printable ASCII, no spaces: never a phone number field


# An instant a request may state: timestamptz and date arithmetic hold it (no year 1 or 9999).
Instant = Annotated[AwareDatetime, Field(ge=datetime(1970, 1, 1, tzinfo=UTC),
                                         lt=datetime(3000, 1, 1, tzinfo=UTC))]


def milli_text(value: int | None) -> str | None:
    """Integer milli-units as the shortest decimal text (26_900 → "26.9")."""
    if value is None:
        return None
    return format(Decimal(value).scaleb(-3).normalize(), "f")


# --- categories, scenes, behaviours, credentials --------------------------------------------


class CategoryIn(BaseModel):
    code: str = Field(pattern=r"^[a-z][a-z0-9_]{1,31}$")
    name_zh: str = Field(min_length=1, max_length=100)
    name_en: str = Field(min_length=1, max_length=200)
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"code": "ferry", "name_zh": "轮渡", "name_en": "Ferry"}]})


class CategoryOut(BaseModel):
    code: str
    name_zh: str
    name_en: str
    model_config = ConfigDict(from_attributes=True)


class SceneCreate(BaseModel):
    """Register a scene after its agreement with the operator (Art. 32)."""

    code: str = Field(pattern=SCENE_CODE, description="stable public code of the scene")
    name_zh: str = Field(min_length=1, max_length=100)
    name_en: str = Field(min_length=1, max_length=200)
    category: str = Field(description="a scene category code, see /v1/admin/scene-categories")
    partner_name: str = Field(min_length=1, max_length=200, description="partner organisation")
    partner_credit_code: str | None = Field(
        default=None, pattern=r"^[0-9A-Z]{18}$", description="统一社会信用代码")
    agreement_ref: str = Field(min_length=1, max_length=64)
    agreement_signed_on: date
    agreement_starts_on: date
    agreement_ends_on: date | None = None
    claim_window_days: int = Field(default=30, ge=1, le=365,
                                   description="events older than this are refused")
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "code": "cq-bus", "name_zh": "重庆公交", "name_en": "Chongqing buses",
        "category": "bus", "partner_name": "重庆市公共交通控股（集团）有限公司",
        "agreement_ref": "THT-2024-017", "agreement_signed_on": "2024-08-20",
        "agreement_starts_on": "2024-09-01", "agreement_ends_on": "2027-08-31",
        "claim_window_days": 30}]})


class ScenePatch(BaseModel):
    """Change a scene; ``status`` moves active ⇄ suspended, and either → ended (final)."""

    name_zh: str | None = Field(default=None, min_length=1, max_length=100)
    name_en: str | None = Field(default=None, min_length=1, max_length=200)
    category: str | None = None
    partner_name: str | None = Field(default=None, min_length=1, max_length=200)
    partner_credit_code: str | None = Field(default=None, pattern=r"^[0-9A-Z]{18}$")
    agreement_ref: str | None = Field(default=None, min_length=1, max_length=64)
    agreement_signed_on: date | None = None
    agreement_starts_on: date | None = None
    agreement_ends_on: date | None = None
    claim_window_days: int | None = Field(default=None, ge=1, le=365)
    status: SceneStatus | None = None
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "suspended"}, {"claim_window_days": 14}]})


class BehaviourIn(BaseModel):
    code: str = Field(pattern=SLUG)
    name_zh: str = Field(min_length=1, max_length=100)
    name_en: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"code": "ride", "name_zh": "乘坐公交", "name_en": "Bus ride"}]})


class BehaviourOut(BaseModel):
    code: str
    name_zh: str
    name_en: str
    description: str | None = None
    model_config = ConfigDict(from_attributes=True)


class SceneOut(BaseModel):
    id: UUID
    code: str
    name_zh: str
    name_en: str
    category: str
    partner_name: str
    partner_credit_code: str | None
    agreement_ref: str
    agreement_signed_on: date
    agreement_starts_on: date
    agreement_ends_on: date | None
    claim_window_days: int
    status: SceneStatus
    status_changed_at: datetime
    is_demo: bool
    behaviours: list[BehaviourOut]
    client_ids: list[str]


class CredentialsOut(BaseModel):
    """OAuth client credentials of the scene's partner; the secret is shown only here, once."""

    scene_id: UUID
    client_id: str
    client_secret: str


class KeyIn(BaseModel):
    public_key: str = Field(min_length=1, max_length=4000,
                            description="Ed25519 public key, PEM or base64 of the raw 32 bytes")
    client_id: str | None = Field(default=None, description="default: the scene's only client")
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"public_key": "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="}]})


class KeyOut(BaseModel):
    key_id: UUID
    client_id: str


class KeyRetire(BaseModel):
    """Rotation with overlap: the old key stays valid until ``at`` (default: now)."""

    at: Instant | None = None
    client_id: str | None = None
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"at": "2025-01-08T00:00:00+08:00"}]})


class KeyRetired(BaseModel):
    key_id: UUID
    client_id: str
    retires_at: datetime


# --- reduction and conversion rules (Art. 31) -----------------------------------------------


class ReductionRuleDraft(BaseModel):
    """A reduction rule draft (减排量计算规则): factor in grams CO2e per unit, caps, window."""

    behaviour: str = Field(pattern=SLUG)
    unit: str = Field(pattern=UNIT, description="trip, km, passenger_km, step, kwh, item, …")
    grams_per_unit: Decimal = Field(description="g CO2e per unit, at most 3 decimals, > 0")
    max_quantity_per_event: Decimal | None = Field(
        default=None, description="larger quantities are cut to this (units, ≤ 3 decimals)")
    cap_grams_per_event: int | None = None
    cap_grams_per_day: int | None = Field(default=None, description="per citizen per day")
    cap_grams_per_year: int | None = Field(default=None, description="per citizen per year")
    valid_from: Instant
    valid_to: Instant | None = Field(default=None, description="exclusive; null = open")
    basis: str | None = Field(default=None, max_length=2000,
                              description="where the factor comes from (methodology, source)")
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "behaviour": "ride_km", "unit": "passenger_km", "grams_per_unit": "26.9",
        "max_quantity_per_event": "60", "cap_grams_per_event": 1500,
        "cap_grams_per_day": 3000, "cap_grams_per_year": 300000,
        "valid_from": "2025-01-01T00:00:00+08:00", "valid_to": None,
        "basis": "深圳市碳普惠方法学：公交出行 26.9 g/人·km"}]})


class ReductionRulePatch(BaseModel):
    """Edit a draft; a published version answers 409 ``rules.published_immutable``."""

    unit: str | None = Field(default=None, pattern=UNIT)
    grams_per_unit: Decimal | None = None
    max_quantity_per_event: Decimal | None = None
    cap_grams_per_event: int | None = None
    cap_grams_per_day: int | None = None
    cap_grams_per_year: int | None = None
    valid_from: Instant | None = None
    valid_to: Instant | None = None
    basis: str | None = Field(default=None, max_length=2000)
    model_config = ConfigDict(json_schema_extra={"examples": [{"grams_per_unit": "27.1"}]})


class PublishIn(BaseModel):
    allow_gap: bool = Field(default=False,
                            description="publish although the window leaves a gap")
    model_config = ConfigDict(json_schema_extra={"examples": [{"allow_gap": False}]})


class ReductionRuleOut(BaseModel):
    id: UUID
    scene_id: UUID
    scene_code: str
    behaviour: str
    version: int | None
    status: RuleStatus
    unit: str
    grams_per_unit: str
    grams_per_unit_milli: int
    max_quantity_per_event: str | None
    cap_grams_per_event: int | None
    cap_grams_per_day: int | None
    cap_grams_per_year: int | None
    valid_from: datetime
    valid_to: datetime | None
    basis: str | None
    superseded_by: UUID | None
    published_at: datetime | None
    in_force: bool


class ConversionRuleDraft(BaseModel):
    """A conversion rule draft (碳积分转换规则): how many grams CO2e make one point."""

    grams_per_point: int
    valid_from: Instant
    valid_to: Instant | None = None
    basis: str | None = Field(default=None, max_length=2000)
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "grams_per_point": 10, "valid_from": "2025-01-01T00:00:00+08:00",
        "basis": "1 碳积分 = 10 g CO2e"}]})


class ConversionRulePatch(BaseModel):
    grams_per_point: int | None = None
    valid_from: Instant | None = None
    valid_to: Instant | None = None
    basis: str | None = Field(default=None, max_length=2000)
    model_config = ConfigDict(json_schema_extra={"examples": [{"grams_per_point": 12}]})


class ConversionRuleOut(BaseModel):
    id: UUID
    version: int | None
    status: RuleStatus
    grams_per_point: int
    valid_from: datetime
    valid_to: datetime | None
    basis: str | None
    superseded_by: UUID | None
    published_at: datetime | None
    in_force: bool


# --- consent and links (Art. 34, PIPL) ------------------------------------------------------


class ConsentIn(BaseModel):
    """A citizen authorises a scene to share their low-carbon behaviour data (Art. 34)."""

    scene_code: str = Field(pattern=SCENE_CODE)
    scope: str = Field(default="behaviour_data", pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")
    privacy_notice_version: str = Field(min_length=1, max_length=32)
    channel: str = Field(default="app", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "scene_code": "cq-bus", "scope": "behaviour_data",
        "privacy_notice_version": "2024-09", "channel": "app"}]})


class ConsentOut(BaseModel):
    id: UUID
    scene_code: str
    scope: str
    privacy_notice_version: str
    channel: str
    granted_at: datetime
    revoked_at: datetime | None
    active: bool


class LinkCodeOut(BaseModel):
    """A one-time code the citizen gives the partner's app; it lives 10 minutes."""

    link_code: str
    expires_at: datetime


class ConsentGranted(BaseModel):
    consent: ConsentOut
    link: LinkCodeOut


class SceneConsents(BaseModel):
    scene_code: str
    scene_name_zh: str
    scene_name_en: str
    consenting: bool
    linked: bool
    linked_at: datetime | None
    history: list[ConsentOut]


class MyConsents(BaseModel):
    scenes: list[SceneConsents]


class LinkIn(BaseModel):
    """The partner exchanges the citizen's link code for a link to its own user reference."""

    link_code: str = Field(min_length=4, max_length=32)
    partner_user_ref: str = Field(pattern=PARTNER_REF)
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"link_code": "7KQ2-M9XD", "partner_user_ref": "u-000184467"}]})


class LinkStatusOut(BaseModel):
    partner_user_ref: str
    linked: bool
    consenting: bool
    linked_at: datetime | None


# --- disclosure (Art. 36) --------------------------------------------------------------------


class PublicScene(BaseModel):
    code: str
    name_zh: str
    name_en: str
    category: CategoryOut
    partner_name: str
    status: SceneStatus
    agreement_starts_on: date
    agreement_ends_on: date | None
    is_demo: bool
    behaviours: list[BehaviourOut]


class PublicStats(BaseModel):
    registered_citizens: int
    active_scenes: int
    consenting_citizens: int
    as_of: datetime
