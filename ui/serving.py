"""How the server answers a new browser: the socket and the page links' first request.

``app.py`` serves ``st.App(..., lifespan=lifespan, middleware=middleware())``. A new visitor's
browser (a teammate opening a link) starts with an empty cache: it fetches Streamlit's front end
(~60 script files, then one more group per kind of widget the page draws), asks the server
whether it is up, opens the websocket, and only then sees the page. Two things made that slower
than it needs to be (``benchmarks/bench_app.py``):

- **Small responses waited 40 ms each** (:func:`no_delay`). Streamlit's server binds its
  listening socket itself, as ``socket.socket(family)`` (protocol 0), and asyncio only turns off
  Nagle's algorithm on a TCP socket whose protocol says TCP; so on a kept-alive connection the
  body of a small file (sent after its headers) waited for the browser's delayed ACK, ~40 ms, for
  each of the front end's small script files. The accepted connections inherit TCP_NODELAY from
  the listening socket (Linux), which this sets once at server start.
- **A page link probed a wrong address first** (:class:`DeepLinkBase`). Opened at
  ``/Adapter_audit``, Streamlit's front end does not know whether the app lives at ``/`` or at
  ``/Adapter_audit/``; it asks ``/Adapter_audit/_stcore/health`` first, gets a 404, waits 100 ms
  and asks ``/_stcore/health``. The index page served for a page's own address now names the
  app's base address (``window.__streamlit.BACKEND_BASE_URL``, Streamlit's setting for hosts
  that embed it: the parent of the page's address, so a path prefix such as
  ``server.baseUrlPath`` or a proxy's is kept), and the first probe is the right one. That
  relies on the front end's internals, so it is served only on the Streamlit versions it was
  tested on (``deep_link_base`` in :mod:`ui.compat`).

Neither changes what a page shows; both only change how fast the same bytes arrive.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, MutableMapping

from . import compat
from .compat import BASE_SCRIPT
from .navigation import available_pages

__all__ = ["no_delay", "DeepLinkBase", "BASE_SCRIPT", "page_names", "middleware", "lifespan"]

_LOGGER = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _process_fds() -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return list(range(3, 1024))


def no_delay(fds: Iterable[int] | None = None) -> int:
    """Turn off Nagle's algorithm on this process's listening TCP sockets; returns how many.

    Call at server start (the lifespan), when the only listening sockets of the process are the
    server's. Each is reached through a duplicate of its descriptor (closed again; the server's
    own socket object is untouched). A descriptor that is not a listening TCP socket is left
    alone; an error on one is skipped, never raised.
    """
    count = 0
    for fd in _process_fds() if fds is None else fds:
        try:
            dup = os.dup(fd)
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=dup)  # takes over dup (closed with sock)
        except OSError:  # not a socket
            os.close(dup)
            continue
        with sock:
            try:
                if (sock.type == socket.SOCK_STREAM
                        and sock.family in (socket.AF_INET, socket.AF_INET6)
                        and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    count += 1
            except OSError:
                continue
    return count




def page_names() -> frozenset[str]:
    """The last path segment of every page's address (``Adapter_audit``; not the home page)."""
    return frozenset(page.url_path.rsplit("/", 1)[-1] for page in available_pages()
                     if page.url_path != "/")


class DeepLinkBase:
    """ASGI middleware: the index page served at a page's address (``/Adapter_audit``, also
    under a path prefix) carries :data:`BASE_SCRIPT` at the end of its ``<head>``.

    Only a ``GET`` whose last path segment is one of ``pages`` and whose answer is a ``200
    text/html`` is changed: asked for uncompressed (as Streamlit serves the root document), its
    ``Content-Length`` follows, and it carries no ``ETag`` or ``Last-Modified`` of the file (a
    revalidation gets the page again). Everything else passes through untouched, streamed as
    it comes.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *,
                 pages: Iterable[str] | None = None) -> None:
        self.app = app
        self.pages = page_names() if pages is None else frozenset(pages)

    def _wants(self, scope: Scope) -> bool:
        if scope.get("type") != "http" or scope.get("method") != "GET":
            return False
        path = str(scope.get("path", ""))
        return path.rstrip("/").rsplit("/", 1)[-1] in self.pages and not path.endswith("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._wants(scope):
            await self.app(scope, receive, send)
            return
        # served uncompressed, as Streamlit serves the root document (its gzip layer is inside)
        scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", [])
                                      if k.lower() != b"accept-encoding"]}
        start: Message | None = None
        body: list[bytes] = []
        passing = False

        async def capture(message: Message) -> None:
            nonlocal start, passing
            if passing:
                await send(message)
                return
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if (message.get("status") != 200 or b"content-encoding" in headers
                        or not headers.get(b"content-type", b"").startswith(b"text/html")):
                    passing = True
                    await send(message)
                    return
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            page = b"".join(body)
            at = page.find(b"</head>")
            if at >= 0:
                page = page[:at] + BASE_SCRIPT + page[at:]
            # not the file's own validators: a revalidation must not keep the file without it
            headers = [(k, v) for k, v in start.get("headers", [])
                       if k.lower() not in (b"content-length", b"etag", b"last-modified")]
            headers.append((b"content-length", str(len(page)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": page, "more_body": False})

        await self.app(scope, receive, capture)


def middleware() -> list[Any]:
    """The middleware list for ``st.App``: :class:`DeepLinkBase`, on the Streamlit versions its
    reliance on the front end was tested on (``deep_link_base`` in :mod:`ui.compat`), else none."""
    from starlette.middleware import Middleware

    return [Middleware(DeepLinkBase)] if compat.usable("deep_link_base") else []


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """``st.App`` lifespan: :func:`no_delay` on the server's socket, then the warm-up's
    (:func:`ui.preload.lifespan`)."""
    from .preload import lifespan as preload_lifespan

    _LOGGER.info("no_delay: %d listening sockets", no_delay())
    async with preload_lifespan(app):
        yield
