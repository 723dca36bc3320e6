"""HTTP routes of CQCER uses: holders (``/v1/offsets``, organisation tokens), the bureau
(``/v1/admin/offsets``) and the public (``/public/offsets``: records and certificate
verification, Art. 29)."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import HTMLResponse

from app import clock
from app.audit import actor_of
from app.auth.principal import Principal
from app.deps import Db, RuntimeDep, require
from app.ratelimit import Limit, limiter_for
from offsets import certificates, service
from offsets.errors import not_found
from offsets.models import Retirement
from offsets.schemas import (
    CapIn,
    CapOut,
    Category,
    ComplianceIn,
    ComplianceOut,
    DonationIn,
    EmissionsIn,
    EmissionsOut,
    JudicialIn,
    NeutralityIn,
    PublicGoodIn,
    RefuseIn,
    RetirementOut,
)
from registry.auth import CurrentOrg

if TYPE_CHECKING:
    Bureau = Principal
else:
    Bureau = require("offsets.confirm")

PUBLIC_LIMIT = Limit("public.offsets", "240/minute")


async def _public_limit(request: Request, runtime: RuntimeDep) -> None:
    host = request.client.host if request.client else "unknown"
    await limiter_for(runtime).hit(PUBLIC_LIMIT, host, code="public.rate_limited")


holder = APIRouter(prefix="/v1/offsets", tags=["offsets: holders"])
bureau = APIRouter(prefix="/v1/admin/offsets", tags=["offsets: bureau"])
public = APIRouter(prefix="/public/offsets", tags=["offsets: disclosure (Art. 29, 36)"],
                   dependencies=[Depends(_public_limit)])


def _org(org: Principal) -> UUID:
    assert org.scope_id is not None
    return org.scope_id


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


# --- the bureau ----------------------------------------------------------------------------


# A compliance year (履约年度) the ETS could have: anything else never reaches the database.
ComplianceYear = Annotated[int, Path(ge=2000, le=2100)]
ComplianceYearQuery = Annotated[int | None, Query(ge=2000, le=2100)]


@bureau.put("/caps/{year}/{category}", response_model=CapOut)
async def set_cap(
    year: ComplianceYear, category: Category, body: CapIn, who: Bureau, db: Db
) -> CapOut:
    """Set the compliance offset cap of a year and category (share of verified emissions)."""
    async with db.transaction() as session:
        return await service.set_cap(session, year, category, body.cap_bps, actor=actor_of(who))


@bureau.get("/caps", response_model=list[CapOut])
async def caps(who: Bureau, db: Db, year: ComplianceYearQuery = None) -> list[CapOut]:
    async with db.transaction() as session:
        return await service.list_caps(session, year)


@bureau.put("/emissions/{organisation_id}/{year}", response_model=EmissionsOut)
async def set_emissions(organisation_id: UUID, year: ComplianceYear, body: EmissionsIn, who: Bureau,
                        db: Db) -> EmissionsOut:
    """Record a covered entity's verified emissions of a compliance year."""
    async with db.transaction() as session:
        return await service.set_emissions(session, organisation_id, year,
                                           body.verified_tonnes, actor=actor_of(who))


@bureau.get("/compliance", response_model=list[ComplianceOut])
async def applications(who: Bureau, db: Db,
                       state: Literal["pending", "confirmed", "refused"] | None = None
                       ) -> list[ComplianceOut]:
    async with db.transaction() as session:
        return await service.list_compliance(session, state=state)


@bureau.post("/compliance/{request_id}/confirm", response_model=ComplianceOut)
async def confirm(request_id: UUID, who: Bureau, db: Db) -> ComplianceOut:
    """Confirm (Art. 26): the credits are cancelled for compliance."""
    async with db.transaction() as session:
        return await service.confirm(session, request_id, actor=actor_of(who))


@bureau.post("/compliance/{request_id}/refuse", response_model=ComplianceOut)
async def refuse(request_id: UUID, body: RefuseIn, who: Bureau, db: Db) -> ComplianceOut:
    async with db.transaction() as session:
        return await service.refuse(session, request_id, body.reason, actor=actor_of(who))


# --- holders -------------------------------------------------------------------------------


@holder.post("/compliance", response_model=ComplianceOut, status_code=201)
async def apply(body: ComplianceIn, org: CurrentOrg, db: Db) -> ComplianceOut:
    """A covered entity applies to offset (Art. 26); the credits are locked."""
    async with db.transaction() as session:
        return await service.request_compliance(session, _org(org), body, actor=actor_of(org))


@holder.get("/compliance", response_model=list[ComplianceOut])
async def my_applications(org: CurrentOrg, db: Db) -> list[ComplianceOut]:
    async with db.transaction() as session:
        return await service.list_compliance(session, organisation_id=_org(org))


@holder.post("/neutrality", response_model=RetirementOut, status_code=201)
async def neutrality(body: NeutralityIn, org: CurrentOrg, db: Db, request: Request
                     ) -> RetirementOut:
    """Carbon neutrality (Art. 27): cancel at least the stated emissions; a certificate."""
    async with db.transaction() as session:
        r = await service.neutralise(session, _org(org), body, actor=actor_of(org))
    return service.retirement_out(r, _base(request))


