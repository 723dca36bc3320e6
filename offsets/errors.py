"""Refusals of CQCER uses, each with a stable ``code`` (problem+json)."""

from __future__ import annotations

from app.errors import Conflict, Forbidden, Invalid, NotFound

__all__ = ["Conflict", "Forbidden", "Invalid", "NotFound", "dissolved", "not_found", "over_cap",
           "wrong_state"]


def not_found(entity: str) -> NotFound:
    return NotFound(f"offsets.{entity}_not_found", f"No such {entity}.")


def wrong_state(entity: str, state: str) -> Conflict:
    return Conflict("offsets.wrong_state", f"The {entity} is {state}.", state=state)


def over_cap(allowed: int, used: int, requested: int) -> Invalid:
    """Art. 24, 26: compliance offsets are capped per category at a share of verified
    emissions set by the bureau."""
    return Invalid(
        "offsets.over_cap",
        f"The cap allows {allowed} tonnes for this year and category; {used} are already "
        f"applied for, {requested} more would exceed it.",
        allowed=allowed, used=used, requested=requested)


def dissolved() -> Conflict:
    """Art. 22, 30: the registry found the holder gone (主体灭失) and dissolved it; its credits
    were cancelled, and nothing may be used by it or donated to it."""
    return Conflict("offsets.organisation_dissolved",
                    "The holder was dissolved by the registry (Art. 22): no use of credits by "
                    "it or for it.")
