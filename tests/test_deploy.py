"""Deploy checks: production settings pass `check --deploy`, secrets stay out of logs, and the
admin and the Swagger UI are for staff only."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import token_client

BASE_DIR = Path(__file__).resolve().parent.parent
API = "/api/v1/rl/v3/"


def _production_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        DJANGO_SETTINGS_MODULE="rlv3site.settings", DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50), DJANGO_ALLOWED_HOSTS="rlv3.example.com",
    )
    env.update(extra)
    return env


def _manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


def test_check_deploy_passes_with_production_settings():
    out = _manage("check", "--deploy", "--fail-level", "WARNING", env=_production_env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues (0 silenced)." in out.stdout


def test_production_settings_are_the_secure_ones():
    script = (
        "import json, django; django.setup(); from django.conf import settings as s;"
        "print(json.dumps([s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS,"
        " s.SECURE_SSL_REDIRECT, s.ALLOWED_HOSTS, s.X_FRAME_OPTIONS,"
        " 'rest_framework.renderers.BrowsableAPIRenderer' in s.REST_FRAMEWORK['DEFAULT_RENDERER_CLASSES']]))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=BASE_DIR, env=_production_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    debug, session_secure, csrf_secure, hsts, ssl_redirect, hosts, frame, browsable = __import__("json").loads(out.stdout.splitlines()[-1])
    assert (debug, session_secure, csrf_secure, ssl_redirect, frame, browsable) == (False, True, True, True, "DENY", False)
    assert hsts >= 31536000 and hosts == ["rlv3.example.com"]


def test_debug_off_with_the_development_secret_refuses_to_start():
    env = _production_env()
    env.pop("DJANGO_SECRET_KEY")
    out = _manage("check", env=env)
    assert out.returncode != 0
    assert "DJANGO_SECRET_KEY" in out.stderr


@pytest.mark.django_db
def test_tokens_and_secrets_never_reach_the_logs(reader, operator, capfd, caplog, settings):
    """Requests carrying a token (header, and wrongly in the query or body), a wrong token and a
    session login: nothing logged in this process contains a token, a password or the secret key."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    caplog.set_level(logging.DEBUG)
    api = token_client(reader)
    token = Token.objects.get(user=reader).key
    api.post(API + "predict", {"rsi": 50}, format="json")
    api.post(API + f"predict?token={token}", {"rsi": 500, "token": token}, format="json")  # 400, logged
    api.get(API + f"decisions?symbol={token}")
    op = token_client(operator)
    op_token = Token.objects.get(user=operator).key
    op.post(API + "shadow_mode", {"enabled": "maybe"}, format="json")  # 400
    wrong = APIClient()
    wrong_token = secrets.token_hex(20)
    wrong.credentials(HTTP_AUTHORIZATION=f"Token {wrong_token}")
    wrong.get(API + "status")  # 401, logged as a warning
    from django.test import Client

    browser = Client()
    browser.post("/admin/login/", {"username": reader.username, "password": "pw-123456789-wrong"})
    out, err = capfd.readouterr()
    logged = out + err + "\n".join(r.getMessage() + " " + str(getattr(r, "args", "")) for r in caplog.records)
    assert "predict" in logged or caplog.records, "the requests above were expected to be logged"
    for secret in (token, op_token, wrong_token, "pw-123456789", settings.SECRET_KEY):
        assert secret not in logged


