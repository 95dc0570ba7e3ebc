"""The RL v3 dashboard: permissions and the shadow-mode flow over HTTP, then a real browser.

The browser test drives Debian's Chromium (headless, through Playwright) against pytest-django's
live server, on data made by the real pipeline: two short trainings and a replayed market day
through the streams (tests/decisions/dashboard_data.py). It saves a full-page screenshot; with
RLV3_DASHBOARD_SCREENSHOT=docs/dashboard.png it also updates the README's picture.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from decisions.models import Experience, ShadowModeChange, ShadowModeState
from decisions.services import shadow_mode_state
from tests.decisions.ops_fixtures import private_heartbeats  # noqa: F401 (fixture)
from tests.decisions.stream_helpers import register_model
from training.models import RunStatus, TrainingRun

BASE_DIR = Path(__file__).resolve().parents[2]
DASHBOARD = "/admin/rlv3/"
PASSWORD = "pw-123456789"  # tests/conftest.py's users
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PNG = b"\x89PNG\r\n\x1a\n"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def staff(db, django_user_model):
    """Staff who may look but is not an operator."""
    return django_user_model.objects.create_user(username="watcher", password=PASSWORD, is_staff=True)


@pytest.fixture
def staff_operator(db, django_user_model):
    user = django_user_model.objects.create_user(username="oncall", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="operators"))
    return user


# --- over HTTP ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_index_links_to_the_dashboard_and_it_needs_staff(staff, reader, private_heartbeats):
    assert Client().get(DASHBOARD).status_code == 302  # to the admin login
    assert logged_in(reader).get(DASHBOARD).status_code == 302  # not staff
    index = logged_in(staff).get("/admin/")
    assert b'id="rlv3-dashboard-link"' in index.content and DASHBOARD.encode() in index.content
    page = logged_in(staff).get(DASHBOARD)
    assert page.status_code == 200
    assert b"Only operators can change shadow mode." in page.content and b'id="shadow-form"' not in page.content


@pytest.mark.django_db
def test_only_operators_change_shadow_mode_or_start_training(staff):
    client = logged_in(staff)
    response = client.post(DASHBOARD + "shadow-mode/", {"enabled": "false", "expected": "true", "reason": "x", "confirm": "yes"})
    assert response.status_code == 403
    assert client.post(DASHBOARD + "retrain/").status_code == 403
    assert shadow_mode_state().enabled is True and not ShadowModeChange.objects.exists()
    assert not TrainingRun.objects.exists()


@pytest.mark.django_db
def test_shadow_mode_changes_only_after_confirmation_with_a_reason(staff_operator, private_heartbeats):
    client = logged_in(staff_operator)
    assert b'id="shadow-form"' in client.get(DASHBOARD).content
    # no reason: refused
    response = client.post(DASHBOARD + "shadow-mode/", {"enabled": "false", "expected": "true", "reason": "  "}, follow=True)
    assert b"give a reason" in response.content and shadow_mode_state().enabled is True
    # first step: a confirmation page, nothing changed yet
    confirm = client.post(DASHBOARD + "shadow-mode/", {"enabled": "false", "expected": "true", "reason": "pilot goes live"})
    assert confirm.status_code == 200 and b"Turn shadow mode OFF?" in confirm.content and b"pilot goes live" in confirm.content
    assert shadow_mode_state().enabled is True and not ShadowModeChange.objects.exists()
    # confirmed: changed and audited
    done = client.post(DASHBOARD + "shadow-mode/", {"enabled": "false", "expected": "true", "reason": "pilot goes live", "confirm": "yes"}, follow=True)
    assert b"Shadow mode is now OFF" in done.content
    assert shadow_mode_state().enabled is False
    change = ShadowModeChange.objects.get()
    assert (change.old_value, change.new_value, change.reason, change.via, change.changed_by) == (True, False, "pilot goes live", "admin", staff_operator)
    # a stale page (it expected ON) does nothing
    stale = client.post(DASHBOARD + "shadow-mode/", {"enabled": "false", "expected": "true", "reason": "again", "confirm": "yes"}, follow=True)
    assert b"changed by someone else meanwhile" in stale.content and ShadowModeChange.objects.count() == 1


@pytest.mark.django_db
def test_charts_are_pngs_and_the_equity_curve_is_drawn_once_per_version(staff, settings, private_heartbeats):
    client = logged_in(staff)
    for chart in ("decisions.png", "action-mix.png", "ab.png"):
        response = client.get(DASHBOARD + "charts/" + chart)
        assert response.status_code == 200 and response["Content-Type"] == "image/png"
        assert response.content.startswith(PNG)
    version = register_model(seed=3, alias="champion")
    version.dataset = "googl_1d"
    version.save()
    first = client.get(DASHBOARD + f"charts/equity/v{version.version}.png")
    assert first.status_code == 200 and b"".join(first.streaming_content).startswith(PNG)
    (cached,) = (Path(settings.RLV3_MODEL_DIR) / "charts").glob(f"equity-v{version.version}-*.png")
    stamp = cached.stat().st_mtime_ns
    assert client.get(DASHBOARD + f"charts/equity/v{version.version}.png").status_code == 200
    assert cached.stat().st_mtime_ns == stamp  # served from the cache, not redrawn
    assert client.get(DASHBOARD + "charts/equity/v999.png").status_code == 404


@pytest.mark.django_db
def test_the_page_renders_when_redis_is_down(staff, settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    page = logged_in(staff).get(DASHBOARD)
    assert page.status_code == 200
    assert b"dead letters unavailable (ConnectionError)" in page.content
    assert b"Health: unavailable" in page.content


# --- in a browser -----------------------------------------------------------------------------------


def _playwright():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    return pytest.importorskip("playwright.sync_api")


@pytest.fixture
def dashboard_data(redis_client, stream_prefix, private_heartbeats):
    """Two trained versions, a replayed market day, and a training run that failed."""
    from tests.decisions.dashboard_data import replay_market_day, train_champion_and_challenger
    from training.services import training_run_execute

    champion, challenger = train_champion_and_challenger()
    replayed = replay_market_day(redis_client)
    broken = TrainingRun.objects.create(dataset="recorded:NOBARS", timesteps=2048)
    assert training_run_execute(run_id=broken.pk, worker="dashboard-fixture")["status"] == RunStatus.FAILED
    return {"champion": champion, "challenger": challenger, "replayed": replayed}


@pytest.mark.django_db(transaction=True)
def test_an_operator_uses_the_dashboard_in_chromium(live_server, superuser, dashboard_data, monkeypatch, tmp_path):
    sync_api = _playwright()
    # Playwright's sync API runs an event loop in this thread; the ORM calls below are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    champion, challenger, replayed = dashboard_data["champion"], dashboard_data["challenger"], dashboard_data["replayed"]
    reason = "pilot: go live on GOOGL and EURUSD after the A/B review"
    # The ORM is used only outside the Playwright block: its sync API runs this code in a greenlet
    # with its own context, where Django would open (and leak) a second database connection.
    experiences = Experience.objects.count()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(20_000)
            page.goto(live_server.url + "/admin/login/?next=/admin/")
            page.fill("#id_username", superuser.username)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.click("#rlv3-dashboard-link a")
            page.wait_for_load_state("networkidle")
            assert page.url == live_server.url + DASHBOARD

            # what the page shows
            assert "ON" in page.text_content("#shadow-state")
            models = page.text_content("#models")
            assert f"champion v{champion.version}" in models and f"challenger v{challenger.version}" in models
            assert page.text_content("#kpi-decisions b") == str(replayed.decisions)
            assert page.text_content("#dead-letter-backlog") == str(replayed.dead_letters) == "3"
            assert "invalid:rsi" in page.text_content("#dead-letters") and "pairing" in page.text_content("#dead-letters")
            assert "GOOGL" in page.text_content("#action-mix") and "EURUSD" in page.text_content("#action-mix")
            assert page.text_content("#ab-agreement").endswith("%")
            assert page.locator("#training-runs tr.run-succeeded").count() == 2
            assert page.locator("#training-runs tr.run-failed").count() == 1
            assert "alive" in page.text_content("#subscriber")
            # every chart arrived and is a real picture
            sizes = page.eval_on_selector_all("img.chart", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.id || i.alt])")
            assert len(sizes) >= 6 and all(done and width > 200 for done, width, _ in sizes), sizes
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes().startswith(PNG)

            # the experience list
            page.goto(live_server.url + "/admin/decisions/experience/")
            rows = page.locator("#result_list tbody tr").count()
            assert rows == min(50, experiences) and experiences == replayed.closes > 0  # 50 rows a page

            # toggle shadow mode with a reason and a confirmation
            page.goto(live_server.url + DASHBOARD)
            page.fill("#shadow-reason", reason)
            page.click("#shadow-form input[type=submit]")
            assert page.text_content("#confirm-question") == "Turn shadow mode OFF?"
            assert page.text_content("#confirm-reason") == reason
            page.click("#confirm-button")
            page.wait_for_url(live_server.url + DASHBOARD)
            assert "Shadow mode is now OFF" in page.text_content("ul.messagelist")
            assert "OFF" in page.text_content("#shadow-state")
            first_change = page.text_content("#shadow-changes tbody tr:first-child")
            assert reason in first_change and superuser.username in first_change and "admin" in first_change
            page.wait_for_load_state("networkidle")  # no request still running when the server stops
        finally:
            browser.close()

    assert ShadowModeState.objects.get().enabled is False
    change = ShadowModeChange.objects.get()  # one change: the confirmation page itself changed nothing
    assert (change.new_value, change.reason, change.via, change.changed_by_id) == (False, reason, "admin", superuser.pk)
    target = os.environ.get("RLV3_DASHBOARD_SCREENSHOT")
    if target:
        shutil.copyfile(shot, BASE_DIR / target)
