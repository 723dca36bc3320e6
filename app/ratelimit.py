"""Rate limits on Redis with the ``limits`` package (moving windows), shared by every process.

The limiter rides the runtime's own Redis connection pool (so it works with a TCP or a Unix
socket URL alike) and keeps its keys under the deployment's prefix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from app.errors import TooManyRequests
from app.runtime import Runtime


@dataclass(frozen=True)
class Limit:
    """A named rate limit such as ``Limit("otp.phone", "1/minute;5/hour")``."""

    name: str
    spec: str

    @property
    def items(self) -> list[RateLimitItem]:
        return parse_many(self.spec)


class RateLimiter:
    def __init__(self, runtime: Runtime) -> None:
        storage = RedisStorage(
            "async+redis://localhost:6379",  # unused: the runtime's pool is passed below
            implementation="redispy",
            key_prefix=runtime.key("limits"),
            connection_pool=runtime.redis.connection_pool,  # type: ignore[arg-type]
        )
        self._strategy = MovingWindowRateLimiter(storage)

    async def hit(self, limit: Limit, *identifiers: str, code: str = "rate_limited") -> None:
        """Count one hit on every window of ``limit``; raise 429 when any window is full.

        ``code`` is the problem code (e.g. ``"auth.rate_limited"``); the response carries
        ``Retry-After``.
        """
        for item in limit.items:
            if not await self._strategy.hit(item, limit.name, *identifiers):
                stats = await self._strategy.get_window_stats(item, limit.name, *identifiers)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                raise TooManyRequests(
                    code, "Too many requests; retry later.",
                    headers={"Retry-After": str(retry)}, retry_after=retry,
                )

    async def clear(self, limit: Limit, *identifiers: str) -> None:
        for item in limit.items:
            await self._strategy.clear(item, limit.name, *identifiers)


_limiters: dict[int, tuple[object, RateLimiter]] = {}


def limiter_for(runtime: Runtime) -> RateLimiter:
    """The runtime's limiter (one per Redis client, built on first use)."""
    held = _limiters.get(id(runtime.redis))
    if held is not None and held[0] is runtime.redis:
        return held[1]
    limiter = RateLimiter(runtime)
    _limiters[id(runtime.redis)] = (runtime.redis, limiter)
    return limiter
