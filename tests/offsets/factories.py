"""Factories for offsets tests: holders of credits of a given kind, covered entities."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from registry import service as registry
from tests.registry.factories import holder_with, org
from tests.trading.factories import admin, as_org

__all__ = ["Holder", "admin", "as_org", "bureau", "holder"]


@dataclass
class Holder:
    org_id: UUID
    account_id: UUID
    name: str

    @property
    def headers(self) -> dict[str, str]:
        return as_org(self.org_id)


def bureau() -> dict[str, str]:
    return admin("bureau")


async def holder(s: AsyncSession, credits: int, category: str = "engineering",
                 kind: str = "owner") -> Holder:
    """A registry holder of ``kind`` holding ``credits`` tonnes of ``category`` (issued to a
    project owner and, for another kind, transferred through the registry's credit service)."""
    w, account, _ = await holder_with(s, credits, category)
    if kind == "owner":
        return Holder(w.owner.id, account, w.owner.name)
    o = await org(s, kind=kind)
    assert o.account_id is not None
    lk = await registry.lock(s, account_id=account, quantity=credits, purpose="transfer",
                             reference="test")
    await registry.move_locked(s, lk.id, to_account_id=o.account_id)
    return Holder(o.id, o.account_id, o.name)
