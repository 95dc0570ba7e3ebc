"""Bad input gets a 400 with a clear message naming the field, never a 500, and stores nothing."""

from __future__ import annotations

import json

import pytest

from decisions.models import Decision, ShadowModeChange
from training.models import TrainingRun

API = "/api/v1/rl/v3/"

PREDICT_BAD = [
    ({"rsi": 140}, "rsi"),
    ({"rsi": -1}, "rsi"),
    ({"rsi": "55"}, "rsi"),
    ({"rsi": None}, "rsi"),
    ({"rsi": True}, "rsi"),
    ({"volatility": -0.1}, "volatility"),
    ('{"volatility": NaN}', "volatility"),
    ('{"price_change_1m": Infinity}', "price_change_1m"),
    ('{"macd": -Infinity}', "macd"),
    ({"regime": "SIDEWAYS"}, "regime"),
    ({"regime": 3}, "regime"),
    ({"position_side": 2}, "position_side"),
    ({"position_side": 0.5}, "position_side"),
    ({"time_of_day": 1.5}, "time_of_day"),
    ({"time_of_day": -0.1}, "time_of_day"),
    ({"spread": -0.001}, "spread"),
    ({"volume_ratio": -1}, "volume_ratio"),
    ({"balance": -5}, "balance"),
    ({"equity": "lots"}, "equity"),
    ({"position_size": []}, "position_size"),
    ({"trend_strength": {}}, "trend_strength"),
    ({"price_change_5m": -1.5}, "price_change_5m"),
    ({"price_change_15m": 1e300}, "price_change_15m"),
    ({"symbol": ""}, "symbol"),
    ({"symbol": "BTC USDT"}, "symbol"),
    ({"symbol": 123}, "symbol"),
    ({"symbol": "X" * 40}, "symbol"),
    ({"symbol": "<script>"}, "symbol"),
    ([1, 2], "__root__"),
    ('"just a string"', "__root__"),
    ({"observations": []}, "observations"),
    ({"observations": [{}] * 1025}, "observations"),
    ({"observations": "abc"}, "observations"),
    ({"observations": [{"rsi": 200}]}, "observations[0].rsi"),
    ({"observations": [{}, {"macd": None}]}, "observations[1].macd"),
    ({"observations": [{}, 7]}, "observations[1].__root__"),
]


def _post(client, path, body):
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.generic("POST", API + path, raw, content_type="application/json")


@pytest.mark.django_db
@pytest.mark.parametrize("body,field", PREDICT_BAD, ids=[f"{i}-{f}" for i, (_, f) in enumerate(PREDICT_BAD)])
def test_bad_observation_is_400_naming_the_field(reader_api, body, field):
    response = _post(reader_api, "predict", body)
    assert response.status_code == 400, response.content
    payload = response.json()
    assert payload["field"] == field
    assert isinstance(payload["error"], str) and payload["error"]
    assert Decision.objects.count() == 0  # nothing half-stored


OPERATOR_BAD = [
    ("shadow_mode", {"enabled": "maybe"}, "enabled"),
    ("shadow_mode", {}, "enabled"),
    ("shadow_mode?enabled=perhaps", {}, "enabled"),
    ("shadow_mode", {"enabled": True, "reason": "x" * 3000}, "reason"),
    ("train", {"timesteps": -5}, "timesteps"),
    ("train", {"timesteps": "many"}, "timesteps"),
    ("train", {"dataset": "../../etc/passwd.csv"}, "dataset"),
    ("train", {"seed": "x"}, "seed"),
    ("train", {"seeds": [1, -2]}, "seeds[1]"),
    ("train?num_episodes=0", {}, "num_episodes"),
    ("models/1/promote", {"reason": ["not", "text"]}, "reason"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("path,body,field", OPERATOR_BAD, ids=[f"{p}-{f}" for p, _, f in OPERATOR_BAD])
def test_bad_operator_requests_are_400_naming_the_field(operator_api, path, body, field):
    response = _post(operator_api, path, body)
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert TrainingRun.objects.count() == 0 and ShadowModeChange.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query,field",
    [({"action": "FLY"}, "action"), ({"since": "yesterday"}, "since"), ({"until": "2024-13-45"}, "until"),
     ({"action": "9"}, "action")],
)
def test_bad_filters_are_400_naming_the_field(reader_api, query, field):
    for path in ("experiences", "decisions"):
        response = reader_api.get(API + path, query)
        assert response.status_code == 400, response.content
        assert response.json()["field"] == field


@pytest.mark.django_db
@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
# Whitespace alone is no JSON document either (found by fuzzing).
@pytest.mark.parametrize("raw", ['{"rsi": ', "rsi=55", "\xff\xfe", "[[[[" * 10, "\x0b", " \t\r\n", " "])
def test_unparseable_bodies_are_400(reader_api, raw, content_type):
    response = reader_api.generic("POST", API + "predict", raw.encode("latin-1"), content_type=content_type)
    assert response.status_code == 400
    assert "error" in response.json()


@pytest.mark.django_db
def test_an_empty_body_takes_the_seed_defaults(reader_api):
    response = reader_api.generic("POST", API + "predict", b"", content_type="application/json")
    assert response.status_code == 200 and response.json()["symbol"] == ""
