"""A total time limit on one http(s) download, headers included.

urllib's ``timeout`` bounds each socket operation only: a server that sends a byte every
few seconds, in its headers or in its body, keeps every read alive and the download going
for hours. A ``Deadline`` shuts down every socket the download opens (redirects included)
when its time is up, so the read waiting on it returns at once and the caller can say the
download took too long (``Deadline.expired``).
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.request
from contextlib import suppress
from typing import Any


class Deadline:
    """Started at creation; ``cancel()`` once the download is over."""

    def __init__(self, timeout: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self.expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the deadline (at once if it has passed)."""
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            self.expire()

    def expire(self) -> None:
        with self._lock:
            self.expired, sockets = True, list(self._sockets)
        for sock in sockets:
            with suppress(OSError):  # already closed
                # The plain socket's shutdown, also for TLS: ends the blocked read at once
                # without touching the TLS state the reading thread is using.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class _Watched:
    """Mixed into an HTTP(S)Connection: its socket is watched by the download's deadline."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.deadline.watch(self.sock)  # type: ignore[attr-defined]


class _WatchedHttp(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHttps(_Watched, http.client.HTTPSConnection):
    pass


class _DeadlineHandler:
    """Mixed into urllib's HTTP(S)Handler: every connection it opens is watched."""

    deadline: Deadline

    def do_open(self, http_class, req, **kwargs):
        watched = _WatchedHttps if issubclass(http_class, http.client.HTTPSConnection) else _WatchedHttp
        return super().do_open(watched, req, deadline=self.deadline, **kwargs)  # type: ignore[misc]


class _HttpHandler(_DeadlineHandler, urllib.request.HTTPHandler):
    pass


class _HttpsHandler(_DeadlineHandler, urllib.request.HTTPSHandler):
    pass


def opener(deadline: Deadline, *handlers: Any) -> urllib.request.OpenerDirector:
    """urllib.request.build_opener(*handlers) whose http(s) connections ``deadline`` watches."""
    watched = [_HttpHandler(), _HttpsHandler()]
    for h in watched:
        h.deadline = deadline
    return urllib.request.build_opener(*handlers, *watched)
