"""Requests and answers of the registry, and the views of its credit service."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

Category = Literal["engineering", "ecological_sink", "carbon_inclusive"]
CreditState = Literal["held", "locked", "cancelled"]
Purpose = Literal["compliance", "neutrality", "judicial", "public_good", "voluntary", "sanction",
                  "owner_gone"]
OrgKind = Literal["owner", "trader", "covered_entity", "individual"]
StaffOf = Literal["registry_agency", "operator", "exchange"]

# Bounds of what a request may ask for, so the database (BIGINT tonnes and serials, INTEGER
# years) never sees a value it cannot store: a trillion tonnes is far past any real request.
MAX_TONNES = 10**12
Vintage = Annotated[int, Field(ge=1, le=9999, description="a calendar year")]
Tonnes = Annotated[int, Field(gt=0, le=MAX_TONNES)]
# A calendar day a request may state: year arithmetic (whole crediting years, bans, look-backs)
# stays inside what a date can hold.
Day = Annotated[date, Field(ge=date(1900, 1, 1), le=date(2999, 12, 31))]


def serial_range(project_no: int, instalment_no: int, vintage: int, start: int, end: int) -> str:
    """``CQCER-<project>-<instalment>-<vintage>-<start>-<end>``."""
    return f"CQCER-{project_no}-{instalment_no}-{vintage}-{start}-{end}"


# --- credit service views (used by trading and offsets) -----------------------------------


class ProductFilter(BaseModel):
    """Which credits a lock may take: a methodology category, optionally one vintage."""

    model_config = ConfigDict(frozen=True)

    category: Category
    vintage: int | None = None
    project_id: UUID | None = None


class ProductFilterIn(ProductFilter):
    """A product filter as a request states it (the vintage a real year)."""

    vintage: Vintage | None = None


class BlockView(BaseModel):
    """A block of CQCER: a serial range of one issuance, in one account and one state."""

    id: UUID
    serial: str
    serial_start: int
    serial_end: int
    quantity: int
    project_id: UUID
    project_no: int
    instalment_no: int
    vintage: int
    category: Category
    state: CreditState
    account_id: UUID
    lock_id: UUID | None = None
    cancellation_id: UUID | None = None


class LockView(BaseModel):
    id: UUID
    account_id: UUID
    quantity: int
    purpose: str
    reference: str
    state: str
    created_at: datetime
    blocks: list[BlockView]


# --- organisations and accounts -----------------------------------------------------------


class OrganisationIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    uscc: str | None = Field(default=None, pattern=r"^[0-9A-HJ-NPQRTUWXY]{18}$")
    kind: OrgKind
    staff_of: StaffOf | None = None
    district_code: str | None = Field(default=None, pattern=r"^\d{6}$")
    username: str | None = Field(default=None, min_length=3, max_length=64)
    password: str | None = Field(default=None, min_length=8, max_length=200)


class OrganisationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    name: str
    uscc: str | None
    kind: str
    staff_of: str | None
    district_code: str | None
    status: str
    account_id: UUID | None = None


class LoginIn(BaseModel):
    username: str
    password: str


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    organisation_id: UUID


# --- methodologies and VVBs ----------------------------------------------------------------


class MethodologyVersionIn(BaseModel):
    baseline: str = Field(min_length=1)
    additionality: str = Field(min_length=1)
    formula: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    monitoring_plan_ref: str = Field(min_length=1)


class MethodologyIn(MethodologyVersionIn):
    code: str = Field(min_length=1, max_length=32)
    title: str = Field(min_length=1)
    category: Category
    field: str = Field(min_length=1, max_length=64)


class MethodologyVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    version: int
    status: str
    baseline: str
    additionality: str
    formula: str
    parameters: dict[str, Any]
    monitoring_plan_ref: str
    published_at: datetime | None


class MethodologyOut(BaseModel):
    id: UUID
    code: str
    title: str
    category: str
    field: str
    status: str
    versions: list[MethodologyVersionOut]


class ProposalIn(BaseModel):
    body: str = Field(min_length=1, max_length=10_000)


class ProposalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    methodology_id: UUID
    proposer: str
    body: str
    status: str
    response: str | None
    created_at: datetime


class ProposalDecisionIn(BaseModel):
    status: Literal["accepted", "rejected"]
    response: str = Field(min_length=1)


class VvbIn(BaseModel):
    name: str = Field(min_length=1)
    uscc: str = Field(pattern=r"^[0-9A-HJ-NPQRTUWXY]{18}$")
    categories: list[Category] = Field(min_length=1)
    fields: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1)
    valid_from: Day
    valid_until: Day


class VvbOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    name: str
    uscc: str
    categories: list[str]
    fields: list[str]
    valid_from: date
    valid_until: date
    status: str


class TieIn(BaseModel):
    organisation_id: UUID
    kind: Literal["asset", "management"]
    note: str | None = None


# --- projects, instalments, notices ----------------------------------------------------------


class Declarations(BaseModel):
    """The owner's declarations (Art. 15, 42(10)), answered under its responsibility (Art. 17)."""

    registered_elsewhere: bool
    green_power_benefit: bool
    legal_obligation: bool
    ets_covered: bool
    real_and_additional: bool
    inclusive: bool = False


