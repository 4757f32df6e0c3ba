"""An image host on 127.0.0.1, well-behaved or not, for URL events under test and benchmarks.

Routes (the rest of the path is free, so every event can have its own URL):

    /img/NAME        the bytes registered under NAME (typed by NAME's extension), or 404
    /hole/...        accepts, reads the request, never answers (until the client gives up)
    /trickle/...     a 200 with a large Content-Length, then one byte every 0.25 s (slowloris)
    /status/CODE/... an empty response with that status
    /redirect?to=URL a 302 to URL
    /loop/N          a 302 to /loop/N+1, forever
    /gzip/NAME       NAME's bytes gzip-compressed, with Content-Encoding: gzip
    /huge/...        declares Content-Length 10**12

The service only fetches from here with MODERATOR_PIPELINE__FETCH_ALLOW_PRIVATE=true (tests
only: the SSRF guard refuses loopback by default). Handlers run in threads, so a black hole
ties up a thread, never the test's event loop. `ImageServerProcess` runs one in a process
of its own (`python -m moderator.harness.imageserver FOLDER PORT`), for a benchmark whose
own process must spend no CPU on serving images.
"""

from __future__ import annotations

import gzip
import mimetypes
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

from moderator.harness.fleet import child_env
from moderator.harness.ports import free_port, wait_accepting

_TRICKLE_INTERVAL_S = 0.25
_TRICKLE_LENGTH = 100_000
_HOLD_LIMIT_S = 120.0  # a black hole gives up eventually, so threads never pile up forever


class _Server(ThreadingHTTPServer):
    # Hundreds of fetches may connect at once; the default backlog (5) would turn some of
    # them into connect timeouts that have nothing to do with the route being tested.
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up on a black hole or a trickle is the expected end of those
        # routes; anything else is still printed by the default handler.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def _image_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "image/jpeg"


class ImageServer:
    """Serves registered images and the hostile routes above; use as a context manager."""

    def __init__(self, port: int = 0) -> None:
        self.images: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()  # requests per first path segment
        self._lock = threading.Lock()
        self._closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.route(self)

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per request would drown the test output

        self._httpd = _Server(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def route(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        segments = [s for s in parts.path.split("/") if s]
        head = segments[0] if segments else ""
        with self._lock:
            self.hits[head] += 1
        try:
            if head == "img" and len(segments) > 1 and segments[1] in self.images:
                self._send(handler, 200, self.images[segments[1]], _image_type(segments[1]))
            elif head == "hole":
                self._hold(handler)
            elif head == "trickle":
                self._trickle(handler)
            elif head == "status" and len(segments) > 1 and segments[1].isdigit():
                self._send(handler, int(segments[1]), b"", "text/plain")
            elif head == "redirect":
                target = parse_qs(parts.query).get("to", ["/"])[0]
                self._send(handler, 302, b"", "text/plain", {"Location": target})
            elif head == "loop":
                n = int(segments[1]) if len(segments) > 1 and segments[1].isdigit() else 0
                self._send(handler, 302, b"", "text/plain", {"Location": f"/loop/{n + 1}"})
            elif head == "gzip" and len(segments) > 1 and segments[1] in self.images:
                body = gzip.compress(self.images[segments[1]])
                encoding = {"Content-Encoding": "gzip"}
                self._send(handler, 200, body, _image_type(segments[1]), encoding)
            elif head == "huge":
                handler.send_response(200)
                handler.send_header("Content-Type", "image/jpeg")
                handler.send_header("Content-Length", str(10**12))
                handler.end_headers()
                handler.wfile.write(b"\xff\xd8\xff" + b"\0" * 1024)
            else:
                self._send(handler, 404, b"", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first: that is the point of most routes here

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _hold(self, handler: BaseHTTPRequestHandler) -> None:
        """Say nothing until the client closes the connection (or the server stops)."""
        deadline = time.monotonic() + _HOLD_LIMIT_S
        sock = handler.connection
        while not self._closing.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable and not sock.recv(4096):
                break  # the client hung up
        handler.close_connection = True

    def _trickle(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(_TRICKLE_LENGTH))
        handler.end_headers()
        handler.wfile.flush()
        for _ in range(_TRICKLE_LENGTH):
            if self._closing.wait(_TRICKLE_INTERVAL_S):
                break
            handler.wfile.write(b"\0")
            handler.wfile.flush()
        handler.close_connection = True


class ImageServerProcess:
    """`images` (name → bytes, written to `folder`) served as /img/NAME by an `ImageServer` in
    a process of its own, so that serving them costs the caller's process nothing."""

    def __init__(self, images: Mapping[str, bytes], folder: Path) -> None:
        for name, data in images.items():
            (folder / name).write_bytes(data)
        self.port = free_port()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moderator.harness.imageserver", str(folder), str(self.port)],
            env=child_env({}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_accepting(self.port, 10.0, "the local image server")
        except BaseException:
            self.stop()
            raise

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/img/{name}"

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


def serve_folder(folder: Path, port: int) -> None:
    """Serve every file in `folder` as /img/NAME on `port` until the process is killed."""
    with ImageServer(port) as server:
        server.images.update({p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})
        threading.Event().wait()


if __name__ == "__main__":
    serve_folder(Path(sys.argv[1]), int(sys.argv[2]))
