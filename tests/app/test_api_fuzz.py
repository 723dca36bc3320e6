"""Schema-driven fuzzing of the whole API: bad input never yields a 500 or a non-problem error.

Schemathesis reads the product app's OpenAPI document and drives the ASGI app in-process.
Two checks run on every answer: schemathesis's ``not_a_server_error`` and
:func:`problem_json`, which demands that every 4xx/5xx answer is
``application/problem+json`` carrying a string ``code`` equal in status (RFC 9457, our error
contract).

Callers: nobody (no ``Authorization``), a registered citizen holding points, an admin holding
every role of :data:`app.auth.permissions.ROLES`, the users (``org``) of a project-owner
organisation and of a covered entity, and a merchant, all with tokens from
:func:`app.auth.tokens.issue_access_token`. Each operation is first *probed* with one
generated request per caller; a caller refused there (a gate code such as ``auth.missing`` or
``auth.wrong_kind``, itself checked as a problem) is not fuzzed further on that operation.
The operation is then fuzzed with schema-valid cases (which reach the services and the
database) as every admitted caller, and schema-violating cases (which must be refused as 4xx
problems) as the first of them (as nobody alone when nobody is admitted: a public route).

The fuzzer runs against a database of its own (created, migrated and dropped here) and its
own Redis prefix: an admin holding every role changes global configuration (market rules,
calendars, conversion rules) at random, which must not leak into the rest of the suite.
Schemathesis runs the app on its own event-loop thread, so the app's lifespan opens its own
runtime there; the test itself is synchronous.

Exclusions (asserted below so the list stays honest): the signed partner routes
``POST /v1/ingest/events:batch``, ``POST /v1/ingest/events``, ``POST /v1/partner/links`` and
``GET /v1/partner/links/{partner_user_ref}`` need a partner token *and* an Ed25519 signature
over the exact body, which a generated case cannot carry: they get the probes only (each
must refuse every caller with a problem); their validation is covered by the ingestion and
scenes suites. No operation streams (server-sent events, chunked bodies), so none is excluded
for that.

Bounds: ``TANHUI_FUZZ_EXAMPLES`` (default 8) schema-valid examples per operation and admitted
caller and half as many schema-violating ones per operation, no shrinking, derandomised for a
stable CI; set ``TANHUI_FUZZ_RANDOM=1`` and a larger ``TANHUI_FUZZ_EXAMPLES`` to explore
further, and ``TANHUI_FUZZ_VERBOSE=1`` to print each operation's time.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core import NotSet
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from app import clock
from app.auth.citizens import get_or_create_citizen
from app.auth.permissions import ROLES
from app.auth.tokens import issue_access_token
from app.runtime import Runtime, open_runtime
from app.settings import Settings, get_settings
from tests.conftest import TEST_DB, _admin_exec

EXAMPLES = int(os.environ.get("TANHUI_FUZZ_EXAMPLES", "8"))
RANDOM = os.environ.get("TANHUI_FUZZ_RANDOM") == "1"
VERBOSE = os.environ.get("TANHUI_FUZZ_VERBOSE") == "1"
# Well inside CI's budget on a 2-core machine (about 60-80 s there with the defaults).
TIME_BUDGET_S = float(os.environ.get("TANHUI_FUZZ_BUDGET_S", "150"))

# Problem codes by which a route refuses a caller before reading its input.
GATE_CODES = frozenset({
    "auth.missing", "auth.wrong_kind", "auth.permission_denied", "auth.token_invalid",
    "auth.api_key_invalid", "offsets.not_covered_entity",
})

SIGNED_PARTNER_ROUTES = frozenset({
    "POST /v1/ingest/events:batch",
    "POST /v1/ingest/events",
    "POST /v1/partner/links",
    "GET /v1/partner/links/{partner_user_ref}",
})


def problem_json(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every error answer is RFC 9457 problem+json with a stable string ``code``."""
    if response.status_code < 400:
        return
    ctype = (response.headers.get("content-type") or [""])[0]
    assert ctype.startswith("application/problem+json"), (
        f"{response.status_code} answered as {ctype!r}, not application/problem+json"
    )
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("code"), str) and body["code"], (
        f"{response.status_code} problem without a string code"
    )
    assert body.get("status") == response.status_code, "problem status differs from HTTP status"
    # The kernel's last line (app.errors): a request model let an unbounded integer through.
    assert body["code"] != "request.out_of_range", (
        "the database saw an out-of-range integer: bound it in the request model"
    )


