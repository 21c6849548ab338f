"""A loopback stand-in for arXiv's Atom API, shared by the papers tests (no public host is ever looked up)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures" / "arxiv"


def feed(name: str) -> bytes:
    """A hand-written Atom feed from tests/fixtures/arxiv."""
    return (FIXTURES / name).read_bytes()


class FakeArxiv:
    """A loopback stand-in for export.arxiv.org/api/query.

    `mode` is "serve" (answer `status` with `body`), "stall" (read the request, never
    answer) or "drip" (send headers, then one byte every 0.2 s: a socket timeout never fires).
    """

    def __init__(self) -> None:
        self.body = feed("search_muon.xml")
        self.status = 200
        self.mode = "serve"
        self.release = threading.Event()
        self.requests: list[tuple[float, dict[str, list[str]]]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with fake._lock:
                    fake.requests.append((time.monotonic(), parse_qs(urlsplit(self.path).query)))
                if fake.mode == "stall":
                    fake.release.wait(30)
                    return
                if fake.mode == "drip":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/atom+xml")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    while not fake.release.wait(0.2):
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/atom+xml; charset=UTF-8")
                self.send_header("Content-Length", str(len(fake.body)))
                self.end_headers()
                self.wfile.write(fake.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url_format = f"http://127.0.0.1:{self.port}/api/query?{{}}"
        self._stopped = False
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def count(self) -> int:
        """How many requests arrived so far."""
        with self._lock:
            return len(self.requests)

    def stop(self) -> None:
        """Stop answering and close the port (later connections are refused)."""
        if self._stopped:
            return
        self._stopped = True
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
