"""Fixtures shared by the service tests: users per role, authenticated clients, isolated model dir."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(autouse=True)
def _isolated_model_dir(settings, tmp_path):
    settings.RLV3_MODEL_DIR = tmp_path / "rl_v3"
    settings.RLV3_MODEL_DIR.mkdir()
    yield


@pytest.fixture(autouse=True)
def _fresh_policy_server():
    """Each test sees a fresh process-wide policy (as after a restart)."""
    try:
        from decisions.serving import policy_server_reset
    except ImportError:  # pure-package test run without the service
        yield
        return
    policy_server_reset()
    yield
    policy_server_reset()


def _user(django_user_model, *, operator=False, superuser=False):
    from django.contrib.auth.models import Group

    name = f"u-{uuid.uuid4().hex[:8]}"
    if superuser:
        user = django_user_model.objects.create_superuser(username=name, password="pw-123456789", email="")
    else:
        user = django_user_model.objects.create_user(username=name, password="pw-123456789")
    if operator:
        user.groups.add(Group.objects.get_or_create(name="operators")[0])
    return user


@pytest.fixture
def reader(db, django_user_model):
    return _user(django_user_model)


@pytest.fixture
def operator(db, django_user_model):
    return _user(django_user_model, operator=True)


@pytest.fixture
def superuser(db, django_user_model):
    return _user(django_user_model, superuser=True)


def token_client(user):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def anon_api(db):
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def reader_api(reader):
    return token_client(reader)


@pytest.fixture
def operator_api(operator):
    return token_client(operator)


@pytest.fixture
def admin_api(superuser):
    return token_client(superuser)


@pytest.fixture
def redis_client(settings):
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def stream_prefix(settings, redis_client):
    """A private stream/group namespace so tests never see each other's entries."""
    tag = uuid.uuid4().hex[:10]
    settings.RLV3_STREAM_PREFIX = f"test:{tag}:stream:"
    settings.RLV3_GROUP_PREFIX = f"test:{tag}:group:"
    yield settings.RLV3_STREAM_PREFIX
    for key in redis_client.scan_iter(match=f"test:{tag}:*"):
        redis_client.delete(key)
