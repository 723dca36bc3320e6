"""``tanhui bench trading``: N limit orders from M accounts against one product's book, with
persistence and delivery-versus-payment settlement of every match, on the configured database.

Preparation (not timed, every record labelled bench): a methodology, two VVBs and an owner
whose registered project is issued ``M × --credits`` tonnes through the registry's own flows;
M trader organisations with trading accounts, each funded and given its credits through the
registry's credit service; the ``engineering`` product listed. The clock is pinned to a
trading session of the latest published working day and ticks with the wall clock.

Timed: the orders (random side, price within ``--spread`` fen of the reference, 1–10 tonnes)
go through :func:`trading.matching.place` in transactions of ``--batch`` orders: per-product
advisory lock, book read, account locks, matching in memory, then the registry's batch calls
(one ``lock_many`` for the batch's sell orders, one ``deliver_many`` for all its fills) and
set-based writes. An order's latency is its batch's (it is durable at commit).

Baseline (same run): the same orders persisted raw, one multi-row INSERT per batch into an
unindexed temporary table, no matching and no settlement.

Checks: funds conservation (``tanhui trading check``), the registry's reconciliation, and the
bench accounts' credits: their total is unchanged and each account changed by exactly what it
bought less what it sold. Prints a table, then as its last line one JSON object.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import typer

ACTOR = "system:bench"


def _at(d: str) -> datetime:
    return datetime.fromisoformat(d).replace(hour=3, tzinfo=UTC)


async def _issue(session: Any, quantity: int, tag: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A registered engineering project of a bench owner issued ``quantity`` tonnes through
    the registry's flows; returns (owner organisation, its holding account)."""
    from registry import catalog, flows, issuance, projects
    from registry import service as registry
    from registry.schemas import (
        Declarations,
        InstalmentIn,
        MethodologyIn,
        OrganisationIn,
        ProjectIn,
        VvbIn,
    )

    m = await catalog.create_methodology(session, MethodologyIn(
        code=f"BENCH-{tag}", title="bench methodology", category="engineering", field="energy",
        baseline="b", additionality="a", formula="E = B - P", parameters={},
        monitoring_plan_ref="mp"), actor=ACTOR)
    m = await catalog.publish_methodology(session, m.id, actor=ACTOR)
    vvbs = [await catalog.recognise_vvb(session, VvbIn(
        name=f"bench vvb {tag}-{i}", uscc=_uscc(), categories=["engineering"], fields=["energy"],
        valid_from=date(2020, 1, 1), valid_until=date(2035, 12, 31)), actor=ACTOR)
        for i in range(2)]
    owner = await registry.create_organisation(session, OrganisationIn(
        name=f"bench owner {tag}", uscc=_uscc(), kind="owner", district_code="500112"),
        actor=ACTOR)
    p = await projects.create_project(session, owner.id, ProjectIn(
        title=f"bench project {tag}", methodology_version_id=m.versions[-1].id,
        district_code="500112", site=f"bench site {tag}", operation_start=date(2023, 6, 1),
        crediting_start=date(2024, 1, 1), crediting_end=date(2028, 12, 31),
        design_document_ref="pdd", validator_vvb_id=vvbs[0].id,
        declarations=Declarations(registered_elsewhere=False, green_power_benefit=False,
                                  legal_obligation=False, ets_covered=False,
                                  real_and_additional=True)),
        actor=ACTOR, now=_at("2025-03-03"))
    await projects.file_validation(session, p.id, vvb_id=vvbs[0].id, conclusion="positive",
                                   report_ref="val", actor=ACTOR, now=_at("2025-03-03"))
    await projects.submit_project(session, p.id, owner_id=owner.id, actor=ACTOR,
                                  now=_at("2025-03-03"))
    await _walk(session, flows, projects, issuance, "project", p.id,
                ("2025-03-04", "2025-04-15", "2025-04-20"))
    inst = await issuance.create_instalment(session, p.id, InstalmentIn(
        period_start=date(2024, 1, 1), period_end=date(2024, 12, 31), claimed_tonnes=quantity,
        accounting_report_ref="acc", verifier_vvb_id=vvbs[1].id),
        owner_id=owner.id, actor=ACTOR, now=_at("2025-05-05"))
    await issuance.file_verification(session, inst.id, vvb_id=vvbs[1].id,
                                     verified_tonnes=quantity, report_ref="ver", actor=ACTOR,
                                     now=_at("2025-05-05"))
    await issuance.submit_instalment(session, inst.id, owner_id=owner.id, actor=ACTOR,
                                     now=_at("2025-05-05"))
    await _walk(session, flows, projects, issuance, "instalment", inst.id,
                ("2025-05-06", "2025-06-20", "2025-07-01"))
    assert owner.account_id is not None
    return owner.id, owner.account_id


