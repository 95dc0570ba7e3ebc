"""The RL v3 dashboard in the admin (``/admin/rlv3/``): what the agent does and whether anything is wrong.

One page for staff: shadow mode (operators toggle it with a reason and a confirmation step),
champion and challenger validation metrics side by side, decisions per minute and the action mix
per symbol over 24 h, the champion's backtest equity curve against buy-and-hold, recent training
runs (operators can start one), the champion-vs-challenger A/B report, dead letters, the
subscriber's heartbeat and lag, and the readiness checks. Charts are PNGs rendered here
(decisions.charts); the equity curve is cached on disk per model version.

Reads only, except the two operator forms, which call decisions.services.shadow_mode_set and
training.services.training_run_submit. A store that is down blanks its panels, never the page.
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count
from django.db.models.functions import TruncMinute
from django.http import FileResponse, Http404, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.views.decorators.http import require_POST

from training.rl.actions import ACTION_NAMES

from . import charts, health, selectors, services
from .api.permissions import is_operator
from .metrics import dead_letter_counts_key, dead_letter_reason
from .models import Decision, ModelRole, ShadowModeChange

log = logging.getLogger(__name__)

WINDOW = timedelta(hours=24)
BUCKET_MINUTES = 10
AB_WINDOW = timedelta(days=7)
TOP_SYMBOLS = 12
RECENT_RUNS = 10
RECENT_DEAD_LETTERS = 10
PNG_CACHE_SECONDS = 30
# (metrics key, label, format) of the side-by-side model table.
METRIC_ROWS = (
    ("total_return", "total return", "pct"),
    ("sharpe", "Sharpe (annualised)", "num"),
    ("sortino", "Sortino (annualised)", "num"),
    ("max_drawdown", "max drawdown", "pct"),
    ("n_trades", "trades", "int"),
    ("fees_paid", "fees paid", "money"),
    ("bars", "bars", "int"),
)


def _fmt(value, kind: str) -> str:
    if value is None:
        return "—"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return {"pct": f"{number:+.2%}", "num": f"{number:.3f}", "int": f"{int(number):,}", "money": f"{number:,.2f}"}[kind]


# --- panels -------------------------------------------------------------------------------------


def _champion_decisions(since: datetime):
    # Challenger decisions are the A/B shadow scoring, not decisions anyone acts on.
    return Decision.objects.filter(role=ModelRole.CHAMPION, created_at__gte=since)


def activity_mix(now: datetime) -> tuple[dict[str, dict[str, int]], int]:
    """({symbol: {action: count}} of the top symbols (the rest as "other"), total) over the window."""
    totals: dict[str, dict[str, int]] = {}
    for row in _champion_decisions(now - WINDOW).values("symbol", "action").annotate(n=Count("pk")):
        totals.setdefault(row["symbol"] or "(no symbol)", {})[ACTION_NAMES[row["action"]]] = row["n"]
    ranked = sorted(totals, key=lambda s: -sum(totals[s].values()))
    mix = {s: totals[s] for s in ranked[:TOP_SYMBOLS]}
    for s in ranked[TOP_SYMBOLS:]:
        other = mix.setdefault("other", {})
        for action, n in totals[s].items():
            other[action] = other.get(action, 0) + n
    return mix, sum(sum(c.values()) for c in totals.values())


def activity_panel(now: datetime) -> dict:
    mix, total = activity_mix(now)
    rows = [{"symbol": s, "total": sum(c.values()), "actions": [c.get(n, 0) for n in ACTION_NAMES]} for s, c in mix.items()]
    return {"total": total, "per_minute": total / (WINDOW.total_seconds() / 60), "mix": rows}


def decisions_per_minute(now: datetime) -> tuple[list[datetime], dict[str, list[float]]]:
    """Bucket starts over the window and, per action, champion decisions per minute in each bucket
    (the mean over BUCKET_MINUTES: one-minute bars are unreadable across a day)."""
    bucket = timedelta(minutes=BUCKET_MINUTES)
    end = now.replace(minute=now.minute - now.minute % BUCKET_MINUTES, second=0, microsecond=0) + bucket
    start = end - WINDOW
    starts = [start + i * bucket for i in range(int(WINDOW / bucket))]
    rates = {name: [0.0] * len(starts) for name in ACTION_NAMES}
    rows = _champion_decisions(start).annotate(minute=TruncMinute("created_at")).values("minute", "action").annotate(n=Count("pk"))
    for row in rows:
        i = int((row["minute"] - start) / bucket)
        if 0 <= i < len(starts):
            rates[ACTION_NAMES[row["action"]]][i] += row["n"] / BUCKET_MINUTES
    return starts, rates


def models_panel() -> dict:
    """Champion and challenger with their validation metrics side by side (and buy-and-hold)."""
    from training.models import AliasName
    from training.selectors import alias_version

    champion, challenger = alias_version(AliasName.CHAMPION), alias_version(AliasName.CHALLENGER)

    def validation(version):
        return ((version.metrics or {}).get("validation") or {}) if version else {}

    baseline = (validation(champion).get("baselines") or {}).get("buy_and_hold") or {}
    rows = [
        {"label": label, "champion": _fmt(validation(champion).get(key), kind),
         "challenger": _fmt(validation(challenger).get(key), kind), "buy_and_hold": _fmt(baseline.get(key), kind)}
        for key, label, kind in METRIC_ROWS
    ]
    return {"champion": champion, "challenger": challenger, "rows": rows}


def training_runs_panel() -> list[dict]:
    from training.models import TrainingRun
    from training.services import run_curve_path

    runs = []
    for run in TrainingRun.objects.filter(parent__isnull=True).select_related("requested_by")[:RECENT_RUNS]:
        took = (run.finished_at or timezone.now()) - run.started_at if run.started_at else None
        runs.append({
            "run": run, "progress": round(run.progress, 1), "took": str(took).split(".")[0] if took else "—",
            "version": (run.metrics or {}).get("version"),
            "has_curve": bool(run.curve) or run_curve_path(run.pk).is_file(),
        })
    return runs


def dead_letters_panel() -> dict:
    """Backlog, counts by reason since the start, and the latest dead letters."""
    from .streams import codec

    client = selectors.redis_client()
    key = codec.stream_key(codec.DEAD_LETTER, settings.RLV3_STREAM_PREFIX)
    latest = []
    for dead_id, fields in client.xrevrange(key, count=RECENT_DEAD_LETTERS):
        try:
            letter = codec.decode_dead_letter(fields)
        except (codec.WireError, KeyError, TypeError):
            continue
        moment = datetime.fromtimestamp(int(dead_id.split("-", 1)[0]) / 1000, tz=timezone.get_current_timezone())
        latest.append({"id": dead_id, "time": moment, "stream": letter.stream.removeprefix(settings.RLV3_STREAM_PREFIX),
                       "reason": dead_letter_reason(letter.error), "error": letter.error})
    by_reason: dict[str, int] = {}
    for field, n in client.hgetall(dead_letter_counts_key()).items():
        reason = field.rpartition("|")[2]
        by_reason[reason] = by_reason.get(reason, 0) + int(n)
    return {"backlog": client.xlen(key), "latest": latest, "by_reason": sorted(by_reason.items(), key=lambda kv: -kv[1])}


def ab_panel(now: datetime) -> dict | None:
    from .ab import ab_report

    report = ab_report(since=now - AB_WINDOW)
    if not report["comparisons"]:
        return None
    latest = report["comparisons"][0]
    outcomes = latest["outcomes"]
    return {
        **latest, "agreement_pct": f"{latest['agreement_rate']:.1%}",
        "actions": [{"name": n, "champion": latest["champion_actions"][n], "challenger": latest["challenger_actions"][n]} for n in ACTION_NAMES],
        "outcome_rows": [{"label": label, **outcomes[key]} for key, label in (
            ("champion", "champion (realised)"), ("challenger_estimate", "challenger (estimated)"),
            ("when_agreed", "when they agreed"), ("when_disagreed", "when they disagreed"))],
    }


def _panel(name: str, produce, *args):
    """A panel's data, or {"error": ...} when its store is down (the page still renders)."""
    try:
        return produce(*args)
    except Exception as exc:
        log.warning("dashboard panel %s unavailable: %s", name, exc)
        return {"error": f"{name} unavailable ({exc.__class__.__name__})"}


