"""Hostile input beyond the schema: every answer is a clean JSON error (or an empty result), never a
5xx, never an echo of internals (tracebacks, SQL, driver names); and per-token throttling holds
across processes because it is counted in Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from decisions.models import Decision, DecisionSource
from tests.conftest import token_client

API = "/api/v1/rl/v3/"
BASE_DIR = Path(__file__).resolve().parent.parent
INTERNALS = ("Traceback", "psycopg", "django.", "SELECT ", "File \"", "sqlite3", "site-packages", "OperationalError")

pytestmark = pytest.mark.django_db


def assert_clean(response, status: int, *, field: str | None = "unset", sent: str = "") -> dict:
    """The response has `status`, a JSON body with an `error` message, and no internals in it
    (what the caller `sent` may be quoted back in the message; it is not an internal)."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    text = response.content.decode()
    body = json.loads(text)
    scanned = json.dumps(body, ensure_ascii=False).replace(json.dumps(sent, ensure_ascii=False)[1:-1], "") if sent else text
    for marker in INTERNALS:
        assert marker not in scanned, (marker, text[:500])
    if status >= 400:
        assert isinstance(body.get("error"), str) and body["error"]
        if field != "unset":
            assert body.get("field") == field, body
    return body


def _decision(symbol: str = "BTCUSDT") -> Decision:
    return Decision.objects.create(
        symbol=symbol, observation={"rsi": 50.0}, features=[0.0] * 64, action=0, probabilities=[1 / 6] * 6,
        confidence=1 / 6, value=0.0, model_version="untrained", shadow_mode=True, source=DecisionSource.API,
        created_at=timezone.now(),
    )


# --- body size -------------------------------------------------------------------------------------


def test_oversized_body_is_413_with_the_limit_named(reader_api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    body = json.dumps({"observations": [{"rsi": 50, "symbol": "BTCUSDT"}] * 500})
    assert len(body) > 4096
    response = reader_api.generic("POST", API + "predict", body, content_type="application/json")
    payload = assert_clean(response, 413, field=None)
    assert "4096 bytes" in payload["error"] and str(len(body)) in payload["error"]
    assert payload["limit_bytes"] == 4096
    assert Decision.objects.count() == 0  # refused before anything was parsed or stored


def test_default_limit_refuses_a_multi_megabyte_body_on_every_write(operator_api, settings):
    body = "[" + ",".join(["1"] * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 2 + 10)) + "]"
    for path in ("predict", "train", "shadow_mode", "models/1/promote"):
        response = operator_api.generic("POST", API + path, body, content_type="application/json")
        assert_clean(response, 413, field=None)


def test_a_body_within_the_limit_is_served(reader_api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    response = reader_api.post(API + "predict", {"rsi": 50}, format="json")
    assert response.status_code == 200


def test_a_malformed_content_length_is_400(reader_api):
    response = reader_api.generic("POST", API + "predict", "{}", content_type="application/json", CONTENT_LENGTH="12abc")
    assert_clean(response, 400, field=None)


# --- deeply nested and malformed JSON -----------------------------------------------------------


@pytest.mark.parametrize("body", [
    "[" * 50_000 + "]" * 50_000,
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    '{"observations": [' + '{"rsi":' * 20_000 + "1" + "}" * 20_000 + "]}",
])
def test_deeply_nested_json_is_a_clean_400(reader_api, body):
    response = reader_api.generic("POST", API + "predict", body, content_type="application/json")
    assert_clean(response, 400)
    assert Decision.objects.count() == 0


def test_nested_objects_where_numbers_belong_name_the_field(reader_api):
    nested = {"rsi": {"$gt": 0}, "symbol": "BTCUSDT"}
    assert_clean(reader_api.post(API + "predict", nested, format="json"), 400, field="rsi")
    batch = {"observations": [{"rsi": 50}, {"macd": [[[1]]]}]}
    assert_clean(reader_api.post(API + "predict", batch, format="json"), 400, field="observations[1].macd")


@pytest.mark.parametrize("body", [b"\xff\xfe{", b'{"rsi": 50', b"{'rsi': 50}", b'{"rsi": 5\x000}', b"\x00" * 64])
def test_invalid_json_bytes_are_a_clean_400(reader_api, body):
    response = reader_api.generic("POST", API + "predict", body, content_type="application/json")
    assert_clean(response, 400)


# --- huge numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, field", [
    ('{"rsi": 1e400}', "rsi"),                      # parses to inf
    ('{"rsi": -1e400}', "rsi"),
    ('{"rsi": NaN}', "rsi"),
    ('{"balance": ' + "9" * 4000 + "}", "balance"),  # a 4000-digit integer
    ('{"volatility": 1e-400, "macd": 1e308, "rsi": 50}', "macd"),
    ('{"position_side": 1e-300}', "position_side"),
])
def test_huge_and_non_finite_numbers_are_refused_by_name(reader_api, raw, field):
    response = reader_api.generic("POST", API + "predict", raw, content_type="application/json")
    body = assert_clean(response, 400, field=field)
    assert len(body["error"]) < 300  # the message does not echo a 4000-digit number back


