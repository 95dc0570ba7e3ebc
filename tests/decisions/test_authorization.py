"""Who may do what: anonymous / read-only user / operator / admin x every endpoint."""

from __future__ import annotations

import pytest

API = "/api/v1/rl/v3/"

# (method, path, body) -> expected status for (anonymous, reader, operator, admin).
# Reads are open to any authenticated user; state changes need the operator permission.
READ_OK = (401, 200, 200, 200)
OPERATOR_ONLY_202 = (401, 403, 202, 409)  # the admin's request conflicts with the operator's run
OPERATOR_ONLY_200 = (401, 403, 200, 200)
OPERATOR_ONLY_404 = (401, 403, 404, 404)

CASES = [
    ("post", "predict", {"rsi": 50}, READ_OK),
    ("get", "status", None, READ_OK),
    ("get", "experiences", None, READ_OK),
    ("get", "decisions", None, READ_OK),
    ("get", "models", None, READ_OK),
    ("get", "training-runs/{run}", None, READ_OK),
    ("post", "train", {"timesteps": 2000}, OPERATOR_ONLY_202),
    ("post", "shadow_mode", {"enabled": False, "reason": "test"}, OPERATOR_ONLY_200),
    ("post", "models/424242/promote", {"reason": "test"}, OPERATOR_ONLY_404),
]


@pytest.mark.django_db
@pytest.mark.parametrize("method,path,body,expected", CASES, ids=[f"{m} {p}" for m, p, _, _ in CASES])
def test_authorization_matrix(method, path, body, expected, anon_api, reader_api, operator_api, admin_api):
    from training.models import TrainingRun

    run = TrainingRun.objects.create(dataset="fixture-only", timesteps=1000, status="succeeded")
    url = API + path.format(run=run.pk)
    got = []
    for client in (anon_api, reader_api, operator_api, admin_api):
        call = getattr(client, method)
        response = call(url, body, format="json") if body is not None else call(url)
        got.append(response.status_code)
        assert response["Content-Type"].startswith("application/json")
    assert tuple(got) == expected


@pytest.mark.django_db
def test_session_authentication_works_with_csrf(client, operator):
    """The admin's session also authenticates the API; state changes then need the CSRF token."""
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(operator)
    assert csrf_client.get(API + "status").status_code == 200
    response = csrf_client.post(API + "shadow_mode", {"enabled": False}, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["error"]


@pytest.mark.django_db
def test_admin_and_swagger_need_staff(client, reader, superuser):
    assert client.get("/admin/").status_code == 302
    assert client.get("/api/docs/").status_code == 302
    client.force_login(reader)
    assert client.get("/api/docs/").status_code == 302  # not staff: sent to the login page
    client.force_login(superuser)
    assert client.get("/api/docs/").status_code == 200
    assert client.get("/admin/").status_code == 200
