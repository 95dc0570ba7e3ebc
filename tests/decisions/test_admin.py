"""The admin: every RL v3 list renders with filters, search and the date hierarchy; history is read-only."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from decisions.models import Decision, DecisionSource, Experience, MarketBar

pytestmark = pytest.mark.django_db

LISTS = [
    "/admin/decisions/decision/", "/admin/decisions/experience/", "/admin/decisions/marketbar/",
    "/admin/decisions/shadowmodechange/", "/admin/decisions/shadowmodestate/", "/admin/training/modelversion/",
    "/admin/training/modelalias/", "/admin/training/aliaschange/", "/admin/training/trainingrun/",
]


@pytest.fixture
def rows():
    now = timezone.now()
    made = []
    for i, symbol in enumerate(["BTCUSDT", "ETHUSDT", "BTCUSDT"]):
        d = Decision.objects.create(
            symbol=symbol, observation={"rsi": 40 + i, "symbol": symbol}, features=[0.0] * 64, action=i,
            probabilities=[0.5, 0.1, 0.1, 0.1, 0.1, 0.1], confidence=0.5, value=0.1, model_version="untrained",
            shadow_mode=True, source=DecisionSource.STREAM, stream_entry_id=f"1-{i}", correlation_id=f"corr-{i}",
            created_at=now - dt.timedelta(days=40 * i),
        )
        Experience.objects.create(
            decision=d, symbol=symbol, observation=d.observation, action=d.action, behaviour_probabilities=d.probabilities,
            model_version="untrained", reward=0.01, pnl=5.0, roi=0.5, position_id=f"pos-{i}", closed_at=d.created_at,
        )
        made.append(d)
    MarketBar.objects.create(symbol="BTCUSDT", time=now.replace(second=0, microsecond=0), open=1, high=2, low=0.5, close=1.5)
    return made


@pytest.mark.parametrize("url", LISTS)
def test_every_list_renders(admin_client, rows, url):
    assert admin_client.get(url).status_code == 200


def test_exact_search_and_filters(admin_client, rows):
    page = admin_client.get("/admin/decisions/experience/", {"q": "btcusdt"}).content.decode()
    assert page.count("pos-") == 2 and "pos-1" not in page
    page = admin_client.get("/admin/decisions/decision/", {"q": str(rows[1].decision_id)}).content.decode()
    assert "ETHUSDT" in page and "BTCUSDT" not in page.split("result_list")[-1]
    page = admin_client.get("/admin/decisions/decision/", {"q": "corr-2"}).content.decode()
    assert "1 decision" in page
    assert admin_client.get("/admin/decisions/decision/", {"model_version": "untrained", "action__exact": "1"}).status_code == 200


def test_date_hierarchy_drills_down_without_distinct_scans(admin_client, rows, django_assert_max_num_queries):
    year = rows[0].created_at.year
    page = admin_client.get("/admin/decisions/decision/").content.decode()
    assert f"created_at__year={year}" in page
    month = rows[0].created_at.month
    page = admin_client.get("/admin/decisions/decision/", {"created_at__year": year, "created_at__month": month}).content.decode()
    assert "created_at__day=" in page


def test_history_cannot_be_added_or_edited(admin_client, rows):
    assert admin_client.get("/admin/decisions/decision/add/").status_code == 403
    detail = admin_client.get(f"/admin/decisions/decision/{rows[0].pk}/change/")
    assert detail.status_code == 200
    assert "&quot;rsi&quot;: 40" in detail.content.decode() or '"rsi": 40' in detail.content.decode()
    response = admin_client.post(f"/admin/decisions/decision/{rows[0].pk}/change/", {"symbol": "HACKED"})
    assert response.status_code == 403
    rows[0].refresh_from_db()
    assert rows[0].symbol == "BTCUSDT"
