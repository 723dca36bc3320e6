"""HTTP routes of authentication: citizens' login, partners' tokens, admin login and users."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from authlib.oauth2.rfc6749.util import extract_basic_authorization
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from app.auth import admins, citizens, clients, otp, sessions
from app.auth.principal import Principal
from app.auth.schemas import (
    AdminLogin,
    AdminTokenOut,
    AdminUserCreate,
    AdminUserOut,
    AdminUserUpdate,
    CitizenLogin,
    CitizenTokens,
    ClientToken,
    OtpAccepted,
    OtpRequest,
    RefreshRequest,
    TotpConfirm,
    TotpEnrolmentOut,
)
from app.auth.tokens import issue_access_token
from app.crypto import mask_phone, normalize_phone
from app.deps import Db, RuntimeDep, require
from app.errors import DomainError, Unauthorized
from app.ratelimit import Limit, limiter_for

router = APIRouter(tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
ADMIN_LOGIN_PER_USER = Limit("admin_login.user", "10/minute;50/hour")
ADMIN_LOGIN_PER_IP = Limit("admin_login.ip", "60/minute")
TOKEN_PER_IP = Limit("oauth_token.ip", "600/minute")


def client_ip(request: Request) -> str:
    # Behind a reverse proxy, uvicorn's --forwarded-allow-ips puts the real address here.
    return request.client.host if request.client else "unknown"


def sms_sender(request: Request) -> otp.SmsSender:
    """The configured sender (``app.state.sms_sender``), else the development one."""
    sender: otp.SmsSender | None = getattr(request.app.state, "sms_sender", None)
    if sender is None:
        sender = otp.default_sender(request.app.state.runtime)
        request.app.state.sms_sender = sender
    return sender


# --- citizens -------------------------------------------------------------------------------


@router.post("/v1/auth/otp", status_code=202, response_model=OtpAccepted)
async def request_otp(
    body: OtpRequest, request: Request, runtime: RuntimeDep,
    sender: Annotated[otp.SmsSender, Depends(sms_sender)],
) -> OtpAccepted:
    """Send a 6-digit login code to a phone (5 minutes, 5 tries)."""
    phone = normalize_phone(body.phone)
    await otp.send_code(runtime, sender, phone, client_ip=client_ip(request))
    return OtpAccepted(sent_to=mask_phone(phone), expires_in=otp.CODE_TTL_S)


def _citizen_tokens(pair: sessions.TokenPair) -> JSONResponse:
    body = CitizenTokens(
        access_token=pair.access_token, expires_in=pair.expires_in,
        refresh_token=pair.refresh_token, refresh_expires_in=pair.refresh_expires_in,
        citizen_id=pair.citizen_id,
    )
    return JSONResponse(body.model_dump(mode="json"), headers=NO_STORE)


@router.post("/v1/auth/login", response_model=CitizenTokens)
async def citizen_login(body: CitizenLogin, request: Request, runtime: RuntimeDep,
                        db: Db) -> JSONResponse:
    """Exchange phone + code for an access token (15 min) and a refresh token."""
    phone = await otp.verify_code(runtime, body.phone, body.code, client_ip=client_ip(request))
    async with db.transaction() as session:
        citizen_id = await citizens.get_or_create_citizen(session, phone)
        pair = await sessions.issue_tokens(session, citizen_id)
    return _citizen_tokens(pair)


@router.post("/v1/auth/refresh", response_model=CitizenTokens)
async def citizen_refresh(body: RefreshRequest, db: Db) -> JSONResponse:
    """Rotate: a new pair for a live refresh token; a reused one revokes the whole login."""
    try:
        async with db.transaction() as session:
            pair = await sessions.rotate(session, body.refresh_token)
    except sessions.RefreshReused as reused:
        async with db.transaction() as session:
            await sessions.revoke_family(session, reused.family_id)
        raise
    return _citizen_tokens(pair)


@router.post("/v1/auth/logout", status_code=204)
async def citizen_logout(body: RefreshRequest, db: Db) -> Response:
    """End the login this refresh token belongs to."""
    async with db.transaction() as session:
        await sessions.logout(session, body.refresh_token)
    return Response(status_code=204)


# --- scene partners: OAuth2 client credentials (RFC 6749 §4.4) -------------------------------


class OAuthError(DomainError):
    """An RFC 6749 §5.2 error, as problem+json with the RFC's ``error`` member beside it."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(f"auth.{error}", detail, error=error, **extra)
        self.status = status
        self.title = "OAuth error"