@holder.post("/judicial", response_model=RetirementOut, status_code=201)
async def judicial(body: JudicialIn, org: CurrentOrg, db: Db, request: Request
                   ) -> RetirementOut:
    """Judicial purchase (Art. 24): ecological-sink credits; a certificate for the court."""
    async with db.transaction() as session:
        r = await service.judicial_purchase(session, _org(org), body, actor=actor_of(org))
    return service.retirement_out(r, _base(request))


@holder.post("/public-good", response_model=RetirementOut, status_code=201)
async def public_good(body: PublicGoodIn, org: CurrentOrg, db: Db, request: Request
                      ) -> RetirementOut:
    """Public-good cancellation (Art. 27)."""
    async with db.transaction() as session:
        r = await service.public_good(session, _org(org), body, actor=actor_of(org))
    return service.retirement_out(r, _base(request))


@holder.post("/donations", response_model=RetirementOut, status_code=201)
async def donate(body: DonationIn, org: CurrentOrg, db: Db, request: Request) -> RetirementOut:
    """Donation to another holder (Art. 27)."""
    async with db.transaction() as session:
        r = await service.donate(session, _org(org), body, actor=actor_of(org))
    return service.retirement_out(r, _base(request))


@holder.get("/retirements/{retirement_id}/certificate.pdf")
async def certificate(retirement_id: UUID, org: CurrentOrg, db: Db, request: Request
                      ) -> Response:
    """The certificate (PDF with a QR code to the public verification page)."""
    async with db.transaction() as session:
        r = await service.get_retirement(session, retirement_id)
    if r.organisation_id != _org(org):
        raise not_found("retirement")
    pdf = certificates.render_pdf(_certificate(r, _base(request)))
    return Response(pdf, media_type="application/pdf", headers={
        "Content-Disposition": f'attachment; filename="{r.certificate_no}.pdf"'})


def _certificate(r: Retirement, base: str) -> certificates.Certificate:
    lines: list[tuple[str, str]] = []
    if r.kind == "neutrality":
        kinds = {"organisation": "组织 organisation", "event": "活动 event",
                 "person": "个人 person"}
        lines += [("中和对象 Subject", f"{r.subject_public} ({kinds[r.subject_kind or '']})"),
                  ("排放量 Emissions", f"{r.emission_tonnes} tCO2e")]
    elif r.kind == "judicial":
        lines += [("法院 Court", r.court or ""), ("案号 Case", r.case_no or ""),
                  ("被告 Defendant", r.subject_public or ""),
                  ("判令认购量 Ordered", f"{r.ordered_tonnes} tCO2e")]
    else:
        lines.append(("受益方 Beneficiary", r.beneficiary))
    if r.category:
        lines.append(("类别 Category", r.category + (f" / {r.vintage}" if r.vintage else "")))
    return certificates.Certificate(
        kind=r.kind, number=r.certificate_no, holder=r.holder_name, quantity=r.quantity,
        issued_on=clock.business_date(r.created_at).isoformat(), lines=lines,
        serials=list(r.serials),
        verify_url=f"{base}/public/offsets/certificates/{r.certificate_no}")


# --- the public ----------------------------------------------------------------------------


@public.get("/records", response_model=list[RetirementOut])
async def records(db: Db, request: Request,
                  kind: Literal["neutrality", "judicial", "public_good", "donation"] | None = None
                  ) -> list[RetirementOut]:
    """Every use, public (Art. 29): certificate, holder, quantity, serials."""
    async with db.transaction() as session:
        rows = await service.public_records(session, kind)
    base = _base(request)
    return [r.model_copy(update={"certificate_url": base + r.certificate_url}) for r in rows]


@public.get("/compliance", response_model=list[ComplianceOut])
async def confirmed_offsets(db: Db) -> list[ComplianceOut]:
    """Confirmed compliance offsets (Art. 29: cancellations are public)."""
    async with db.transaction() as session:
        return await service.list_compliance(session, state="confirmed")


@public.get("/certificates/{number}", response_model=None)
async def verify(number: str, db: Db, request: Request, format: Literal["html", "json"] = "html"
                 ) -> Any:
    """The verification page a certificate's QR code opens: the use and the registry's
    current state of each serial range."""
    async with db.transaction() as session:
        r, states = await service.verify(session, number)
    out = service.retirement_out(r, _base(request))
    if format == "json":
        return {**out.model_dump(mode="json"),
                "registry": [{"serial": s, "state": st} for s, st in states]}
    title = certificates.TITLES[r.kind][0]
    rows = "".join(
        f"<tr><td><code>{escape(s)}</code></td><td>{escape(st or '已流转 moved on')}</td></tr>"
        for s, st in states)
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>"
                    for k, v in _certificate(r, "").lines)
    html = f"""<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} {escape(r.certificate_no)}</title></head><body>
<h1>{escape(title)}</h1><p>证书编号 <strong>{escape(r.certificate_no)}</strong> ·
签发日期 {clock.business_date(r.created_at).isoformat()}</p>
<dl><dt>持有人</dt><dd>{escape(r.holder_name)}</dd><dt>数量</dt><dd>{r.quantity} tCO2e</dd>
{facts}</dl>
<h2>序列号及登记状态（以管理系统为准）</h2>
<table><tr><th>序列号</th><th>状态</th></tr>{rows}</table>
</body></html>"""
    return HTMLResponse(html)


router = APIRouter()
router.include_router(holder)
router.include_router(bureau)
router.include_router(public)
