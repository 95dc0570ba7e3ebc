from django.urls import path

from . import views, views_ab

app_name = "rlv3"

urlpatterns = [
    path("predict", views.PredictView.as_view(), name="predict"),
    path("train", views.TrainView.as_view(), name="train"),
    path("status", views.StatusView.as_view(), name="status"),
    path("experiences", views.ExperienceListView.as_view(), name="experiences"),
    path("shadow_mode", views.ShadowModeView.as_view(), name="shadow-mode"),
    path("decisions", views.DecisionListView.as_view(), name="decisions"),
    path("models", views.ModelListView.as_view(), name="models"),
    path("models/<str:version>/promote", views.PromoteView.as_view(), name="model-promote"),
    path("training-runs/<str:pk>", views.TrainingRunDetailView.as_view(), name="training-run-detail"),
    path("ab-report", views_ab.ABReportView.as_view(), name="ab-report"),
]
