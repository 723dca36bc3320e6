"""Admin users (管理用户): argon2id passwords, mandatory TOTP, roles, audited writes.

Staff of the operator, the bureau and district bureaus, the registry agency, the exchange,
VVBs and experts log in with username, password and a TOTP code. A user without TOTP gets
only an enrolment token, good for nothing but enrolling.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import jwt
import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.auth.models import AdminUser
from app.auth.permissions import ROLES
from app.auth.tokens import ALGORITHM, ISSUER, issue_access_token
from app.crypto import decrypt, encrypt
from app.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from app.secrets import get_keys
from app.settings import get_settings

TOTP_CONTEXT = "admin.totp_secret"
TOTP_ISSUER = "Tanhuitong"
ENROL_AUDIENCE = "tanhui:totp-enrol"
ENROL_TTL_S = 10 * 60
MIN_PASSWORD = 12
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{2,63}")
DISTRICT = re.compile(r"\d{6}")  # administrative division code, e.g. 500103 渝中区

# argon2id with OWASP's first recommended setting (19 MiB, 2 passes, 1 lane): a guess costs
# an attacker as much memory as it costs us, without stalling a shared API host.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the username is unknown, so a miss costs as long as a hit.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


@dataclass(frozen=True, slots=True)
class AdminUserView:
    id: UUID
    username: str
    roles: list[str]
    district_code: str | None
    is_active: bool
    totp_enrolled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AdminToken:
    access_token: str
    expires_in: int
    user: AdminUserView


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    secret: str
    otpauth_uri: str


def _view(row: AdminUser) -> AdminUserView:
    return AdminUserView(
        row.id, row.username, sorted(row.roles), row.district_code, row.is_active,
        row.totp_enrolled_at is not None, row.created_at,
    )


async def _audit(session: AsyncSession, actor: str, action: str, entity_id: UUID,
                 data: dict[str, Any]) -> None:
    """Append to the hash-chained audit log when the kernel has one (never a password)."""
    try:
        from app.audit import append  # type: ignore[attr-defined]
    except ImportError:
        return
    await append(session, actor=actor, action=action, entity="admin_user",
                 entity_id=str(entity_id), data=data)


def _check_roles(roles: list[str] | set[str] | frozenset[str], district_code: str | None) -> None:
    if not roles:
        raise Invalid("auth.roles_invalid", "An admin user needs at least one role.")
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise Invalid("auth.roles_invalid", f"Unknown roles: {', '.join(unknown)}.")
    if district_code is not None and not DISTRICT.fullmatch(district_code):
        raise Invalid("auth.district_invalid", "A district is a 6-digit division code.")
    if "district_bureau" in roles and district_code is None:
        raise Invalid("auth.district_required", "The district_bureau role needs a district.")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise Invalid("auth.password_too_short",
                      f"A password needs at least {MIN_PASSWORD} characters.")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def _verify_password(stored: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret)


def totp_uri(secret: str, username: str) -> str:
    return _totp(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)


def _matching_step(secret: str, code: str, at: datetime) -> int | None:
    """The time step ``code`` belongs to, within one step either side (valid_window=1)."""
    if not code.isdigit() or len(code) != 6:
        return None
    totp = _totp(secret)
    step = totp.timecode(at)
    for candidate in (step - 1, step, step + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            return candidate
    return None


async def create_admin_user(
    session: AsyncSession,
    *,
    username: str,
    password: str,
    roles: list[str] | set[str] | frozenset[str],
    district_code: str | None = None,
    acts_for: UUID | None = None,
    actor: str,
    enrol_totp: bool = False,
    now: datetime | None = None,
) -> tuple[AdminUserView, TotpEnrolment | None]:
    """Create an admin user; with ``enrol_totp`` (the CLI) TOTP is enrolled at once and the
    secret returned for the console to show once."""
    now = now or clock.now()
    username = username.strip().lower()
    if not USERNAME.fullmatch(username):
        raise Invalid("auth.username_invalid",
                      "A username is 3–64 of a-z, 0-9, '.', '_' or '-'.")
    _check_password(password)
    _check_roles(roles, district_code)
    if await session.scalar(select(AdminUser.id).where(AdminUser.username == username)):
        raise Conflict("auth.username_taken", "That username is taken.")
    enrolment: TotpEnrolment | None = None
    row = AdminUser(
        id=uuid.uuid4(), username=username, password_hash=await hash_password(password),
        roles=sorted(set(roles)), district_code=district_code, acts_for=acts_for,
        is_active=True, created_at=now,
    )
    if enrol_totp:
        secret = pyotp.random_base32()
        row.totp_secret_enc = encrypt(secret, context=TOTP_CONTEXT)
        row.totp_enrolled_at = now
        enrolment = TotpEnrolment(secret, totp_uri(secret, username))
    session.add(row)
    await session.flush()
    await _audit(session, actor, "admin_user.create", row.id, {
        "username": username, "roles": row.roles, "district_code": district_code,
        "acts_for": str(acts_for) if acts_for else None, "totp_enrolled": enrol_totp,
    })
    return _view(row), enrolment


async def list_admin_users(session: AsyncSession) -> list[AdminUserView]:
    rows = await session.scalars(select(AdminUser).order_by(AdminUser.username))
    return [_view(r) for r in rows]


async def get_admin_user(session: AsyncSession, user_id: UUID) -> AdminUserView:
    row = await session.get(AdminUser, user_id)
    if row is None:
        raise NotFound("auth.admin_user_not_found", "No such admin user.")
    return _view(row)


async def find_admin_user(session: AsyncSession, username: str) -> AdminUserView | None:
    row = await session.scalar(
        select(AdminUser).where(AdminUser.username == username.strip().lower())
    )
    return _view(row) if row else None


async def update_admin_user(
    session: AsyncSession,
    user_id: UUID,
    *,
    actor: str,
    actor_id: UUID | None = None,
    roles: list[str] | None = None,
    district_code: str | None = None,
    is_active: bool | None = None,
    reset_totp: bool = False,
) -> AdminUserView:
    """Change roles, district or active flag, or force TOTP re-enrolment. Audited.

    An admin cannot suspend themselves nor drop their own ``operator_admin`` role, so the
    system never locks out its last manager by accident.
    """
    row = await session.scalar(select(AdminUser).where(AdminUser.id == user_id).with_for_update())
    if row is None:
        raise NotFound("auth.admin_user_not_found", "No such admin user.")
    new_roles = sorted(set(roles)) if roles is not None else row.roles
    new_district = district_code if district_code is not None else row.district_code
    _check_roles(new_roles, new_district)
    if actor_id == row.id and (
        is_active is False or ("operator_admin" in row.roles and "operator_admin" not in new_roles)
    ):
        raise Conflict("auth.self_lockout", "You cannot suspend or demote yourself.")
    changes: dict[str, Any] = {}
    if new_roles != row.roles:
        changes["roles"] = new_roles
        row.roles = new_roles
    if new_district != row.district_code:
        changes["district_code"] = new_district
        row.district_code = new_district
    if is_active is not None and is_active != row.is_active:
        changes["is_active"] = is_active
        row.is_active = is_active
    if reset_totp:
        changes["totp_reset"] = True
        row.totp_secret_enc = None
        row.totp_enrolled_at = None
        row.totp_last_step = None
    await session.flush()
    if changes:
        await _audit(session, actor, "admin_user.update", row.id, changes)
    return _view(row)


# --- login and TOTP enrolment ------------------------------------------------------------------


def _access(row: AdminUser) -> AdminToken:
    return AdminToken(
        access_token=issue_access_token(
            "admin", row.id, roles=frozenset(row.roles), district=row.district_code,
            scope_id=row.acts_for,
        ),
        expires_in=get_settings().access_token_ttl_s,
        user=_view(row),
    )


def issue_enrolment_token(user_id: UUID) -> str:
    """A token that opens only the TOTP enrolment routes (its audience is not an API's)."""
    now = clock.now()
    claims = {
        "iss": ISSUER, "aud": ENROL_AUDIENCE, "sub": str(user_id),
        "iat": int(now.timestamp()), "exp": int((now + timedelta(seconds=ENROL_TTL_S)).timestamp()),
    }
    return jwt.encode(claims, get_keys().jwt_signing_key, algorithm=ALGORITHM)


def decode_enrolment_token(token: str) -> UUID:
    try:
        claims = jwt.decode(
            token, get_keys().jwt_signing_key, algorithms=[ALGORITHM], issuer=ISSUER,
            audience=ENROL_AUDIENCE, options={"require": ["exp", "sub", "aud"],
                                              "verify_iat": False, "verify_exp": False},
        )
        if claims["exp"] <= clock.now().timestamp():
            raise Unauthorized("auth.token_expired", "The enrolment token has expired.")
        return UUID(claims["sub"])
    except (jwt.PyJWTError, ValueError) as exc:
        raise Unauthorized("auth.token_invalid", "Not an enrolment token.") from exc


async def login_admin(
    session: AsyncSession, username: str, password: str, totp_code: str | None,
    *, now: datetime | None = None,
) -> AdminToken:
    """Password and TOTP, both required. Not enrolled yet: 403 with an enrolment token."""
    now = now or clock.now()
    row = await session.scalar(
        select(AdminUser).where(AdminUser.username == username.strip().lower()).with_for_update()
    )
    ok = await _verify_password(row.password_hash if row else _DUMMY_HASH, password)
    if row is None or not ok:
        raise Unauthorized("auth.invalid_credentials", "Wrong username or password.")
    if not row.is_active:
        raise Forbidden("auth.account_disabled", "This account is suspended.")
    if row.totp_enrolled_at is None or row.totp_secret_enc is None:
        raise Forbidden(
            "auth.totp_enrolment_required",
            "Enrol an authenticator app first (POST /v1/admin/totp/enrol).",
            enrolment_token=issue_enrolment_token(row.id),
        )
    if not totp_code:
        raise Unauthorized("auth.totp_required", "A TOTP code is required.")
    step = _matching_step(decrypt(row.totp_secret_enc, context=TOTP_CONTEXT), totp_code, now)
    if step is None:
        raise Unauthorized("auth.totp_invalid", "The TOTP code is wrong.")
    if row.totp_last_step is not None and step <= row.totp_last_step:
        raise Unauthorized("auth.totp_replayed", "This TOTP code was used already.")
    row.totp_last_step = step
    if _hasher.check_needs_rehash(row.password_hash):
        row.password_hash = await hash_password(password)
    await session.flush()
    return _access(row)


async def _enrolling(session: AsyncSession, user_id: UUID) -> AdminUser:
    row = await session.scalar(select(AdminUser).where(AdminUser.id == user_id).with_for_update())
    if row is None or not row.is_active:
        raise Unauthorized("auth.token_invalid", "Not an enrolment token.")
    if row.totp_enrolled_at is not None:
        raise Conflict("auth.totp_already_enrolled", "TOTP is enrolled already.")
    return row


async def start_totp_enrolment(session: AsyncSession, user_id: UUID) -> TotpEnrolment:
    """A new pending TOTP secret (replacing any earlier pending one)."""
    row = await _enrolling(session, user_id)
    secret = pyotp.random_base32()
    row.totp_secret_enc = encrypt(secret, context=TOTP_CONTEXT)
    await session.flush()
    return TotpEnrolment(secret, totp_uri(secret, row.username))


async def confirm_totp_enrolment(
    session: AsyncSession, user_id: UUID, code: str, *, now: datetime | None = None
) -> AdminToken:
    """Prove the authenticator works: enrolment completes and the user is logged in."""
    now = now or clock.now()
    row = await _enrolling(session, user_id)
    if row.totp_secret_enc is None:
        raise Conflict("auth.totp_not_started", "Start the enrolment first.")
    step = _matching_step(decrypt(row.totp_secret_enc, context=TOTP_CONTEXT), code, now)
    if step is None:
        raise Unauthorized("auth.totp_invalid", "The TOTP code is wrong.")
    row.totp_enrolled_at = now
    row.totp_last_step = step
    await session.flush()
    await _audit(session, f"admin:{row.id}", "admin_user.totp_enrol", row.id, {})
    return _access(row)


async def totp_enrolment_of(session: AsyncSession, username: str) -> TotpEnrolment | None:
    """The enrolled TOTP secret and URI of a user (for the demo seed's printout only)."""
    row = await session.scalar(select(AdminUser).where(AdminUser.username == username))
    if row is None or row.totp_secret_enc is None:
        return None
    secret = decrypt(row.totp_secret_enc, context=TOTP_CONTEXT)
    return TotpEnrolment(secret, totp_uri(secret, row.username))
