"""A real Celery worker for the pipeline tests (no eager mode, no broker mock).

`celery_worker` starts ``python -m celery -A rlv3site worker --pool prefork --concurrency 1`` on a
queue private to this test session, against pytest-django's test database and the real Redis, and
points this process's task routing at the same queue. Tests that use it must be
``@pytest.mark.django_db(transaction=True)`` so the worker sees their rows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.decisions.stream_helpers import wait_for  # noqa: F401 - re-exported for the pipeline tests

BASE_DIR = Path(__file__).resolve().parents[2]


def _database_url(settings_dict: dict) -> str:
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        name = str(settings_dict["NAME"])
        if name == ":memory:" or name.startswith("file:memorydb"):
            pytest.skip("a Celery worker cannot share an in-memory SQLite test database")
        return f"sqlite:///{name}"
    user = settings_dict.get("USER") or ""
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{settings_dict['NAME']}"


class WorkerProcess:
    """One `celery worker` subprocess in its own process group (so SIGKILL reaches its pool too)."""

    def __init__(self, *, name: str, queue: str, env: dict, log_path: Path):
        self.name, self.queue, self.env, self.log_path = name, queue, env, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def node(self) -> str:
        return f"{self.name}@{os.uname().nodename}"

    def start(self, timeout: float = 60.0) -> "WorkerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "rlv3site", "worker", "--pool", "prefork", "--concurrency", "1",
             "-Q", self.queue, "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            cwd=BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            if " ready." in text:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"celery worker {self.name} did not start:\n{text[-4000:]}")
            time.sleep(0.2)

    def pool_pids(self) -> list[int]:
        """Pids of the pool's child processes (the ones that run tasks)."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool): a machine or OOM kill, no cleanup at all."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # warm shutdown
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@pytest.fixture(scope="session")
def celery_env(django_db_setup, django_db_blocker, tmp_path_factory):
    """Queue name, model dir and environment shared by every worker of this session."""
    from django.conf import settings
    from django.db import connection

    from rlv3site.celery import app

    queue = f"rlv3-test-{uuid.uuid4().hex[:10]}"
    model_dir = tmp_path_factory.mktemp("celery_model_dir")
    with django_db_blocker.unblock():
        database_url = _database_url(connection.settings_dict)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "rlv3site.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
        "RLV3_CELERY_QUEUE": queue,
        "RLV3_MODEL_DIR": str(model_dir),
        "RLV3_DEVICE": "cpu",
        "RLV3_HEARTBEAT_SECONDS": "0.5",
        "RLV3_DEFAULT_TIMESTEPS": "2048",  # the nightly run's size
        "DB_CONN_MAX_AGE": "0",  # no connection left open between tasks (the test DB is flushed)
        "PYTHONUNBUFFERED": "1",
    }
    previous = (settings.CELERY_TASK_DEFAULT_QUEUE, app.conf.task_default_queue)
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    app.conf.task_default_queue = queue
    yield {"queue": queue, "model_dir": model_dir, "env": env, "logs": tmp_path_factory.mktemp("celery_logs")}
    settings.CELERY_TASK_DEFAULT_QUEUE, app.conf.task_default_queue = previous
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(queue, f"{queue}\x06\x163", f"{queue}\x06\x166", f"{queue}\x06\x169")
    # Messages of killed workers stay unacked (kombu would restore them to this queue hours later).
    for tag, raw in client.hgetall("unacked").items():
        if queue.encode() in raw:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    client.close()


@pytest.fixture(scope="session")
def _session_worker(celery_env):
    worker = WorkerProcess(name="w1", queue=celery_env["queue"], env=celery_env["env"], log_path=celery_env["logs"] / "w1.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def celery_worker(_session_worker, celery_env, settings):
    """The session's worker (restarted if a test killed it), with this test's model dir set to the
    worker's and emptied first."""
    if _session_worker.proc.poll() is not None:
        _session_worker.start()
    model_dir = celery_env["model_dir"]
    for entry in model_dir.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    settings.RLV3_MODEL_DIR = model_dir
    yield _session_worker
    if _session_worker.proc.poll() is not None:
        _session_worker.start()


@pytest.fixture
def second_worker(celery_worker, celery_env):
    """A second worker process on the same queue (fan-out across workers)."""
    worker = WorkerProcess(name="w2", queue=celery_env["queue"], env=celery_env["env"], log_path=celery_env["logs"] / "w2.log")
    worker.start()
    yield worker
    worker.stop()

