"""The Celery app. Configuration lives in settings (CELERY_* keys)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlv3site.settings")

app = Celery("rlv3site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
