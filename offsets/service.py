"""Uses of CQCER (Art. 24–29): compliance offset with the bureau's confirmation, carbon
neutrality, judicial purchase, public-good cancellation and donation.

Every lock, delivery and cancellation goes through the registry's credit service: the registry
records the cancellation (purpose, beneficiary) and publishes it, and a cancelled tonne can
never be locked, moved or cancelled again (Art. 29, 30). This package keeps the applications,
the bureau's caps and the certificates.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock, crypto
from offsets.errors import Forbidden, Invalid, dissolved, not_found, over_cap, wrong_state
from offsets.models import Cap, ComplianceRequest, Emissions, Retirement
from offsets.schemas import (
    CapOut,
    ComplianceIn,
    ComplianceOut,
    DonationIn,
    EmissionsOut,
    JudicialIn,
    NeutralityIn,
    PublicGoodIn,
    RetirementOut,
)
from registry import credits as registry_credits
from registry import service as registry
from registry.schemas import BlockView, OrganisationOut, ProductFilter

__all__ = ["confirm", "donate", "get_retirement", "judicial_purchase", "list_caps",
           "list_compliance", "neutralise", "public_good", "public_records", "refuse",
           "request_compliance", "set_cap", "set_emissions", "verify"]

CERT_PREFIX = {"neutrality": "NEU", "judicial": "JUD", "public_good": "PUB", "donation": "DON"}


def _serials(blocks: list[BlockView]) -> list[str]:
    return [b.serial for b in blocks]


def _mask(name: str) -> str:
    return name[0] + "*" * max(1, len(name) - 1)


def _filter(category: str | None, vintage: int | None) -> ProductFilter | None:
    if category is None:
        if vintage is not None:
            raise Invalid("offsets.vintage_needs_category", "Name the category with a vintage.")
        return None
    return ProductFilter(category=category, vintage=vintage)  # type: ignore[arg-type]


# --- the bureau's caps and verified emissions ----------------------------------------------


async def set_cap(session: AsyncSession, year: int, category: str, cap_bps: int, *, actor: str,
                  now: datetime | None = None) -> CapOut:
    """The bureau sets the compliance offset cap of a year and category (Art. 24)."""
    at = now or clock.now()
    await session.execute(
        pg_insert(Cap).values(year=year, category=category, cap_bps=cap_bps, set_by=actor,
                              set_at=at)
        .on_conflict_do_update(index_elements=["year", "category"],
                               set_={"cap_bps": cap_bps, "set_by": actor, "set_at": at}))
    await audit.append(session, actor=actor, action="offsets.cap_set", entity="offsets_cap",
                       entity_id=f"{year}:{category}", data={"cap_bps": cap_bps}, now=at)
    row = await session.get(Cap, (year, category), populate_existing=True)
    return CapOut.model_validate(row)


async def list_caps(session: AsyncSession, year: int | None = None) -> list[CapOut]:
    q = select(Cap).order_by(Cap.year, Cap.category)
    if year is not None:
        q = q.where(Cap.year == year)
    return [CapOut.model_validate(c) for c in (await session.execute(q)).scalars()]


async def set_emissions(session: AsyncSession, organisation_id: UUID, year: int,
                        verified_tonnes: int, *, actor: str,
                        now: datetime | None = None) -> EmissionsOut:
    """The bureau records a covered entity's verified emissions of a compliance year."""
    at = now or clock.now()
    org = await registry.get_organisation(session, organisation_id)
    if org.kind != "covered_entity":
        raise Invalid("offsets.not_covered_entity",
                      "Only a covered entity (配额管理单位) has compliance emissions.")
    await session.execute(
        pg_insert(Emissions).values(organisation_id=organisation_id, year=year,
                                    verified_tonnes=verified_tonnes, set_by=actor, set_at=at)
        .on_conflict_do_update(index_elements=["organisation_id", "year"],
                               set_={"verified_tonnes": verified_tonnes, "set_by": actor,
                                     "set_at": at}))
    await audit.append(session, actor=actor, action="offsets.emissions_set",
                       entity="organisation", entity_id=str(organisation_id),
                       data={"year": year, "verified_tonnes": verified_tonnes}, now=at)
    return EmissionsOut(organisation_id=organisation_id, year=year,
                        verified_tonnes=verified_tonnes)


# --- compliance offset (Art. 24, 26) ---------------------------------------------------------


