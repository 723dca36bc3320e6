"""Request and response bodies of the auth routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class OtpRequest(BaseModel):
    phone: str = Field(max_length=32, description="mainland mobile number; +86 optional")


class OtpAccepted(BaseModel):
    sent_to: str = Field(description="the masked phone, e.g. 138****0000")
    expires_in: int


class CitizenLogin(BaseModel):
    phone: str = Field(max_length=32)
    code: str = Field(pattern=r"^\d{6}$")


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=256)


class CitizenTokens(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    citizen_id: UUID


class CitizenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    phone_masked: str | None
    pseudonym: str
    created_at: datetime
    erased_at: datetime | None


class ClientToken(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class AdminLogin(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    totp_code: str | None = Field(default=None, max_length=6)


class AdminUserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    username: str
    roles: list[str]
    district_code: str | None
    is_active: bool
    totp_enrolled: bool
    created_at: datetime


class AdminTokenOut(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    user: AdminUserOut


class TotpEnrolmentOut(BaseModel):
    otpauth_uri: str
    secret: str


class TotpConfirm(BaseModel):
    code: str = Field(pattern=r"^\d{6}$")


class AdminUserCreate(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    roles: list[str] = Field(min_length=1)
    district_code: str | None = None
    acts_for: UUID | None = Field(
        default=None, description="the body the user acts for, e.g. the VVB of a vvb user"
    )


class AdminUserUpdate(BaseModel):
    roles: list[str] | None = None
    district_code: str | None = None
    is_active: bool | None = None
    reset_totp: bool = False