def dashboard_context(request) -> dict:
    now = timezone.now()
    state = services.shadow_mode_state()
    return {
        **admin.site.each_context(request),
        "title": "RL v3 dashboard",
        "now": now,
        "operator": is_operator(request.user),
        "shadow": state,
        "shadow_changes": ShadowModeChange.objects.select_related("changed_by")[:5],
        "readiness": health.readiness(),
        "models": models_panel(),
        "activity": _panel("activity", activity_panel, now),
        "action_names": ACTION_NAMES,
        "action_colors": [charts.ACTION_COLORS[n] for n in ACTION_NAMES],
        "ab": _panel("A/B report", ab_panel, now),
        "runs": training_runs_panel(),
        "dead": _panel("dead letters", dead_letters_panel),
        "subscriber": selectors.subscriber_health(),
        "subscriber_max_age": settings.RLV3_SUBSCRIBER_MAX_AGE_SECONDS,
        "default_dataset": settings.RLV3_DEFAULT_DATASET,
        "default_timesteps": settings.RLV3_DEFAULT_TIMESTEPS,
    }


# --- views ----------------------------------------------------------------------------------------


def dashboard_view(request):
    return render(request, "admin/rlv3/dashboard.html", dashboard_context(request))


def _parse_enabled(value: str | None) -> bool | None:
    return {"true": True, "false": False}.get((value or "").lower())