CHECKS: list[CheckFunction] = [not_a_server_error, problem_json]


@dataclass
class Fuzz:
    """One run's findings (first per operation, caller and kind of failure)."""

    findings: list[str] = field(default_factory=list)
    seen: set[tuple[str, str, int, str]] = field(default_factory=set)
    requests: int = 0

    def send(self, case: schemathesis.Case, caller: str, headers: dict[str, str]) -> str | None:
        """Send ``case`` as ``caller``, check the answer, note a failure; the problem code."""
        self.requests += 1
        try:
            response = case.call(headers=headers)
        except Exception as exc:
            # The app answered 500 and re-raised its unhandled exception to the test client.
            self._note(case, caller, 500, f"unhandled {type(exc).__name__}: {exc}")
            return None
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                self._note(case, caller, response.status_code,
                           f"{failure} | {response.text[:300]}".replace("\n", " "))
        if response.status_code < 400:
            return None
        try:
            code = response.json().get("code")
        except ValueError:
            return None
        return code if isinstance(code, str) else None

    def _note(self, case: schemathesis.Case, caller: str, status: int, message: str) -> None:
        key = (case.operation.label, caller, status, message[:40])
        if key in self.seen:
            return
        self.seen.add(key)
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        body = "-" if isinstance(case.body, NotSet) else repr(case.body)
        self.findings.append(
            f"[{caller}] {case.operation.label} -> {status}: {message[:400]}\n"
            f"    {case.method} {case.formatted_path} query={case.query!r} "
            f"headers={headers!r} body={body[:400]}"
        )


def _run(operation: Any, mode: GenerationMode, examples: int, test: Any) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @hsettings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    def run(case: schemathesis.Case) -> None:
        test(case)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # Nothing to violate (no parameters, no body): there is no schema-violating case.
        assert mode is GenerationMode.NEGATIVE, operation.label


def _admitted(fuzz: Fuzz, operation: Any, callers: dict[str, dict[str, str]]) -> list[str]:
    """Probe with one schema-valid case per caller; the callers not refused."""
    codes: dict[str, str | None] = {}

    def probe(case: schemathesis.Case) -> None:
        for caller, headers in callers.items():
            codes[caller] = fuzz.send(case, caller, headers)

    _run(operation, GenerationMode.POSITIVE, 1, probe)
    admitted = [c for c, code in codes.items() if code not in GATE_CODES]
    return ["anonymous"] if "anonymous" in admitted else admitted


@pytest.fixture(scope="module")
async def fuzz_runtime() -> AsyncIterator[Runtime]:
    """A database and Redis prefix of the fuzzer's own, migrated to head, dropped after."""
    from app.migrations import upgrade

    base = get_settings()
    name = f"{TEST_DB}_fuzz"
    url = (base.database_url or "").rsplit("/", 1)[0] + "/" + name
    settings = base.model_copy(update={"database_url": url,
                                       "redis_prefix": base.redis_prefix + "fuzz:"})
    await _admin_exec(f'CREATE DATABASE "{name}"')
    try:
        await upgrade(url)
        rt = await open_runtime(settings)
        try:
            yield rt
        finally:
            keys = [k async for k in rt.redis.scan_iter(match=f"{settings.redis_prefix}*")]
            if keys:
                await rt.redis.delete(*keys)
            await rt.close()
    finally:
        await _admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def callers(fuzz_runtime: Runtime) -> dict[str, dict[str, str]]:
    runtime = fuzz_runtime
    from points.service import CreditIn, credit_batch
    from registry.schemas import OrganisationIn
    from registry.service import create_organisation

    async with runtime.db.transaction() as session:
        citizen = await get_or_create_citizen(session, "13900009999")
        # Points, so holds and redemptions reach the ledger rather than stop at "no account".
        await credit_batch(session, [CreditIn(
            citizen_id=citizen, scene_id=uuid.uuid4(), event_id="fuzz-1", behaviour="metro_ride",
            occurred_at=clock.now(), grams=100_000, grams_per_point=10,
            reduction_rule_version_id=uuid.uuid4(), conversion_rule_version_id=uuid.uuid4())])
        owner = await create_organisation(
            session, OrganisationIn(name="模糊测试业主有限公司", kind="owner"), actor="test:fuzz")
        covered = await create_organisation(
            session, OrganisationIn(name="模糊测试控排企业", kind="covered_entity"),
            actor="test:fuzz")

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + token}

    return {
        "anonymous": {},
        "citizen": bearer(issue_access_token("citizen", citizen, ttl_s=3600)),
        "admin": bearer(issue_access_token(
            "admin", uuid.uuid4(), roles=frozenset(ROLES), ttl_s=3600)),
        "owner": bearer(issue_access_token("org", uuid.uuid4(), scope_id=owner.id, ttl_s=3600)),
        "covered": bearer(issue_access_token(
            "org", uuid.uuid4(), scope_id=covered.id, ttl_s=3600)),
        "merchant": bearer(issue_access_token("merchant", uuid.uuid4(), ttl_s=3600)),
    }


