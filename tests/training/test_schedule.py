"""The nightly retraining schedule: created by the migration, visible and editable in the admin."""

from __future__ import annotations

import pytest
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from training.services import NIGHTLY_TASK_NAME, SWEEPER_TASK_NAME, beat_schedule_ensure, cron_fields, nightly_schedule_ensure


@pytest.mark.django_db
def test_migrate_creates_the_nightly_task_from_the_cron_setting_and_the_sweeper(settings):
    nightly = PeriodicTask.objects.get(name=NIGHTLY_TASK_NAME)
    assert nightly.task == "training.tasks.retrain_nightly" and nightly.enabled
    cron = nightly.crontab
    expected = cron_fields(settings.RLV3_RETRAIN_CRON)
    assert {k: getattr(cron, k) for k in expected} == expected
    assert str(cron.timezone) == "UTC"
    sweeper = PeriodicTask.objects.get(name=SWEEPER_TASK_NAME)
    assert sweeper.task == "training.tasks.sweep_training_runs"
    assert (sweeper.interval.every, sweeper.interval.period) == (60, "seconds")
    assert sweeper.expire_seconds == 60


@pytest.mark.django_db
def test_ensure_is_idempotent_and_keeps_an_admin_edit(settings):
    nightly = PeriodicTask.objects.get(name=NIGHTLY_TASK_NAME)
    edited, _ = CrontabSchedule.objects.get_or_create(minute="30", hour="4", day_of_week="1-5", timezone="UTC")
    nightly.crontab = edited
    nightly.save()
    settings.RLV3_RETRAIN_CRON = "15 1 * * *"  # only the initial value: the admin owns it afterwards
    description = nightly_schedule_ensure()
    assert nightly_schedule_ensure() == description
    assert PeriodicTask.objects.filter(name=NIGHTLY_TASK_NAME).count() == 1
    assert PeriodicTask.objects.get(name=NIGHTLY_TASK_NAME).crontab_id == edited.pk
    assert "30 4 * * 1-5 (UTC)" in description and "enabled" in description


@pytest.mark.django_db
def test_a_deleted_schedule_is_recreated_from_the_setting(settings):
    PeriodicTask.objects.filter(name=NIGHTLY_TASK_NAME).delete()
    settings.RLV3_RETRAIN_CRON = "15 1 * * 0"
    assert "training.tasks.retrain_nightly at 15 1 * * 0 (UTC), enabled" in nightly_schedule_ensure()


def test_a_malformed_cron_is_refused_with_the_setting_name():
    with pytest.raises(ValueError, match=r"RLV3_RETRAIN_CRON must have five fields .* got '0 2 \* \*'"):
        cron_fields("0 2 * *")


@pytest.mark.django_db
def test_the_schedule_is_listed_in_the_admin(admin_client):
    response = admin_client.get("/admin/django_celery_beat/periodictask/")
    assert response.status_code == 200
    page = response.content.decode()
    assert NIGHTLY_TASK_NAME in page and SWEEPER_TASK_NAME in page
    nightly = PeriodicTask.objects.get(name=NIGHTLY_TASK_NAME)
    change = admin_client.get(f"/admin/django_celery_beat/periodictask/{nightly.pk}/change/")
    assert change.status_code == 200 and "training.tasks.retrain_nightly" in change.content.decode()


@pytest.mark.django_db
def test_beat_schedule_ensure_returns_the_existing_rows():
    first = beat_schedule_ensure()
    assert [t.pk for t in beat_schedule_ensure()] == [t.pk for t in first]
