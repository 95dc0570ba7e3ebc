"""A moved champion alias is served by a running process without a restart."""

from __future__ import annotations

import pytest

from tests.conftest import token_client
from tests.training.factories import policy_version
from training.services import model_version_gate, model_version_promote

API = "/api/v1/rl/v3/"
OBSERVATION = {"symbol": "BTCUSDT", "price_change_1m": 0.002, "rsi": 61.0, "volatility": 0.03}


@pytest.mark.django_db
def test_promotion_and_rollback_are_served_by_the_running_process(tmp_path, settings, reader):
    settings.RLV3_MODEL_POLL_SECONDS = 0.0  # poll the aliases on every request
    api = token_client(reader)
    first = policy_version(tmp_path, seed=1, sharpe=0.1)
    model_version_gate(version=first)
    answer = api.post(API + "predict", OBSERVATION, format="json").json()
    assert answer["model_version"] == str(first.version)

    second = policy_version(tmp_path, seed=2, sharpe=2.0)
    model_version_gate(version=second)  # beats the champion: promoted by the gate, no refresh() called
    moved = api.post(API + "predict", OBSERVATION, format="json").json()
    assert moved["model_version"] == str(second.version)
    assert moved["probabilities"] != answer["probabilities"]  # really the other network

    model_version_promote(version=first, reason="rollback")  # e.g. from the admin, another process
    back = api.post(API + "predict", OBSERVATION, format="json").json()
    assert back["model_version"] == str(first.version)
    assert back["probabilities"] == answer["probabilities"]


@pytest.mark.django_db(transaction=True)
def test_status_names_the_refused_champion_and_recovers_after_a_registry_outage(tmp_path, settings, reader):
    """A promoted champion whose artifact fails its sha256 is refused and the previous one served;
    status says why. While PostgreSQL is unreachable it says that too, and once the registry
    answers again only the refusal is left (a cleared outage is not reported forever)."""
    from pathlib import Path

    from django.db import connection

    from decisions.serving import policy_server

    if connection.vendor != "postgresql":
        pytest.skip("points the PostgreSQL connection at a closed port")
    settings.RLV3_MODEL_POLL_SECONDS = 0.0
    api = token_client(reader)
    first = policy_version(tmp_path, seed=1, sharpe=0.1)
    model_version_gate(version=first)
    assert api.post(API + "predict", OBSERVATION, format="json").json()["model_version"] == str(first.version)
    second = policy_version(tmp_path, seed=2, sharpe=2.0)
    Path(second.runtime_path).write_bytes(b"not the file that was registered")
    model_version_gate(version=second)  # promoted on its metrics; the file no longer matches

    status = api.get(API + "status").json()
    assert status["champion_version"] == second.version and status["served_version"] == str(first.version)
    refusal = f"v{second.version} refused: sha256 mismatch"
    assert status["load_error"].startswith(refusal), status["load_error"]

    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = "1"  # nothing listens there
    try:
        policy_server().refresh()
        during = policy_server().describe()
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert during["load_error"].startswith("registry unavailable") and refusal in during["load_error"]
    assert during["served_version"] == str(first.version)

    status = api.get(API + "status").json()
    assert status["load_error"].startswith(refusal) and "registry" not in status["load_error"], status["load_error"]
    assert status["served_version"] == str(first.version)


@pytest.mark.parametrize("error", ["OperationalError", "InterfaceError"])
@pytest.mark.django_db
def test_a_process_that_starts_during_an_outage_serves_the_champion_once_the_registry_answers(tmp_path, settings, monkeypatch, error):
    """A worker started while the database was unreachable has no policy but the untrained network.
    It must not keep serving that for a poll interval after the database is back (the chaos run
    caught one doing so), and a closed connection (InterfaceError, not a DatabaseError) counts as
    the outage it is instead of escaping from status."""
    import django.db

    import training.selectors
    from decisions.serving import UNTRAINED, policy_server, policy_server_reset

    settings.RLV3_MODEL_POLL_SECONDS = 600.0  # far longer than the test: only the retry can load it
    first = policy_version(tmp_path, seed=1, sharpe=0.1)
    model_version_gate(version=first)
    policy_server_reset()  # a fresh worker

    registry = training.selectors.alias_versions

    def closed(*_args, **_kwargs):
        raise getattr(django.db, error)("connection already closed")

    monkeypatch.setattr(training.selectors, "alias_versions", closed)
    during = policy_server().describe()
    assert during["served_version"] == UNTRAINED and not during["model_loaded"]
    assert during["load_error"].startswith("registry unavailable: connection already closed"), during["load_error"]
    assert policy_server().describe()["served_version"] == UNTRAINED  # still out: tried again, still failing

    monkeypatch.setattr(training.selectors, "alias_versions", registry)
    assert policy_server().champion().version == str(first.version)  # the next call, not after 600 s
    assert policy_server().describe()["load_error"] == ""


@pytest.mark.django_db
def test_a_process_with_no_champion_and_no_outage_reads_the_aliases_once_per_poll(tmp_path, settings, monkeypatch):
    """The retry above is only for a failed read: with no champion registered at all, a prediction
    costs no alias query until the poll interval has passed."""
    import training.selectors
    from decisions.serving import UNTRAINED, policy_server, policy_server_reset

    settings.RLV3_MODEL_POLL_SECONDS = 600.0
    policy_server_reset()
    calls = []
    registry = training.selectors.alias_versions
    monkeypatch.setattr(training.selectors, "alias_versions", lambda: calls.append(1) or registry())
    for _ in range(5):
        assert policy_server().champion().version == UNTRAINED
    assert len(calls) == 1
