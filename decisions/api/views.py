"""Thin REST views: validate, call a service or selector, serialise. Contract: CONTRACTS section 5."""

from __future__ import annotations

import logging

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from decisions import metrics, selectors, services
from decisions.api import serializers as s
from decisions.api.errors import error_response
from decisions.api.fastpath import PREDICT_SCOPE, fast_predict
from decisions.api.filters import DecisionFilter, ExperienceFilter
from decisions.api.pagination import CursorPagination
from decisions.api.schema import predict_request_schema, predict_response_schema
from decisions.api.parsers import JSONAsFormParser, StrictJSONParser
from decisions.api.permissions import IsOperator
from decisions.models import Experience
from decisions.serving import policy_server
from training import selectors as training_selectors
from training import services as training_services
from training.models import TrainingRun
from training.rl.features import FEATURE_SPEC_VERSION

log = logging.getLogger(__name__)

PARSERS = [StrictJSONParser, JSONAsFormParser]
ERROR = inline_serializer("Error", {"error": serializers.CharField(), "field": serializers.CharField(allow_null=True, required=False)})
BAD_REQUEST = OpenApiResponse(ERROR, description="Invalid input; `field` names the offending field.")
AUTH_ERRORS = {401: OpenApiResponse(ERROR, description="Not authenticated."), 403: OpenApiResponse(ERROR, description="Operator permission required.")}
# Every write can meet the body-size limit (rlv3site.middleware_limits); predict and train are
# throttled per token (decisions.api.throttling, rates in settings).
LIMIT_ERRORS = {413: OpenApiResponse(ERROR, description="Body larger than the configured limit (RLV3_MAX_BODY_BYTES).")}
THROTTLED = {429: OpenApiResponse(ERROR, description="Too many requests for this token; retry after Retry-After seconds.")}
NOT_FOUND = OpenApiResponse(ERROR, description="No such object.")


def _bool_param(value: str | None, field: str) -> bool:
    text = (value or "").strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise serializers.ValidationError({field: [f"must be true or false, got {value!r}"]})


class PredictView(APIView):
    parser_classes = PARSERS
    throttle_scope = PREDICT_SCOPE

    def dispatch(self, request, *args, **kwargs):
        # The common well-formed call is answered without DRF's machinery (decisions.api.fastpath);
        # anything else takes DRF's dispatch and gets its usual answer.
        response = fast_predict(self, request)
        if response is None:
            response = super().dispatch(request, *args, **kwargs)
        return response

    @extend_schema(
        summary="Decide for one observation or a batch",
        description="Body: one observation (every field optional, seed defaults) or `{\"observations\": [...]}` "
        f"with up to {settings.RLV3_MAX_BATCH}. Each decision is stored.",
        request={"application/json": predict_request_schema()},
        responses={200: OpenApiResponse(predict_response_schema()), 400: BAD_REQUEST, **AUTH_ERRORS, **LIMIT_ERRORS, **THROTTLED},
    )
    @metrics.predict_timed("api")
    def post(self, request):
        data = request.data
        if not isinstance(data, dict):
            return error_response("body must be a JSON object", status_code=400, field="__root__")
        if "observations" in data:
            payload = s.PredictBatchSerializer(data=data)
            payload.is_valid(raise_exception=True)
            decisions = services.decisions_predict(observations=payload.validated_data["observations"])
            return Response(decisions.answers)
        obs = s.ObservationSerializer(data=data)
        obs.is_valid(raise_exception=True)
        (answer,) = services.decisions_predict(observations=[obs.validated_data]).answers
        return Response(answer)


