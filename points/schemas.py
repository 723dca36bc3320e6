"""Request and response bodies of the citizen's account API (积分账户)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class BalanceOut(BaseModel):
    """Points available, held for redemptions, and expiring within 30 days."""

    available: int
    held: int
    expiring_30d: int


class MeOut(BaseModel):
    id: UUID
    pseudonym: str
    phone_masked: str | None
    created_at: datetime
    points: BalanceOut


class LotOut(BaseModel):
    """A lot (积分批次): the points of one credit, valid until ``expires_at`` (≤ 5 years)."""

    id: int
    points: int
    remaining: int
    expired: int
    credited_at: datetime
    expires_at: datetime
    entry_id: int  # the credit's ledger entry; equal to ``id``


class LotList(BaseModel):
    items: list[LotOut]


class SourceOut(BaseModel):
    """Where a credit came from: the scene's event and the published rules applied."""

    scene_id: UUID
    event_id: str
    behaviour: str
    occurred_at: datetime
    grams: int
    grams_per_point: int
    reduction_rule_version_id: UUID
    conversion_rule_version_id: UUID


class EntryOut(BaseModel):
    id: int
    kind: str = Field(description="credit | hold | release | redemption | expiry")
    points: int
    created_at: datetime
    hold_id: UUID | None = None
    reference: str | None = None
    source: SourceOut | None = Field(default=None, description="only on credits")


class StatementOut(BaseModel):
    items: list[EntryOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


class HoldIn(BaseModel):
    """The citizen sets points aside for a redemption (冻结)."""

    # Plain ints: the ledger refuses zero and negative amounts with points.amount_invalid.
    points: int
    reference: str = Field(max_length=200)
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"points": 120, "reference": "counter-redemption 2025-03-01"}]})


class HoldOut(BaseModel):
    id: UUID
    points: int
    status: str
    expires_at: datetime
    reference: str


class HoldList(BaseModel):
    items: list[HoldOut]