def test_numbers_beyond_pythons_digit_limit_are_a_clean_parse_error(reader_api):
    response = reader_api.generic("POST", API + "predict", '{"balance": ' + "9" * 5000 + "}", content_type="application/json")
    body = assert_clean(response, 400)
    assert "digits" in body["error"] and "sys." not in body["error"]


@pytest.mark.parametrize("raw, field", [
    ('{"timesteps": ' + "9" * 400 + "}", "timesteps"),
    ('{"timesteps": 1e400}', "timesteps"),
    ('{"seed": -1}', "seed"),
    ('{"seeds": [' + ",".join(["1"] * 17) + "]}", "seeds"),
])
def test_huge_numbers_in_a_training_request_are_refused_by_name(operator_api, raw, field):
    response = operator_api.generic("POST", API + "train", raw, content_type="application/json")
    assert_clean(response, 400, field=field)


# --- unicode --------------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["BTC€", "🚀MOON", "BTC\u202eDSU", "BTC\x00USDT", "ＢＴＣ", "a" * 33, "", "BTC USDT", "<b>X</b>"])
def test_symbols_outside_the_allowed_characters_are_refused(reader_api, symbol):
    body = assert_clean(reader_api.post(API + "predict", {"symbol": symbol}, format="json"), 400, field="symbol")
    assert "A-Z" in body["error"]


@pytest.mark.parametrize("symbol", ["🚀", "BTC\u202e", "ΔΣ", "\x00", "x" * 33])
def test_unicode_in_filters_answers_cleanly(reader_api, symbol):
    _decision()
    response = reader_api.get(API + "decisions", {"symbol": symbol})
    if response.status_code == 200:
        assert response.json()["results"] == []
    else:
        assert_clean(response, 400, field="symbol")


# --- SQL and script strings -------------------------------------------------------------------------

INJECTIONS = [
    "' OR '1'='1",
    "BTCUSDT' OR 1=1 --",
    "1; DROP TABLE decisions_decision; --",
    "\" UNION SELECT password FROM auth_user --",
    "<script>alert(1)</script>",
    "${jndi:ldap://x/a}",
    "%27%20OR%201=1",
]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("param", ["symbol", "model_version", "action", "source", "role", "shadow_mode", "since", "until", "cursor",
                                   "page_size"])
def test_injection_strings_in_filters_match_nothing_and_leak_nothing(reader_api, param, value):
    _decision("BTCUSDT")
    response = reader_api.get(API + "decisions", {param: value})
    if response.status_code == 200:
        assert response.json()["results"] == [], param  # the string was a value, not SQL
    else:
        assert response.status_code in (400, 404)
        assert_clean(response, response.status_code, sent=value)
    assert Decision.objects.count() == 1


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_strings_in_experience_filters_and_paths(reader_api, value):
    response = reader_api.get(API + "experiences", {"symbol": value})
    if response.status_code == 200:
        assert response.json()["results"] == []
    else:
        assert_clean(response, 400, field="symbol", sent=value)
    path = quote(value, safe="")
    response = reader_api.get(API + "training-runs/" + path)
    assert response.status_code == 404
    promote = reader_api.post(API + f"models/{path}/promote", {}, format="json")
    if "/" in value:  # a decoded "/" matches no API route: Django's own plain 404 page
        assert promote.status_code == 404 and b"Traceback" not in response.content + promote.content
    else:
        assert_clean(response, 404, sent=value)
        assert_clean(promote, 403)


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_strings_in_admin_search_are_escaped(admin_client_staff, value):
    _decision("BTCUSDT")
    for url in ("/admin/decisions/decision/", "/admin/decisions/experience/", "/admin/decisions/shadowmodechange/"):
        response = admin_client_staff.get(url, {"q": value})
        assert response.status_code == 200, url
        html = response.content.decode()
        assert "<script>alert(1)</script>" not in html  # rendered escaped, never as markup
        for marker in ("Traceback", "psycopg", "ProgrammingError"):
            assert marker not in html
    assert Decision.objects.count() == 1


