"""The promotion gate, manual promotion and rollback (API and admin), with known validation metrics."""

from __future__ import annotations

import math

import pytest
from django.contrib.messages import get_messages
from hypothesis import given, settings as hsettings, strategies as st

from tests.conftest import token_client
from tests.training.factories import version_with
from training.models import AliasChange, AliasName
from training.selectors import alias_version, alias_versions
from training.services import gate_compare, model_version_gate

API = "/api/v1/rl/v3/"


@pytest.fixture
def gate_settings(settings):
    settings.RLV3_GATE_MAX_DRAWDOWN = 0.25
    settings.RLV3_GATE_MIN_SHARPE_GAIN = 0.1
    return settings


@pytest.mark.django_db
def test_first_version_becomes_champion_then_worse_stays_challenger_and_better_is_promoted(tmp_path, gate_settings):
    first = version_with(tmp_path, sharpe=0.5)
    assert model_version_gate(version=first) is True
    assert alias_versions() == {"champion": first.version}
    first.refresh_from_db()
    assert first.gate_decision.startswith("promoted: first model")

    worse = version_with(tmp_path, sharpe=0.55)  # better, but not by the 0.1 margin
    assert model_version_gate(version=worse) is False
    assert alias_versions() == {"champion": first.version, "challenger": worse.version}
    worse.refresh_from_db()
    assert worse.gate_decision == (
        "kept as challenger: validation Sharpe 0.550 does not beat champion's 0.500 (+0.1) "
        f"(champion v{first.version} on its recorded validation metrics)"
    )

    better = version_with(tmp_path, sharpe=0.9)
    assert model_version_gate(version=better) is True
    assert alias_versions() == {"champion": better.version, "challenger": worse.version}
    changes = list(AliasChange.objects.filter(name=AliasName.CHAMPION).order_by("changed_at", "id").values_list("old_version", "new_version"))
    assert changes == [(None, first.version), (first.version, better.version)]


@pytest.mark.django_db
def test_a_better_sharpe_with_too_deep_a_drawdown_is_not_promoted(tmp_path, gate_settings):
    champion = version_with(tmp_path, sharpe=0.2)
    model_version_gate(version=champion)
    risky = version_with(tmp_path, sharpe=3.0, max_drawdown=0.4)
    assert model_version_gate(version=risky) is False
    assert alias_version(AliasName.CHAMPION).pk == champion.pk
    risky.refresh_from_db()
    assert "max drawdown 0.400 exceeds limit 0.250" in risky.gate_decision


@pytest.mark.django_db
def test_a_nan_sharpe_never_beats_the_champion(tmp_path, gate_settings):
    model_version_gate(version=version_with(tmp_path, sharpe=-5.0))
    broken = version_with(tmp_path, sharpe=math.nan)
    broken.refresh_from_db()
    assert broken.metrics["validation"]["sharpe"] is None  # stored as JSON null, not an invalid NaN
    assert model_version_gate(version=broken) is False


@pytest.mark.django_db
def test_gate_uses_the_champion_re_evaluated_on_the_same_split_only_while_it_is_champion(tmp_path, gate_settings):
    champion = version_with(tmp_path, sharpe=2.0, dataset="googl_1d")  # recorded on another dataset
    model_version_gate(version=champion)
    candidate = version_with(tmp_path, sharpe=0.8)
    # On the candidate's own validation split the champion only reaches 0.3: the candidate wins.
    assert model_version_gate(version=candidate, champion_metrics={"version": champion.version, "sharpe": 0.3}) is True
    candidate.refresh_from_db()
    assert "on the same validation split" in candidate.gate_decision

    # Metrics of a version that is no longer champion are ignored: fall back to the recorded ones.
    late = version_with(tmp_path, sharpe=0.85)
    assert model_version_gate(version=late, champion_metrics={"version": champion.version, "sharpe": -9.0}) is False


@hsettings(max_examples=200, deadline=None)
@given(
    cand=st.floats(-10, 10, allow_nan=False), champ=st.floats(-10, 10, allow_nan=False),
    dd=st.floats(0, 1), margin=st.floats(0, 1), limit=st.floats(0.01, 1),
)
def test_gate_rule_is_sharpe_beyond_margin_within_drawdown_limit(cand, champ, dd, margin, limit):
    from django.conf import settings

    old = settings.RLV3_GATE_MIN_SHARPE_GAIN, settings.RLV3_GATE_MAX_DRAWDOWN
    settings.RLV3_GATE_MIN_SHARPE_GAIN, settings.RLV3_GATE_MAX_DRAWDOWN = margin, limit
    try:
        ok, reason = gate_compare(candidate={"sharpe": cand, "max_drawdown": dd}, champion={"sharpe": champ})
    finally:
        settings.RLV3_GATE_MIN_SHARPE_GAIN, settings.RLV3_GATE_MAX_DRAWDOWN = old
    assert ok == (dd <= limit and cand > champ + margin)
    assert reason


@pytest.mark.django_db
def test_rollback_through_the_api_is_audited(tmp_path, gate_settings, operator):
    old = version_with(tmp_path, sharpe=0.1)
    model_version_gate(version=old)
    new = version_with(tmp_path, sharpe=1.0)
    model_version_gate(version=new)
    response = token_client(operator).post(API + f"models/{old.version}/promote", {"reason": "new one misbehaves"}, format="json")
    assert response.status_code == 200, response.content
    assert alias_version(AliasName.CHAMPION).pk == old.pk
    change = AliasChange.objects.filter(name=AliasName.CHAMPION).first()
    assert (change.old_version, change.new_version, change.changed_by, change.reason) == (
        new.version, old.version, operator, "new one misbehaves"
    )


@pytest.mark.django_db
def test_admin_promote_action_moves_the_champion_for_operators_only(tmp_path, gate_settings, client, superuser, django_user_model):
    champion = version_with(tmp_path, sharpe=1.0)
    model_version_gate(version=champion)
    challenger = version_with(tmp_path, sharpe=0.2)
    model_version_gate(version=challenger)
    url = "/admin/training/modelversion/"
    payload = {"action": "promote_to_champion", "_selected_action": [challenger.pk]}

    staff = django_user_model.objects.create_user(username="staff-no-op", password="pw-123456789", is_staff=True)
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    client.force_login(staff)
    response = client.post(url, payload)
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["operator permission required"]
    assert alias_version(AliasName.CHAMPION).pk == champion.pk

    client.force_login(superuser)
    response = client.post(url, payload)
    assert response.status_code == 302
    assert [str(m) for m in get_messages(response.wsgi_request)][-1] == f"v{challenger.version} is now champion"
    assert alias_versions() == {"champion": challenger.version}  # the challenger alias moved up
    assert AliasChange.objects.filter(name=AliasName.CHAMPION, changed_by=superuser, new_version=challenger.version).exists()
