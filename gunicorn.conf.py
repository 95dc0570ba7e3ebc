"""gunicorn's settings for the web service: the Procfile, docker-compose, the image and
bench/http.py all start it with ``-c gunicorn.conf.py`` (the bind address is each one's own).

Sync workers, one more than the cores: a predict call is CPU work in the worker and then in its
PostgreSQL backend, so with one worker per core a core sits idle while both workers wait for
PostgreSQL. Measured with bench/http.py on 2 cores: 2 workers leave 0.12-0.14 of the cores idle
during the batch phase, 3 workers 0.06-0.08. Threads in one worker share its interpreter: gthread
2 x 4 had batch p99 of 178-251 ms and single-prediction p99 up to 75 ms, against 62-68 ms and
13 ms for 3 sync workers. A sync worker serves one request at a time, reads it with no deadline
and closes the connection after it: a stalled client holds a worker until ``timeout`` kills it, so
clients reach the workers through nginx (nginx.conf; docker-compose's ``proxy`` service), which
reads every request and response whole.

``WEB_CONCURRENCY`` (gunicorn's own variable) sets the number of workers.
"""

import os
import time

worker_class = "sync"
workers = int(os.environ.get("WEB_CONCURRENCY") or 0) or len(os.sched_getaffinity(0)) + 1
backlog = 2048
timeout = 60
graceful_timeout = 10


def post_fork(server, worker):
    worker.forked_at = time.monotonic()


def post_worker_init(worker):
    """The worker has imported the application and serves from now on (bench/http.py waits for
    every worker's line before it measures)."""
    worker.log.info("Worker ready (pid: %s) after %.1f s", worker.pid, time.monotonic() - worker.forked_at)
