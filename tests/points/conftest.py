"""Fixtures of the points tests (factories live in ``tests.points.factories``)."""

from __future__ import annotations

import pytest

from app.db import Database
from app.runtime import Runtime


@pytest.fixture
def db(runtime: Runtime) -> Database:
    return runtime.db
