"""The redemption workflow (兑换流程) around :mod:`mall.service`: a Redis stock gate in
front of PostgreSQL, compensation, cancellation, expiry, and the browse cache.

Stock protocol (Redis gate ↔ PostgreSQL):

* PostgreSQL's ``mall_offers.stock_left`` is the **source of truth**; a voucher exists only
  if its transaction took a unit with ``UPDATE … SET stock_left = stock_left - 1 WHERE
  stock_left > 0`` (and the offer's version, status and sale window still hold).
* The gate ``<prefix>mall:gate:<offer>`` in Redis holds *tokens*: ideally the database stock
  minus the redemptions in flight. A redemption first takes a token with one atomic script
  (``ADMIT``: refuse at ≤ 0, else ``DECR``); losers are answered ``mall.sold_out`` there and
  never touch PostgreSQL or the ledger.
* A missing gate is opened from the database stock (``SET NX``: only the first opener of a
  concurrent burst sets it).
* A transaction that fails for any reason other than "the database had no stock" gives its
  token back (``GIVE``: ``INCRBY`` only if the key exists, so a deleted gate is never
  recreated from a stale count). When the database itself says sold out, the token is
  *not* given back: the gate was counting too high and is now closer to the truth.
* A cancelled or expired voucher gives its unit back to the database (same transaction as
  the hold's release) and then, after the commit, a token to the gate. An admin change of
  the total stock applies its delta to the gate after the commit.
* Drift is one-sided by design: every failure path (a crash between the gate and the
  compensation, a give-back lost in a Redis outage) can only leave the gate *below* the
  database stock — which sheds requests that could have won, never sells what is not
  there. ``reconcile_gates`` (run by the expiry job) raises any gate below its database
  stock back up; while redemptions are in flight this can overshoot by the in-flight count,
  which only costs those few extra requests a database round trip ending in ``sold_out``.

Per-citizen limits are enforced by PostgreSQL alone (a counter row per citizen, offer and
day, upserted under its limit in the redemption's transaction): a citizen firing 20 requests
at once takes up to 20 tokens for a few milliseconds, and the losers give them back.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import structlog
from prometheus_client import Counter as PromCounter
from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError

from app import clock
from app.errors import Conflict
from app.runtime import Runtime
from mall import errors, service
from mall.schemas import VoucherOut
from mall.service import OfferSnapshot

log = structlog.get_logger()

REDEMPTIONS = PromCounter(
    "tanhui_mall_redemptions_total", "Redemption attempts by outcome", ["outcome"]
)

ADMIT = """
local v = redis.call('GET', KEYS[1])
if not v then return -2 end
if tonumber(v) <= 0 then return -1 end
return redis.call('DECR', KEYS[1])
"""
GIVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""
RAISE_TO = """
local v = redis.call('GET', KEYS[1])
if (not v) or tonumber(v) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

SNAPSHOT_TTL_S = 1.0
BROWSE_TTL_S = 5
STATS_TTL_S = 60
MAX_STALE_RETRIES = 3


# The kernel's Redis pool refuses (rather than queues) beyond its connection limit, so the
# mall bounds its own concurrent Redis calls per process: a burst of thousands of requests
# queues here for a moment instead of failing.
REDIS_SLOTS = 48


class _Scripts:
    def __init__(self, redis: Redis) -> None:
        self.slots = asyncio.Semaphore(REDIS_SLOTS)
        self.admit = redis.register_script(ADMIT)
        self.give = redis.register_script(GIVE)
        self.raise_to = redis.register_script(RAISE_TO)


_scripts: dict[int, _Scripts] = {}


def _s(runtime: Runtime) -> _Scripts:
    found = _scripts.get(id(runtime.redis))
    if found is None:
        found = _scripts[id(runtime.redis)] = _Scripts(runtime.redis)
    return found


def gate_key(runtime: Runtime, offer_id: UUID) -> str:
    return runtime.key("mall", "gate", offer_id)


# --- the in-process offer snapshot cache -------------------------------------------------

_snapshots: dict[UUID, tuple[float, OfferSnapshot]] = {}


