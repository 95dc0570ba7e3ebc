"""Structured logging (structlog) for every process: web, Celery worker and beat, the subscriber.

One pipeline renders both structlog loggers and the standard-library loggers the code uses
(``logging.getLogger(__name__)``): JSON lines in production (``DJANGO_DEBUG=false``), aligned
key=value lines in development; ``RLV3_LOG_FORMAT=json|console`` overrides. Every line carries
what is bound in :mod:`structlog.contextvars` for the current request or unit of work:

- ``request_id``  — web requests (``rlv3site.middleware.RequestIdMiddleware``, X-Request-ID in and out);
- ``stream``, ``consumer``, ``entry_id``, ``correlation_id``, ``trace_id`` — stream-driven work
  (:func:`bind_stream_batch`, :func:`bind_stream_entry`, called by the subscriber);
- ``run_id`` — training (:func:`bind_training_run`); ``task_id``, ``task`` — every Celery task.

Secrets never reach the output: values under secret-looking keys are replaced, and tokens,
passwords in URLs and ``Authorization`` headers are masked inside any text, exception traces included.
"""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog

REDACTED = "[redacted]"
# Keys whose values are secrets whatever they hold (matched case-insensitively, as substrings).
SECRET_KEY_PARTS = ("password", "passwd", "secret", "token", "authorization", "api_key", "apikey", "cookie", "sessionid", "csrf")
# Secrets inside free text: DRF tokens, bearer tokens, credentials in URLs, key=value pairs.
_SECRET_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"(?i)\b(token|bearer)(\s+|=|:\s*)[A-Za-z0-9._~+/=-]{8,}"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), rf"\1{REDACTED}@"),
    (re.compile(r"(?i)\b(password|passwd|secret|api_key|apikey|sessionid|csrftoken)(\s*[=:]\s*)[^\s,;&'\"]+"), rf"\1\2{REDACTED}"),
)
# Context keys that standard-library ``extra={...}`` may add to a line (others, e.g. Django's
# ``request`` object, are left out: they are not data and may hold headers).
EXTRA_KEYS = ("request_id", "stream", "consumer", "entry_id", "correlation_id", "trace_id", "run_id", "status_code")
_ENTRY_KEYS = ("entry_id", "correlation_id", "trace_id")
_STREAM_KEYS = ("stream", "consumer", *_ENTRY_KEYS)
_RUN_KEYS = ("run_id",)


def redact_text(text: str) -> str:
    """``text`` with tokens, URL passwords and ``password=...``-style values masked."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def redact_secrets(_logger: Any, _method: str, event_dict: dict) -> dict:
    """structlog processor: mask secret-keyed values and secrets inside every string value."""
    for key, value in list(event_dict.items()):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
    return event_dict


def _shared_processors() -> list:
    """What every line goes through, whether it came from structlog or the standard library."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(allow=EXTRA_KEYS),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def formatter(fmt: str) -> structlog.stdlib.ProcessorFormatter:
    """The logging.Formatter that renders a line as ``json`` or ``console`` text (secrets masked)."""
    renderer = structlog.processors.JSONRenderer(default=str) if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Traces become text before redaction, so a secret in an exception message is masked too.
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )


def log_format(*, debug: bool, override: str | None = None) -> str:
    """``json`` or ``console``: the override when given (RLV3_LOG_FORMAT), else JSON unless debugging."""
    if override:
        value = override.strip().lower()
        if value not in {"json", "console"}:
            raise ValueError(f"RLV3_LOG_FORMAT must be json or console, got {override!r}")
        return value
    return "console" if debug else "json"


def logging_config(*, fmt: str, level: str = "INFO") -> dict:
    """The LOGGING dict for Django's dictConfig: one stderr handler, the structlog formatter."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": {"()": formatter, "fmt": fmt}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured", "stream": sys.stderr}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.db.backends": {"level": "WARNING"}},
    }


def configure(*, fmt: str, level: str = "INFO") -> dict:
    """Configure structlog for ``fmt`` and return the matching LOGGING dict (settings call this)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    config = logging_config(fmt=fmt, level=level)
    _connect_celery(config)
    return config


def _connect_celery(config: dict) -> None:
    """Celery: keep this logging setup in workers and bind each task's id (cleared per task)."""
    try:
        from celery import signals
    except ImportError:  # pragma: no cover - celery is a runtime dependency
        return

    def setup_logging(**_kwargs) -> None:  # connected: Celery then leaves logging to us
        logging.config.dictConfig(config)

    def task_prerun(task_id=None, task=None, **_kwargs) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))

    signals.setup_logging.connect(setup_logging, weak=False, dispatch_uid="rlv3-setup-logging")
    signals.task_prerun.connect(task_prerun, weak=False, dispatch_uid="rlv3-task-context")


# --- context binding ------------------------------------------------------------------------------


def bind_stream_batch(*, stream: str, consumer: str | None = None) -> None:
    """Start a batch of one stream: bind ``stream`` (and ``consumer``), forget the previous entry's ids."""
    structlog.contextvars.unbind_contextvars(*_ENTRY_KEYS, *_RUN_KEYS)
    values = {"stream": stream}
    if consumer:
        values["consumer"] = consumer
    structlog.contextvars.bind_contextvars(**values)


def _field(fields: Mapping | None, name: str) -> str | None:
    if not fields:
        return None
    value = fields.get(name)
    if value is None:
        value = fields.get(name.encode())  # redis-py without decode_responses
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    return value or None


def bind_stream_entry(*, entry_id: str, envelope: Any = None, fields: Mapping | None = None) -> None:
    """Bind one stream entry's ``entry_id``, ``correlation_id`` and ``trace_id`` for the lines about it.

    Ids come from a decoded ``envelope`` (decisions.streams.codec.Envelope) or, for an entry that
    did not decode, from its raw ``fields`` (str or bytes keys). An id the entry lacks is unbound,
    so no line shows the previous entry's.
    """
    if envelope is not None:
        ids = {"correlation_id": envelope.correlation_id, "trace_id": envelope.trace_id}
    else:
        ids = {"correlation_id": _field(fields, "correlation_id"), "trace_id": _field(fields, "trace_id")}
    structlog.contextvars.unbind_contextvars(*_ENTRY_KEYS)
    structlog.contextvars.bind_contextvars(entry_id=entry_id, **{k: v for k, v in ids.items() if v})


def bind_training_run(run_id: int) -> None:
    """Bind ``run_id`` for the rest of this unit of work (a Celery task clears it at its start);
    stream context left by earlier work in the same thread is dropped."""
    structlog.contextvars.unbind_contextvars(*_STREAM_KEYS)
    structlog.contextvars.bind_contextvars(run_id=run_id)
