"""HTTP load on the real stack: gunicorn with the production settings, PostgreSQL, Redis.

Starts gunicorn with gunicorn.conf.py (sync workers, two more than the cores) and Django's
production settings (DEBUG off, a generated secret, no SSL redirect, ALLOWED_HOSTS 127.0.0.1) on a
free local port against a freshly created PostgreSQL database ``rlv3_bench`` and the local Redis,
then drives it from a separate load process, wrk (``apt-get install -y wrk``) with a Lua script
for the POSTs, for a fixed time per phase:

- ``predict``: one observation per request (each request stores one Decision);
- ``batch``: 1024 observations per request, one request per worker thread at a time;
- ``status``: GET status.

Reports requests/s, p50/p99 latency, errors (non-2xx and socket errors) and each gunicorn worker's
peak RSS (psutil, sampled every 100 ms). ``--json`` prints one JSON object as the last line with
``predict_rps``, ``predict_p50_ms``, ``predict_p99_ms``, ``errors``, ``batch_obs_per_s`` and
``worker_peak_rss_mb`` (the largest worker), and where the batch phase's CPU went
(``batch_cpu_cores``: PostgreSQL's processes, the workers, wrk, idle; ``batch_cpu_us_per_obs``). Targets on a 2-core machine: >= 1,500 predictions/s
with p99 <= 20 ms and no errors, >= 100,000 observations/s batched, <= 150 MB per worker.

``--proxy`` puts nginx with the project's nginx.conf (docker-compose's ``proxy`` service) in front
and drives the load through it; its CPU is then reported as ``proxy``.

    python bench/http.py [--seconds 10] [--workers N] [--threads 1] [--connections 8] [--proxy] [--json]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# This file's name shadows the standard library's `http` for anything imported from its folder
# (which Python puts first on sys.path): take the folder off, import the helpers as bench.*.
_HERE, _ROOT = Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from bench._common import emit_json, machine, print_table, record  # noqa: E402
from bench._services import (  # noqa: E402
    NGINX, database_create, free_port, gunicorn, gunicorn_workers, manage, nginx, operator_token, production_env, wait_port,
    wait_workers_ready,
)

API = "/api/v1/rl/v3/"
# The CpuSplit groups that serve the load (not wrk, not idle): their CPU per observation or request.
SERVICE_GROUPS = ("postgres", "redis", "workers", "proxy")
TARGETS = {"predict_rps": 1500, "predict_p99_ms": 20, "batch_obs_per_s": 100_000, "worker_peak_rss_mb": 150}

# wrk's Lua side: method, body and headers from the environment; `done` prints one JSON line.
WRK_SCRIPT = r"""
local body_path = os.getenv("WRK_BODY")
wrk.method = os.getenv("WRK_METHOD") or "GET"
if body_path and body_path ~= "" then
  local f = assert(io.open(body_path, "rb")); wrk.body = f:read("*a"); f:close()
  wrk.headers["Content-Type"] = "application/json"
end
wrk.headers["Authorization"] = "Token " .. os.getenv("WRK_TOKEN")
local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"non2xx":%d,' ..
    '"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def observation(rng: random.Random) -> dict:
    return {
        "symbol": rng.choice(["BTCUSDT", "ETHUSDT", "SOLUSDT"]), "rsi": round(rng.uniform(5, 95), 2),
        "macd": round(rng.uniform(-0.5, 0.5), 4), "volatility": round(rng.uniform(0.005, 0.05), 4),
        "price_change_1m": round(rng.uniform(-0.01, 0.01), 5), "regime": rng.choice(["TREND", "RANGE"]),
    }


