"""Who is calling: the authenticated subject of a request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from uuid import UUID

Kind = Literal["citizen", "partner", "merchant", "admin", "org"]


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Kind
    id: UUID
    roles: frozenset[str] = field(default_factory=frozenset)
    district: str | None = None
    # The scene (for partners), the merchant (for merchant keys) or organisation it acts for.
    scope_id: UUID | None = None
