"""The buffering proxy (nginx.conf) in front of gunicorn's sync workers, run for real: Debian's
nginx before gunicorn with the production settings, against PostgreSQL and Redis.

A sync worker reads its connection with no deadline, so without the proxy as many stalled clients
as workers leave the service answering no one until the worker timeout (60 s) kills them.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
import time
import urllib.request

import pytest

from bench._services import (
    NGINX, database_create, database_drop, free_port, gunicorn, gunicorn_workers, manage, nginx, operator_token,
    production_env, wait_port, wait_workers_ready,
)
from training.rl.actions import ACTION_NAMES

API = "/api/v1/rl/v3/"
OBSERVATION = {"symbol": "BTCUSDT", "rsi": 55.0, "macd": 0.1, "volatility": 0.02, "regime": "TREND"}


def _require_nginx() -> None:
    """Skip without Debian's nginx, except in CI, where .ci/run installs it and its absence fails."""
    if not os.access(NGINX, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{NGINX} is missing: .ci/run installs Debian's nginx-light package")
        pytest.skip(f"{NGINX} is not installed (apt-get install -y nginx-light)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """gunicorn (production settings) and nginx in front of it; yields their ports and a token."""
    base_db = os.environ.get("DATABASE_URL", "")
    if not base_db.startswith("postgres"):
        pytest.skip("the proxy test needs PostgreSQL (DATABASE_URL=postgres://...)")
    _require_nginx()
    name = f"rlv3_proxy_{os.getpid()}"
    env = production_env(database_url=database_create(base_db, name),
                         redis_url=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
                         RLV3_MODEL_DIR=tempfile.mkdtemp(prefix="rlv3-proxy-models-"))
    run_dir = tmp_path_factory.mktemp("proxy")
    web = proxy = None
    try:
        manage("migrate", "--noinput", env=env)
        token = operator_token(env)
        web_port, proxy_port = free_port(), free_port()
        web = gunicorn(web_port, env=env, log_path=run_dir / "gunicorn.log").start()
        proxy = nginx(proxy_port, upstream_port=web_port, run_dir=run_dir).start()
        workers = gunicorn_workers()["workers"]
        wait_port(web_port, proc=web.proc)
        wait_workers_ready(web, workers)
        wait_port(proxy_port, proc=proxy.proc)
        # Every worker loads the policy before the test starts timing.
        for _ in range(workers * 2):
            _predict(proxy_port, token, timeout=60)
        yield {"web": web_port, "proxy": proxy_port, "token": token, "run_dir": run_dir}
    finally:
        for service in (proxy, web):
            if service is not None:
                service.stop()
        database_drop(base_db, name)


def _predict(port: int, token: str, *, timeout: float) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{API}predict", data=json.dumps(OBSERVATION).encode(), method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200
        return json.loads(response.read())


def _request(port: int, method: str, path: str, headers: dict, body: bytes | None = None) -> tuple[int, dict, bytes]:
    """One request on a new connection (``body`` None: the headers only, whatever they announce)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if body is not None:
            headers = {**headers, "Content-Length": str(len(body))}
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_stalled_clients_do_not_take_the_workers(stack):
    """Twice as many clients as workers stall, half in their headers and half in their bodies;
    a prediction through the proxy is still answered at once."""
    workers = gunicorn_workers()["workers"]
    stalled = []
    try:
        for i in range(2 * workers):
            sock = socket.create_connection(("127.0.0.1", stack["proxy"]), timeout=10)
            if i % 2:
                sock.sendall(f"POST {API}predict HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
            else:
                sock.sendall(
                    f"POST {API}predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {stack['token']}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"symbol\": ".encode()
                )
            stalled.append(sock)
        time.sleep(1.0)
        started = time.monotonic()
        answer = _predict(stack["proxy"], stack["token"], timeout=30)
        elapsed = time.monotonic() - started
    finally:
        for sock in stalled:
            sock.close()
    assert answer["symbol"] == "BTCUSDT" and answer["action"] in ACTION_NAMES
    assert elapsed < 5.0, f"a prediction took {elapsed:.1f}s behind {2 * workers} stalled clients"


def test_a_body_over_the_service_limit_gets_the_service_413(stack):
    """Between the service's limit (2 MiB) and the proxy's (4 MiB): the proxy passes it on and the
    service answers its own JSON 413."""
    status, headers, payload = _request(stack["proxy"], "POST", f"{API}predict", {
        "Authorization": f"Token {stack['token']}", "Content-Type": "application/json",
    }, b"x" * (3 * 1024 * 1024))
    assert status == 413 and headers["content-type"].startswith("application/json")
    answer = json.loads(payload)
    assert answer["limit_bytes"] == 2 * 1024 * 1024 and "RLV3_MAX_BODY_BYTES" in answer["error"]


def test_a_body_over_the_proxy_limit_is_refused_with_json_unread(stack):
    status, headers, payload = _request(stack["proxy"], "POST", f"{API}predict", {
        "Content-Type": "application/json", "Content-Length": str(64 * 1024 * 1024),
    })  # the 64 MiB are never sent
    assert status == 413 and headers["content-type"].startswith("application/json")
    answer = json.loads(payload)
    assert answer["limit_bytes"] == 4 * 1024 * 1024 and "too large" in answer["error"]
    assert "/" not in headers.get("server", ""), "the proxy names its version"  # server_tokens off


def test_the_proxy_sets_x_forwarded_proto_itself(stack):
    """The service takes X-Forwarded-Proto: https as HTTPS (and sends HSTS). A client's own header
    does that when it reaches gunicorn directly, never through the proxy."""
    spoofed = {"X-Forwarded-Proto": "https"}
    status, direct, _ = _request(stack["web"], "GET", "/healthz?live", spoofed)
    assert status == 200 and "strict-transport-security" in direct
    status, proxied, _ = _request(stack["proxy"], "GET", "/healthz?live", spoofed)
    assert status == 200 and "strict-transport-security" not in proxied


def test_the_proxy_logs_requests_without_their_tokens(stack):
    _predict(stack["proxy"], stack["token"], timeout=30)
    log = (stack["run_dir"] / "nginx.log").read_text()
    assert f'"POST {API}predict HTTP/1.1" 200' in log
    assert stack["token"] not in log


def test_no_service_behind_the_proxy_is_a_json_503(tmp_path):
    """gunicorn down or restarting: the client gets a JSON error with Retry-After, not nginx's page."""
    _require_nginx()
    port = free_port()
    proxy = nginx(port, upstream_port=free_port(), run_dir=tmp_path).start()  # nothing listens upstream
    try:
        wait_port(port, proc=proxy.proc)
        status, headers, payload = _request(port, "GET", "/healthz?live", {})
    finally:
        proxy.stop()
    assert status == 503 and headers["content-type"].startswith("application/json")
    assert headers["retry-after"] == "5" and "unavailable" in json.loads(payload)["error"]