class RssSampler(threading.Thread):
    """Peak RSS (MB) of each of gunicorn's workers while the load runs."""

    def __init__(self, master_pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.master_pid, self.every = master_pid, every
        self.peak: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        master = psutil.Process(self.master_pid)
        while not self._halt.is_set():
            try:
                for child in master.children():
                    try:
                        rss = child.memory_info().rss / 2**20
                    except psutil.NoSuchProcess:
                        continue
                    self.peak[child.pid] = max(self.peak.get(child.pid, 0.0), rss)
            except psutil.NoSuchProcess:
                return
            self._halt.wait(self.every)

    def stop(self) -> dict[int, float]:
        self._halt.set()
        self.join(timeout=5)
        return self.peak


class CpuSplit:
    """CPU time over a phase, by who used it: PostgreSQL's processes and gunicorn's workers (from
    ``/proc``), wrk (this process's waited-for children), and how much of the machine sat idle."""

    def __init__(self, master_pid: int, proxy_pid: int | None = None):
        self.master_pid, self.proxy_pid = master_pid, proxy_pid
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> tuple[float, dict[str, int], int]:
        import psutil

        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited
        used = {"postgres": 0, "redis": 0, "workers": 0, "wrk": round((children.ru_utime + children.ru_stime) * self._tick)}
        workers = {c.pid for c in psutil.Process(self.master_pid).children()}
        proxy = set()
        if self.proxy_pid is not None:
            used["proxy"] = 0
            proxy = {self.proxy_pid, *(c.pid for c in psutil.Process(self.proxy_pid).children())}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = proc.info["cmdline"] or []
                group = ("workers" if proc.info["pid"] in workers else
                         "proxy" if proc.info["pid"] in proxy else
                         "postgres" if cmdline[:1] and cmdline[0].startswith("postgres") else
                         "redis" if cmdline[:1] and cmdline[0].startswith("redis-server") else None)
                if group:
                    times = proc.cpu_times()
                    used[group] += round((times.user + times.system) * self._tick)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
        return time.perf_counter(), used, int(fields[3]) + int(fields[4])  # idle + iowait

    def start(self) -> CpuSplit:
        self._start = self._sample()
        return self

    def stop(self) -> dict[str, float]:
        """Cores each group kept busy over the phase (and idle cores)."""
        (t0, used0, idle0), (t1, used1, idle1) = self._start, self._sample()
        seconds = (t1 - t0) * self._tick
        cores = {k: (used1[k] - used0[k]) / seconds for k in used1}
        cores["idle"] = (idle1 - idle0) / seconds
        return {k: round(v, 2) for k, v in cores.items()}


def wrk_run(*, url: str, token: str, seconds: float, connections: int, threads: int, method: str = "GET",
            body: Path | None = None, script: Path) -> dict:
    """One wrk phase in its own process; returns its JSON summary plus rps and latencies in ms."""
    env = {**os.environ, "WRK_TOKEN": token, "WRK_METHOD": method, "WRK_BODY": str(body or "")}
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(script), url]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary:\n{out.stdout}\n{out.stderr}")
    result = json.loads(line[len("WRKJSON "):])
    seconds_run = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / seconds_run
    result["p50_ms"], result["p99_ms"] = result["p50_us"] / 1000, result["p99_us"] / 1000
    result["errors"] = result["non2xx"] + result["socket_errors"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Duration of each load phase.")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: gunicorn.conf.py's, two more than the cores).")
    parser.add_argument("--threads", type=int, default=1, help="Threads per worker.")
    parser.add_argument("--worker-class", choices=("sync", "gthread"), default=None,
                        help="gunicorn worker class (default: gunicorn.conf.py's, sync, with one thread; else gthread, which keeps connections alive).")
    parser.add_argument("--connections", type=int, default=8, help="Concurrent connections for single predictions.")
    parser.add_argument("--batch", type=int, default=1024, help="Observations per batch request.")
    parser.add_argument("--proxy", action="store_true",
                        help="Drive the load through nginx with nginx.conf (docker-compose's proxy) in front of gunicorn.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object as the last line.")
    args = parser.parse_args(argv)
    run = gunicorn_workers(workers=args.workers, threads=args.threads, worker_class=args.worker_class)
    args.workers, worker_class = run["workers"], run["worker_class"]
    if shutil.which("wrk") is None:
        print("bench/http.py needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.proxy and not os.access(NGINX, os.X_OK):
        print("bench/http.py --proxy needs nginx: apt-get install -y nginx-light", file=sys.stderr)
        return 2

    base_db = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/rlv3"
    if not base_db.startswith("postgres"):
        print("bench/http.py measures against PostgreSQL: set DATABASE_URL=postgres://...", file=sys.stderr)
        return 2
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    database_url = database_create(base_db, "rlv3_bench")
    # The run's files (request bodies, wrk's script, gunicorn's and nginx's logs, the model
    # directory): removed after a run that worked, kept for a look after one that did not.
    work = Path(tempfile.mkdtemp(prefix="rlv3-http-bench-"))
    (work / "models").mkdir()
    env = production_env(database_url=database_url, redis_url=redis_url, RLV3_THROTTLE_PREDICT="100000000/min",
                         RLV3_MODEL_DIR=str(work / "models"))
    manage("migrate", "--noinput", env=env)
    token = operator_token(env)
    script = work / "load.lua"
    script.write_text(WRK_SCRIPT)
    rng = random.Random(7)
    single, batch = work / "single.json", work / "batch.json"
    single.write_text(json.dumps(observation(rng)))
    batch.write_text(json.dumps({"observations": [observation(rng) for _ in range(args.batch)]}))

    port = free_port()
    web = gunicorn(port, env=env, log_path=work / "gunicorn.log", workers=args.workers, threads=args.threads,
                   worker_class=worker_class).start()
    proxy = None
    results: dict[str, dict] = {}
    try:
        wait_port(port, proc=web.proc)
        wait_workers_ready(web, args.workers)
        if args.proxy:
            proxy_port = free_port()
            proxy = nginx(proxy_port, upstream_port=port, run_dir=work / "proxy").start()
            wait_port(proxy_port, proc=proxy.proc)
        base = f"http://127.0.0.1:{proxy_port if proxy else port}{API}"
        # Warm-up: every worker has imported the application (above); now each connects to
        # PostgreSQL and Redis and loads the policy before the clock starts.
        wrk_run(url=base + "predict", token=token, seconds=2, connections=args.connections, threads=1, method="POST", body=single, script=script)
        sampler = RssSampler(web.pid)
        sampler.start()
        split = CpuSplit(web.pid, proxy.pid if proxy else None).start()
        results["predict"] = wrk_run(url=base + "predict", token=token, seconds=args.seconds, connections=args.connections,
                                     threads=1, method="POST", body=single, script=script)
        predict_cores = split.stop()
        # One batch in flight per request slot (workers x threads) the server has.
        split = CpuSplit(web.pid, proxy.pid if proxy else None).start()
        results["batch"] = wrk_run(url=base + "predict", token=token, seconds=args.seconds, connections=args.workers * args.threads,
                                   threads=1, method="POST", body=batch, script=script)
        batch_cores = split.stop()
        results["status"] = wrk_run(url=base + "status", token=token, seconds=max(2.0, args.seconds / 2), connections=args.connections,
                                    threads=1, script=script)
        peaks = sampler.stop()
    except BaseException:
        print(f"bench/http.py: the run failed; its logs are in {work}", file=sys.stderr)
        raise
    finally:
        if proxy is not None:
            proxy.stop()
        web.stop()
    shutil.rmtree(work, ignore_errors=True)

    batch_obs = results["batch"]["rps"] * args.batch
    rss = [round(v, 1) for _, v in sorted(peaks.items())]
    errors = sum(r["errors"] for r in results.values())
    summary = {
        "predict_rps": round(results["predict"]["rps"], 1),
        "predict_p50_ms": round(results["predict"]["p50_ms"], 2),
        "predict_p99_ms": round(results["predict"]["p99_ms"], 2),
        "batch_rps": round(results["batch"]["rps"], 2),
        "batch_p99_ms": round(results["batch"]["p99_ms"], 1),
        "batch_obs_per_s": round(batch_obs),
        # Where the batch phase's CPU went: cores busy, and microseconds per observation.
        "batch_cpu_cores": batch_cores,
        "batch_cpu_us_per_obs": {k: round(batch_cores[k] * 1e6 / batch_obs, 2) for k in SERVICE_GROUPS if k in batch_cores},
        # The same for the single-prediction phase, in microseconds per request.
        "predict_cpu_cores": predict_cores,
        "predict_cpu_us_per_request": {k: round(predict_cores[k] * 1e6 / results["predict"]["rps"])
                                       for k in SERVICE_GROUPS if k in predict_cores},
        "status_rps": round(results["status"]["rps"], 1),
        "status_p99_ms": round(results["status"]["p99_ms"], 2),
        "errors": errors,
        "worker_peak_rss_mb": max(rss) if rss else None,
        "workers_peak_rss_mb": rss,
        "config": {"seconds": args.seconds, "workers": args.workers, "worker_class": worker_class, "threads": args.threads,
                   "connections": args.connections, "batch": args.batch, "load": "wrk (separate process)",
                   "proxy": "nginx (nginx.conf)" if args.proxy else None},
        "machine": machine(),
    }
    rows = []
    for name, r in results.items():
        rows.append([name, f"{r['rps']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", r["errors"]])
    through = ", through nginx" if args.proxy else ""
    print_table(f"HTTP load{through}: gunicorn {args.workers}x{args.threads} {worker_class}, PostgreSQL, Redis, {args.seconds:g}s per phase",
                rows, headers=("phase", "requests/s", "p50 ms", "p99 ms", "errors"))
    print(f"predict phase CPU, cores: {predict_cores}; per request, us: {summary['predict_cpu_us_per_request']}")
    print(f"batch phase CPU, cores: {batch_cores}; per observation, us: {summary['batch_cpu_us_per_obs']}")
    print()
    print_table("against the targets", [
        ["single predictions/s", summary["predict_rps"], f">= {TARGETS['predict_rps']}"],
        ["single p99 ms", summary["predict_p99_ms"], f"<= {TARGETS['predict_p99_ms']}"],
        ["batched observations/s", summary["batch_obs_per_s"], f">= {TARGETS['batch_obs_per_s']}"],
        ["errors", errors, "0"],
        ["worker peak RSS MB", ", ".join(map(str, rss)), f"<= {TARGETS['worker_peak_rss_mb']} each"],
    ])
    record("http_proxy" if args.proxy else "http", summary)
    if args.json:
        emit_json(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
