"""`make run` (app/devserver.py) takes its workers with it however it ends: stopped with
SIGTERM, or killed outright."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 120  # a hang guard: a worker imports torch as it starts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _live_in_session(sid: int) -> list[int]:
    """The processes of session `sid` that are not zombies."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state != "Z":
            pids.append(int(entry.name))
    return pids


def _workers_of(pid: int) -> list[int]:
    return [p for p in _live_in_session(pid) if p != pid]


def _until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {DEADLINE_S} s: {what}")


@pytest.fixture
def devserver(tmp_path: Path) -> subprocess.Popen[bytes]:
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "DISTILLERY_DATABASE_URL": f"sqlite:///{tmp_path}/d.db",
        "DISTILLERY_BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.db",
        "DISTILLERY_STORAGE_DIR": str(tmp_path / "storage"),
        "DISTILLERY_MODEL_DIR": str(tmp_path / "models"),
        "DISTILLERY_DEV_PORT": str(port),
    }
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    (tmp_path / "var").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.devserver"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own session: every process it starts is counted
    )

    def serving() -> bool:
        assert proc.poll() is None, "the devserver exited"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _until(serving, "the devserver answers /healthz")
        _until(lambda: len(_workers_of(proc.pid)) >= 3, "its three workers started")
        yield proc
    finally:
        for pid in _live_in_session(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow  # starts the devserver and its three workers (training, webhooks, reaper)
def test_sigterm_to_the_devserver_stops_its_workers(
    devserver: subprocess.Popen[bytes],
) -> None:
    """`kill PID`, as a process manager stops it: uvicorn re-raises the signal as it exits,
    which once killed the devserver before it stopped its workers (they ran on, orphaned)."""
    os.kill(devserver.pid, signal.SIGTERM)
    devserver.wait(timeout=DEADLINE_S)
    _until(lambda: not _live_in_session(devserver.pid), "no process of make run is left")


@pytest.mark.slow
def test_a_killed_devserver_takes_its_workers_with_it(
    devserver: subprocess.Popen[bytes],
) -> None:
    os.kill(devserver.pid, signal.SIGKILL)
    devserver.wait(timeout=DEADLINE_S)
    _until(lambda: not _live_in_session(devserver.pid), "no worker outlives the devserver")
