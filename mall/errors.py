"""Errors of the points mall, each with a stable ``code`` (problem+json via the kernel)."""

from __future__ import annotations

from app.errors import Conflict, Forbidden, Invalid, NotFound


def merchant_not_found() -> NotFound:
    return NotFound("mall.merchant_not_found", "No such merchant.")


def store_not_found() -> NotFound:
    return NotFound("mall.store_not_found", "No such store of this merchant.")


def offer_not_found() -> NotFound:
    return NotFound("mall.offer_not_found", "No such offer.")


def offer_not_on_sale(detail: str = "This offer is not on sale.") -> Conflict:
    return Conflict("mall.offer_not_on_sale", detail)


def sold_out() -> Conflict:
    return Conflict("mall.sold_out", "This offer is sold out. 已兑完")


def limit_reached(limit: int) -> Conflict:
    return Conflict(
        "mall.limit_reached", f"You may hold at most {limit} voucher(s) of this offer.",
        limit=limit,
    )


def daily_limit_reached(limit: int) -> Conflict:
    return Conflict(
        "mall.daily_limit_reached", f"You may redeem at most {limit} of this offer per day.",
        limit=limit,
    )


def insufficient_points(price: int) -> Conflict:
    return Conflict(
        "mall.insufficient_points", f"Redeeming this offer takes {price} available points.",
        price_points=price,
    )


def voucher_not_found() -> NotFound:
    return NotFound("mall.voucher_not_found", "No such voucher.")


def voucher_wrong_merchant() -> Forbidden:
    return Forbidden("mall.voucher_wrong_merchant", "This voucher belongs to another merchant.")


def voucher_used(used_at: str | None) -> Conflict:
    return Conflict("mall.voucher_used", "This voucher has been used already.", used_at=used_at)


def voucher_expired() -> Conflict:
    return Conflict("mall.voucher_expired", "This voucher has expired.")


def voucher_cancelled() -> Conflict:
    return Conflict("mall.voucher_cancelled", "This voucher was cancelled.")


def invalid(code: str, detail: str) -> Invalid:
    return Invalid(f"mall.{code}", detail)


def bad_transition(current: str, wanted: str) -> Conflict:
    return Conflict(
        "mall.offer_bad_transition", f"An offer cannot go from {current} to {wanted}.",
        status_from=current, status_to=wanted,
    )


def merchant_inactive() -> Conflict:
    return Conflict("mall.merchant_inactive", "This merchant is not active.")