async def _walk(session: Any, flows: Any, projects: Any, issuance: Any, kind: str, sid: Any,
                days: tuple[str, str, str]) -> None:
    notice, applied, registered = days
    s = await flows.load(session, kind, sid)
    await flows.check_completeness(session, s, complete=True, reason=None, actor=ACTOR,
                                   now=_at(notice))
    await flows.apply_formally(session, s, comment_handling=None, actor=ACTOR, now=_at(applied))
    await flows.review(session, s, passed=True, reason=None, actor=ACTOR, now=_at(applied))
    await flows.add_opinion(session, s, outcome="pass", body="ok", actor="expert:bench",
                            now=_at(applied))
    await flows.conclude_assessment(session, s, outcome="pass", deadline=None, reason=None,
                                    actor=ACTOR, now=_at(applied))
    await flows.decide_letter(session, s, issue=True, reason=None, actor=ACTOR,
                              now=_at(registered))
    if kind == "project":
        await projects.register_project(session, sid, actor=ACTOR, now=_at(registered))
    else:
        await issuance.register_instalment(session, sid, actor=ACTOR, now=_at(registered))


def _uscc() -> str:
    return "91500000" + "".join(random.choice("0123456789") for _ in range(10))


async def _trading_day(session: Any) -> date:
    """The latest working day of a published calendar year, on or before today."""
    from app import clock
    from app.calendar.service import is_working_day
    from app.errors import DomainError

    day = clock.today()
    for _ in range(800):
        try:
            if await is_working_day(session, day):
                return day
            day -= timedelta(days=1)
        except DomainError:
            day = date(day.year - 1, 12, 31)
    raise RuntimeError("no published working day found")


async def _prepare(rt: Any, accounts: int, credits: int, funds: int) -> dict[str, Any]:
    from registry import service as registry
    from registry.schemas import OrganisationIn
    from trading import service
    from trading.schemas import AccountIn, ProductIn

    tag = uuid.uuid4().hex[:8]
    async with rt.db.transaction() as s:
        _, owner_account = await _issue(s, accounts * credits, tag)
    traders = []
    async with rt.db.transaction() as s:
        for i in range(accounts):
            o = await registry.create_organisation(s, OrganisationIn(
                name=f"bench trader {tag}-{i}", uscc=_uscc(), kind="trader"), actor=ACTOR)
            acct = await service.open_account(s, AccountIn(organisation_id=o.id), actor=ACTOR)
            await service.deposit(s, acct.id, funds, f"BENCH-{tag}-{i}", actor=ACTOR)
            lk = await registry.lock(s, account_id=owner_account, quantity=credits,
                                     purpose="bench", reference=f"bench:{tag}")
            await registry.move_locked(s, lk.id, to_account_id=o.account_id)  # type: ignore[arg-type]
            traders.append({"account": acct.id, "org": o.id, "registry": o.account_id})
        day = await _trading_day(s)
        from trading.models import Product

        if await s.get(Product, "engineering") is None:
            await service.add_product(s, ProductIn(category="engineering", ref_price_fen=5000),
                                      actor=ACTOR)
    return {"tag": tag, "traders": traders, "day": day}


