"""All settings, read from the environment in one place (CONTRACTS section 2).

Defaults are safe for development: SQLite under data/ and the local Redis. With DEBUG off the
development secret key is refused, so a production deploy cannot run with it by accident.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / "data"


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return default if raw in (None, "") else float(raw)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


DEV_SECRET_KEY = "dev-insecure-rlv3-secret-key-change-me"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", DEV_SECRET_KEY)
DEBUG = env_bool("DJANGO_DEBUG", True)
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_DEBUG=false needs DJANGO_SECRET_KEY set to a real secret")
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "django_celery_beat",
    "django_prometheus",
    "axes",
    "decisions",
    "training",
]

MIDDLEWARE = [
    # First: every later line of a request carries its id; Prometheus times the whole stack.
    "rlv3site.middleware.RequestIdMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "rlv3site.middleware_limits.BodySizeLimitMiddleware",  # 413 before anything reads an oversized body
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    "axes.middleware.AxesMiddleware",  # answers a locked-out login (rlv3site.logins); last, as django-axes asks
]

ROOT_URLCONF = "rlv3site.urls"
WSGI_APPLICATION = "rlv3site.wsgi.application"
ASGI_APPLICATION = "rlv3site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'db.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # Several processes (web, worker, subscriber) share the file: wait for locks instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "init_command": "PRAGMA journal_mode=WAL;"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file, not memory, so worker and subscriber processes started by the tests share it; one per
    # test session so that concurrent sessions never open each other's file.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test_db_{os.getpid()}.sqlite3")}
else:
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env_int("DB_CONNECT_TIMEOUT", 5)
    # Django turns psycopg's prepared statements off (prepare_threshold None, for poolers that
    # cannot keep them), and then psycopg ignores even an explicit prepare=True. A threshold no
    # query reaches keeps Django's queries unprepared and prepares the statements that ask for it:
    # the inserts of decisions.services, which PostgreSQL then parses and plans once a connection.
    # DB_PREPARED_STATEMENTS=false for a transaction-mode pooler without prepared-statement support.
    if env_bool("DB_PREPARED_STATEMENTS", True):
        DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 2**31 - 1
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("RLV3_MAX_BODY_BYTES", 2 * 1024 * 1024)

# --- Redis and Celery -------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or REDIS_URL
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or REDIS_URL
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = True
RLV3_TRAIN_TIME_LIMIT = env_int("RLV3_TRAIN_TIME_LIMIT", 4 * 3600)
CELERY_TASK_TIME_LIMIT = RLV3_TRAIN_TIME_LIMIT + 300
CELERY_TASK_SOFT_TIME_LIMIT = RLV3_TRAIN_TIME_LIMIT
# A task that is not acked within the visibility timeout is redelivered: it must exceed the longest run.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 3600}
CELERY_RESULT_EXPIRES = 7 * 24 * 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("RLV3_CELERY_QUEUE", "celery")
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

# --- REST framework ----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "decisions.api.authentication.CachedTokenAuthentication",  # DRF's, the lookup kept RLV3_TOKEN_CACHE_SECONDS
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"] + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "decisions.api.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "decisions.api.errors.exception_handler",
    # Per API token, counted in Redis (shared by all workers); "N/s|min|hour|day".
    "DEFAULT_THROTTLE_CLASSES": ["decisions.api.throttling.RedisRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "predict": os.environ.get("RLV3_THROTTLE_PREDICT", "50000/min"),
        "train": os.environ.get("RLV3_THROTTLE_TRAIN", "20/hour"),
    },
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "RL v3 trading-decision service",
    "DESCRIPTION": "PPO trading decisions, shadow mode, experiences, model registry and training runs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}

# --- RL v3 ---------------------------------------------------------------------------------------
RLV3_MODEL_DIR = Path(os.environ.get("RLV3_MODEL_DIR") or DATA_DIR / "rl_v3")
RLV3_STREAM_PREFIX = os.environ.get("RLV3_STREAM_PREFIX", "quantum:stream:")
RLV3_GROUP_PREFIX = os.environ.get("RLV3_GROUP_PREFIX", "quantum:group:")
RLV3_SHADOW_MODE = env_bool("RLV3_SHADOW_MODE", True)
RLV3_DEVICE = os.environ.get("RLV3_DEVICE", "auto")
RLV3_RETRAIN_CRON = os.environ.get("RLV3_RETRAIN_CRON", "0 2 * * *")
RLV3_OPERATORS_GROUP = "operators"
# How often a serving process checks whether the champion alias moved (seconds).
RLV3_MODEL_POLL_SECONDS = env_float("RLV3_MODEL_POLL_SECONDS", 2.0)
# How long a serving process reuses the shadow-mode switch it read (seconds; 0: every prediction).
RLV3_SHADOW_MODE_CACHE_SECONDS = env_float("RLV3_SHADOW_MODE_CACHE_SECONDS", 1.0)
# How long a process reuses a token's user before looking the token up again (seconds; 0: never).
RLV3_TOKEN_CACHE_SECONDS = env_float("RLV3_TOKEN_CACHE_SECONDS", 5.0)
RLV3_MAX_BATCH = 1024
# Throttle slots a process reserves per Redis call (decisions.api.throttling; at most 1 % of a limit).
RLV3_THROTTLE_LEASE = env_int("RLV3_THROTTLE_LEASE", 100)
# Failed logins (rlv3site.logins, django-axes): a (username, client address) pair is locked out
# of the admin login after this many failures, until this long after the last one.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("RLV3_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("RLV3_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "rlv3site.logins.client_ip"
AXES_LOCKOUT_CALLABLE = "rlv3site.logins.lockout_response"
# Proxies in front of the service that append to X-Forwarded-For (docker-compose: nginx, 1); with
# none, the client's address is the connection's.
RLV3_TRUSTED_PROXIES = env_int("RLV3_TRUSTED_PROXIES", 0)
# Promotion gate: a challenger must beat the champion's validation Sharpe by this margin
# and stay within the drawdown limit.
RLV3_GATE_MIN_SHARPE_GAIN = env_float("RLV3_GATE_MIN_SHARPE_GAIN", 0.0)
RLV3_GATE_MAX_DRAWDOWN = env_float("RLV3_GATE_MAX_DRAWDOWN", 0.25)
RLV3_DEFAULT_DATASET = os.environ.get("RLV3_DEFAULT_DATASET", "eurusd_1h")
RLV3_DEFAULT_TIMESTEPS = env_int("RLV3_DEFAULT_TIMESTEPS", 150_000)
# Training runs: a running run writes its heartbeat and progress every RLV3_HEARTBEAT_SECONDS;
# the sweeper fails a running run whose heartbeat is older than RLV3_RUN_STALE_SECONDS (worker lost).
RLV3_HEARTBEAT_SECONDS = env_float("RLV3_HEARTBEAT_SECONDS", 2.0)
RLV3_RUN_STALE_SECONDS = env_float("RLV3_RUN_STALE_SECONDS", 120.0)
# Stream consumer
RLV3_CLAIM_IDLE_MS = env_int("RLV3_CLAIM_IDLE_MS", 30_000)
RLV3_MAX_DELIVERIES = env_int("RLV3_MAX_DELIVERIES", 5)
RLV3_DECISION_STREAM_MAXLEN = env_int("RLV3_DECISION_STREAM_MAXLEN", 100_000)
RLV3_BAR_SECONDS = env_int("RLV3_BAR_SECONDS", 60)
# Retention (manage.py rlv3_retention): decisions and experiences older than this many days are
# archived to RLV3_ARCHIVE_DIR (CSV + sha256) and deleted.
RLV3_RETENTION_DAYS = env_int("RLV3_RETENTION_DAYS", 365)
RLV3_ARCHIVE_DIR = Path(os.environ.get("RLV3_ARCHIVE_DIR") or DATA_DIR / "archive")

# --- logging and metrics (rlv3site/logging.py, decisions/metrics.py) ---------------------------------
# structlog renders every line: JSON with DEBUG off, readable console lines in development.
from rlv3site.logging import configure as _configure_logging, log_format as _log_format  # noqa: E402

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOGGING = _configure_logging(fmt=_log_format(debug=DEBUG, override=os.environ.get("RLV3_LOG_FORMAT")), level=LOG_LEVEL)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # workers log through LOGGING above, with task and run ids
# Optional bearer token that Prometheus must send to read /metrics (unset: open, keep it internal).
RLV3_METRICS_TOKEN = os.environ.get("RLV3_METRICS_TOKEN", "")
# A subscriber whose newest heartbeat is older than this is reported dead (health, status, metrics).
RLV3_SUBSCRIBER_MAX_AGE_SECONDS = env_float("RLV3_SUBSCRIBER_MAX_AGE_SECONDS", 30.0)