@pytest.fixture
def admin_client_staff(superuser):
    from django.test import Client

    client = Client()
    client.force_login(superuser)
    return client


def test_a_reason_longer_than_the_limit_is_refused_even_with_blank_padding(operator_api):
    """The schema's maxLength counts the text as sent; DRF checked it after trimming whitespace."""
    for padded in ("\v" + "x" * 2000, "x" * 2000 + " "):
        response = operator_api.post(API + "shadow_mode", {"enabled": False, "reason": padded}, format="json")
        assert_clean(response, 400, field="reason")
    assert operator_api.post(API + "shadow_mode", {"enabled": False, "reason": "x" * 2000}, format="json").status_code == 200


def test_injection_strings_in_bodies_are_data(operator_api, operator):
    from decisions.models import ShadowModeChange

    reason = "'); DELETE FROM decisions_shadowmodechange; -- <script>alert(1)</script>"
    response = operator_api.post(API + "shadow_mode", {"enabled": True, "reason": reason}, format="json")
    assert response.status_code == 200
    assert ShadowModeChange.objects.get().reason == reason  # stored verbatim, as text
    assert_clean(operator_api.post(API + "train", {"dataset": "eurusd_1h'; DROP TABLE x; --"}, format="json"), 400, field="dataset")


# --- throttling ---------------------------------------------------------------------------------


@pytest.fixture
def tight_rates(settings, redis_client):
    """predict 3 and train 1 per day (a window that cannot roll over mid-test in practice)."""
    from decisions.api.throttling import KEY_PREFIX, leases_clear

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"predict": "3/day", "train": "1/day"}}
    leases_clear()
    yield
    leases_clear()
    for key in redis_client.scan_iter(match=f"{KEY_PREFIX}:*"):
        redis_client.delete(key)


