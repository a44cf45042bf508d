"""The HTTP/1.1 protocol the API is served with: uvicorn's httptools protocol with a bound on
a request's head (request line and headers).

httptools itself has no such bound (uvicorn's `h11_max_incomplete_event_size` applies to
its h11 protocol only): a client could send megabytes of headers, all held in memory before
authentication. Here the bytes received while a head is incomplete are counted; past the
bound the server answers 400 and closes the connection, and the app never sees the request.
The bound is uvicorn's `h11_max_incomplete_event_size` when set (`alkn serve` sets it from
ALKN_MAX_HEADER_BYTES, so `--http h11` gets the same bound), else ALKN_MAX_HEADER_BYTES.

Served with: `uvicorn api.app:app --http api.http_protocol:BoundedHttpToolsProtocol`.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from registry.settings import get_settings


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        configured = self.config.h11_max_incomplete_event_size
        self.max_head_bytes = configured if configured is not None \
            else get_settings().max_header_bytes
        self._head_bytes: int | None = 0  # None while a body (or nothing) is expected

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Counted after parsing: a chunk that completes the head (and carries some of the
        # body) does not count; one that leaves the head incomplete counts whole.
        if self._head_bytes is None or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self.logger.warning("request head larger than %d bytes; connection closed",
                                self.max_head_bytes)
            self.send_400_response("Request line and headers too large.")

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0  # a keep-alive connection: the next request's head
