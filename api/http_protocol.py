"""The HTTP/1.1 protocol the API is served with: uvicorn's httptools protocol with a bound on
a request's head (request line and headers).

httptools itself has no such bound (uvicorn's `h11_max_incomplete_event_size` applies to
its h11 protocol only): a client could send megabytes of headers, all held in memory before
authentication. Here the head's bytes are counted (those parsed, and the chunks received
while it is incomplete); past the bound the server answers 400 and closes the connection,
and the app never sees the request.
The bound is uvicorn's `h11_max_incomplete_event_size` when set (`alkn serve` sets it from
ALKN_MAX_HEADER_BYTES, so `--http h11` gets the same bound), else ALKN_MAX_HEADER_BYTES.

Served with: `uvicorn api.app:app --http api.http_protocol:BoundedHttpToolsProtocol`.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from config.settings import get_settings


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops, uvicorn answers 400 and closes."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        configured = self.config.h11_max_incomplete_event_size
        self.max_head_bytes = configured if configured is not None \
            else get_settings().max_header_bytes
        self._head_bytes: int | None = None  # None unless a head is being received
        self._parsed = 0  # bytes of the head's line and headers parsed so far
        self._began = False  # a request began in the chunk being parsed

    def data_received(self, data: bytes) -> None:
        self._began = False
        super().data_received(data)
        # What httptools holds unparsed (one huge header) is counted in whole chunks,
        # after parsing: not the chunk in which a request begins (it may end the previous
        # request's body) nor one that completes the head, but every chunk that leaves the
        # head incomplete. So at most one read (256 KiB) more than the bound is ever held.
        if self._head_bytes is None or self._began or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self.logger.warning("request head larger than %d bytes; connection closed",
                                self.max_head_bytes)
            self.send_400_response("Request line and headers too large.")

    def _count(self, n: int) -> None:
        self._parsed += n
        if self._parsed > self.max_head_bytes:
            raise HeadTooLarge(f"request head larger than {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._parsed, self._began = 0, 0, True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()