class TrainView(APIView):
    parser_classes = PARSERS
    throttle_scope = "train"
    permission_classes = [IsOperator]

    @extend_schema(
        summary="Queue a training run",
        parameters=[s.TrainQuerySerializer],
        request={"application/json": s.TrainRequestSerializer},
        responses={
            202: s.TrainAcceptedSerializer,
            400: BAD_REQUEST,
            409: OpenApiResponse(inline_serializer("TrainConflict", {"error": serializers.CharField(), "run_id": serializers.IntegerField(), "url": serializers.CharField()})),
            503: OpenApiResponse(ERROR, description="The task queue is unavailable."),
            **AUTH_ERRORS,
            **LIMIT_ERRORS,
            **THROTTLED,
        },
    )
    def post(self, request):
        data = request.data
        if not isinstance(data, dict):
            return error_response("body must be a JSON object", status_code=400, field="__root__")
        merged = dict(data)
        # A plain dict: with a QueryDict, DRF reads an empty optional value as "not given".
        query = s.TrainQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        if "num_episodes" in query.validated_data:
            merged.setdefault("num_episodes", query.validated_data["num_episodes"])
        req = s.TrainRequestSerializer(data=merged)
        req.is_valid(raise_exception=True)
        v = req.validated_data
        from training.datasets import dataset_is_known

        dataset = v.get("dataset") or settings.RLV3_DEFAULT_DATASET
        if not dataset_is_known(dataset):
            return error_response(
                f"unknown dataset {dataset!r}: use a bundled name (eurusd_1h, googl_1d) or recorded:SYMBOL",
                status_code=400, field="dataset",
            )
        timesteps = v.get("timesteps") or (v["num_episodes"] * 512 if "num_episodes" in v else settings.RLV3_DEFAULT_TIMESTEPS)
        timesteps = max(1_000, min(timesteps, 50_000_000))
        try:
            run = training_services.training_run_submit(
                dataset=dataset, timesteps=timesteps, seed=v["seed"], seeds=v.get("seeds"), user=request.user
            )
        except training_services.TrainingRunActive as exc:
            url = reverse("rlv3:training-run-detail", args=[exc.run.pk])
            return error_response(str(exc), status_code=409, run_id=exc.run.pk, url=url)
        except training_services.QueueUnavailable as exc:
            return error_response(str(exc), status_code=503)
        url = reverse("rlv3:training-run-detail", args=[run.pk])
        return Response(
            {"id": run.pk, "url": url, "status": run.status, "dataset": run.dataset, "timesteps": run.timesteps},
            status=status.HTTP_202_ACCEPTED, headers={"Location": url},
        )


class StatusView(APIView):
    @extend_schema(summary="Service status", responses={200: s.StatusSerializer, **AUTH_ERRORS})
    def get(self, request):
        served = policy_server().describe()
        aliases = training_selectors.alias_versions()
        last = training_selectors.training_run_latest()
        subscriber = selectors.subscriber_health()
        body = {
            "active": subscriber["alive"],
            "shadow_mode": services.shadow_mode_state().enabled,
            "model_loaded": served["model_loaded"],
            "experiences_collected": selectors.table_count(Experience),
            "decisions_total": selectors.table_count(selectors.Decision),
            "model_path": served["model_path"] or str(settings.RLV3_MODEL_DIR / "ppo_model.pt"),
            "served_version": served["served_version"],
            "champion_version": aliases.get("champion"),
            "challenger_version": aliases.get("challenger"),
            "load_error": served["load_error"],
            "feature_spec_version": FEATURE_SPEC_VERSION,
            "last_training_run": (
                {"id": last.pk, "status": last.status, "progress": last.progress, "dataset": last.dataset,
                 "created_at": last.created_at.isoformat(), "url": reverse("rlv3:training-run-detail", args=[last.pk])}
                if last else None
            ),
            "subscriber": subscriber,
        }
        return Response(body)


