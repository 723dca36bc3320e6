"""Refusals of the trading system, each with a stable ``code`` (problem+json)."""

from __future__ import annotations

from app.errors import Conflict, Forbidden, Invalid, NotFound

__all__ = ["Conflict", "Forbidden", "Invalid", "NotFound", "account_closed", "insufficient_funds",
           "not_found", "outside_session", "price_out_of_band", "staff_barred", "wrong_state"]


def not_found(entity: str) -> NotFound:
    return NotFound(f"trading.{entity}_not_found", f"No such {entity}.")


def wrong_state(entity: str, state: str) -> Conflict:
    return Conflict("trading.wrong_state", f"The {entity} is {state}.", state=state)


def insufficient_funds(available: int, needed: int) -> Conflict:
    return Conflict("trading.insufficient_funds",
                    f"The funds account has {available} fen available, {needed} needed.",
                    available=available, needed=needed)


def outside_session() -> Conflict:
    return Conflict("trading.outside_session",
                    "The market is closed: orders are taken in trading sessions on working days.")


def price_out_of_band(price: int, low: int, high: int) -> Invalid:
    return Invalid("trading.price_out_of_band",
                   f"The price {price} fen lies outside today's band {low}–{high} fen.",
                   low=low, high=high)


def staff_barred() -> Forbidden:
    """Art. 37: staff of the registry agency, the operator and the exchange may not trade."""
    return Forbidden("trading.staff_barred",
                     "Art. 37: staff of the registry agency, operator and exchange may not trade "
                     "CQCER.")


def account_closed() -> Conflict:
    """Art. 22, 30: the registry found the holder gone (主体灭失) and dissolved it; its
    trading account may neither trade nor be traded with."""
    return Conflict("trading.account_closed",
                    "The holder was dissolved by the registry (Art. 22): its trading account "
                    "is closed to orders and deals.")