async def request_compliance(session: AsyncSession, organisation_id: UUID, data: ComplianceIn,
                             *, actor: str, now: datetime | None = None) -> ComplianceOut:
    """A covered entity applies to use credits for a compliance year: eligibility and the
    category's cap are checked, then the credits are locked until the bureau decides."""
    at = now or clock.now()
    org = _active(await registry.get_organisation(session, organisation_id))
    if org.kind != "covered_entity":
        raise Forbidden("offsets.not_covered_entity",
                        "Art. 26: only covered entities (配额管理单位) offset for compliance.")
    # The emissions row lock serialises one entity's applications for the year, so two
    # concurrent applications cannot both fit under the cap.
    emissions = (await session.execute(
        select(Emissions).where(Emissions.organisation_id == organisation_id,
                                Emissions.year == data.year).with_for_update()
    )).scalar_one_or_none()
    if emissions is None:
        raise Invalid("offsets.no_verified_emissions",
                      f"No verified emissions are recorded for {data.year}.")
    cap = await session.get(Cap, (data.year, data.category))
    if cap is None:
        raise Invalid("offsets.no_cap", f"The bureau has set no cap for {data.year} and "
                                        f"{data.category}.")
    allowed = emissions.verified_tonnes * cap.cap_bps // 10000
    used = int((await session.execute(
        select(func.coalesce(func.sum(ComplianceRequest.quantity), 0)).where(
            ComplianceRequest.organisation_id == organisation_id,
            ComplianceRequest.year == data.year, ComplianceRequest.category == data.category,
            ComplianceRequest.state.in_(("pending", "confirmed")))
    )).scalar_one())
    if used + data.quantity > allowed:
        raise over_cap(allowed, used, data.quantity)
    rid = uuid.uuid4()
    assert org.account_id is not None
    lk = await registry.lock(session, account_id=org.account_id, quantity=data.quantity,
                             purpose="compliance_offset", reference=f"offset:{rid}",
                             product=ProductFilter(category=data.category,
                                                   vintage=data.vintage), now=at)
    row = ComplianceRequest(id=rid, organisation_id=organisation_id, account_id=org.account_id,
                            year=data.year, category=data.category, vintage=data.vintage,
                            quantity=data.quantity, lock_id=lk.id, state="pending",
                            serials=_serials(lk.blocks), created_at=at)
    session.add(row)
    await session.flush()
    await audit.append(session, actor=actor, action="offsets.compliance_request",
                       entity="offsets_compliance", entity_id=str(rid), now=at,
                       data=data.model_dump(mode="json"))
    return ComplianceOut.model_validate(row)


async def _pending(session: AsyncSession, request_id: UUID) -> ComplianceRequest:
    row = (await session.execute(
        select(ComplianceRequest).where(ComplianceRequest.id == request_id).with_for_update()
        .execution_options(populate_existing=True)
    )).scalar_one_or_none()
    if row is None:
        raise not_found("request")
    if row.state != "pending":
        raise wrong_state("request", row.state)
    return row


async def confirm(session: AsyncSession, request_id: UUID, *, actor: str,
                  now: datetime | None = None) -> ComplianceOut:
    """The bureau confirms (确认, Art. 26): the credits are cancelled in the registry with
    purpose ``compliance``, naming the entity and the year; final and public (Art. 29)."""
    at = now or clock.now()
    row = await _pending(session, request_id)
    org = await registry.get_organisation(session, row.organisation_id)
    done = await registry.cancel_locked(
        session, row.lock_id, purpose="compliance",
        beneficiary=f"{org.name} {row.year}年度履约抵销",
        detail={"entity": str(org.id), "compliance_year": row.year,
                "request_id": str(row.id)}, now=at)
    row.state, row.decided_by, row.decided_at = "confirmed", actor, at
    row.cancellation_id, row.serials = done[0].cancellation_id, _serials(done)
    await session.flush()
    await audit.append(session, actor=actor, action="offsets.compliance_confirm",
                       entity="offsets_compliance", entity_id=str(row.id), now=at,
                       data={"cancellation_id": str(row.cancellation_id)})
    return ComplianceOut.model_validate(row)


async def refuse(session: AsyncSession, request_id: UUID, reason: str, *, actor: str,
                 now: datetime | None = None) -> ComplianceOut:
    """The bureau refuses: the credits are released to the entity."""
    at = now or clock.now()
    row = await _pending(session, request_id)
    await registry.unlock(session, row.lock_id, now=at)
    row.state, row.reason, row.decided_by, row.decided_at = "refused", reason, actor, at
    await session.flush()
    await audit.append(session, actor=actor, action="offsets.compliance_refuse",
                       entity="offsets_compliance", entity_id=str(row.id), now=at,
                       data={"reason": reason})
    return ComplianceOut.model_validate(row)


