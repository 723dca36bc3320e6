"""A Hypothesis state machine drives random credits, holds, releases, redemptions, clock moves
and expiry against the real ledger and checks the invariants after every step:

- reconciliation (``service.check``): credited = available + held + redeemed + expired, the
  balances equal the lots' remainders and the entries replayed;
- Art. 31/34: points credited == floor(grams credited / grams per point) (carry never loses);
- held == the points of the holds the model believes active; nothing is ever negative.

It runs its coroutines on its own event loop with its own engine on the test database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from app.db import Database
from app.errors import DomainError
from app.runtime import Runtime
from app.settings import get_settings
from points import service
from tests.points.factories import T0, make_credit

T = TypeVar("T")
RATE = 100
HOLD_TTL = 3 * 86400


@dataclass
class ModelHold:
    citizen: int
    points: int
    expires_at: datetime
    status: str = "active"


class Env:
    loop: asyncio.AbstractEventLoop
    db: Database

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


ENV = Env()


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.citizens = [uuid.uuid4() for _ in range(2)]
        self.grams = [0, 0]
        self.now = T0
        self.model_holds: dict[uuid.UUID, ModelHold] = {}
        self.events: list[service.CreditIn] = []

    async def _tx(self, fn: Any) -> Any:
        async with ENV.db.transaction() as s:
            return await fn(s)

    def tx(self, fn: Any) -> Any:
        return ENV.run(self._tx(fn))

    @rule(who=st.integers(0, 1), grams=st.lists(st.integers(0, 450), min_size=1, max_size=4))
    def credit(self, who: int, grams: list[int]) -> None:
        batch = [make_credit(self.citizens[who], g, gpp=RATE,
                             occurred_at=self.now - timedelta(minutes=len(grams) - i))
                 for i, g in enumerate(grams)]
        result = self.tx(lambda s: service.credit_batch(s, batch, now=self.now))
        assert len(result.new) == len(batch) and result.duplicates == []
        self.grams[who] += sum(grams)
        self.events += batch

    @precondition(lambda self: bool(self.events))
    @rule(data=st.data())
    def replay_an_event(self, data: st.DataObject) -> None:
        event = data.draw(st.sampled_from(self.events))
        result = self.tx(lambda s: service.credit_batch(s, [event], now=self.now))
        assert result.new == [] and result.points == 0

    @rule(target=holds, who=st.integers(0, 1), points=st.integers(1, 12))
    def hold(self, who: int, points: int) -> Any:
        citizen = self.citizens[who]
        before = self.tx(lambda s: service.balance(s, citizen, now=self.now))
        try:
            h = self.tx(lambda s: service.hold(s, citizen, points, reference="sm",
                                               ttl_s=HOLD_TTL, now=self.now))
        except DomainError as exc:
            assert exc.code in ("points.insufficient", "points.account_not_found")
            assert points > before.available
            return None
        assert points <= before.available
        self.model_holds[h.id] = ModelHold(who, points, h.expires_at)
        return h.id

    def _use(self, hold_id: uuid.UUID | None, action: str) -> None:
        if hold_id is None:
            return
        m = self.model_holds[hold_id]
        fn = service.redeem if action == "redeem" else service.release
        lapsed = m.expires_at <= self.now
        try:
            self.tx(lambda s: fn(s, hold_id, now=self.now))
        except DomainError as exc:
            assert exc.code == "points.hold_not_active"
            assert m.status != "active" or (action == "redeem" and lapsed)
            return
        assert m.status == "active"
        m.status = "redeemed" if action == "redeem" else "released"

    @rule(hold_id=consumes(holds))
    def redeem(self, hold_id: uuid.UUID | None) -> None:
        self._use(hold_id, "redeem")

    @rule(hold_id=consumes(holds))
    def release(self, hold_id: uuid.UUID | None) -> None:
        self._use(hold_id, "release")

    @rule(hold_id=holds, action=st.sampled_from(["redeem", "release"]))
    def use_again(self, hold_id: uuid.UUID | None, action: str) -> None:
        """A hold used a second time is refused (unless it is still active)."""
        self._use(hold_id, action)

    @rule(days=st.sampled_from([1, 2, 30, 400, 900]))
    def advance_clock(self, days: int) -> None:
        self.now += timedelta(days=days)

    @rule()
    def expire(self) -> None:
        self.tx(lambda s: service.expire_due(s, now=self.now))
        for m in self.model_holds.values():
            if m.status == "active" and m.expires_at <= self.now:
                m.status = "released"
        # Idempotent: a second run at the same instant finds nothing.
        assert self.tx(lambda s: service.expire_due(s, now=self.now)) == 0

    @invariant()
    def ledger_reconciles(self) -> None:
        diffs = [d for d in self.tx(service.check) if d.citizen_id in self.citizens]
        assert diffs == []
        for who, citizen in enumerate(self.citizens):
            page = self.tx(lambda s, c=citizen: service.statement(s, c, limit=500))
            credited = sum(e.points for e in page.items if e.kind == "credit")
            assert credited == self.grams[who] // RATE  # Art. 31/34: no gram lost
            bal = self.tx(lambda s, c=citizen: service.balance(s, c, now=self.now))
            assert bal.available >= 0 and bal.held >= 0
            held = sum(m.points for m in self.model_holds.values()
                       if m.citizen == who and m.status == "active")
            assert bal.held == held


def test_ledger_state_machine(runtime: Runtime) -> None:
    """The stateful test of the ledger (credits, holds, releases, redemptions, expiry)."""
    ENV.loop = asyncio.new_event_loop()
    ENV.db = Database(get_settings().database_url or "", pool_size=2)
    try:
        LedgerMachine.TestCase.settings = settings(
            max_examples=12, stateful_step_count=14, deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        LedgerMachine.TestCase().runTest()
    finally:
        ENV.run(ENV.db.dispose())
        ENV.loop.close()
