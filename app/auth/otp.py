"""One-time login codes for citizens (短信验证码): 6 digits, 5 minutes, 5 tries, rate-limited.

The code lives in Redis only as an HMAC under the server's blind-index key (a 6-digit code
hashed without a secret key would fall to a million guesses). Keys are named by the phone's
blind index, never by the phone itself. Expiry follows ``app.clock``; Redis' TTL only
collects the garbage.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Protocol

import structlog

from app import clock
from app.crypto import blind_index, mask_phone, normalize_phone
from app.errors import Unauthorized, Unavailable
from app.ratelimit import Limit, limiter_for
from app.runtime import Runtime

log = structlog.get_logger()

CODE_TTL_S = 5 * 60
MAX_TRIES = 5
# Per phone: one code a minute, a handful an hour. Per client IP: generous, since mobile
# carriers put many subscribers behind one address.
SEND_PER_PHONE = Limit("otp.phone", "1/minute;5/hour;10/day")
SEND_PER_IP = Limit("otp.ip", "30/minute;300/hour")
LOGIN_PER_IP = Limit("login.ip", "60/minute;1000/hour")
RATE_LIMITED = "auth.rate_limited"


class SmsSender(Protocol):
    """Delivers a login code to a phone (an SMS gateway in production)."""

    async def send_code(self, phone: str, code: str) -> None: ...


class DevSmsSender:
    """Development and test sender: logs the code beside the *masked* phone, and keeps the
    last codes in a small in-process outbox so a developer (or a test) can read them back."""

    def __init__(self, keep: int = 1000) -> None:
        self._keep = keep
        self._outbox: OrderedDict[str, str] = OrderedDict()

    async def send_code(self, phone: str, code: str) -> None:
        log.warning("sms_code_development_only", phone=mask_phone(phone), code=code)
        self._outbox[phone] = code
        self._outbox.move_to_end(phone)
        while len(self._outbox) > self._keep:
            self._outbox.popitem(last=False)

    def last_code(self, phone: str) -> str | None:
        return self._outbox.get(normalize_phone(phone))


def default_sender(runtime: Runtime) -> SmsSender:
    """The sender when none was configured: the development one, never in production."""
    if runtime.settings.env == "production":
        raise Unavailable("auth.sms_unavailable", "No SMS gateway is configured.")
    return DevSmsSender()


def _key(runtime: Runtime, phone: str) -> str:
    return runtime.key("auth", "otp", blind_index(phone, context="citizen.phone").hex())


def _digest(phone: str, code: str) -> str:
    return blind_index(f"{phone}:{code}", context="otp.code").hex()


async def send_code(runtime: Runtime, sender: SmsSender, phone: str, *, client_ip: str) -> None:
    """Issue a fresh code for ``phone`` (replacing any earlier one) and send it."""
    phone = normalize_phone(phone)
    limiter = limiter_for(runtime)
    await limiter.hit(SEND_PER_IP, client_ip, code=RATE_LIMITED)
    await limiter.hit(
        SEND_PER_PHONE, blind_index(phone, context="citizen.phone").hex(), code=RATE_LIMITED
    )
    code = f"{secrets.randbelow(10**6):06d}"
    expires = clock.now().timestamp() + CODE_TTL_S
    key = _key(runtime, phone)
    async with runtime.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping={"h": _digest(phone, code), "exp": f"{expires:.3f}", "tries": 0})
        pipe.expire(key, CODE_TTL_S + 60)
        await pipe.execute()
    await sender.send_code(phone, code)


# Atomic check: expiry, the try counter and the comparison in one step, so that concurrent
# guesses cannot exceed MAX_TRIES and a code is consumed at most once.
_VERIFY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if tonumber(redis.call('HGET', KEYS[1], 'exp')) <= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return -3
end
local tries = redis.call('HINCRBY', KEYS[1], 'tries', 1)
if tries > tonumber(ARGV[3]) then return -2 end
if redis.call('HGET', KEYS[1], 'h') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


async def verify_code(runtime: Runtime, phone: str, code: str, *, client_ip: str) -> str:
    """Consume the code of ``phone``; returns the normalised phone, or raises 401/429."""
    phone = normalize_phone(phone)
    await limiter_for(runtime).hit(LOGIN_PER_IP, client_ip, code=RATE_LIMITED)
    outcome = int(
        await runtime.redis.eval(  # type: ignore[misc]
            _VERIFY, 1, _key(runtime, phone), _digest(phone, code),
            f"{clock.now().timestamp():.3f}", MAX_TRIES,
        )
    )
    if outcome == 1:
        return phone
    if outcome == -3:
        raise Unauthorized("auth.otp_expired", "The code has expired; request a new one.")
    if outcome == -2:
        raise Unauthorized(
            "auth.otp_attempts_exceeded", "Too many wrong codes; request a new one."
        )
    raise Unauthorized("auth.otp_invalid", "The code is wrong or was never sent.")