def test_predict_is_throttled_per_token_with_retry_after(reader, tight_rates, django_user_model):
    api = token_client(reader)
    codes = [api.post(API + "predict", {"rsi": 50}, format="json").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = api.post(API + "predict", {"rsi": 50}, format="json")
    body = assert_clean(refused, 429)
    assert "throttled" in body["error"].lower()
    assert int(refused["Retry-After"]) in range(1, 86401)
    assert Decision.objects.count() == 3
    # Another token has its own budget.
    other = django_user_model.objects.create_user(username=f"u-{uuid.uuid4().hex[:8]}", password="pw-123456789")
    assert token_client(other).post(API + "predict", {"rsi": 50}, format="json").status_code == 200


def test_train_is_throttled_more_strictly_than_predict(operator, tight_rates, settings):
    from decisions.api.throttling import parse_rate

    api = token_client(operator)
    first = api.post(API + "train", {"timesteps": 1000, "dataset": "googl_1d"}, format="json")
    assert first.status_code in (202, 503)  # 503: no broker reachable is still a counted request
    second = api.post(API + "train", {"timesteps": 1000, "dataset": "eurusd_1h"}, format="json")
    assert second.status_code == 429 and int(second["Retry-After"]) >= 1
    # The shipped defaults: train's budget per second is far below predict's.
    from rlv3site import settings as shipped

    rates = shipped.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    per_second = {scope: n / period for scope, (n, period) in ((s, parse_rate(r)) for s, r in rates.items())}
    assert per_second["train"] * 1000 < per_second["predict"]


def test_throttle_counts_are_shared_across_processes(reader, tight_rates, settings):
    """Three requests here use up the budget; a separate Python process (as another gunicorn worker
    would be) sees the same count in Redis and refuses the token."""
    from rest_framework.authtoken.models import Token

    api = token_client(reader)
    for _ in range(3):
        assert api.post(API + "predict", {"rsi": 50}, format="json").status_code == 200
    key = Token.objects.get(user=reader).key
    script = (
        "import django, types; django.setup()\n"
        "from django.conf import settings\n"
        "settings.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'] = {'predict': '3/day'}\n"
        "from decisions.api.throttling import RedisRateThrottle\n"
        f"request = types.SimpleNamespace(auth=types.SimpleNamespace(key={key!r}), META={{}})\n"
        "view = types.SimpleNamespace(throttle_scope='predict')\n"
        "throttle = RedisRateThrottle()\n"
        "print('allowed' if throttle.allow_request(request, view) else f'refused {throttle.wait()}')\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "rlv3site.settings", "REDIS_URL": settings.REDIS_URL}
    out = subprocess.run([sys.executable, "-c", script], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("refused"), out.stdout


def test_throttle_leases_never_let_two_processes_exceed_the_limit(settings, redis_client):
    """Slots are reserved from Redis in leases (1 % of the limit). Two processes (the second
    simulated by swapping this process's lease table) share one window: together they are allowed
    at most the limit, each alone is refused only once the count in Redis is used up, and Redis
    saw one reservation per lease, not one per request."""
    from decisions.api import throttling

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"predict": "1000/day"}}
    assert [throttling.lease_size(n) for n in (3, 199, 1000, 50_000, 10**8)] == [1, 1, 10, 100, 100]
    identity = f"t:test-{uuid.uuid4().hex}"
    tables = [{}, {}]
    allowed = [0, 0]
    try:
        for i in range(1500):
            p = i % 2
            throttling._leases, saved = tables[p], throttling._leases
            if throttling.consume("predict", identity) is None:
                allowed[p] += 1
            tables[p], throttling._leases = throttling._leases, saved
        assert sum(allowed) == 1000 and min(allowed) == 500  # every slot used: the leases ran out evenly
        # Refused from then on, with the seconds to the window's end.
        wait = throttling.consume("predict", identity)
        assert wait is not None and 1 <= wait <= 86400
        counted = [int(v) for k, v in ((k, redis_client.get(k)) for k in redis_client.scan_iter(match=f"*{identity}*"))]
        assert counted and counted[0] >= 1000 and counted[0] % 10 == 0  # reserved 10 at a time
    finally:
        throttling.leases_clear()
        for key in redis_client.scan_iter(match=f"*{identity}*"):
            redis_client.delete(key)


def test_throttle_lease_left_in_one_process_is_not_given_to_another(settings, redis_client):
    """A process that reserved a lease keeps its unused slots: another process is refused once
    Redis's count reaches the limit, even though fewer requests were served (never more)."""
    from decisions.api import throttling

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"predict": "200/day"}}
    identity = f"t:test-{uuid.uuid4().hex}"
    try:
        first = {}
        throttling._leases, saved = first, throttling._leases
        assert throttling.consume("predict", identity) is None  # reserves 2 slots, uses 1
        throttling._leases = {}
        served = sum(throttling.consume("predict", identity) is None for _ in range(300))
        throttling._leases = saved
        assert served == 198  # 200 - the first process's lease of 2
    finally:
        throttling.leases_clear()
        for key in redis_client.scan_iter(match=f"*{identity}*"):
            redis_client.delete(key)


def test_redis_keys_of_the_throttle_hold_no_token(reader, tight_rates, redis_client):
    from rest_framework.authtoken.models import Token

    from decisions.api.throttling import KEY_PREFIX

    token_client(reader).post(API + "predict", {"rsi": 50}, format="json")
    key = Token.objects.get(user=reader).key
    keys = list(redis_client.scan_iter(match=f"{KEY_PREFIX}:*"))
    assert keys and not any(key in k for k in keys)


# Any JSON text: standard values, NaN/Infinity literals, integers far beyond 64 bits, deep nesting.
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
_json_texts = st.one_of(
    _json_values.map(json.dumps),
    st.sampled_from(["", " ", "{", '{"a": 1,}', "[1, 2", '{"a": NaN}', "\ufeff{}", '"\\ud800"', "1e400",
                     "[" * 2000 + "]" * 2000, '{"a": 1, "a": 2}']),
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(_json_texts)
def test_a_body_reads_as_the_standard_library_reads_it(text):
    """parse_json tries orjson first: whatever it reads must equal json.loads, whatever either
    refuses must get json's answer (a value, or the same ParseError)."""
    from rest_framework.exceptions import ParseError

    from decisions.api.parsers import parse_json

    raw = text.encode("utf-8", "surrogatepass")
    try:
        expected = ("ok", json.loads(raw.decode("utf-8"))) if raw else ("ok", {})
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        expected = ("error", type(exc))
    try:
        got = ("ok", parse_json(raw, "JSON parse error"))
    except ParseError:
        got = ("error", None)
    assert got[0] == expected[0]
    if got[0] == "ok":  # NaN != NaN: compare the texts
        assert json.dumps(got[1]) == json.dumps(expected[1])
