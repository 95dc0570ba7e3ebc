from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from decisions.health import healthz
from decisions.metrics import metrics_view

urlpatterns = [
    path("api/v1/rl/v3/", include("decisions.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", staff_member_required(SpectacularSwaggerView.as_view(url_name="schema")), name="swagger-ui"),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),  # django-prometheus's series plus the service's
    path("", include("django_prometheus.urls")),
    path("admin/rlv3/", include("decisions.dashboard")),  # the RL v3 dashboard, inside the admin
    path("admin/", admin.site.urls),
]
