"""Who acts in the registry: organisations (``org`` tokens) and any logged-in caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.auth.principal import Principal
from app.deps import bearer_principal
from app.errors import Forbidden


async def current_org(principal: Annotated[Principal, Depends(bearer_principal)]) -> Principal:
    """An organisation's user; ``scope_id`` is the organisation (registry account holder)."""
    if principal.kind != "org" or principal.scope_id is None:
        raise Forbidden("auth.wrong_kind", "This route is for registry account holders.")
    return principal


CurrentOrg = Annotated[Principal, Depends(current_org)]
"""The calling organisation's user; ``.scope_id`` is the organisation id."""

AnyUser = Annotated[Principal, Depends(bearer_principal)]
"""Anyone logged in (e.g. a methodology revision proposal, Art. 13)."""