class ShadowModeView(APIView):
    parser_classes = PARSERS
    permission_classes = [IsOperator]

    @extend_schema(
        summary="Turn shadow mode on or off (persisted and audited)",
        # The seed's `?enabled=true|false[&reason=...]` with no body is also accepted. It is described
        # rather than declared: OpenAPI cannot say "enabled in the body or in the query".
        description="Body `{\"enabled\": true|false, \"reason\": \"...\"}`. Seed compatibility: "
        "`?enabled=true|false` (and `&reason=`) with no body does the same.",
        request={"application/json": s.ShadowModeRequestSerializer},
        responses={200: s.ShadowModeResponseSerializer, 400: BAD_REQUEST, **AUTH_ERRORS, **LIMIT_ERRORS},
    )
    def post(self, request):
        data = request.data
        if not isinstance(data, dict):
            return error_response("body must be a JSON object", status_code=400, field="__root__")
        merged = dict(data)
        if "enabled" in request.query_params and "enabled" not in merged:
            merged["enabled"] = _bool_param(request.query_params["enabled"], "enabled")
        if "reason" in request.query_params and "reason" not in merged:
            merged["reason"] = request.query_params["reason"]
        req = s.ShadowModeRequestSerializer(data=merged)
        req.is_valid(raise_exception=True)
        change = services.shadow_mode_set(enabled=req.validated_data["enabled"], user=request.user, reason=req.validated_data["reason"])
        return Response({"shadow_mode": change.new_value, "previous": change.old_value, "change": s.ShadowModeChangeSerializer(change).data})


class DecisionListView(generics.ListAPIView):
    serializer_class = s.DecisionSerializer
    filterset_class = DecisionFilter
    pagination_class = CursorPagination

    def get_queryset(self):
        return selectors.decision_list()

    @extend_schema(summary="Stored decisions, newest first", responses={200: s.DecisionSerializer(many=True), 400: BAD_REQUEST, 404: OpenApiResponse(ERROR, description="Invalid cursor."), **AUTH_ERRORS})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class ExperiencePagination(CursorPagination):
    ordering = ("-closed_at", "-id")


class ExperienceListView(generics.ListAPIView):
    serializer_class = s.ExperienceSerializer
    filterset_class = ExperienceFilter
    pagination_class = ExperiencePagination

    def get_queryset(self):
        return selectors.experience_list()

    @extend_schema(summary="Experiences (decision + realised outcome), newest first", responses={200: s.ExperienceSerializer(many=True), 400: BAD_REQUEST, 404: OpenApiResponse(ERROR, description="Invalid cursor."), **AUTH_ERRORS})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class ModelListView(generics.ListAPIView):
    serializer_class = s.ModelVersionSerializer
    pagination_class = None

    def get_queryset(self):
        return training_selectors.model_version_list()

    @extend_schema(summary="Registered model versions with their aliases and metrics")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class PromoteView(APIView):
    parser_classes = PARSERS
    permission_classes = [IsOperator]

    @extend_schema(
        summary="Make a version the champion (promotion or rollback, audited)",
        parameters=[OpenApiParameter("version", str, OpenApiParameter.PATH, description="Version number (3 or v3) or alias (champion, challenger).")],
        request={"application/json": s.PromoteRequestSerializer},
        responses={200: s.ModelVersionSerializer, 400: BAD_REQUEST, 404: NOT_FOUND, **AUTH_ERRORS, **LIMIT_ERRORS},
    )
    def post(self, request, version: str):
        data = request.data
        if not isinstance(data, dict):
            return error_response("body must be a JSON object", status_code=400, field="__root__")
        req = s.PromoteRequestSerializer(data=data)
        req.is_valid(raise_exception=True)
        try:
            target = training_selectors.model_version_resolve(version)
        except training_selectors.ModelNotFound as exc:
            return error_response(str(exc), status_code=404, field="version")
        training_services.model_version_promote(version=target, user=request.user, reason=req.validated_data["reason"] or f"promoted by {request.user.username} via API")
        policy_server().refresh()
        target.refresh_from_db()
        return Response(s.ModelVersionSerializer(training_selectors.model_version_list().get(pk=target.pk)).data)


class TrainingRunDetailView(generics.RetrieveAPIView):
    serializer_class = s.TrainingRunSerializer
    queryset = TrainingRun.objects.select_related("requested_by").prefetch_related("model_versions")

    @extend_schema(summary="One training run: status, progress, metrics", responses={200: s.TrainingRunSerializer, 404: NOT_FOUND, **AUTH_ERRORS})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)
