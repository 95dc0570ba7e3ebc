"""The training-curve PNG and the run's admin page (curve inline, cancel action)."""

from __future__ import annotations

import base64
import math

import pytest
from django.contrib.messages import get_messages

from training.models import RunStatus, TrainingRun
from training.plots import plot_training_curve
from training.services import json_safe, run_curve_path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _curve(n=5):
    return [
        {"timesteps": 2048 * (i + 1), "policy_loss": -0.01 * i, "value_loss": 1.0 / (i + 1), "entropy": 1.79 - 0.01 * i,
         "approx_kl": 0.01, "clip_fraction": 0.1, "explained_variance": math.nan if i == 0 else 0.1 * i,
         "episode_return_mean": None, "reward_mean": 0.001 * i, "env_steps_per_s": 1800.0}
        for i in range(n)
    ]


def test_the_curve_png_is_written_atomically_and_tolerates_missing_values(tmp_path):
    path = plot_training_curve(_curve(), tmp_path / "runs" / "7" / "curve.png", title="run 7")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]  # no temp file left
    empty = plot_training_curve([], tmp_path / "empty.png")
    assert empty.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.django_db
def test_the_run_admin_page_shows_the_curve_inline(admin_client):
    run = TrainingRun.objects.create(dataset="eurusd_1h", timesteps=2048, status=RunStatus.SUCCEEDED, curve=json_safe(_curve()))
    page = admin_client.get(f"/admin/training/trainingrun/{run.pk}/change/").content.decode()
    assert "no curve yet" in page
    plot_training_curve(run.curve, run_curve_path(run.pk))
    page = admin_client.get(f"/admin/training/trainingrun/{run.pk}/change/").content.decode()
    encoded = base64.b64encode(run_curve_path(run.pk).read_bytes()).decode()
    assert f'<img src="data:image/png;base64,{encoded}"' in page
    assert f"tensorboard --logdir {run_curve_path(run.pk).parent}" in page


@pytest.mark.django_db
def test_operators_cancel_active_runs_and_a_fanout_takes_its_children_along(admin_client, admin_user):
    parent = TrainingRun.objects.create(dataset="eurusd_1h", timesteps=2048, kind="fanout", status=RunStatus.RUNNING)
    child = TrainingRun.objects.create(dataset="eurusd_1h", timesteps=2048, parent=parent, status=RunStatus.RUNNING)
    done = TrainingRun.objects.create(dataset="googl_1d", timesteps=2048, status=RunStatus.SUCCEEDED)
    response = admin_client.post("/admin/training/trainingrun/", {"action": "cancel_runs", "_selected_action": [parent.pk, done.pk]})
    assert [str(m) for m in get_messages(response.wsgi_request)] == [f"cancelled runs [{parent.pk}]"]
    for run in (parent, child, done):
        run.refresh_from_db()
    assert (parent.status, child.status, done.status) == (RunStatus.FAILED, RunStatus.FAILED, RunStatus.SUCCEEDED)
    assert parent.error == f"cancelled by {admin_user.username}"