@require_POST
def shadow_mode_view(request):
    """Two steps: the form's POST shows what will change and asks to confirm; ``confirm=yes`` applies.

    ``expected`` is the state the operator saw: if someone changed it meanwhile nothing is done, so
    two operators acting on one stale page cannot flip it back and forth.
    """
    if not is_operator(request.user):
        return HttpResponseForbidden("operator permission required to change shadow mode")
    enabled = _parse_enabled(request.POST.get("enabled"))
    reason = (request.POST.get("reason") or "").strip()[:1000]
    current = services.shadow_mode_state().enabled
    if enabled is None:
        messages.error(request, "shadow mode: choose on or off")
        return redirect("rlv3_dashboard:index")
    if not reason:
        messages.error(request, "shadow mode was not changed: give a reason")
        return redirect("rlv3_dashboard:index")
    if request.POST.get("confirm") != "yes":
        return render(request, "admin/rlv3/shadow_mode_confirm.html", {
            **admin.site.each_context(request), "title": "Confirm the shadow-mode change",
            "enabled": enabled, "current": current, "reason": reason,
        })
    if _parse_enabled(request.POST.get("expected")) != current:
        messages.warning(request, f"shadow mode was changed by someone else meanwhile (it is now {'on' if current else 'off'}); nothing done")
        return redirect("rlv3_dashboard:index")
    services.shadow_mode_set(enabled=enabled, user=request.user, reason=reason, via="admin")
    messages.success(request, f"shadow mode is now {'ON: decisions are recorded, not acted on' if enabled else 'OFF: decisions are acted on'}")
    return redirect("rlv3_dashboard:index")


@require_POST
def retrain_view(request):
    """Queue a training run on the default dataset (operators); the gate decides about promotion."""
    from training import services as training_services

    if not is_operator(request.user):
        return HttpResponseForbidden("operator permission required to start training")
    try:
        run = training_services.training_run_submit(
            dataset=settings.RLV3_DEFAULT_DATASET, timesteps=settings.RLV3_DEFAULT_TIMESTEPS, user=request.user,
        )
    except training_services.TrainingRunActive as exc:
        messages.warning(request, str(exc))
    except training_services.QueueUnavailable as exc:
        messages.error(request, f"training not started: {exc}")
    else:
        messages.success(request, f"training run {run.pk} queued ({run.dataset}, {run.timesteps:,} steps)")
    return redirect("rlv3_dashboard:index")


def _png_response(data: bytes) -> HttpResponse:
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = f"private, max-age={PNG_CACHE_SECONDS}"
    return response


def decisions_chart_view(request):
    minutes, counts = decisions_per_minute(timezone.now())
    return _png_response(charts.decisions_per_minute_png(minutes, counts, title=f"champion decisions per minute ({BUCKET_MINUTES}-minute means), last 24 h (UTC)"))


def action_mix_chart_view(request):
    mix, _ = activity_mix(timezone.now())
    return _png_response(charts.action_mix_png(mix, title="action mix per symbol, last 24 h"))


