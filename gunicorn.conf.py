"""gunicorn's settings for the web service: the Procfile, docker-compose, the image and
bench/http.py all start it with ``-c gunicorn.conf.py`` (the bind address is each one's own).

Sync workers, two more than the cores: a predict call is CPU work in the worker, then in its
PostgreSQL backend, then a wait for the commit to reach the disk, and meanwhile the worker does
nothing. Measured with bench/http.py on 2 cores: 2 workers left 0.12-0.14 of the cores idle during
the batch phase, 3 workers 0.06-0.10, and 0.15-0.21 during single predictions; 4 workers 0.01-0.03
and 0.07-0.08. Four against three, alternating, four pairs of runs: single predictions 1,455,
1,458, 1,469, 1,374 against 1,389, 1,394, 1,359, 1,195/s (p99 8.3-9.2 against 8.5-10.3 ms), batched
89,116, 86,356, 85,320, 82,296 against 82,927, 81,351, 82,548, 77,824 observations/s. Five gave no
more than four (three pairs, either way by run). Each worker holds about 120 MB. Threads in one
worker share its interpreter: gthread 2 x 4 had batch p99 of 178-251 ms and single-prediction p99
up to 75 ms, against 62-68 ms and 13 ms for 3 sync workers; gthread 3 x 1 and 3 x 2, which keep
connections alive, used 1,005-1,022 us of worker CPU per single prediction against 923-959 us.

A sync worker serves one request at a time, reads it with no deadline and closes the connection
after it: a stalled client holds a worker until ``timeout`` kills it, so clients reach the workers
through nginx (nginx.conf; docker-compose's ``proxy`` service), which reads every request and
response whole.

``WEB_CONCURRENCY`` (gunicorn's own variable) sets the number of workers.
"""

import os
import time

worker_class = "sync"
workers = int(os.environ.get("WEB_CONCURRENCY") or 0) or len(os.sched_getaffinity(0)) + 2
backlog = 2048
timeout = 60
graceful_timeout = 10


def post_fork(server, worker):
    worker.forked_at = time.monotonic()


def post_worker_init(worker):
    """The worker has imported the application and serves from now on (bench/http.py waits for
    every worker's line before it measures)."""
    worker.log.info("Worker ready (pid: %s) after %.1f s", worker.pid, time.monotonic() - worker.forked_at)
