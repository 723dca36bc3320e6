"""Refusals of the registry. Every code names the rule it enforces (see DOMAIN.md).

Services raise the kernel's :class:`~app.errors.DomainError` subclasses with these codes, so
each refusal reaches the caller as problem+json with a stable ``code``.
"""

from __future__ import annotations

from typing import Any

from app.errors import Conflict, Forbidden, Invalid, NotFound

__all__ = ["Conflict", "Forbidden", "Invalid", "NotFound", "not_found", "wrong_role",
           "wrong_state"]


def wrong_state(entity: str, state: str, *allowed: str) -> Conflict:
    """The transition is not allowed from the current state."""
    return Conflict(
        "registry.wrong_state",
        f"The {entity} is {state}; this step needs {' or '.join(allowed) or 'another state'}.",
        state=state, allowed=list(allowed),
    )


def wrong_role(detail: str, **extra: Any) -> Forbidden:
    """The caller does not own this step (not the owner, not the named VVB, ...)."""
    return Forbidden("registry.wrong_role", detail, **extra)


def not_found(entity: str) -> NotFound:
    return NotFound(f"registry.{entity}_not_found", f"No such {entity}.")
