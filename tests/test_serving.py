"""Server tuning for a new visitor's first render (``ui.serving``): the socket and page links.

- :func:`ui.serving.no_delay` on a real listening socket made as Streamlit makes its own
  (``socket.socket(family)``, protocol 0, which asyncio leaves with Nagle's algorithm on): the
  connections it accepts send small responses at once.
- :class:`ui.serving.DeepLinkBase` in front of Starlette's real static files (Streamlit's own
  ``index.html``) and its gzip layer, driven through the ASGI protocol: the index page served at
  a page's address names the app's base address; nothing else changes.

The browser side (a page link's first probe goes to the right address, under a path prefix
too) is in ``tests/e2e/test_share_e2e.py``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ui import compat, serving

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def listener():
    """A listening TCP socket made as Streamlit makes its server socket."""
    sock = socket.socket(family=socket.AF_INET)  # protocol 0, as in Streamlit's _bind_socket
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux: reads /proc/self/fd")
def test_no_delay_sets_the_listening_socket_only(listener):
    """Only the listening TCP socket gets TCP_NODELAY; a connected socket, a pipe and a closed
    descriptor are left as they were, and no descriptor is leaked."""
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    read, write = os.pipe()
    closed = os.dup(read)
    os.close(closed)
    try:
        assert listener.getsockopt(*NODELAY) == 0  # asyncio would leave it so: protocol 0
        before = _open_fds()
        count = serving.no_delay([listener.fileno(), conn.fileno(), read, closed])
        assert count == 1
        assert listener.getsockopt(*NODELAY) != 0
        assert conn.getsockopt(*NODELAY) == 0
        assert _open_fds() == before
        os.write(write, b"x")
        assert os.read(read, 1) == b"x"  # the pipe still works
        # the whole process: the listener is found among its descriptors
        assert serving.no_delay() >= 1
    finally:
        for s in (client, conn):
            s.close()
        os.close(read)
        os.close(write)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux: reads /proc/self/fd")
def test_accepted_connections_inherit_it(listener):
    """A connection accepted after :func:`no_delay` has TCP_NODELAY (Linux copies it from the
    listening socket), so a small answer sent as headers then body is not held back for the
    client's delayed ACK (~40 ms a request on a kept-alive connection before); one accepted
    before keeps what it had. Answers still arrive whole."""
    early_client = socket.create_connection(listener.getsockname())
    early, _ = listener.accept()
    serving.no_delay([listener.fileno()])
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    try:
        assert conn.getsockopt(*NODELAY) != 0
        assert early.getsockopt(*NODELAY) == 0
        for _ in range(3):
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            got = b""
            while not got.endswith(b"\r\n\r\n"):
                got += conn.recv(1024)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")  # headers, then
            conn.sendall(b"hello")                                            # a small body
            answer = b""
            while not answer.endswith(b"hello"):
                answer += client.recv(1024)
            assert answer == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    finally:
        for s in (early_client, early, client, conn):
            s.close()


# ------------------------------------------------------------------ DeepLinkBase (ASGI)

def _static_app():
    """Starlette's static files over Streamlit's own front end (its ``index.html``), behind
    Starlette's gzip layer, with :class:`DeepLinkBase` in front, as ``st.App`` stacks them."""
    import streamlit
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.staticfiles import StaticFiles

    static = Path(streamlit.__file__).parent / "static"
    files = StaticFiles(directory=static, html=True)

    async def app(scope, receive, send):  # the SPA fallback: unknown paths get index.html
        if scope["path"].startswith("/static/"):
            await files(scope, receive, send)
            return
        await files({**scope, "path": "/index.html"}, receive, send)

    return serving.DeepLinkBase(GZipMiddleware(app, minimum_size=500),
                                pages=("Adapter_audit", "Fleet")), static


def _get(run_async, app, path: str, *, method: str = "GET", gzip: bool = True):
    """(status, headers, body) of one request through the ASGI app."""
    import asyncio

    sent: list[dict] = []
    asked: list[bool] = []

    async def receive():  # the request once, then (as a server does) nothing until it ends
        if not asked:
            asked.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        while not any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent):
            await asyncio.sleep(0.001)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    headers = [(b"host", b"localhost")] + ([(b"accept-encoding", b"gzip, deflate")] if gzip else [])
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "headers": headers, "scheme": "http",
             "server": ("localhost", 80), "client": ("127.0.0.1", 1), "http_version": "1.1",
             "asgi": {"version": "3.0"}}
    run_async(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


@pytest.mark.parametrize("path", ["/Adapter_audit", "/Fleet", "/prefix/Adapter_audit"])
def test_a_page_address_names_the_base(run_async, path):
    """The index page at a page's address (under a path prefix too) carries the base-address
    script before ``</head>``, uncompressed, with a matching Content-Length and without the
    file's validators; the rest of the page is Streamlit's own."""
    app, static = _static_app()
    status, headers, body = _get(run_async, app, path)
    original = (static / "index.html").read_bytes()
    assert status == 200
    assert "content-encoding" not in headers
    assert int(headers["content-length"]) == len(body) == len(original) + len(compat.BASE_SCRIPT)
    assert "etag" not in headers and "last-modified" not in headers
    assert body.replace(compat.BASE_SCRIPT, b"", 1) == original
    assert body.index(compat.BASE_SCRIPT) < body.index(b"</head>")


@pytest.mark.parametrize("path", ["/", "/Unknown_page", "/Adapter_audit/_stcore/health",
                                  "/static/js/../../index.html", "/Adapter_auditx"])
def test_other_addresses_pass_through(run_async, path):
    """The home page, unknown paths and everything under a page's address are Streamlit's
    answers byte for byte (compressed when it compresses them)."""
    app, _ = _static_app()
    got = _get(run_async, app, path)
    inner = _get(run_async, app.app, path)
    assert got == inner
    assert compat.BASE_SCRIPT not in got[2]


def test_other_methods_and_non_html_pass_through(run_async):
    """A HEAD of a page's address, and an answer that is not HTML at an address named like a
    page (a script file stands in), are untouched."""
    app, static = _static_app()
    assert _get(run_async, app, "/Adapter_audit", method="HEAD") == _get(
        run_async, app.app, "/Adapter_audit", method="HEAD")
    name = next(p.name for p in (static / "static" / "js").glob("index.*.js"))
    script_app = serving.DeepLinkBase(app.app, pages=(name,))
    got = _get(run_async, script_app, f"/static/js/{name}", gzip=False)
    assert got == _get(run_async, app.app, f"/static/js/{name}", gzip=False)
    assert got[0] == 200 and compat.BASE_SCRIPT not in got[2]


def test_page_names_are_the_registered_pages():
    """The middleware's pages are the registry's (every page but the home page), named as
    Streamlit's page discovery names their addresses."""
    from ui.navigation import available_pages

    names = serving.page_names()
    assert names == {Path(p.path).stem.split("_", 1)[1] for p in available_pages() if p.path != "app.py"}
    assert "Adapter_audit" in names and "Fleet" in names
