"""Pick the torch device from ``RLV3_DEVICE`` (auto | cpu | cuda[:N]).

Nothing here touches CUDA at import time: the seed initialised CUDA eagerly and crashed in
forked Celery workers. CUDA is only queried when `resolve_device` is called.
"""

from __future__ import annotations

import os

import torch

DEVICE_ENV_VAR = "RLV3_DEVICE"


class DeviceError(RuntimeError):
    """The requested device is unknown or not available on this machine."""


def resolve_device(requested: "str | torch.device | None" = None) -> torch.device:
    """Return the device to train on.

    ``requested`` wins over the environment variable; ``None`` reads ``RLV3_DEVICE``
    (default ``auto``: CUDA when available, else CPU). Asking for CUDA on a machine
    without it raises `DeviceError` rather than silently training on the CPU.
    """
    if isinstance(requested, torch.device):
        name = str(requested)
    else:
        name = (requested if requested is not None else os.environ.get(DEVICE_ENV_VAR, "auto")).strip().lower()
    if name in ("", "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{DEVICE_ENV_VAR}={name} but CUDA is not available on this machine")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{DEVICE_ENV_VAR}={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    raise DeviceError(f"{DEVICE_ENV_VAR} must be auto, cpu or cuda[:N], got {name!r}")
