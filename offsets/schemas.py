"""Requests and answers of CQCER uses (Art. 24–29). Quantities are whole tonnes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

Category = Literal["engineering", "ecological_sink", "carbon_inclusive"]
_TONNES = Field(gt=0, le=10**9)
_YEAR = Field(ge=2000, le=2100)


class CapIn(BaseModel):
    """The bureau's cap: a share of verified emissions in basis points (1000 = 10 %)."""

    cap_bps: int = Field(ge=0, le=10000)


class CapOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    year: int
    category: str
    cap_bps: int
    set_by: str
    set_at: datetime


class EmissionsIn(BaseModel):
    verified_tonnes: int = Field(ge=0, le=10**10)


class EmissionsOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    organisation_id: UUID
    year: int
    verified_tonnes: int


class ComplianceIn(BaseModel):
    """A covered entity's compliance offset application (履约抵销申请, Art. 26)."""

    year: int = _YEAR
    category: Category
    vintage: int | None = Field(default=None, ge=2000, le=2100)
    quantity: int = _TONNES


class ComplianceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    organisation_id: UUID
    year: int
    category: str
    vintage: int | None
    quantity: int
    state: str
    reason: str | None
    serials: list[str] | None
    created_at: datetime
    decided_at: datetime | None


class RefuseIn(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)


class NeutralityIn(BaseModel):
    """Carbon neutrality (碳中和, Art. 27) of an organisation, an event or a person."""

    subject_kind: Literal["organisation", "event", "person"]
    subject_name: str = Field(min_length=1, max_length=200)
    emission_tonnes: int = _TONNES
    quantity: int | None = Field(default=None, gt=0, le=10**9)
    category: Category | None = None
    vintage: int | None = Field(default=None, ge=2000, le=2100)


class JudicialIn(BaseModel):
    """A judicial purchase (司法认购, Art. 24): ecological-sink credits cancelled as ordered by
    a court as alternative ecological restoration."""

    case_no: str = Field(min_length=1, max_length=100)
    court: str = Field(min_length=1, max_length=200)
    defendant: str = Field(min_length=1, max_length=200)
    defendant_kind: Literal["organisation", "person"] = "person"
    ordered_tonnes: int = _TONNES
    category: Category = "ecological_sink"
    vintage: int | None = Field(default=None, ge=2000, le=2100)


class PublicGoodIn(BaseModel):
    """A public-good cancellation (公益注销, Art. 27)."""

    quantity: int = _TONNES
    beneficiary: str = Field(min_length=1, max_length=300)
    category: Category | None = None
    vintage: int | None = Field(default=None, ge=2000, le=2100)


class DonationIn(BaseModel):
    """A donation (捐赠, Art. 27) of held credits to another registry account holder."""

    to_organisation_id: UUID
    quantity: int = _TONNES
    category: Category | None = None
    vintage: int | None = Field(default=None, ge=2000, le=2100)
    note: str | None = Field(default=None, max_length=300)


class RetirementOut(BaseModel):
    """A use with its certificate; persons' names appear masked."""

    id: UUID
    kind: str
    certificate_no: str
    holder_name: str
    quantity: int
    category: str | None
    vintage: int | None
    beneficiary: str
    subject_kind: str | None
    subject: str | None
    emission_tonnes: int | None
    case_no: str | None
    court: str | None
    ordered_tonnes: int | None
    serials: list[str]
    created_at: datetime
    certificate_url: str