@router.post("/v1/oauth/token", response_model=ClientToken)
async def oauth_token(request: Request, runtime: RuntimeDep, db: Db) -> JSONResponse:
    """Client-credentials grant: ``client_id``/``client_secret`` by HTTP Basic or form body."""
    await limiter_for(runtime).hit(TOKEN_PER_IP, client_ip(request), code="auth.rate_limited")
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    basic_id, basic_secret = extract_basic_authorization(request.headers)
    if basic_id is not None and "client_secret" in fields:
        raise OAuthError(400, "invalid_request", "Use one client authentication method.")
    client_id = basic_id if basic_id is not None else fields.get("client_id")
    secret = basic_secret if basic_id is not None else fields.get("client_secret")
    grant = fields.get("grant_type")
    if not grant:
        raise OAuthError(400, "invalid_request", "grant_type is required.")
    if grant != "client_credentials":
        raise OAuthError(400, "unsupported_grant_type", "Only client_credentials is supported.")
    challenge = {"headers": {"WWW-Authenticate": 'Basic realm="tanhui"'}} if basic_id else {}
    if not client_id or not secret:
        raise OAuthError(401, "invalid_client", "Client authentication failed.", **challenge)
    async with db.session() as session:
        client = await clients.authenticate_client(session, client_id, secret)
    if client is None:
        raise OAuthError(401, "invalid_client", "Client authentication failed.", **challenge)
    ttl = runtime.settings.access_token_ttl_s
    token = issue_access_token("partner", client.id, scope_id=client.scope_id, ttl_s=ttl)
    body = ClientToken(access_token=token, expires_in=ttl)
    return JSONResponse(body.model_dump(), headers=NO_STORE)


# --- admin users --------------------------------------------------------------------------------


def _admin_token(result: admins.AdminToken) -> JSONResponse:
    body = AdminTokenOut(
        access_token=result.access_token, expires_in=result.expires_in,
        user=AdminUserOut.model_validate(result.user),
    )
    return JSONResponse(body.model_dump(mode="json"), headers=NO_STORE)


@router.post("/v1/admin/login", response_model=AdminTokenOut)
async def admin_login(body: AdminLogin, request: Request, runtime: RuntimeDep,
                      db: Db) -> JSONResponse:
    """Username, password and TOTP code. Not enrolled yet: 403 with an ``enrolment_token``."""
    limiter = limiter_for(runtime)
    await limiter.hit(ADMIN_LOGIN_PER_IP, client_ip(request), code="auth.rate_limited")
    await limiter.hit(ADMIN_LOGIN_PER_USER, body.username.strip().lower(),
                      code="auth.rate_limited")
    async with db.transaction() as session:
        result = await admins.login_admin(session, body.username, body.password, body.totp_code)
    return _admin_token(result)


def enrolling_admin(request: Request) -> UUID:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("auth.missing", "An enrolment token is required.",
                           headers={"WWW-Authenticate": "Bearer"})
    return admins.decode_enrolment_token(token.strip())


EnrollingAdmin = Annotated[UUID, Depends(enrolling_admin)]


@router.post("/v1/admin/totp/enrol", response_model=TotpEnrolmentOut)
async def totp_enrol(user_id: EnrollingAdmin, db: Db) -> JSONResponse:
    """A new TOTP secret as an ``otpauth://`` URI for the authenticator app."""
    async with db.transaction() as session:
        enrolment = await admins.start_totp_enrolment(session, user_id)
    body = TotpEnrolmentOut(otpauth_uri=enrolment.otpauth_uri, secret=enrolment.secret)
    return JSONResponse(body.model_dump(), headers=NO_STORE)


@router.post("/v1/admin/totp/confirm", response_model=AdminTokenOut)
async def totp_confirm(body: TotpConfirm, user_id: EnrollingAdmin, db: Db) -> JSONResponse:
    """Confirm with a first code: enrolment completes and an access token is returned."""
    async with db.transaction() as session:
        result = await admins.confirm_totp_enrolment(session, user_id, body.code)
    return _admin_token(result)


if TYPE_CHECKING:
    ManageUsers = Principal
else:
    ManageUsers = require("admin.users.manage")


@router.post("/v1/admin/users", status_code=201, response_model=AdminUserOut)
async def create_admin_user(body: AdminUserCreate, admin: ManageUsers, db: Db) -> AdminUserOut:
    """Create a staff user; they enrol TOTP at their first login."""
    async with db.transaction() as session:
        view, _ = await admins.create_admin_user(
            session, username=body.username, password=body.password, roles=body.roles,
            district_code=body.district_code, acts_for=body.acts_for,
            actor=f"admin:{admin.id}",
        )
    return AdminUserOut.model_validate(view)


@router.get("/v1/admin/users", response_model=list[AdminUserOut])
async def list_admin_users(admin: ManageUsers, db: Db) -> list[AdminUserOut]:
    async with db.session() as session:
        views = await admins.list_admin_users(session)
    return [AdminUserOut.model_validate(v) for v in views]


@router.get("/v1/admin/users/{user_id}", response_model=AdminUserOut)
async def get_admin_user(user_id: UUID, admin: ManageUsers, db: Db) -> AdminUserOut:
    async with db.session() as session:
        view = await admins.get_admin_user(session, user_id)
    return AdminUserOut.model_validate(view)


@router.patch("/v1/admin/users/{user_id}", response_model=AdminUserOut)
async def update_admin_user(user_id: UUID, body: AdminUserUpdate, admin: ManageUsers,
                            db: Db) -> AdminUserOut:
    """Change roles, district, active flag, or force TOTP re-enrolment."""
    async with db.transaction() as session:
        view = await admins.update_admin_user(
            session, user_id, actor=f"admin:{admin.id}", actor_id=admin.id, roles=body.roles,
            district_code=body.district_code, is_active=body.is_active,
            reset_totp=body.reset_totp,
        )
    return AdminUserOut.model_validate(view)
