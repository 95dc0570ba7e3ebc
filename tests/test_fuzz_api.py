"""Property-based fuzzing of the REST API against its own OpenAPI schema (schemathesis).

Every operation of the schema is called with generated valid and invalid requests, authenticated
as an operator, in-process through the WSGI application against the real database. Each response
must be a non-5xx answer that conforms to the schema: its status code is documented, its body
matches the documented shape and its content type is the documented one. Invalid input must be
refused and valid input accepted (schemathesis' negative/positive data checks), so a schema that
promises more or less than the views do fails here rather than being loosened.

``RLV3_FUZZ_EXAMPLES`` sets the examples per operation (default 20 in the suite; ``make fuzz``
runs a long campaign).
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings as hypothesis_settings

EXAMPLES = int(os.environ.get("RLV3_FUZZ_EXAMPLES", "20"))

pytestmark = pytest.mark.django_db


def project_schema() -> dict:
    """The OpenAPI document /api/schema/ serves, generated without a request (no database needed)."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document))


def _load() -> schemathesis.schemas.BaseSchema:
    from rlv3site.wsgi import application

    loaded = schemathesis.openapi.from_dict(project_schema())
    loaded.app = application
    loaded.config.generation.update(modes=["positive", "negative"], max_examples=EXAMPLES, deterministic=True)
    return loaded


schema = _load()


@pytest.fixture
def operator_headers(operator, settings, redis_client):
    """An operator's token header. The WSGI handler would close the database connection that holds
    the test's transaction after each request; like Django's test client, stop it doing so."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections
    from rest_framework.authtoken.models import Token

    from rlv3site.celery import app

    # Throttling is exercised in tests/test_hostile_input.py; here it would only turn fuzzing into 429s.
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {}}
    # Accepted training requests are queued for real, on a queue no worker listens to.
    queue = f"rlv3-fuzz-{uuid.uuid4().hex[:10]}"
    previous_queue = app.conf.task_default_queue
    app.conf.task_default_queue = settings.CELERY_TASK_DEFAULT_QUEUE = queue
    token, _ = Token.objects.get_or_create(user=operator)
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield {"Authorization": f"Token {token.key}"}
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)
    app.conf.task_default_queue = previous_queue
    redis_client.delete(queue)


def test_the_fuzzed_schema_is_the_served_one(operator_api):
    served = operator_api.get("/api/schema/?format=json")
    assert served.status_code == 200
    assert served.json()["paths"] == project_schema()["paths"]


@schema.parametrize()
@hypothesis_settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_schema(case, operator_headers):
    case.call_and_validate(headers=operator_headers)
