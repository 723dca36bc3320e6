"""Refusals of the points ledger, each with a stable ``code`` (problem+json)."""

from __future__ import annotations

from app.errors import Conflict, Invalid, NotFound


class AmountInvalid(Invalid):
    """Zero, negative or absurdly many (more than 10^12) points."""

    def __init__(self, detail: str = "The number of points must be a positive integer "
                                     "of at most 10^12.") -> None:
        super().__init__("points.amount_invalid", detail)


class CreditInvalid(Invalid):
    """A credit with negative grams or a non-positive conversion rate."""

    def __init__(self, detail: str) -> None:
        super().__init__("points.credit_invalid", detail)


class HoldInvalid(Invalid):
    """A hold without a reference or with a non-positive time to live."""

    def __init__(self, detail: str) -> None:
        super().__init__("points.hold_invalid", detail)


class AccountNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("points.account_not_found", "No carbon account for this citizen.")


class HoldNotFound(NotFound):
    """Unknown hold, or a hold of another citizen (indistinguishable on purpose)."""

    def __init__(self) -> None:
        super().__init__("points.hold_not_found", "No such hold.")


class HoldNotActive(Conflict):
    """The hold was already redeemed, released, or its own time ran out."""

    def __init__(self, status: str) -> None:
        super().__init__(
            "points.hold_not_active", f"The hold is {status}.", hold_status=status
        )


class Insufficient(Conflict):
    def __init__(self, available: int, requested: int) -> None:
        super().__init__(
            "points.insufficient",
            f"Only {available} points are available; {requested} were requested.",
            available=available, requested=requested,
        )


class ConcurrentCredit(Conflict):
    """Another transaction credited one of the batch's events at the same moment for a
    different citizen; the caller retries the batch (nothing was written)."""

    def __init__(self) -> None:
        super().__init__(
            "points.concurrent_credit",
            "An event of this batch was credited concurrently; retry the batch.",
        )


class CursorInvalid(Invalid):
    def __init__(self) -> None:
        super().__init__("points.cursor_invalid", "The cursor is not valid.")