def invalidate(offer_id: UUID | None = None) -> None:
    """Forget cached offer snapshots (one, or all). Other processes see edits within
    ``SNAPSHOT_TTL_S``; until then the offer's version check in the database refuses any
    redemption decided on a stale snapshot, and the flow retries with a fresh one."""
    if offer_id is None:
        _snapshots.clear()
        _sold_out_until.clear()
    else:
        _snapshots.pop(offer_id, None)
        _sold_out_until.pop(offer_id, None)


_loading: dict[UUID, asyncio.Future[OfferSnapshot]] = {}


async def _snapshot(runtime: Runtime, offer_id: UUID, *, fresh: bool = False) -> OfferSnapshot:
    """The offer's snapshot from this process's cache; on a miss one request loads it and
    the burst behind it waits for that load (single flight), so a flash sale costs one
    query per process and second, not one per request."""
    hit = _snapshots.get(offer_id)
    if hit is not None and not fresh and hit[0] > time.monotonic():
        return hit[1]
    pending = _loading.get(offer_id)
    if pending is not None and not fresh:
        return await asyncio.shield(pending)
    future: asyncio.Future[OfferSnapshot] = asyncio.get_running_loop().create_future()
    _loading[offer_id] = future
    try:
        async with runtime.db.session() as session:
            snap = await service.offer_snapshot(session, offer_id)
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved here, so an unawaited future does not warn
        raise
    else:
        _snapshots[offer_id] = (time.monotonic() + SNAPSHOT_TTL_S, snap)
        future.set_result(snap)
        return snap
    finally:
        if _loading.get(offer_id) is future:
            del _loading[offer_id]


# --- the gate ----------------------------------------------------------------------------


# After the gate says "sold out", this process answers so for a moment without asking Redis
# again: during a flash sale the thousands of losers then cost no round trip at all. A unit
# that comes back (cancel, expiry, a failed redemption) is offered again once the memo
# lapses — at most SOLD_OUT_MEMO_S later — and at once in the process that gave it back.
SOLD_OUT_MEMO_S = 0.2
_sold_out_until: dict[UUID, float] = {}


async def _admit(runtime: Runtime, offer_id: UUID) -> None:
    if _sold_out_until.get(offer_id, 0.0) > time.monotonic():
        raise errors.sold_out()
    scripts = _s(runtime)
    key = gate_key(runtime, offer_id)
    for _ in range(2):
        async with scripts.slots:
            left = int(await scripts.admit(keys=[key]))
        if left >= 0:
            return
        if left == -1:
            _sold_out_until[offer_id] = time.monotonic() + SOLD_OUT_MEMO_S
            raise errors.sold_out()
        async with runtime.db.session() as session:  # -2: no gate yet, open it from the DB
            stock = (await service.stock_of(session, [offer_id])).get(offer_id, 0)
        async with scripts.slots:
            await runtime.redis.set(key, stock, nx=True)
    raise errors.sold_out()


async def give_back(runtime: Runtime, offer_id: UUID, n: int = 1) -> None:
    """Return ``n`` tokens to an offer's gate (if it exists); never raises: a lost give-back
    only leaves the gate low until ``reconcile_gates``."""
    if n == 0:
        return
    _sold_out_until.pop(offer_id, None)
    scripts = _s(runtime)
    try:
        async with scripts.slots:
            await scripts.give(keys=[gate_key(runtime, offer_id)], args=[n])
    except Exception:
        log.warning("mall_gate_give_back_failed", offer_id=str(offer_id), n=n)


async def reconcile_gates(runtime: Runtime) -> int:
    """Raise every on-sale offer's gate that is below its database stock; returns how many."""
    async with runtime.db.session() as session:
        stock = await service.on_sale_stock(session)
    raised = 0
    scripts = _s(runtime)
    for offer_id, left in stock.items():
        if int(await scripts.raise_to(keys=[gate_key(runtime, offer_id)], args=[left])):
            _sold_out_until.pop(offer_id, None)
            raised += 1
    return raised


# --- redemption --------------------------------------------------------------------------


