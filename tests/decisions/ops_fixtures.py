"""Fixtures of the operator tests: a private heartbeat hash and a TCP proxy that can be cut."""

from __future__ import annotations

import socket
import threading
import uuid

import pytest


@pytest.fixture
def private_heartbeats(monkeypatch, redis_client, stream_prefix):
    """Subscriber heartbeats go to a hash private to this test (others' subscribers are invisible)."""
    import decisions.selectors
    import decisions.streams.consumer

    key = f"{stream_prefix}heartbeats"
    monkeypatch.setattr(decisions.selectors, "SUBSCRIBER_HEARTBEATS_KEY", key)
    monkeypatch.setattr(decisions.streams.consumer, "SUBSCRIBER_HEARTBEATS_KEY", key)
    yield key
    redis_client.delete(key)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``stop()`` cuts every connection (an outage)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, name=f"proxy-{uuid.uuid4().hex[:6]}", daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Close the listener and every open connection: clients see the server vanish."""
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._sockets.clear()