def ab_chart_view(request):
    panel = ab_panel(timezone.now())
    if panel is None:
        return _png_response(charts.ab_actions_png({}, {}, title="champion vs challenger"))
    title = f"actions on the same {panel['signals']:,} signals: champion v{panel['champion_version']} vs challenger v{panel['challenger_version']}"
    return _png_response(charts.ab_actions_png(panel["champion_actions"], panel["challenger_actions"], title=title))


def chart_cache_dir() -> Path:
    directory = Path(settings.RLV3_MODEL_DIR) / "charts"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _write_atomic(path: Path, render) -> None:
    """``render(tmp_path)`` then rename over ``path``: a concurrent reader never sees half a PNG."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        render(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def equity_chart_path(version) -> Path:
    """The cached PNG of a version's backtest on its dataset's held-out split against buy-and-hold.

    Drawn on first request and kept per version and artifact hash (a version never changes, so the
    cache never goes stale); the backtest takes seconds, so it is never redone per page view.
    """
    path = chart_cache_dir() / f"equity-v{version.version}-{version.runtime_sha256[:12]}.png"
    if path.is_file():
        return path
    from training.datasets import dataset_load
    from training.rl.data import default_split
    from training.rl.evaluate import backtest, buy_and_hold
    from training.rl.inference import PolicyRuntime
    from training.rl.plotting import plot_equity_curves

    runtime = PolicyRuntime.load(version.runtime_path, expected_sha256=version.runtime_sha256)
    data = dataset_load(version.dataset or settings.RLV3_DEFAULT_DATASET)
    split = default_split(data.name) if not data.name.startswith("recorded:") else "all"
    policy = backtest(lambda vector: runtime.predict_vector(vector).action_code, data, split)
    market = buy_and_hold(data, split)
    title = f"v{version.version} on {data.name} ({split} split, {policy.bars:,} bars): Sharpe {policy.sharpe:.2f}, max DD {policy.max_drawdown:.1%}"
    _write_atomic(path, lambda tmp: plot_equity_curves({f"v{version.version}": policy.equity_curve, "buy and hold": market.equity_curve}, tmp, title))
    return path


def equity_chart_view(request, version: int):
    from training.models import ModelVersion

    model = ModelVersion.objects.filter(version=version).first()
    if model is None:
        raise Http404(f"no model version {version}")
    try:
        path = equity_chart_path(model)
    except Exception as exc:  # a refused artifact or a missing dataset: say so in the image's place
        log.warning("equity curve of v%s unavailable: %s", version, exc)
        return HttpResponse(f"equity curve unavailable: {exc}", status=503, content_type="text/plain")
    return FileResponse(open(path, "rb"), content_type="image/png")


def run_curve_view(request, run_id: int):
    """The run's training curve: the PNG the run drew when it finished, else drawn from its curve."""
    from training.models import TrainingRun
    from training.plots import plot_training_curve
    from training.services import run_curve_path

    drawn = run_curve_path(run_id)
    if drawn.is_file():
        return FileResponse(open(drawn, "rb"), content_type="image/png")
    run = TrainingRun.objects.filter(pk=run_id).only("pk", "kind", "dataset", "seed", "curve").first()
    if run is None or not run.curve:
        raise Http404("no training curve for this run yet")
    path = chart_cache_dir() / f"run-{run.pk}-{len(run.curve)}.png"
    if not path.is_file():
        title = f"training run {run.pk} ({run.kind}, {run.dataset}, seed {run.seed})"
        _write_atomic(path, lambda tmp: plot_training_curve(run.curve, tmp, title=title))
    return FileResponse(open(path, "rb"), content_type="image/png")


def _staff(view):
    # The admin's own guard: staff login (redirects to the admin login), CSRF, never cached.
    return admin.site.admin_view(view)


app_name = "rlv3_dashboard"
urlpatterns = [
    path("", _staff(dashboard_view), name="index"),
    path("shadow-mode/", _staff(shadow_mode_view), name="shadow-mode"),
    path("retrain/", _staff(retrain_view), name="retrain"),
    path("charts/decisions.png", _staff(decisions_chart_view), name="decisions-chart"),
    path("charts/action-mix.png", _staff(action_mix_chart_view), name="action-mix-chart"),
    path("charts/ab.png", _staff(ab_chart_view), name="ab-chart"),
    path("charts/equity/v<int:version>.png", _staff(equity_chart_view), name="equity-chart"),
    path("charts/runs/<int:run_id>.png", _staff(run_curve_view), name="run-curve"),
]