@pytest.mark.slow
def test_api_fuzz_no_500_and_every_error_is_a_problem(
    callers: dict[str, dict[str, str]], fuzz_runtime: Runtime,
) -> None:
    """Bad input never yields a 500; every error is problem+json with a ``code`` (RFC 9457)."""
    from schemathesis.python.asgi import shutdown_lifespans

    from app.main import create_app

    # No runtime passed: the lifespan opens one on schemathesis's own event-loop thread.
    settings: Settings = fuzz_runtime.settings
    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    fuzz = Fuzz()
    started = time.monotonic()
    try:
        operations = []
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result  # the whole schema loads
            operations.append(result.ok())
        for op in operations:
            t0 = time.monotonic()
            admitted = _admitted(fuzz, op, callers)
            if op.label in SIGNED_PARTNER_ROUTES:
                assert not admitted, f"{op.label} admitted {admitted} without a signature"
                continue
            for i, caller in enumerate(admitted):
                headers = callers[caller]
                plan = [(GenerationMode.POSITIVE, EXAMPLES)]
                if i == 0:  # input validation does not depend on who calls
                    plan.append((GenerationMode.NEGATIVE, max(1, EXAMPLES // 2)))
                for mode, n in plan:
                    _run(op, mode, n, lambda case, c=caller, h=headers: fuzz.send(case, c, h))
            if VERBOSE:
                print(f"{time.monotonic() - t0:6.2f}s {op.label} as {admitted}")
    finally:
        shutdown_lifespans()
    elapsed = time.monotonic() - started

    labels = {op.label for op in operations}
    assert labels >= SIGNED_PARTNER_ROUTES, "an excluded route no longer exists: update the list"
    print(f"fuzzed {len(labels)} operations with {fuzz.requests} requests in {elapsed:.1f}s; "
          f"{len(fuzz.findings)} findings")
    assert not fuzz.findings, (
        f"{len(fuzz.findings)} findings:\n" + "\n".join(fuzz.findings)
    )
    assert elapsed < TIME_BUDGET_S, f"fuzzing took {elapsed:.0f}s"


async def test_unknown_routes_and_wrong_methods_are_problems(
    app: Any, client: httpx.AsyncClient
) -> None:
    """Every path of the API answers a method it does not serve with a 405 problem
    (``route.method_not_allowed``, with ``Allow``); unknown paths are 404 problems."""
    methods = ("GET", "POST", "PUT", "PATCH", "DELETE")
    paths = app.openapi()["paths"]
    patterns = [(re.compile(re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), ops)
                for p, ops in paths.items()]
    for path in paths:
        url = re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)
        # A method no documented route serves at this URL (``/projects/legacy`` is also
        # ``/{kind}/{sid}``).
        wrong = next((m for m in methods if not any(
            m.lower() in o and rx.match(url) for rx, o in patterns)), None)
        if wrong is None:
            continue
        r = await client.request(wrong, url)
        assert r.status_code == 405, (wrong, url, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/problem+json"), (wrong, url)
        assert r.json()["code"] == "route.method_not_allowed" and r.headers.get("allow")
    for url in ("/v1/nope", "/v1/me/nope/nope", "/public/%00", "/v1/admin/scenes/x/y/z/w",
                "/console/nope", "/docs/nope"):
        for method in methods:
            r = await client.request(method, url)
            assert r.status_code == 404, (method, url, r.status_code)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "route.not_found"