async def redeem(
    runtime: Runtime, citizen_id: UUID, offer_id: UUID, *, request_key: str | None = None,
    now: datetime | None = None,
) -> tuple[VoucherOut, bool]:
    """The citizen redeems one unit of an offer (兑换) → ``(voucher, created)``.

    Idempotent by itself: with ``request_key`` (the request's ``Idempotency-Key``) a repeat
    returns the voucher the first request issued (``created`` false), even if the key's
    stored response is gone. Refusals: ``mall.offer_not_found``, ``mall.offer_not_on_sale``,
    ``mall.sold_out``, ``mall.limit_reached``, ``mall.daily_limit_reached``,
    ``mall.insufficient_points`` — each leaves stock, limits and points untouched.
    """
    if request_key is not None:
        async with runtime.db.session() as session:
            existing = await service.voucher_by_request_key(session, citizen_id, request_key)
        if existing is not None:
            return existing, False
    for attempt in range(MAX_STALE_RETRIES):
        at = now or clock.now()
        snap = await _snapshot(runtime, offer_id, fresh=attempt > 0)
        refusal = snap.refusal(at)
        if refusal is not None:
            REDEMPTIONS.labels(refusal.code).inc()
            raise refusal
        try:
            await _admit(runtime, offer_id)
        except Conflict:
            REDEMPTIONS.labels("mall.sold_out").inc()
            raise
        try:
            async with runtime.db.transaction() as session:
                voucher = await service.take_voucher(
                    session, snap, citizen_id, request_key=request_key, now=at
                )
        except service.StockGone:
            REDEMPTIONS.labels("mall.sold_out").inc()
            raise errors.sold_out() from None
        except service.StaleOffer:
            await give_back(runtime, offer_id)
            invalidate(offer_id)
            continue
        except IntegrityError:
            await give_back(runtime, offer_id)
            if request_key is None:
                raise
            async with runtime.db.session() as session:  # a concurrent twin won the key
                existing = await service.voucher_by_request_key(session, citizen_id, request_key)
            if existing is None:
                raise
            return existing, False
        except BaseException as exc:
            await asyncio.shield(give_back(runtime, offer_id))
            REDEMPTIONS.labels(getattr(exc, "code", "error")).inc()
            raise
        REDEMPTIONS.labels("won").inc()
        return voucher, True
    invalidate(offer_id)
    raise errors.offer_not_on_sale("The offer is changing; try again.")


async def cancel(
    runtime: Runtime, citizen_id: UUID, voucher_id: UUID, *, now: datetime | None = None
) -> VoucherOut:
    """The citizen cancels an unused voucher: hold released, stock and limit unit returned."""
    async with runtime.db.transaction() as session:
        out, changed = await service.cancel_voucher(session, citizen_id, voucher_id, now=now)
    if changed:
        await give_back(runtime, out.offer_id)
    return out


async def expire_vouchers(
    runtime: Runtime, *, now: datetime | None = None, batch: int = 500
) -> int:
    """Expire every issued voucher past its expiry (holds released, stock returned, each
    exactly once); returns how many. Safe to run in several processes at once."""
    total = 0
    while True:
        async with runtime.db.transaction() as session:
            done = await service.expire_due_vouchers(session, now=now, limit=batch)
        for offer_id, n in Counter(e.offer_id for e in done).items():
            await give_back(runtime, offer_id, n)
        total += len(done)
        if len(done) < batch:
            return total


# --- caches of what citizens and the public read ----------------------------------------


def _browse_version_key(runtime: Runtime) -> str:
    return runtime.key("mall", "browse", "ver")


async def offers_changed(runtime: Runtime, offer_id: UUID | None = None) -> None:
    """After an admin write commits: drop the local snapshot and move the browse cache on."""
    invalidate(offer_id)
    try:
        await runtime.redis.incr(_browse_version_key(runtime))
    except Exception:
        log.warning("mall_browse_cache_bump_failed")


async def cached(
    runtime: Runtime, name: str, params: dict[str, Any], ttl_s: int, build: Any
) -> bytes:
    """JSON bytes of ``await build()``, cached in Redis for ``ttl_s`` under a key made of
    ``name``, the browse version and ``params``."""
    slots = _s(runtime).slots
    async with slots:
        ver = await runtime.redis.get(_browse_version_key(runtime))
    if isinstance(ver, bytes):
        ver = ver.decode()
    digest = hashlib.sha1(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()
    key = runtime.key("mall", name, ver or "0", digest)
    async with slots:
        hit = await runtime.redis.get(key)
    if hit is not None:
        return hit if isinstance(hit, bytes) else hit.encode()
    body: bytes = await build()
    async with slots:
        await runtime.redis.set(key, body, ex=ttl_s)
    return body
