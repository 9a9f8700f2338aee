import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from pvae.data import download


@pytest.fixture(autouse=True)
def _private_verification_cache(tmp_path_factory, monkeypatch):
    """Verification stamps go to a fresh folder, and the in-process memo starts empty."""
    monkeypatch.setenv("PVAE_CACHE_DIR", str(tmp_path_factory.mktemp("pvae-cache")))
    monkeypatch.setattr(download, "_VERIFIED", {})


@dataclass
class Route:
    body: bytes
    status: int = 200
    declared_length: int | None = None  # a Content-Length larger than the body: truncation


@dataclass
class LocalServer:
    """A threaded HTTP server on 127.0.0.1 serving ``routes`` (path -> Route)."""

    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    state = LocalServer(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            state.requests.append(self.path)
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(route.status)
            length = route.declared_length or len(route.body)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(route.body)
            if route.declared_length is not None:
                self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