async def _credits(rt: Any, registry_accounts: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    from registry import service as registry

    out: dict[uuid.UUID, int] = {}
    async with rt.db.transaction() as s:
        for a in registry_accounts:
            out[a] = sum(b.quantity for b in await registry.holdings(s, a)
                         if b.state in ("held", "locked"))
    return out


class _RegistryTimer:
    """Measures the time spent inside the registry's credit-service calls during the timed
    phase (wrapping the module's functions, restored afterwards); behaviour is unchanged."""

    NAMES = ("lock_many", "deliver_many", "unlock_many", "held_quantities", "is_trading_barred",
             "lock", "unlock", "move_locked", "deliver")

    def __init__(self) -> None:
        from registry import service as registry

        self.module = registry
        self.saved = {n: getattr(registry, n) for n in self.NAMES}
        self.seconds = 0.0
        self.calls = dict.fromkeys(self.NAMES, 0)

    def __enter__(self) -> _RegistryTimer:
        for name, fn in self.saved.items():
            setattr(self.module, name, self._wrap(name, fn))
        return self

    def _wrap(self, name: str, fn: Any) -> Any:
        async def timed(*args: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*args, **kw)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls[name] += 1
        return timed

    def __exit__(self, *exc: object) -> None:
        for name, fn in self.saved.items():
            setattr(self.module, name, fn)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else 0.0


async def _run(rt: Any, orders: int, accounts: int, batch: int, spread: int,
               seed: int) -> dict[str, Any]:
    from sqlalchemy import text

    from app import clock
    from registry.reconcile import reconcile
    from trading import matching, service
    from trading.matching import NewOrder
    from trading.models import Product

    rng = random.Random(seed)
    max_qty = 10
    credits = orders * (max_qty + 1) // accounts + 10
    funds = credits * 2 * 6000
    prep = await _prepare(rt, accounts, credits, funds)
    traders = prep["traders"]
    base = datetime.combine(prep["day"], datetime.min.time(), tzinfo=clock.SHANGHAI) \
        .replace(hour=9, minute=30).astimezone(UTC)
    t0 = time.monotonic()
    clock.set_clock(lambda: base + timedelta(seconds=time.monotonic() - t0))
    try:
        async with rt.db.transaction() as s:
            product = await s.get(Product, "engineering")
            rules = await service.market_rules(s)
            low, high = service.price_band(product, prep["day"], rules.band_bps)
            first_trade = (await s.execute(
                text("SELECT coalesce(max(id), 0) FROM trading_trades"))).scalar_one()
        ref = (low + high) // 2
        flow = [NewOrder(traders[rng.randrange(accounts)]["account"], rng.choice(("buy", "sell")),
                         max(low, min(high, ref + rng.randint(-spread, spread))),
                         rng.randint(1, max_qty)) for _ in range(orders)]
        batches = [flow[i:i + batch] for i in range(0, len(flow), batch)]
        before = await _credits(rt, [t["registry"] for t in traders])

        # raw baseline: the same orders, one multi-row INSERT per batch, nothing else (one
        # connection throughout: the temporary table lives in its session)
        async with rt.db.engine.connect() as c:
            await c.execute(text("CREATE TEMP TABLE bench_raw_orders (account uuid, side text, "
                                 "price bigint, quantity bigint) ON COMMIT PRESERVE ROWS"))
            await c.commit()
            raw_start = time.perf_counter()
            for b in batches:
                await c.execute(text("INSERT INTO bench_raw_orders VALUES (:a, :s, :p, :q)"),
                                [{"a": o.account_id, "s": o.side, "p": o.price_fen,
                                  "q": o.quantity} for o in b])
                await c.commit()
            raw_s = time.perf_counter() - raw_start
            await c.execute(text("DROP TABLE bench_raw_orders"))
            await c.commit()

        latencies: list[float] = []
        refused: dict[str, int] = {}
        start = time.perf_counter()
        with _RegistryTimer() as timer:
            for b in batches:
                bt = time.perf_counter()
                async with rt.db.transaction() as s:
                    placed = await matching.place(s, "engineering", b, actor=ACTOR)
                lat = time.perf_counter() - bt
                latencies += [lat] * len(b)
                for p in placed:
                    if p.error is not None:
                        refused[p.error.code] = refused.get(p.error.code, 0) + 1
        elapsed = time.perf_counter() - start

        async with rt.db.transaction() as s:
            funds_check = await service.check_funds(s)
            problems = await reconcile(s)
            moved = (await s.execute(text("""
                SELECT a.registry_account_id AS reg,
                       coalesce(sum(t.quantity) FILTER (WHERE t.buyer_account_id = a.id), 0)
                     - coalesce(sum(t.quantity) FILTER (WHERE t.seller_account_id = a.id), 0)
                       AS net
                FROM trading_accounts a JOIN trading_trades t
                  ON (t.buyer_account_id = a.id OR t.seller_account_id = a.id) AND t.id > :f
                WHERE a.id = ANY(:ids) GROUP BY a.registry_account_id"""),
                {"f": first_trade, "ids": [t["account"] for t in traders]})).all()
            matches = (await s.execute(text("SELECT count(*) FROM trading_trades WHERE id > :f"),
                                       {"f": first_trade})).scalar_one()
        after = await _credits(rt, [t["registry"] for t in traders])
        net = {r.reg: int(r.net) for r in moved}
        credits_ok = sum(before.values()) == sum(after.values()) and all(
            after[a] - before[a] == net.get(a, 0) for a in before)
        async with rt.db.transaction() as s:
            await matching.cancel_all(s, actor=ACTOR, product_key="engineering")
        async with rt.db.transaction() as s:
            funds_after_cancel = (await service.check_funds(s)).ok
    finally:
        clock.set_clock(None)
    return {
        "orders": orders, "accounts": accounts, "batch": batch, "seconds": round(elapsed, 3),
        "orders_per_s": round(orders / elapsed, 1), "matches": matches,
        "matches_per_s": round(matches / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(_pct(latencies, 0.99) * 1000, 2),
        "refused": refused,
        "registry_calls": {k: v for k, v in timer.calls.items() if v},
        "registry_share": round(timer.seconds / elapsed, 3),
        "raw_orders_per_s": round(orders / raw_s, 1),
        "ratio_to_raw": round((orders / elapsed) / (orders / raw_s), 4),
        "funds_conserved": funds_check.ok and funds_after_cancel,
        "credits_conserved": credits_ok, "registry_reconciled": not problems,
        "trading_day": prep["day"].isoformat(),
    }


def command(
    orders: Annotated[int, typer.Option(help="limit orders to place")] = 5_000,
    accounts: Annotated[int, typer.Option(help="trading accounts placing them")] = 50,
    batch: Annotated[int, typer.Option(help="orders per matching transaction")] = 100,
    spread: Annotated[int, typer.Option(help="prices within ± this many fen of the reference")]
    = 20,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
) -> None:
    """Orders/s and matches/s of the order book with persistence and DvP settlement."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    from app.cli import run_with_runtime

    console = Console(stderr=True)

    async def go(rt: Any) -> dict[str, Any]:
        from app.migrations import check_current

        await check_current(rt.db)
        console.print(f"trading: {orders:,} orders from {accounts} accounts in batches of "
                      f"{batch} ...")
        return await _run(rt, orders, accounts, batch, spread, seed)

    result = run_with_runtime(go)
    table = Table("measure", "value", title="tanhui bench trading")
    for k in ("orders", "seconds", "orders_per_s", "matches", "matches_per_s", "p50_ms",
              "p99_ms", "raw_orders_per_s", "ratio_to_raw", "registry_share", "funds_conserved",
              "credits_conserved", "registry_reconciled"):
        table.add_row(k, str(result[k]))
    console.print(table)
    print(orjson.dumps(result).decode())
    if not (result["funds_conserved"] and result["credits_conserved"]
            and result["registry_reconciled"]):
        raise typer.Exit(code=1)
