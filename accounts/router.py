"""``GET /v1/me/export`` and ``DELETE /v1/me``: the citizen's PIPL rights over their account."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from app.auth.citizens import erase_citizen, export_citizen
from app.deps import CurrentCitizen, Db
from app.errors import Conflict
from points import service as points
from scenes.consent import my_consents, revoke_consent

router = APIRouter(prefix="/v1/me", tags=["account (citizen)"])


class DeletedOut(BaseModel):
    """Account deletion (PIPL 删除权): personal information erased; the ledger stays under the
    pseudonym."""

    erased: bool
    consents_revoked: int


@router.get("/export", summary="Everything held about me, as JSON (PIPL 查阅复制权)")
async def export_me(who: CurrentCitizen, db: Db) -> dict[str, Any]:
    async with db.transaction() as session:
        profile = await export_citizen(session, who.id)
        consents = await my_consents(session, who.id)
        ledger = await points.export_ledger(session, who.id)
    return {
        "profile": profile,
        "consents": consents.model_dump(mode="json")["scenes"],
        "points": ledger,
    }


@router.delete("", response_model=DeletedOut,
               summary="Delete my account: personal information erased, ledger kept under "
                       "the pseudonym (PIPL 删除权)")
async def delete_me(who: CurrentCitizen, db: Db) -> DeletedOut:
    async with db.transaction() as session:
        # A hold backs a redemption in progress (a mall voucher): releasing it here would
        # leave that voucher without points, so the citizen settles redemptions first.
        if await points.open_holds(session, who.id):
            raise Conflict(
                "account.open_redemptions",
                "Cancel or use your open vouchers and holds before deleting the account.",
            )
        consents = await my_consents(session, who.id)
        active = [c.id for scene in consents.scenes for c in scene.history if c.active]
        for consent_id in active:
            await revoke_consent(session, who.id, consent_id)
        await erase_citizen(session, who.id)
    return DeletedOut(erased=True, consents_revoked=len(active))
