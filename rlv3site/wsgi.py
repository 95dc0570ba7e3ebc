import os

from django.core.wsgi import get_wsgi_application
from django.urls import reverse

from rlv3site.memory import freeze_startup_objects, keep_freed_memory

keep_freed_memory()  # before the first request: freed blocks stay in the worker for the next one

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlv3site.settings")
django_application = get_wsgi_application()

# After Django is set up: a well-formed predict call is answered before Django's request handling.
from decisions.api.fastpath import PredictWSGI  # noqa: E402

application = PredictWSGI(django_application)
# The URLconf, and the views, serializers and schema code it imports, load now rather than in the
# first request each worker serves, and are frozen with the rest.
reverse("rlv3:predict")
freeze_startup_objects()  # last: everything loaded so far lives as long as the worker