async def list_compliance(session: AsyncSession, *, organisation_id: UUID | None = None,
                          state: str | None = None) -> list[ComplianceOut]:
    q = select(ComplianceRequest).order_by(ComplianceRequest.created_at).limit(1000)
    if organisation_id is not None:
        q = q.where(ComplianceRequest.organisation_id == organisation_id)
    if state is not None:
        q = q.where(ComplianceRequest.state == state)
    return [ComplianceOut.model_validate(r) for r in (await session.execute(q)).scalars()]


# --- retirements with a certificate ---------------------------------------------------------


async def _certificate_no(session: AsyncSession, kind: str, at: datetime) -> str:
    n = (await session.execute(text("SELECT nextval('offsets_certificate_no_seq')"))).scalar_one()
    return f"{CERT_PREFIX[kind]}-{clock.business_date(at).year}-{n:06d}"


def _active(org: OrganisationOut) -> OrganisationOut:
    """Art. 22/30: an organisation the registry dissolved (owner gone) neither uses nor
    receives credits (``offsets.organisation_dissolved``)."""
    if org.status != "active":
        raise dissolved()
    return org


async def _retire(session: AsyncSession, organisation_id: UUID, *, kind: str, quantity: int,
                  product: ProductFilter | None, beneficiary: str, detail: dict[str, Any],
                  actor: str, at: datetime, to_organisation: UUID | None = None,
                  **fields: Any) -> Retirement:
    """Lock the holder's credits and cancel them for ``kind`` (or deliver them, for a
    donation), then record the use with its certificate number and serial ranges."""
    org = _active(await registry.get_organisation(session, organisation_id))
    assert org.account_id is not None
    rid = uuid.uuid4()
    number = await _certificate_no(session, kind, at)
    to_account = None
    if to_organisation is not None:
        to_account = await registry.account_of(session, to_organisation)
        # Both accounts' row locks before the first audit record (no lock-order inversion).
        await registry_credits.lock_accounts(session, [org.account_id, to_account])
    lk = await registry.lock(session, account_id=org.account_id, quantity=quantity,
                             purpose=kind, reference=f"{kind}:{rid}", product=product, now=at)
    if kind == "donation":
        assert to_account is not None
        blocks = await registry.move_locked(session, lk.id, to_account_id=to_account, now=at)
        cancellation = None
    else:
        purpose = "public_good" if kind == "public_good" else kind
        blocks = await registry.cancel_locked(
            session, lk.id, purpose=purpose,  # type: ignore[arg-type]
            beneficiary=beneficiary, detail={**detail, "certificate_no": number}, now=at)
        cancellation = blocks[0].cancellation_id
    categories = {b.category for b in blocks}
    vintages = {b.vintage for b in blocks}
    row = Retirement(
        id=rid, kind=kind, certificate_no=number, organisation_id=org.id,
        account_id=org.account_id, holder_name=org.name, quantity=quantity,
        category=categories.pop() if len(categories) == 1 else None,
        vintage=vintages.pop() if len(vintages) == 1 else None, beneficiary=beneficiary,
        to_organisation_id=to_organisation, cancellation_id=cancellation,
        serials=_serials(blocks), created_at=at, **fields)
    session.add(row)
    await session.flush()
    await audit.append(session, actor=actor, action=f"offsets.{kind}", entity="offsets_retirement",
                       entity_id=str(rid), now=at,
                       data={"certificate_no": number, "quantity": quantity,
                             "beneficiary": beneficiary})
    return row


async def neutralise(session: AsyncSession, organisation_id: UUID, data: NeutralityIn, *,
                     actor: str, now: datetime | None = None) -> Retirement:
    """Carbon neutrality (碳中和, Art. 27): cancel at least the stated emissions (Art. 29)."""
    at = now or clock.now()
    quantity = data.quantity or data.emission_tonnes
    if quantity < data.emission_tonnes:
        raise Invalid("offsets.below_emissions",
                      "Art. 27: neutrality cancels at least the stated emissions.",
                      emission_tonnes=data.emission_tonnes)
    person = data.subject_kind == "person"
    public_name = _mask(data.subject_name) if person else data.subject_name
    return await _retire(
        session, organisation_id, kind="neutrality", quantity=quantity,
        product=_filter(data.category, data.vintage), beneficiary=public_name,
        detail={"subject_kind": data.subject_kind, "emission_tonnes": data.emission_tonnes},
        actor=actor, at=at, subject_kind=data.subject_kind, subject_public=public_name,
        subject_enc=crypto.encrypt(data.subject_name, context="offsets.subject")
        if person else None,
        emission_tonnes=data.emission_tonnes)


