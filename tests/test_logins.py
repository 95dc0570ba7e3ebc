"""The admin login under guessing: a (username, address) pair is locked out after
RLV3_LOGIN_FAILURE_LIMIT failures (django-axes, rlv3site.logins), answered 429 with Retry-After,
without locking the operator out from elsewhere, and without keeping the guessed passwords."""

from __future__ import annotations

import logging

import pytest
from axes.models import AccessAttempt
from django.test import Client, RequestFactory

from rlv3site.logins import client_ip

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "pw-123456789"  # tests.conftest's


def _login(client: Client, username: str, password: str, address: str, **headers):
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address, **headers)


def _fail(client: Client, username: str, address: str, times: int) -> None:
    for i in range(times):
        response = _login(client, username, f"wrong-{i}", address)
        assert response.status_code == 200, response.status_code  # the form again, with its error
        assert b"Please enter the correct username and password" in response.content


@pytest.mark.django_db
def test_the_pair_is_locked_out_after_the_limit_even_with_the_right_password(superuser, settings):
    settings.AXES_FAILURE_LIMIT = 5
    client = Client()
    _fail(client, superuser.username, "203.0.113.7", 4)
    fifth = _login(client, superuser.username, "wrong-5", "203.0.113.7")
    assert fifth.status_code == 429  # the failure that reaches the limit is answered with the lockout

    locked = _login(client, superuser.username, PASSWORD, "203.0.113.7")
    assert locked.status_code == 429
    assert locked["Retry-After"] == str(15 * 60)
    assert b"Too many failed logins" in locked.content
    assert "_auth_user_id" not in client.session

    attempt = AccessAttempt.objects.get(username=superuser.username, ip_address="203.0.113.7")
    assert attempt.failures_since_start == 6  # a try during the lockout counts, and starts the cool-off again

    # The same operator from another address still logs in.
    elsewhere = Client()
    assert _login(elsewhere, superuser.username, PASSWORD, "198.51.100.2").status_code == 302
    assert elsewhere.get("/admin/").status_code == 200


@pytest.mark.django_db
def test_the_lockout_ends_after_the_cool_off(superuser, settings):
    from datetime import timedelta

    from django.utils import timezone

    settings.AXES_FAILURE_LIMIT = 2
    client = Client()
    _fail(client, superuser.username, "203.0.113.10", 1)
    assert _login(client, superuser.username, "wrong", "203.0.113.10").status_code == 429
    assert _login(client, superuser.username, PASSWORD, "203.0.113.10").status_code == 429
    AccessAttempt.objects.filter(ip_address="203.0.113.10").update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert _login(client, superuser.username, PASSWORD, "203.0.113.10").status_code == 302


@pytest.mark.django_db
def test_a_successful_login_clears_the_pairs_failures(superuser, settings):
    settings.AXES_FAILURE_LIMIT = 5
    client = Client()
    _fail(client, superuser.username, "203.0.113.8", 4)
    assert _login(client, superuser.username, PASSWORD, "203.0.113.8").status_code == 302
    client.logout()
    _fail(client, superuser.username, "203.0.113.8", 4)
    assert _login(client, superuser.username, PASSWORD, "203.0.113.8").status_code == 302


@pytest.mark.django_db
def test_guessed_passwords_are_not_stored_or_logged(superuser, settings, caplog):
    settings.AXES_FAILURE_LIMIT = 5
    caplog.set_level(logging.DEBUG)
    client = Client()
    for guess in ("hunter2-guess", "correct-horse-guess"):
        _login(client, superuser.username, guess, "203.0.113.9")
    stored = " ".join(str(v) for v in AccessAttempt.objects.values_list("post_data", "get_data", "http_accept", "path_info"))
    assert AccessAttempt.objects.get(username=superuser.username).failures_since_start == 2
    for guess in ("hunter2-guess", "correct-horse-guess"):
        assert guess not in stored
        assert guess not in caplog.text


@pytest.mark.parametrize(("proxies", "forwarded", "expected"), [
    (0, None, "10.0.0.5"),
    (0, "203.0.113.1", "10.0.0.5"),  # no proxy is trusted: the header is the client's word
    (1, "203.0.113.1", "203.0.113.1"),  # nginx appended the address it was called from
    (1, "198.51.100.66, 203.0.113.1", "203.0.113.1"),  # the left entry is the client's own claim
    (2, "198.51.100.66, 203.0.113.1, 10.1.1.1", "203.0.113.1"),
    (1, None, "10.0.0.5"),  # called directly, past the proxy
    (2, "203.0.113.1", "10.0.0.5"),  # fewer hops than proxies: not trusted
])
def test_client_address_trusts_only_what_the_proxies_appended(settings, proxies, forwarded, expected):
    settings.RLV3_TRUSTED_PROXIES = proxies
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    request = RequestFactory().post("/admin/login/", REMOTE_ADDR="10.0.0.5", **headers)
    assert client_ip(request) == expected


@pytest.mark.django_db
def test_behind_the_proxy_a_spoofed_forwarded_for_does_not_escape_the_lockout(superuser, settings):
    """A guesser who puts a fresh address in X-Forwarded-For on every try is still counted under
    the address nginx appended."""
    settings.AXES_FAILURE_LIMIT = 3
    settings.RLV3_TRUSTED_PROXIES = 1
    client = Client()
    for i in range(3):
        _login(client, superuser.username, f"wrong-{i}", "172.18.0.5", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}, 203.0.113.44")
    locked = _login(client, superuser.username, PASSWORD, "172.18.0.5", HTTP_X_FORWARDED_FOR="192.0.2.99, 203.0.113.44")
    assert locked.status_code == 429
    assert AccessAttempt.objects.filter(ip_address="203.0.113.44").exists()
    # Another client behind the same proxy is not locked.
    assert _login(Client(), superuser.username, PASSWORD, "172.18.0.5", HTTP_X_FORWARDED_FOR="203.0.113.45").status_code == 302
