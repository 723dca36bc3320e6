"""Mixed traffic for locust: partner batches, single events, citizens reading balances.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

It needs a setup file (``TANHUI_LOCUST_SETUP``, default ``./var/locust.json``) naming a
scene partner and linked citizens of the server under test::

    {"partner_token": "...", "private_key_b64": "<32 raw Ed25519 bytes>",
     "refs": ["p0", "p1", ...], "behaviour": "ride_km", "unit": "km",
     "citizen_tokens": ["<citizen JWT>", ...]}

``tanhui bench ingest --keep`` prepares such a scene; the tokens come from
``POST /v1/oauth/token`` (partner) and the citizen login. Weights: one batch of 1,000 events
for every 5 single events and 20 balance reads.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import os
import random
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from locust import HttpUser, between, task

from app.auth.signing import sign_headers

SETUP = Path(os.environ.get("TANHUI_LOCUST_SETUP", "var/locust.json"))
_counter = itertools.count()
_run = f"locust-{os.getpid()}-{random.randrange(1 << 30):x}"


def _setup() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(SETUP.read_bytes())
    return data


class Traffic(HttpUser):
    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        setup = _setup()
        self.token = setup["partner_token"]
        self.key = Ed25519PrivateKey.from_private_bytes(
            base64.b64decode(setup["private_key_b64"]))
        self.refs = setup["refs"]
        self.behaviour = setup.get("behaviour", "ride_km")
        self.unit = setup.get("unit", "km")
        self.citizen_tokens = setup.get("citizen_tokens", [])

    def _event(self) -> dict[str, Any]:
        at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=random.randrange(1, 600))
        return {"event_id": f"{_run}-{next(_counter)}",
                "partner_user_ref": random.choice(self.refs), "behaviour": self.behaviour,
                "quantity": f"{random.randint(1, 20)}.5", "unit": self.unit,
                "occurred_at": at.isoformat()}

    def _post(self, path: str, body: bytes, name: str) -> None:
        headers = sign_headers(self.key, "POST", path, body)
        headers["Authorization"] = f"Bearer {self.token}"
        headers["Content-Type"] = "application/json"
        self.client.post(path, data=body, headers=headers, name=name)

    @task(1)
    def batch(self) -> None:
        body = orjson.dumps({"events": [self._event() for _ in range(1000)]})
        self._post("/v1/ingest/events:batch", body, "ingest batch (1,000)")

    @task(5)
    def single(self) -> None:
        self._post("/v1/ingest/events", orjson.dumps(self._event()), "ingest one")

    @task(20)
    def balance(self) -> None:
        if self.citizen_tokens:
            token = random.choice(self.citizen_tokens)
            self.client.get("/v1/me/points", headers={"Authorization": f"Bearer {token}"},
                            name="citizen balance")