async def judicial_purchase(session: AsyncSession, organisation_id: UUID, data: JudicialIn, *,
                            actor: str, now: datetime | None = None) -> Retirement:
    """Judicial purchase (司法认购, Art. 24): only ecological-sink credits, the ordered tonnes,
    cancelled with purpose ``judicial``; a certificate for the court; a public record."""
    at = now or clock.now()
    if data.category != "ecological_sink":
        raise Invalid("offsets.not_ecological_sink",
                      "Art. 24: only ecological-sink (生态碳汇类) credits serve a judicial "
                      "purchase.")
    person = data.defendant_kind == "person"
    defendant = _mask(data.defendant) if person else data.defendant
    return await _retire(
        session, organisation_id, kind="judicial", quantity=data.ordered_tonnes,
        product=ProductFilter(category="ecological_sink", vintage=data.vintage),
        beneficiary=f"{data.court} {data.case_no}",
        detail={"case_no": data.case_no, "court": data.court, "defendant": defendant,
                "ordered_tonnes": data.ordered_tonnes},
        actor=actor, at=at, subject_kind=data.defendant_kind, subject_public=defendant,
        subject_enc=crypto.encrypt(data.defendant, context="offsets.subject") if person else None,
        case_no=data.case_no, court=data.court, ordered_tonnes=data.ordered_tonnes)


async def public_good(session: AsyncSession, organisation_id: UUID, data: PublicGoodIn, *,
                      actor: str, now: datetime | None = None) -> Retirement:
    """A public-good cancellation (公益注销, Art. 27)."""
    return await _retire(session, organisation_id, kind="public_good", quantity=data.quantity,
                         product=_filter(data.category, data.vintage),
                         beneficiary=data.beneficiary, detail={}, actor=actor,
                         at=now or clock.now())


async def donate(session: AsyncSession, organisation_id: UUID, data: DonationIn, *, actor: str,
                 now: datetime | None = None) -> Retirement:
    """A donation (捐赠, Art. 27): the credits are delivered to the recipient's account."""
    if data.to_organisation_id == organisation_id:
        raise Invalid("offsets.donation_to_self", "Donate to another holder.")
    recipient = _active(await registry.get_organisation(session, data.to_organisation_id))
    return await _retire(session, organisation_id, kind="donation", quantity=data.quantity,
                         product=_filter(data.category, data.vintage),
                         beneficiary=recipient.name, detail={}, actor=actor,
                         at=now or clock.now(), to_organisation=recipient.id)


def retirement_out(r: Retirement, base_url: str = "") -> RetirementOut:
    return RetirementOut(
        id=r.id, kind=r.kind, certificate_no=r.certificate_no, holder_name=r.holder_name,
        quantity=r.quantity, category=r.category, vintage=r.vintage, beneficiary=r.beneficiary,
        subject_kind=r.subject_kind, subject=r.subject_public, emission_tonnes=r.emission_tonnes,
        case_no=r.case_no, court=r.court, ordered_tonnes=r.ordered_tonnes,
        serials=list(r.serials), created_at=r.created_at,
        certificate_url=f"{base_url}/public/offsets/certificates/{r.certificate_no}")


async def get_retirement(session: AsyncSession, retirement_id: UUID) -> Retirement:
    r = await session.get(Retirement, retirement_id)
    if r is None:
        raise not_found("retirement")
    return r


async def by_certificate(session: AsyncSession, number: str) -> Retirement:
    r = (await session.execute(
        select(Retirement).where(Retirement.certificate_no == number)
    )).scalar_one_or_none()
    if r is None:
        raise not_found("certificate")
    return r


async def verify(session: AsyncSession, number: str
                 ) -> tuple[Retirement, list[tuple[str, str | None]]]:
    """A certificate and the registry's current state of each serial range it names (the
    registry is the final word: a cancelled range shows ``cancelled``; a donated range that
    its recipient has since split shows ``None``)."""
    r = await by_certificate(session, number)
    states: list[tuple[str, str | None]] = []
    for serial in r.serials:
        found = await registry.find_serial(session, serial)
        states.append((serial, found.state if found is not None else None))
    return r, states


async def public_records(session: AsyncSession, kind: str | None = None, *, limit: int = 500
                         ) -> list[RetirementOut]:
    """Every use is public (Art. 29): certificates, holders, quantities, serials; persons'
    names masked."""
    q = select(Retirement).order_by(Retirement.created_at.desc()).limit(limit)
    if kind is not None:
        q = q.where(Retirement.kind == kind)
    return [retirement_out(r) for r in (await session.execute(q)).scalars()]