class ProjectIn(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    methodology_version_id: UUID
    district_code: str = Field(pattern=r"^\d{6}$")
    site: str = Field(min_length=1, max_length=500)
    operation_start: Day
    crediting_start: Day
    crediting_end: Day
    description: str = ""
    design_document_ref: str = Field(min_length=1)
    validator_vvb_id: UUID
    declarations: Declarations


class LegacyProjectIn(ProjectIn):
    owner_id: UUID
    legacy_approved_on: Day


class ValidationIn(BaseModel):
    conclusion: Literal["positive", "negative"]
    report_ref: str = Field(min_length=1)


class CompletenessIn(BaseModel):
    complete: bool
    reason: str | None = None


class ReviewIn(BaseModel):
    passed: bool
    reason: str | None = None


class OpinionIn(BaseModel):
    outcome: Literal["pass", "revise", "fail"]
    body: str = Field(min_length=1)


class AssessmentIn(BaseModel):
    outcome: Literal["pass", "revise", "fail"]
    deadline: Day | None = None
    reason: str | None = None


class LetterIn(BaseModel):
    issue: bool
    reason: str | None = None


class ApplyIn(BaseModel):
    comment_handling: str | None = None


class CommentIn(BaseModel):
    author_name: str = Field(min_length=1, max_length=100)
    body: str = Field(min_length=1, max_length=5000)
    objection: bool = False


class ReplyIn(BaseModel):
    reply: str = Field(min_length=1, max_length=5000)


class CancelProjectIn(BaseModel):
    ground: Literal["request", "owner_gone", "project_gone"]
    reason: str = Field(min_length=1)


class OwnerGoneIn(BaseModel):
    """The registry agency's finding that an owner has ceased to exist (主体灭失, Art. 22)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=1, max_length=2000)


class OwnerGoneOut(BaseModel):
    organisation_id: UUID
    status: Literal["dissolved"]
    cancelled_projects: list[int]
    closed_applications: int
    cancelled_tonnes: int


class NoticeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    subject_kind: str
    subject_id: UUID
    project_id: UUID
    title: str
    starts_on: date
    ends_on: date
    published_at: datetime


class CommentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    notice_id: UUID
    author_name: str
    body: str
    objection: bool
    created_at: datetime
    reply: str | None
    replied_at: datetime | None


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    no: int
    owner_id: UUID
    title: str
    category: str
    methodology_id: UUID
    methodology_version_id: UUID
    district_code: str
    site: str
    operation_start: date
    crediting_start: date
    crediting_end: date
    validator_vvb_id: UUID
    validation_conclusion: str | None
    state: str
    assessment_round: int
    revision_deadline: date | None
    withheld_reason: str | None
    closed_reason: str | None
    legacy_approved_on: date | None
    registered_at: datetime | None
    cancelled_at: datetime | None
    cancel_ground: str | None
    notice: NoticeOut | None = None


class InstalmentIn(BaseModel):
    period_start: Day
    period_end: Day
    district_code: str | None = Field(default=None, pattern=r"^\d{6}$")
    claimed_tonnes: Tonnes
    accounting_report_ref: str = Field(min_length=1)
    verifier_vvb_id: UUID


class VerificationIn(BaseModel):
    verified_tonnes: int = Field(ge=0, le=MAX_TONNES)
    report_ref: str = Field(min_length=1)


class InstalmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    project_id: UUID
    no: int
    period_start: date
    period_end: date
    district_code: str
    claimed_tonnes: int
    verifier_vvb_id: UUID
    verified_tonnes: int | None
    state: str
    assessment_round: int
    revision_deadline: date | None
    withheld_reason: str | None
    closed_reason: str | None
    registered_at: datetime | None
    notice: NoticeOut | None = None
    issued: list[BlockView] = Field(default_factory=list)


class SanctionIn(BaseModel):
    project_id: UUID
    false_quantity: int = Field(ge=0, le=MAX_TONNES)
    deadline: Day | None = None
    reason: str = Field(min_length=1)


class SanctionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    organisation_id: UUID
    kind: str
    project_id: UUID | None
    reason: str
    ordered_quantity: int
    deadline: date | None
    state: str
    forced_quantity: int
    ban_until: date | None
    created_at: datetime


class TransferIn(BaseModel):
    """A free transfer (无偿提供, Art. 27) of held credits to another account."""

    to_account_id: UUID
    quantity: Tonnes
    product: ProductFilterIn | None = None


class HolderCancelIn(BaseModel):
    """The holder's own cancellation (自愿注销, Art. 27)."""

    quantity: Tonnes
    purpose: Literal["voluntary", "public_good", "neutrality"]
    beneficiary: str = Field(min_length=1, max_length=300)
    product: ProductFilterIn | None = None
    detail: dict[str, Any] | None = None


# --- reports of fraud (举报, Art. 41) -------------------------------------------------------

ReportSubject = Literal["project", "reductions", "trading", "scene", "vvb", "other"]


class FraudReportIn(BaseModel):
    """A report of fraud or another violation (举报, Art. 41). Anyone may file one, without
    login and anonymously if they wish; a contact, if given, is kept encrypted."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={
        "examples": [{"subject": "project", "reference": "项目编号 12",
                      "body": "监测数据与现场运行记录不一致，疑似篡改。",
                      "reporter_name": "匿名", "contact": "13800000000"}]})

    subject: ReportSubject
    reference: str | None = Field(default=None, min_length=1, max_length=200,
                                  description="project no., serial, scene code, trade id ...")
    body: str = Field(min_length=10, max_length=5000)
    reporter_name: str | None = Field(default=None, min_length=1, max_length=100)
    contact: str | None = Field(default=None, min_length=3, max_length=200)


class FraudReceiptOut(BaseModel):
    """The receipt a reporter keeps (回执)."""

    id: UUID
    subject: ReportSubject
    status: Literal["received", "closed"]
    received_at: datetime


class FraudReportOut(BaseModel):
    """A report as the registry agency and the bureau read it."""

    id: UUID
    subject: ReportSubject
    reference: str | None
    body: str
    reporter_name: str | None
    contact: str | None
    status: Literal["received", "closed"]
    outcome: str | None
    handled_by: str | None
    created_at: datetime
    closed_at: datetime | None


class FraudReportCloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    outcome: str = Field(min_length=1, max_length=5000)
