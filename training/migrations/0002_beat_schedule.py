"""Create the nightly-retraining periodic task (cron from RLV3_RETRAIN_CRON) and the run sweeper.

Both are django-celery-beat rows, visible and editable in the admin; later migrations and
`rlv3_setup` never overwrite an edited schedule.
"""

from django.db import migrations


def create_schedule(apps, schema_editor):
    from training.services import beat_schedule_ensure

    beat_schedule_ensure(apps=apps)


def remove_schedule(apps, schema_editor):
    from training.services import NIGHTLY_TASK_NAME, SWEEPER_TASK_NAME

    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[NIGHTLY_TASK_NAME, SWEEPER_TASK_NAME]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
