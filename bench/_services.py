"""Start and stop the service's processes for bench/http.py and bench/chaos.py.

Everything runs as separate OS processes with the production settings (DEBUG off, a generated
secret) against a database created for the run, exactly as a deployment would run them; each
process gets its own session so a whole tree (gunicorn and its workers) can be signalled at once.
"""

from __future__ import annotations

import os
import runpy
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[:4]} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def database_url_for(base_url: str, name: str) -> str:
    """``base_url`` (postgres://...) with its database name replaced by ``name``."""
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def database_create(base_url: str, name: str, *, fresh: bool = True) -> str:
    """Create (or, with ``fresh``, recreate) PostgreSQL database ``name``; returns its URL."""
    import psycopg

    admin_url = database_url_for(base_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and fresh:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name])
            conn.execute(f'DROP DATABASE "{name}"')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    return database_url_for(base_url, name)


def django_on_database(name: str, *, fresh: bool = False) -> str:
    """Set Django up in this process (settings from the environment) on the local PostgreSQL's
    database ``name``, created if it is missing (made anew if ``fresh``), and migrate it; returns
    the database's URL."""
    url = database_create("postgres://postgres@127.0.0.1:5432/postgres", name, fresh=fresh)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlv3site.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return url


def database_drop(base_url: str, name: str) -> None:
    """Drop PostgreSQL database ``name`` (closing its sessions first), if it exists."""
    import psycopg

    with psycopg.connect(database_url_for(base_url, "postgres"), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name])
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def production_env(*, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a production-like process (DEBUG off, generated secret, local host)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RLV3_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="rlv3site.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_SECURE_SSL_REDIRECT="false",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str], check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def operator_token(env: dict[str, str], username: str = "bench-operator") -> str:
    """Create (or reuse) a superuser in the run's database and return its API token key."""
    code = (
        "from django.contrib.auth import get_user_model\n"
        "from rest_framework.authtoken.models import Token\n"
        f"u, _ = get_user_model().objects.get_or_create(username={username!r}, defaults={{'is_staff': True, 'is_superuser': True}})\n"
        "print('TOKEN', Token.objects.get_or_create(user=u)[0].key)\n"
    )
    out = manage("shell", "-c", code, env=env)
    return next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("TOKEN "))


class Service:
    """One long-running process (own session), its output appended to ``log_path``."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log_path: Path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the process and everything in its session (no cleanup at all)."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if not self.alive():
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def children(self) -> list[int]:
        """Pids of the direct children (gunicorn's workers, Celery's pool)."""
        import psutil

        if not self.alive():
            return []
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []


GUNICORN_CONF = ROOT / "gunicorn.conf.py"


def gunicorn_workers(*, workers: int | None = None, threads: int = 1, worker_class: str | None = None) -> dict:
    """The workers gunicorn runs: gunicorn.conf.py's (as this machine reads it), with these
    overrides; more than one thread means gthread."""
    conf = runpy.run_path(str(GUNICORN_CONF))
    return {"workers": workers or conf["workers"], "threads": threads,
            "worker_class": worker_class or ("gthread" if threads > 1 else conf["worker_class"])}


def gunicorn(port: int, *, env: dict[str, str], log_path: Path, workers: int | None = None, threads: int = 1,
             worker_class: str | None = None) -> Service:
    """gunicorn with the production settings (gunicorn.conf.py), the workers as `gunicorn_workers` gives them."""
    run = gunicorn_workers(workers=workers, threads=threads, worker_class=worker_class)
    argv = [PY, "-m", "gunicorn", "rlv3site.wsgi:application", "-c", str(GUNICORN_CONF), "--bind", f"127.0.0.1:{port}",
            "--workers", str(run["workers"]), "--worker-class", run["worker_class"], "--threads", str(run["threads"])]
    return Service("web", argv, env=env, log_path=log_path)


def wait_workers_ready(web: Service, workers: int, timeout: float = 120.0) -> None:
    """Block until ``workers`` gunicorn workers have logged that they loaded the application
    (gunicorn.conf.py's post_worker_init): the master listens long before they can answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not web.alive():
            raise RuntimeError(f"gunicorn exited with {web.proc.returncode} before its workers were ready")
        if web.log_path.read_text(errors="replace").count("Worker ready") >= workers:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {workers} gunicorn workers ready after {timeout}s (see {web.log_path})")


NGINX_CONF = ROOT / "nginx.conf"
NGINX = "/usr/sbin/nginx"


def nginx_conf_for(*, port: int, upstream_port: int) -> str:
    """nginx.conf as docker-compose runs it, but listening on ``port`` and proxying to gunicorn
    on 127.0.0.1:``upstream_port`` (the only two lines that differ)."""
    text = NGINX_CONF.read_text()
    swaps = {"server web:8000;": f"server 127.0.0.1:{upstream_port};", "listen 8080;": f"listen 127.0.0.1:{port};"}
    for old, new in swaps.items():
        if text.count(old) != 1:
            raise ValueError(f"nginx.conf should have {old!r} exactly once")
        text = text.replace(old, new)
    return text


def nginx(port: int, *, upstream_port: int, run_dir: Path) -> Service:
    """nginx (Debian's nginx-light) in the foreground with the project's nginx.conf, in front of
    gunicorn on ``upstream_port``; its logs go to ``run_dir``/nginx.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = run_dir / "nginx.conf"
    conf.write_text(nginx_conf_for(port=port, upstream_port=upstream_port))
    argv = [NGINX, "-p", str(run_dir), "-c", str(conf), "-e", "stderr",
            "-g", f"daemon off; pid {run_dir / 'nginx.pid'};"]
    return Service("proxy", argv, env=dict(os.environ), log_path=run_dir / "nginx.log")
