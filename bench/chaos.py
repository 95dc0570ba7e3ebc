"""Chaos run: the whole service under faults, then an audit of what came out.

Brings up web (gunicorn), a Celery worker and the stream subscriber, all with the production
settings, against a fresh PostgreSQL database ``rlv3_chaos`` and a PRIVATE redis-server on its own
port (append-only file, fsync always: a restart keeps every acknowledged entry). The web and the
subscriber reach PostgreSQL through a TCP proxy this process controls. Then, while signals stream:

- ``--signals`` signal.generated entries in the wire format, with ~1 % poison entries mixed in,
  and a trader that answers each published rl_v3.decision with a position.closed (plus a few
  unpairable poison closes);
- the subscriber is SIGKILLed five times at random moments (and restarted);
- Redis is SIGKILLed and restarted once;
- PostgreSQL is made unreachable for 10 s (the proxy cuts every connection and refuses new ones);
- the Celery worker is SIGKILLed in the middle of a training run; it restarts, the lost run is
  failed, and a new run trains the next version;
- that version's runtime artifact is corrupted on disk and it is promoted: serving must refuse it
  (sha256) and keep the previous good version, and ``status`` must say so.

``status``/``healthz`` are polled throughout and must never claim a healthy database while it is
cut. The audit prints a table and, last, one JSON line with ``signals``, ``decisions``, ``lost``,
``duplicated``, ``dead_lettered`` and the rest. Expected: 0 lost, 0 duplicated, every poison entry
dead-lettered, the corrupted version refused, the previous one served.

    python bench/chaos.py [--signals 10000] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# bench/http.py would shadow the standard library's `http` for anything imported from this folder
# (which Python puts first on sys.path): take the folder off, import the helpers as bench.*.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, machine, print_table, record  # noqa: E402
from bench._faults import PrivateRedis, TcpProxy  # noqa: E402
from bench._services import (  # noqa: E402
    PY, Service, database_create, database_drop, free_port, gunicorn, manage, operator_token,
    production_env, wait_port,
)

API = "/api/v1/rl/v3/"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")


# --- traffic ----------------------------------------------------------------------------------------------


def _poison_entries(rng: random.Random, count: int) -> list[dict[str, str]]:
    """Signal entries that must be dead-lettered, each broken in one way a producer could break it."""
    from decisions.streams import codec

    good = lambda payload: {  # noqa: E731
        "event_type": codec.SIGNAL_GENERATED, "payload": json.dumps(payload), "trace_id": "", "correlation_id": uuid.uuid4().hex,
        "timestamp": codec.format_timestamp(codec.utc_now()), "source": "chaos",
    }
    kinds = [
        lambda: {**good({"symbol": "BTCUSDT"}), "payload": "{not json"},
        lambda: {**good({"symbol": "BTCUSDT"}), "payload": "[1, 2, 3]"},
        lambda: good({"symbol": "BTCUSDT", "rsi": 500}),
        lambda: good({"symbol": "BTCUSDT", "volatility": "high"}),
        lambda: {**good({"symbol": "BTCUSDT"}), "payload": '{"symbol": "BTCUSDT", "rsi": NaN}'},
        lambda: {**good({"symbol": "BTCUSDT"}), "event_type": "signal.exploded"},
        lambda: {k: v for k, v in good({"symbol": "BTCUSDT"}).items() if k != "payload"},
        lambda: good({"symbol": "BTC€🚀"}),
        lambda: {**good({"symbol": "BTCUSDT"}), "timestamp": "yesterday"},
        lambda: {**good({"symbol": "BTCUSDT"}), "payload": json.dumps({"symbol": "BTCUSDT", "pad": "x" * 70_000})},
    ]
    return [kinds[i % len(kinds)]() for i in range(count)]


def _signal(rng: random.Random, index: int) -> tuple[dict[str, str], str]:
    from decisions.streams import codec

    correlation = f"chaos-{index}-{uuid.uuid4().hex[:8]}"
    payload = {
        "symbol": rng.choice(SYMBOLS), "rsi": round(rng.uniform(5, 95), 2), "macd": round(rng.uniform(-0.5, 0.5), 4),
        "volatility": round(rng.uniform(0.005, 0.05), 4), "price_change_1m": round(rng.uniform(-0.01, 0.01), 5),
        "regime": rng.choice(["TREND", "RANGE", "BREAKOUT"]), "strategy": "chaos",
    }
    envelope = codec.Envelope(event_type=codec.SIGNAL_GENERATED, payload=payload, trace_id=uuid.uuid4().hex,
                              correlation_id=correlation, source="chaos")
    return codec.encode_entry(envelope), correlation


class ExactlyOnceProducer:
    """XADD with explicit, increasing ids: a retry after a connection error either adds the entry or
    is told it exists (id not greater than the top item), so the stream gets each entry once."""

    def __init__(self, redis_url: str, stream: str):
        import redis

        self.redis_url, self.stream = redis_url, stream
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.next_ms = int(time.time() * 1000)
        self.retries = 0

    def add(self, fields: dict[str, str]) -> str:
        import redis

        self.next_ms = max(self.next_ms + 1, int(time.time() * 1000))
        entry_id = f"{self.next_ms}-0"
        while True:
            try:
                self.client.xadd(self.stream, fields, id=entry_id)
                return entry_id
            except redis.ResponseError as exc:
                if "equal or smaller" in str(exc):
                    return entry_id  # the earlier attempt was applied before the connection broke
                raise
            except redis.RedisError:
                self.retries += 1
                time.sleep(0.2)
                self.client = redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=2)


@dataclass
class Traffic:
    """What was sent, for the audit."""

    signals: dict[str, str] = field(default_factory=dict)  # entry id -> correlation id
    poison: list[str] = field(default_factory=list)  # signal entry ids
    poison_closes: list[str] = field(default_factory=list)
    closes: dict[str, str] = field(default_factory=dict)  # decision_id -> close entry id
    done_signals: threading.Event = field(default_factory=threading.Event)


def produce_signals(*, redis_url: str, prefix: str, count: int, poison: int, seconds: float, rng: random.Random, traffic: Traffic) -> None:
    from decisions.streams import codec

    producer = ExactlyOnceProducer(redis_url, codec.stream_key(codec.SIGNAL_GENERATED, prefix))
    bad = _poison_entries(rng, poison)
    poison_at = set(rng.sample(range(count + poison), poison))
    start = time.monotonic()
    index = 0
    for i in range(count + poison):
        if i in poison_at:
            traffic.poison.append(producer.add(bad.pop()))
        else:
            fields, correlation = _signal(rng, index)
            traffic.signals[producer.add(fields)] = correlation
            index += 1
        # Spread the stream over `seconds` so that every fault meets traffic.
        behind = start + seconds * (i + 1) / (count + poison) - time.monotonic()
        if behind > 0:
            time.sleep(behind)
    traffic.done_signals.set()


def trade(*, redis_url: str, prefix: str, rng: random.Random, traffic: Traffic, stop: threading.Event, poison_closes: int) -> None:
    """Answer each rl_v3.decision (deduplicated by decision_id) with a position.closed."""
    import redis

    from decisions.streams import codec

    decisions = codec.stream_key(codec.DECISION, prefix)
    producer = ExactlyOnceProducer(redis_url, codec.stream_key(codec.POSITION_CLOSED, prefix))
    last = "0-0"
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2, decode_responses=True)
    sent_poison = 0
    while not stop.is_set():
        try:
            reply = client.xread({decisions: last}, count=500, block=500)
        except redis.RedisError:
            time.sleep(0.2)
            client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2, decode_responses=True)
            continue
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                payload = json.loads(fields["payload"])
                decision_id = payload["decision_id"]
                if decision_id in traffic.closes:
                    continue  # a republished decision (at-least-once publishing): closed once already
                close = codec.Envelope(
                    event_type=codec.POSITION_CLOSED, correlation_id=fields.get("correlation_id") or None, source="chaos",
                    payload={"symbol": payload["symbol"], "pnl": round(rng.uniform(-50, 50), 2),
                             "roi": round(rng.uniform(-3, 3), 3), "decision_id": decision_id, "position_id": f"pos-{decision_id[:8]}"},
                )
                traffic.closes[decision_id] = producer.add(codec.encode_entry(close))
                if sent_poison < poison_closes and rng.random() < 0.01:
                    orphan = codec.Envelope(event_type=codec.POSITION_CLOSED, source="chaos",
                                            payload={"symbol": "NOSUCHSYM", "pnl": 1.0, "roi": 0.1})
                    traffic.poison_closes.append(producer.add(codec.encode_entry(orphan)))
                    sent_poison += 1


# --- the run ---------------------------------------------------------------------------------------------


class Chaos:
    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.rng = random.Random(args.seed)
        self.events: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        self.status_lies: list[str] = []
        self.status_checks = 0
        self.status_outage_answers: dict[str, int] = {}

    def log(self, message: str) -> None:
        at = time.monotonic() - self.t0
        self.events.append((round(at, 1), message))
        print(f"[{at:7.1f}s] {message}", flush=True)

    # -- setup ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        base_db = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/rlv3"
        if not base_db.startswith("postgres"):
            raise SystemExit("bench/chaos.py runs against PostgreSQL: set DATABASE_URL=postgres://...")
        self.direct_db = database_create(base_db, self.args.database)
        host_port = self.direct_db.split("@", 1)[1].split("/", 1)[0]
        host, _, port = host_port.partition(":")
        self.proxy = TcpProxy((host or "127.0.0.1", int(port or 5432)))
        self.proxied_db = self.direct_db.replace(host_port, f"127.0.0.1:{self.proxy.port}", 1)
        self.redis = PrivateRedis(self.work / "redis")
        self.redis.start()
        self.prefix = "quantum:stream:"
        models = self.work / "models"
        common = dict(redis_url=self.redis.url, RLV3_MODEL_DIR=str(models), RLV3_CELERY_QUEUE="rlv3-chaos",
                      RLV3_CLAIM_IDLE_MS="3000", RLV3_MODEL_POLL_SECONDS="1", RLV3_HEARTBEAT_SECONDS="1",
                      RLV3_RUN_STALE_SECONDS="20", DB_CONNECT_TIMEOUT="2", RLV3_THROTTLE_PREDICT="1000000/min",
                      RLV3_THROTTLE_TRAIN="1000/hour", RLV3_SHADOW_MODE_CACHE_SECONDS="0")
        self.env_direct = production_env(database_url=self.direct_db, **common)
        self.env_proxied = production_env(database_url=self.proxied_db, **common)
        manage("migrate", "--noinput", env=self.env_direct)
        self.token = operator_token(self.env_direct, "chaos-operator")
        self.log(f"database {self.args.database} via proxy :{self.proxy.port}; private Redis :{self.redis.port}")
        out = manage("rlv3_train", "--dataset", "eurusd_1h", "--timesteps", str(self.args.champion_timesteps),
                     "--no-progress", "--json", env=self.env_direct)
        self.good_version = json.loads(out.stdout.strip().splitlines()[-1])["model_version"]
        self.log(f"champion v{self.good_version} trained")
        logs = self.work / "logs"
        self.port = free_port()
        self.web = gunicorn(self.port, env=self.env_proxied, log_path=logs / "web.log", workers=2, threads=2)
        self.worker = Service("worker", [PY, "-m", "celery", "-A", "rlv3site", "worker", "--pool", "prefork", "--concurrency", "1",
                                         "-Q", "rlv3-chaos", "-n", "chaosworker@%h", "--without-gossip", "--without-mingle",
                                         "--loglevel", "INFO"], env={**self.env_direct, "LOG_LEVEL": "INFO"},
                             log_path=logs / "worker.log")
        self.subscriber = Service("subscriber", [PY, "manage.py", "rlv3_subscribe", "--consumer", "chaos-subscriber", "--block-ms", "500"],
                                  env=self.env_proxied, log_path=logs / "subscriber.log")
        for service in (self.web, self.worker, self.subscriber):
            service.start()
        wait_port(self.port, proc=self.web.proc)
        self._wait(lambda: " ready." in (logs / "worker.log").read_text(errors="replace"), 90, "the Celery worker")

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except Exception:  # the thing waited for may be down meanwhile
                pass
            time.sleep(0.25)
        raise TimeoutError(f"waited {timeout}s for {what}")

    # -- HTTP ---------------------------------------------------------------------------------------------
    def http(self, method: str, path: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, {"raw": text[:200].decode(errors="replace")}
        except OSError as exc:
            return 0, {"error": str(exc)}

    def watch_status(self, stop: threading.Event) -> None:
        """Poll healthz and status; a healthy database reported while the proxy is cut is a lie."""
        while not stop.is_set():
            cut_before = self.proxy.is_cut
            code, health = self.http("GET", "/healthz", timeout=15)
            scode, status = self.http("GET", API + "status", timeout=15)
            cut_after = self.proxy.is_cut
            self.status_checks += 1
            db_ok = health.get("checks", {}).get("database", {}).get("ok")
            if cut_before and cut_after:
                key = f"healthz {code}, status {scode}"
                self.status_outage_answers[key] = self.status_outage_answers.get(key, 0) + 1
                if db_ok or code == 200 or scode == 200:
                    self.status_lies.append(f"database cut but healthz {code} db_ok={db_ok}, status {scode}")
            stop.wait(0.5)

    # -- faults -----------------------------------------------------------------------------------------
    def kill_subscriber(self, n: int) -> None:
        self.subscriber.kill()
        self.log(f"SIGKILL subscriber ({n}/5)")
        time.sleep(self.rng.uniform(0.2, 1.5))
        self.subscriber.start()

    def restart_redis(self) -> None:
        self.redis.restart()
        self.log("Redis SIGKILLed and restarted (AOF)")

    def cut_database(self, seconds: float) -> None:
        self.proxy.cut()
        self.log(f"PostgreSQL unreachable (proxy cut) for {seconds:g}s")
        time.sleep(seconds)
        self.proxy.restore()
        self.log("PostgreSQL reachable again")

    def submit_training(self, body: dict) -> int:
        """POST train, retrying while the service answers 503 (a fault in progress); a 409 means an
        earlier attempt did create the run (its answer was lost): that run is the one."""
        deadline = time.monotonic() + 120
        while True:
            code, answer = self.http("POST", API + "train", body)
            if code == 202:
                return answer["id"]
            if code == 409:
                return answer["run_id"]
            if code not in (0, 502, 503) or time.monotonic() > deadline:
                raise RuntimeError(f"train request refused: {code} {answer}")
            self.log(f"train request answered {code}; retrying")
            time.sleep(2)

    def training_chaos(self) -> dict:
        """Kill the worker mid-run; check the run fails, a new run succeeds; then corrupt + promote."""
        import psycopg

        result = {"runs_failed": 0, "runs_recovered": 0, "served_after_corruption": None, "refused": False}
        run_id = self.submit_training({"timesteps": self.args.kill_timesteps, "dataset": "eurusd_1h"})
        with psycopg.connect(self.direct_db, autocommit=True) as db:
            row = lambda: db.execute("SELECT status, timesteps_done, error FROM training_trainingrun WHERE id = %s", [run_id]).fetchone()  # noqa: E731
            self._wait(lambda: row()[0] == "running" and row()[1] > 0, 300, "the training run to make progress")
            self.worker.kill()
            self.log(f"SIGKILL Celery worker during training run {run_id} ({row()[1]} timesteps done)")
            self.worker.start()
            self._wait(lambda: row()[0] == "failed", 120, "the lost run to be failed")
            result["runs_failed"] = 1
            self.log(f"run {run_id} failed: {row()[2][:80]}")
            second = self.submit_training({"timesteps": self.args.recover_timesteps, "dataset": "eurusd_1h", "seed": 1})
            self._wait(lambda: db.execute("SELECT status FROM training_trainingrun WHERE id = %s", [second]).fetchone()[0] in ("succeeded", "failed"), 600, "the second run")
            status, metrics = db.execute("SELECT status, metrics FROM training_trainingrun WHERE id = %s", [second]).fetchone()
            if status != "succeeded":
                raise RuntimeError(f"the recovery run {second} {status}")
            result["runs_recovered"] = 1
            new_version = metrics["version"]
            self.log(f"run {second} succeeded: v{new_version}")
            runtime_path = db.execute("SELECT runtime_path FROM training_modelversion WHERE version = %s", [new_version]).fetchone()[0]
        raw = bytearray(Path(runtime_path).read_bytes())
        for i in range(0, len(raw), max(1, len(raw) // 64)):
            raw[i] ^= 0xFF
        Path(runtime_path).write_bytes(bytes(raw))
        self.log(f"corrupted v{new_version}'s runtime artifact on disk; promoting it and restarting web and subscriber")
        code, body = self.http("POST", API + f"models/{new_version}/promote", {"reason": "chaos: promote a corrupted artifact"})
        # A process that loaded the version before the corruption serves its verified copy from
        # memory; processes that start now must read the file, refuse it and keep v{good}.
        self.subscriber.stop()
        self.subscriber.start()
        os.kill(self.web.pid, signal.SIGHUP)  # gunicorn: replace the workers
        time.sleep(5)
        # The database cut may fall here (status answers 503 then): ask until status can answer.
        deadline = time.monotonic() + 120
        while True:
            try:
                code, status = self.http("GET", API + "status")
            except OSError:  # web restarting its workers
                code, status = 0, {}
            if code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        result.update(
            corrupted_version=new_version, promote_status=code, champion_version=status.get("champion_version"),
            served_after_corruption=status.get("served_version"), load_error=status.get("load_error", ""),
        )
        result["refused"] = "sha256" in (status.get("load_error") or "") and status.get("served_version") == str(self.good_version)
        self.log(f"status: champion v{status.get('champion_version')}, served {status.get('served_version')}, load_error {status.get('load_error', '')[:90]!r}")
        return result

    # -- audit ------------------------------------------------------------------------------------------
    def audit(self, traffic: Traffic, training: dict, post_corruption_ids: list[str]) -> dict:
        import psycopg
        import redis

        from decisions.streams import codec

        client = redis.Redis.from_url(self.redis.url, decode_responses=True)
        dead = client.xrange(codec.stream_key(codec.DEAD_LETTER, self.prefix))
        dead_ids = set()
        for _, fields in dead:
            payload = json.loads(fields["payload"])
            dead_ids.add((payload.get("stream", ""), payload.get("entry_id") or payload.get("id")))
        signal_stream = codec.stream_key(codec.SIGNAL_GENERATED, self.prefix)
        close_stream = codec.stream_key(codec.POSITION_CLOSED, self.prefix)
        published = client.xrange(codec.stream_key(codec.DECISION, self.prefix))
        published_ids = [json.loads(f["payload"])["decision_id"] for _, f in published]
        with psycopg.connect(self.direct_db, autocommit=True) as db:
            rows = db.execute(
                "SELECT stream_entry_id, decision_id::text, model_version, correlation_id FROM decisions_decision "
                "WHERE role = 'champion' AND source = 'stream'"
            ).fetchall()
            experiences = db.execute(
                "SELECT d.decision_id::text, e.stream_entry_id FROM decisions_experience e JOIN decisions_decision d ON d.decision_id = e.decision_id"
            ).fetchall()
        by_entry: dict[str, int] = {}
        for entry_id, *_ in rows:
            by_entry[entry_id] = by_entry.get(entry_id, 0) + 1
        lost = [e for e in traffic.signals if e not in by_entry]
        duplicated = sum(n - 1 for n in by_entry.values()) + (len(rows) - len({r[3] for r in rows}))
        poison_dead = sum(1 for e in traffic.poison if (signal_stream, e) in dead_ids)
        poison_closes_dead = sum(1 for e in traffic.poison_closes if (close_stream, e) in dead_ids)
        stray = [e for e in by_entry if e not in traffic.signals]
        paired = {d for d, _ in experiences}
        closes_unpaired = [d for d in traffic.closes if d not in paired]
        after = {r[0]: r[2] for r in rows if r[0] in set(post_corruption_ids)}
        served_after = sorted(set(after.values()))
        return {
            "signals": len(traffic.signals),
            "decisions": len(rows),
            "lost": len(lost),
            "duplicated": duplicated,
            "decisions_not_from_a_signal": len(stray),
            "dead_lettered": len(dead_ids),
            "poison_sent": len(traffic.poison) + len(traffic.poison_closes),
            "poison_dead_lettered": poison_dead + poison_closes_dead,
            "decision_events_published": len(published_ids),
            "decision_events_republished": len(published_ids) - len(set(published_ids)),
            "closes_sent": len(traffic.closes),
            "experiences_paired": len(experiences),
            "closes_unpaired": len(closes_unpaired),
            "subscriber_kills": 5,
            "redis_restarts": self.redis.restarts,
            "database_cut_seconds": self.args.cut_seconds,
            "training_runs_failed": training["runs_failed"],
            "training_runs_recovered": training["runs_recovered"],
            "corrupted_version": training.get("corrupted_version"),
            "corrupted_refused": training["refused"],
            "model_served_after_corruption": training["served_after_corruption"],
            "stream_decisions_after_corruption_by": served_after,
            "status_checks": self.status_checks,
            "status_lies": len(self.status_lies),
            "status_during_outage": self.status_outage_answers,
        }

    def drained(self, traffic: Traffic, extra: list[str]) -> bool:
        import psycopg

        with psycopg.connect(self.direct_db, autocommit=True) as db:
            decided = db.execute("SELECT count(*) FROM decisions_decision WHERE role='champion' AND source='stream'").fetchone()[0]
            experiences = db.execute("SELECT count(*) FROM decisions_experience").fetchone()[0]
        return decided >= len(traffic.signals) and experiences >= len(traffic.closes) and decided >= len(traffic.closes)

    def teardown(self) -> None:
        for service in (getattr(self, "subscriber", None), getattr(self, "worker", None), getattr(self, "web", None)):
            if service is not None:
                service.stop(timeout=10)
        if hasattr(self, "redis"):
            self.redis.kill()
        if hasattr(self, "proxy"):
            self.proxy.close()
        if self.args.drop_database and hasattr(self, "direct_db"):
            database_drop(self.direct_db, self.args.database)


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rlv3-chaos-"))
    chaos = Chaos(args, work)
    stop = threading.Event()
    try:
        chaos.setup()
        traffic = Traffic()
        poison = max(10, args.signals // 100)
        producer = threading.Thread(target=produce_signals, kwargs=dict(
            redis_url=chaos.redis.url, prefix=chaos.prefix, count=args.signals, poison=poison, seconds=args.seconds,
            rng=random.Random(args.seed + 1), traffic=traffic), daemon=True)
        trader = threading.Thread(target=trade, kwargs=dict(
            redis_url=chaos.redis.url, prefix=chaos.prefix, rng=random.Random(args.seed + 2), traffic=traffic, stop=stop,
            poison_closes=3), daemon=True)
        watcher = threading.Thread(target=chaos.watch_status, args=(stop,), daemon=True)
        for t in (producer, trader, watcher):
            t.start()
        chaos.log(f"streaming {args.signals} signals + {poison} poison over {args.seconds:g}s")
        training_result: dict = {}
        trainer = threading.Thread(target=lambda: training_result.update(chaos.training_chaos()), daemon=True)
        trainer.start()
        # Faults at random moments of the streaming window: five subscriber kills, one Redis
        # restart, one 10 s database outage, in a random order.
        rng = chaos.rng
        plan = sorted([(rng.uniform(0.05, 0.95) * args.seconds, "kill") for _ in range(5)]
                      + [(rng.uniform(0.2, 0.5) * args.seconds, "redis"), (rng.uniform(0.55, 0.8) * args.seconds, "db")])
        kills = 0
        for at, fault in plan:
            wait = chaos.t0 + args.setup_offset + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if fault == "kill":
                kills += 1
                chaos.kill_subscriber(kills)
            elif fault == "redis":
                chaos.restart_redis()
            else:
                chaos.cut_database(args.cut_seconds)
        producer.join()
        chaos.log("all signals produced")
        trainer.join(timeout=900)
        if not training_result:
            raise RuntimeError("the training chaos did not finish")
        # Signals after the corrupted promotion must be decided by the previous good version.
        from decisions.streams import codec

        post = ExactlyOnceProducer(chaos.redis.url, codec.stream_key(codec.SIGNAL_GENERATED, chaos.prefix))
        post_ids = []
        prng = random.Random(args.seed + 3)
        for i in range(20):
            fields, correlation = _signal(prng, 10_000_000 + i)
            entry = post.add(fields)
            traffic.signals[entry] = correlation
            post_ids.append(entry)
        chaos._wait(lambda: chaos.drained(traffic, post_ids), args.drain_timeout, "the subscriber to drain")
        time.sleep(2)  # last closes of the last decisions
        chaos._wait(lambda: chaos.drained(traffic, post_ids), 60, "the last experiences")
        stop.set()
        trader.join(timeout=5)
        watcher.join(timeout=20)
        chaos.log("drained")
        result = chaos.audit(traffic, training_result, post_ids)
        result["events"] = chaos.events
        result["status_lie_examples"] = chaos.status_lies[:5]
        result["logs"] = str(work / "logs")
        return result
    finally:
        stop.set()
        chaos.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="Streaming window over which the signals and faults are spread.")
    parser.add_argument("--cut-seconds", type=float, default=10.0, help="How long PostgreSQL is unreachable.")
    parser.add_argument("--champion-timesteps", type=int, default=2048)
    parser.add_argument("--kill-timesteps", type=int, default=200_000, help="The training run that is killed (never finishes).")
    parser.add_argument("--recover-timesteps", type=int, default=2048)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--database", default="rlv3_chaos", help="PostgreSQL database created (fresh) for the run.")
    parser.add_argument("--drop-database", action="store_true", help="Drop the run's database afterwards.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="Leave bench/results/latest.json alone (the test suite's small run).")
    args = parser.parse_args(argv)
    args.setup_offset = 0.0
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlv3site.settings")
    import django

    django.setup()
    result = run(args)
    rows = [
        ["signals in", result["signals"]],
        ["decisions out", result["decisions"]],
        ["duplicates", result["duplicated"]],
        ["lost", result["lost"]],
        ["dead-lettered (poison sent)", f"{result['dead_lettered']} ({result['poison_sent']})"],
        ["experiences paired (closes sent)", f"{result['experiences_paired']} ({result['closes_sent']})"],
        ["decision events (republished)", f"{result['decision_events_published']} ({result['decision_events_republished']})"],
        ["subscriber SIGKILLs / Redis restarts / DB cut s", f"{result['subscriber_kills']} / {result['redis_restarts']} / {result['database_cut_seconds']:g}"],
        ["training runs failed / recovered", f"{result['training_runs_failed']} / {result['training_runs_recovered']}"],
        ["model served after corruption", f"v{result['model_served_after_corruption']} (v{result['corrupted_version']} refused: {result['corrupted_refused']})"],
        ["status checks (untruthful)", f"{result['status_checks']} ({result['status_lies']})"],
    ]
    print()
    print_table(f"chaos run: {result['signals']} signals", rows, headers=("measure", "value"))
    summary = {k: v for k, v in result.items() if k not in ("events",)}
    summary["machine"] = machine()
    if not args.no_record:
        record("chaos", summary)
    if args.json:
        emit_json(summary)
    ok = result["lost"] == 0 and result["duplicated"] == 0 and result["poison_dead_lettered"] == result["poison_sent"] \
        and result["corrupted_refused"] and result["status_lies"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