@pytest.mark.django_db
def test_admin_and_swagger_need_staff(reader, superuser, client):
    # Anonymous: sent to the admin login, never served.
    for url in ("/admin/", "/admin/decisions/decision/", "/api/docs/"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    assert client.get("/api/schema/").status_code in (401, 403)
    # An authenticated user who is not staff: still refused.
    client.force_login(reader)
    for url in ("/admin/", "/api/docs/"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    assert client.get("/admin/decisions/decision/").status_code == 302
    # Staff: served.
    client.force_login(superuser)
    assert client.get("/admin/").status_code == 200
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
    assert client.get("/api/schema/?format=json").status_code == 200


def test_every_way_of_starting_the_web_service_uses_the_gunicorn_settings(monkeypatch):
    """The Procfile, docker-compose and the image start gunicorn with gunicorn.conf.py (what
    bench/http.py measures), and none of them overrides its workers or worker class."""
    import runpy

    import yaml

    procfile = next(line for line in (BASE_DIR / "Procfile").read_text().splitlines() if line.startswith("web:"))
    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())["services"]["web"]["command"]
    image = next(line for line in (BASE_DIR / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    for command in (procfile, " ".join(compose), image):
        assert "gunicorn.conf.py" in command and "gunicorn" in command, command
        assert not any(flag in command for flag in ("--workers", "--threads", "--worker-class", " -w ", " -k ")), command

    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    settings = runpy.run_path(str(BASE_DIR / "gunicorn.conf.py"))
    assert settings["worker_class"] == "sync" and settings["workers"] == len(os.sched_getaffinity(0)) + 2
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    assert runpy.run_path(str(BASE_DIR / "gunicorn.conf.py"))["workers"] == 5


def test_docker_compose_puts_the_proxy_in_front_of_the_web_service():
    """Only the proxy is published; it runs the nginx.conf that tests/test_proxy.py runs, and that
    file proxies to the web service where gunicorn binds."""
    import yaml

    services = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}
    proxy = services["proxy"]
    assert proxy["image"].startswith("nginx:") and "./nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert any(port.endswith(":8080") for port in proxy["ports"])
    conf = (BASE_DIR / "nginx.conf").read_text()
    assert "server web:8000;" in conf and "listen 8080;" in conf
    assert services["web"]["command"][-2:] == ["--bind", "0.0.0.0:8000"]


ENTRYPOINT = BASE_DIR / "docker-entrypoint.sh"


def test_the_image_runs_its_processes_through_the_entrypoint_as_a_service_user():
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/app/docker-entrypoint.sh"]' in dockerfile
    assert "useradd --system" in dockerfile and " rlv3" in dockerfile
    assert os.access(ENTRYPOINT, os.X_OK)
    # Every service of docker-compose starts the image's command through it (none overrides it).
    import yaml

    services = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())["services"]
    app = [name for name, service in services.items() if service.get("image") == "rlv3:latest"]
    assert set(app) == {"migrate", "web", "worker", "beat", "subscriber"}
    assert not any("entrypoint" in services[name] or "user" in services[name] for name in app)


@pytest.fixture
def open_tmp():
    """A temporary folder another user can reach (pytest's own sit below a folder only root may enter)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="rlv3-entrypoint-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _unprivileged() -> tuple[str, int, int]:
    import pwd

    entry = pwd.getpwnam("nobody")
    return entry.pw_name, entry.pw_uid, entry.pw_gid


@pytest.mark.skipif(os.geteuid() != 0, reason="the entrypoint's hand-over runs as root, as in the container")
def test_started_as_root_the_entrypoint_hands_over_the_volumes_and_drops_to_the_user(open_tmp):
    """What an upgrade from the image that ran as root meets: root's files in the volumes."""
    name, uid, gid = _unprivileged()
    data, metrics = open_tmp / "data", open_tmp / "metrics"
    (data / "rl_v3" / "v1").mkdir(parents=True)
    (data / "rl_v3" / "v1" / "model.pt").write_bytes(b"weights")
    metrics.mkdir()
    (metrics / "counter_1.db").write_bytes(b"")
    env = {**os.environ, "RLV3_RUN_AS": name, "RLV3_WRITABLE_DIRS": f"{data} {metrics} {open_tmp / 'fresh'}"}
    out = subprocess.run(
        [str(ENTRYPOINT), "sh", "-c", f'id -u; id -g; touch "{data}/rl_v3/v2.pt" "{open_tmp}/fresh/ok"'],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(uid), str(gid)]  # the command ran as the user, not root
    for path in [*data.rglob("*"), data, metrics, *metrics.iterdir(), open_tmp / "fresh"]:
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path
    assert (data / "rl_v3" / "v2.pt").exists() and (open_tmp / "fresh" / "ok").exists()
    assert (data / "rl_v3" / "v1" / "model.pt").read_bytes() == b"weights"


@pytest.mark.skipif(os.geteuid() != 0, reason="starts the entrypoint as another user, which needs root")
def test_started_as_another_user_the_entrypoint_runs_the_command_as_it_is(open_tmp):
    name, uid, gid = _unprivileged()
    env = {**os.environ, "RLV3_RUN_AS": "root", "RLV3_WRITABLE_DIRS": str(open_tmp)}
    out = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", str(ENTRYPOINT), "id", "-u"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(uid)
    assert open_tmp.stat().st_uid == 0  # nothing handed over


def test_the_image_build_leaves_out_secrets_local_state_and_the_virtualenv():
    """`COPY . .` copies the build context: without these lines a build from a working copy would
    put its .env (DJANGO_SECRET_KEY), its SQLite database and models, and its .venv in the image."""
    ignored = {line.strip() for line in (BASE_DIR / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".env", ".env.*", ".git", ".venv", "data", "staticfiles"} <= ignored
    assert not any(line.startswith("!") for line in ignored)  # nothing taken back in
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert "COPY . ." in dockerfile and "collectstatic" in dockerfile  # staticfiles are built in the image
