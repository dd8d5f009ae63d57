"""A loopback HTTP proxy in front of an S3-compatible server that injects storage faults.

Point a client's ``endpoint_url`` at :attr:`FaultProxy.endpoint_url`; requests are
forwarded to the real server, except those whose path contains a key of
:attr:`FaultProxy.rules`, which get the rule's fault:

* ``"slowdown"`` — ``503 SlowDown`` with S3's XML error body (what throttling looks like);
* ``"reset"`` — the connection is closed without an answer (a reset);
* ``"stall"`` — the answer is held back ``stall_s`` seconds, then forwarded.

Rules can change while clients run (e.g. clear them to let a rerun succeed). Counts of
forwarded and faulted requests are kept per rule, to assert what the client saw.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FaultProxy"]

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class FaultProxy:
    """A threaded forwarding proxy on 127.0.0.1 (use as a context manager, or ``stop``)."""

    def __init__(self, target: str, *, stall_s: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(target)
        self.target_host = parsed.hostname or "127.0.0.1"
        self.target_port = parsed.port or 80
        self.stall_s = stall_s
        self.rules: dict[str, str] = {}
        self.faults: dict[str, int] = {}
        self.forwarded = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rule = proxy._rule_for(self.path)
                if rule == "reset":
                    proxy._count(rule)
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    self.close_connection = True
                    self.connection.close()
                    return
                if rule == "slowdown":
                    proxy._count(rule)
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN_BODY)))
                    self.end_headers()
                    self.wfile.write(SLOWDOWN_BODY)
                    return
                if rule == "stall":
                    proxy._count(rule)
                    time.sleep(proxy.stall_s)
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                answer = conn.getresponse()
                payload = answer.read()
                with proxy._lock:
                    proxy.forwarded += 1
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _rule_for(self, path: str) -> str | None:
        with self._lock:
            for pattern, mode in self.rules.items():
                if pattern in urllib.parse.unquote(path):
                    return mode
        return None

    def _count(self, mode: str) -> None:
        with self._lock:
            self.faults[mode] = self.faults.get(mode, 0) + 1

    def stop(self) -> None:
        """Shut the proxy down (idempotent)."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
