"""A TCP proxy between schoolgate and PostgreSQL that a test cuts: a database outage without
touching the shared server (tests/radius/test_outage_spool.py, tests/portal/test_sign_outage.py)."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

from sqlalchemy.engine import make_url


def through(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


class CuttableProxy:
    """A TCP forwarder on a free loopback port; `cut()` drops every connection and refuses
    new ones (accepts and closes them at once) until `restore()`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_now = False
        self.pairs: dict[socket.socket, socket.socket] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        registered: set[socket.socket] = set()
        while not self.stopping:
            with self.lock:
                for sock in list(self.pairs):
                    if sock not in registered:
                        selector.register(sock, selectors.EVENT_READ)
                        registered.add(sock)
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    if self.cut_now:
                        client.close()
                        continue
                    try:
                        upstream = socket.create_connection(self.target, timeout=2)
                    except OSError:
                        client.close()
                        continue
                    with self.lock:
                        self.pairs[client] = upstream
                        self.pairs[upstream] = client
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                peer = self.pairs.get(sock)
                if not data or peer is None:
                    self._close(sock, selector, registered)
                    continue
                try:
                    peer.sendall(data)
                except OSError:
                    self._close(sock, selector, registered)
            if self.cut_now:
                for sock in list(self.pairs):
                    self._close(sock, selector, registered)

    def _close(
        self, sock: socket.socket, selector: selectors.BaseSelector, registered: set[socket.socket]
    ) -> None:
        with self.lock:
            peer = self.pairs.pop(sock, None)
            if peer is not None:
                self.pairs.pop(peer, None)
        for each in (sock, peer):
            if each is None:
                continue
            if each in registered:
                selector.unregister(each)
                registered.discard(each)
            with contextlib.suppress(OSError):
                each.close()

    def cut(self) -> None:
        """Cut, and return once every connection through the proxy is closed."""
        self.cut_now = True
        deadline = time.monotonic() + 5
        while self.pairs and time.monotonic() < deadline:
            time.sleep(0.01)

    def restore(self) -> None:
        self.cut_now = False

    def close(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        self.listener.close()
