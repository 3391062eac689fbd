"""Scripted OpenAI-compatible servers on loopback, for tests of the HTTP clients (evaluate's and
build-data's openai backends, the generate client): the request's JSON in, a reply out."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator, Mapping


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """A request handler with ``read_json`` and ``reply``; a test's subclass writes ``do_POST``."""

    def read_json(self) -> dict:
        """The request's body, parsed."""
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def reply(self, body, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        """``body`` (bytes as they are, anything else as JSON) with ``status`` and ``headers``.
        A client that gave up before the reply (its timeout) is no error of the server's."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if not isinstance(body, bytes):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:  # no line on stderr for each request
        pass


@contextlib.contextmanager
def serving(
    handler: type[http.server.BaseHTTPRequestHandler], threaded: bool = True, poll_s: float = 0.5
) -> Iterator[str]:
    """``handler`` served on 127.0.0.1 at a free port (one thread a request where ``threaded``,
    else one request at a time, in order); yields the base URL ``http://127.0.0.1:PORT``; the
    server is shut down and closed after."""
    server_class = http.server.ThreadingHTTPServer if threaded else http.server.HTTPServer
    server = server_class(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(poll_s,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
