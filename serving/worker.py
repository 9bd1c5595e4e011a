"""gunicorn's sync worker behind a buffering front of its own: slow or broken clients cost a connection,
not a worker.

Why: a sync worker reads a request with blocking reads, so a client that sends its headers a byte at a
time, or declares a longer body than it sends, holds the worker until gunicorn's timeout kills it; two
such clients took both workers (and /health) down. A buffering proxy in front fixes that, but the
embedded stack and the chart have none, so the worker does the proxy's part itself.

How: one non-blocking loop per worker (a selector over the listeners, the worker's wake-up pipe and
the connections still arriving) reads each request into memory until `RequestBuffer` says it is
complete; only then does the normal SyncWorker path (gunicorn's parser, the WSGI app) run it, reading
from that buffer, never from the socket. Connections that are late (SERVING_HEADER_TIMEOUT_SECONDS from
accept to the end of the headers, SERVING_BODY_TIMEOUT_SECONDS from there to the end of the body) or
malformed are answered by the worker with JSON `{"error": ...}` and closed; the app never sees them.
One request per connection, as the sync worker does. Closing lingers (RFC 9112 9.6) inside the loop
too (after a refusal long enough to swallow the refused body), so a client that never closes costs no
worker time either. On a graceful stop, requests still arriving get DRAIN_SECONDS to complete.

Bounds per worker: at most gunicorn's `worker_connections` connections in progress (the worker stops
accepting while full), at most `max(64 MiB, 8 × SERVING_MAX_BODY_BYTES)` request bytes buffered
(beyond that, 503 with Retry-After), request headers up to 64 KiB (431).
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import ssl
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from gunicorn import http, util
from gunicorn.http import errors as gerrors
from gunicorn.workers.sync import SyncWorker

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; chunked trailers separately
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions
LINGER_SECONDS = 2.0  # like gunicorn's close_graceful: wait this long for the client's FIN after ours
LINGER_MAX_BYTES = 64 * 1024  # after an answer; after a refusal the rest of the body may follow (below)
REFUSED_BODY_DRAIN_BYTES = 16 * 1024 * 1024  # so that a client sending it all first still reads the 4xx
DRAIN_SECONDS = 2.0  # on a graceful stop, requests still arriving get this long (slow ones are cut)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEX = frozenset(b"0123456789abcdefABCDEF")
_TE_BEFORE_CHUNKED = (b"gzip", b"deflate", b"compress", b"identity")  # what gunicorn itself accepts


@dataclass(frozen=True)
class Complete:
    """The request is all there: the first `end` bytes of the buffer (anything after it is ignored)."""

    end: int


@dataclass(frozen=True)
class Reject:
    """Answer `status` with `message` and close; the request never reaches the app."""

    status: int
    message: str


class RequestBuffer:
    """Where one HTTP/1.x request ends, from bytes as they arrive: `feed(data)` returns None (need more),
    Complete or Reject. It checks only what it needs for framing (the headers' end, Content-Length,
    Transfer-Encoding: chunked, Expect) and leaves the full parse to gunicorn. The framing rules follow
    gunicorn's parser, so both agree on where the body ends; ambiguous framing is refused (400).

    After a feed, `interim` may hold bytes to send at once (`100 Continue`, when the client waits for
    it and the declared body is acceptable); `take_interim()` hands them over once."""

    def __init__(self, max_body: int, max_head: int = MAX_HEAD_BYTES) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self.data = bytearray()
        self.head_end: int | None = None  # offset just past the blank line that ends the headers
        self.content_length: int | None = None
        self.chunked = False
        self.body_received = 0  # body bytes so far (decoded, for chunked)
        self.interim = b""
        self.result: Complete | Reject | None = None
        self._state = "head"
        self._pos = 0  # where parsing resumes
        self._chunk_left = 0
        self._expect_continue = False

    @property
    def headers_complete(self) -> bool:
        return self.head_end is not None

    def take_interim(self) -> bytes:
        out, self.interim = self.interim, b""
        return out

    def feed(self, data: bytes) -> Complete | Reject | None:
        if self.result is None:
            self.data += data
            self.result = self._advance()
        return self.result

    def timeout_message(self, seconds: float) -> str:
        if self.head_end is None:
            return f"request headers incomplete: {len(self.data)} bytes arrived within {seconds:g} s"
        if self.chunked:
            return (
                f"request body incomplete: chunked body without its last chunk, {self.body_received} bytes "
                f"arrived within {seconds:g} s"
            )
        return (
            f"request body incomplete: Content-Length {self.content_length} but {self.body_received} bytes "
            f"arrived within {seconds:g} s"
        )

    # -- internals --------------------------------------------------------------------------------
    def _advance(self) -> Complete | Reject | None:
        if self._state == "head":
            found = self._find_head_end()
            if found is not None:
                return found
            if self._state == "head":
                return None
        head_end = self.head_end
        assert head_end is not None  # past the "head" state
        if self._state == "done":
            return Complete(head_end)
        if self._state == "length":
            length = self.content_length
            assert length is not None  # the "length" state has one
            self.body_received = min(len(self.data) - head_end, length)
            if self.body_received == length:
                return Complete(head_end + length)
            result = None
        else:
            result = self._advance_chunked()
        if result is None and self._expect_continue:
            self._expect_continue = False  # only once, and only while the body is still to come
            self.interim = CONTINUE
        return result

    def _find_head_end(self) -> Reject | None:
        data = self.data
        idx = data.find(b"\r\n\r\n", max(0, self._pos - 3))
        if idx < 0 or idx + 4 > self.max_head:
            if data.find(b"\n\n", max(0, self._pos - 1)) >= 0:
                return Reject(400, "malformed request head: header lines must end with CRLF")
            if len(data) > self.max_head:
                return Reject(431, f"request headers larger than {self.max_head} bytes")
            self._pos = len(data)
            return None
        self.head_end = self._pos = idx + 4
        return self._parse_head(bytes(data[:idx]))

    def _parse_head(self, head: bytes) -> Reject | None:
        lines = head.split(b"\r\n")
        version = _http_version(lines[0])
        lengths: list[bytes] = []
        codings: list[bytes] = []
        expect = None
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue  # gunicorn refuses the request; nothing here depends on it
            key = name.rstrip(b" \t").lower()
            value = value.strip(b" \t")
            if key == b"content-length":
                lengths.append(value)
            elif key == b"transfer-encoding":
                codings += [c.strip(b" \t").lower() for c in value.split(b",")]
            elif key == b"expect":
                expect = value
        if expect is not None and expect.lower() != b"100-continue":
            return Reject(417, f"unsupported Expect: {_text(expect)!r} (only 100-continue)")
        if codings:
            if lengths:
                return Reject(400, "both Content-Length and Transfer-Encoding given: the body length is ambiguous")
            if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                return Reject(400, f"Transfer-Encoding {_text(b', '.join(codings))!r} must end with one 'chunked'")
            unknown = [c for c in codings[:-1] if c not in _TE_BEFORE_CHUNKED]
            if unknown:
                return Reject(501, f"unsupported Transfer-Encoding {_text(unknown[0])!r}")
            if version is not None and version < (1, 1):
                return Reject(400, "Transfer-Encoding: chunked needs HTTP/1.1")
            self.chunked = True
            self._state = "size"
        elif lengths:
            if len(lengths) > 1:
                return Reject(400, "Content-Length given more than once")
            value = lengths[0]
            if not (value.isdigit() and value.isascii()):
                return Reject(400, f"invalid Content-Length {_text(value)!r}")
            self.content_length = int(value)
            if self.content_length > self.max_body:
                return Reject(
                    413, f"request body of {self.content_length} bytes is over the limit of {self.max_body} bytes"
                )
            self._state = "length" if self.content_length else "done"
        else:
            self._state = "done"  # no body (RFC 9112 6.3: a request without either has none)
        self._expect_continue = (
            self._state != "done" and expect is not None and version is not None and version >= (1, 1)
        )
        return None

    def _advance_chunked(self) -> Complete | Reject | None:
        data = self.data
        while True:
            if self._state == "size":
                idx = data.find(b"\r\n", self._pos)
                if idx < 0 or idx - self._pos > MAX_CHUNK_LINE:
                    if len(data) - self._pos > MAX_CHUNK_LINE:
                        return Reject(400, f"chunk size line longer than {MAX_CHUNK_LINE} bytes")
                    return None
                size_part, sep, ext = bytes(data[self._pos : idx]).partition(b";")
                if sep:
                    if b"\r" in ext:
                        return Reject(400, "invalid chunk extension (bare CR)")
                    size_part = size_part.rstrip(b" \t")
                if not size_part or not _HEX.issuperset(size_part):
                    return Reject(400, f"invalid chunk size {_text(size_part[:32])!r}")
                size = int(size_part, 16)
                self._pos = idx + 2
                if size == 0:
                    self._state = "trailer"
                    continue
                if self.body_received + size > self.max_body:
                    return Reject(413, f"chunked request body over the limit of {self.max_body} bytes")
                self._chunk_left = size
                self._state = "data"
            elif self._state == "data":
                take = min(len(data) - self._pos, self._chunk_left)
                self._pos += take
                self._chunk_left -= take
                self.body_received += take
                if self._chunk_left:
                    return None
                self._state = "crlf"
            elif self._state == "crlf":
                if len(data) - self._pos < 2:
                    return None
                if data[self._pos : self._pos + 2] != b"\r\n":
                    return Reject(400, "chunk data not followed by CRLF (chunk size and data disagree)")
                self._pos += 2
                self._state = "size"
            else:  # trailer: an empty line, or trailer fields ending in an empty line
                if len(data) - self._pos < 2:
                    return None
                if data[self._pos : self._pos + 2] == b"\r\n":
                    return Complete(self._pos + 2)
                idx = data.find(b"\r\n\r\n", self._pos)
                if idx < 0:
                    if len(data) - self._pos > self.max_head:
                        return Reject(431, f"chunked trailer fields larger than {self.max_head} bytes")
                    return None
                return Complete(idx + 4)


def _http_version(request_line: bytes) -> tuple[int, int] | None:
    parts = request_line.split(b" ")
    proto = parts[-1] if len(parts) == 3 else b""
    if (
        len(proto) == 8
        and proto.startswith(b"HTTP/")
        and proto[5:6].isdigit()
        and proto[7:8].isdigit()
        and proto[6:7] == b"."
    ):
        return int(proto[5:6]), int(proto[7:8])
    return None  # gunicorn will refuse the request line


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def json_error(status: int, message: str, extra_headers: str = "") -> bytes:
    """A complete `Connection: close` response with body `{"error": message}`, as the app's errors."""
    body = json.dumps({"error": message}).encode("utf-8")
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{extra_headers}\r\n"
    )
    return head.encode("latin-1") + body


# gunicorn's own parse errors, with the status gunicorn/workers/base.py handle_error gives them
_GUNICORN_ERRORS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str], ...] = (
    (gerrors.LimitRequestHeaders, 431, "request header fields too large: {}"),
    (gerrors.ExpectationFailed, 417, "{}"),
    (gerrors.UnsupportedTransferCoding, 501, "{}"),
    (gerrors.ConfigurationProblem, 500, "{}"),
    (gerrors.ForbiddenProxyRequest, 403, "request forbidden"),
    (ssl.SSLError, 403, "{}"),
    (gerrors.InvalidRequestLine, 400, "invalid request line: {}"),
    (gerrors.InvalidRequestMethod, 400, "invalid method: {}"),
    (gerrors.InvalidHTTPVersion, 400, "invalid HTTP version: {}"),
    (
        (
            gerrors.InvalidHeader,
            gerrors.InvalidHeaderName,
            gerrors.ObsoleteFolding,
            gerrors.LimitRequestLine,
            gerrors.InvalidProxyLine,
            gerrors.InvalidSchemeHeaders,
            gerrors.InvalidH2CPreface,
        ),
        400,
        "{}",
    ),
)


def gunicorn_error_status(exc: BaseException) -> tuple[int, str] | None:
    """(status, message) for a request gunicorn's parser refused; None for any other exception (500)."""
    for kinds, status, template in _GUNICORN_ERRORS:
        if isinstance(exc, kinds):
            return status, template.format(exc)
    return None


class _Conn:
    __slots__ = ("sock", "fd", "addr", "listener", "buf", "deadline", "lingering", "drained", "drain_max", "closed")

    def __init__(self, sock: socket.socket, addr: Any, listener: Any, buf: RequestBuffer, deadline: float) -> None:
        self.sock, self.fd, self.addr, self.listener, self.buf = sock, sock.fileno(), addr, listener, buf
        self.deadline = deadline
        self.lingering = False
        self.drained = 0
        self.drain_max = LINGER_MAX_BYTES
        self.closed = False


_LISTENER, _PIPE = object(), object()
# One accept per round, then back to the selector: connections accepted earlier whose request has just
# arrived are served before the next new one (a batch of 32 accepts put ~30 ms on /predict's p99 at 16
# connections against the sync worker's ~12 ms; with one, 13-15 ms, the same req/s).
_ACCEPTS_PER_ROUND = 1
_SCAN_SECONDS = 0.2  # how often deadlines are checked while connections are in progress


class BufferingSyncWorker(SyncWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """See the module docstring. Falls back to the plain sync loop for TLS, uwsgi and PROXY protocol
    listeners (the buffer reads plain HTTP/1.x)."""

    MIN_BUFFER_BUDGET = 64 * 1024 * 1024  # request bytes buffered per worker (or 8 bodies, if more)

    def run(self) -> None:
        if (
            self.cfg.is_ssl
            or getattr(self.cfg, "protocol", "http") != "http"
            or getattr(self.cfg, "proxy_protocol", "off") not in ("off", False, None)
        ):
            self.log.warning(
                "BufferingSyncWorker: TLS, uwsgi or PROXY protocol configured; "
                "running as the plain sync worker (no header/body read timeouts)"
            )
            super().run()
            return
        from serving.config import ServingConfig  # not at import: the master imports this module

        settings = ServingConfig.from_env()
        self.max_body = settings.max_body_bytes
        self.header_timeout = settings.header_timeout_seconds
        self.body_timeout = settings.body_timeout_seconds
        self.max_conns = max(1, int(self.cfg.worker_connections))
        self.max_buffered = max(self.MIN_BUFFER_BUDGET, 8 * self.max_body)
        self.buffered = 0
        self.conns: dict[int, _Conn] = {}
        self.accepting = False
        self.accept_resume = 0.0
        self.selector = selectors.DefaultSelector()
        for s in self.sockets:
            s.setblocking(False)
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, _PIPE)
        try:
            self._loop()
        finally:
            for conn in list(self.conns.values()):
                self._close(conn)
            self.selector.close()

    # -- the loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        heartbeat = min(self.timeout or 0.5, 1.0)
        drain_until = None
        next_scan = 0.0
        while True:
            self.notify()
            now = time.monotonic()
            if not self.alive and drain_until is None:  # graceful stop: a short chance for what was accepted
                drain_until = now + min(DRAIN_SECONDS, max(self.cfg.graceful_timeout - 1.0, 0.0))
            if drain_until is not None and (not self.conns or now >= drain_until):
                return
            self._set_accepting(drain_until is None and len(self.conns) < self.max_conns and now >= self.accept_resume)
            wait = heartbeat
            if self.conns:
                wait = min(wait, max(next_scan - now, 0.0))
            elif not self.accepting and drain_until is None:
                wait = min(wait, max(self.accept_resume - now, 0.0))
            for key, _ in self.selector.select(wait):
                if key.data is _LISTENER:
                    self._accept(key.fileobj)
                elif key.data is _PIPE:
                    try:
                        while os.read(self.PIPE[0], 4096):
                            pass
                    except OSError:
                        pass
                else:
                    conn = key.data
                    if not conn.closed:  # not closed by an earlier event of this round
                        self._linger_read(conn) if conn.lingering else self._read(conn)
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + _SCAN_SECONDS
                self._expire(now)
            if not self.is_parent_alive():
                return

    def _set_accepting(self, on: bool) -> None:
        if on == self.accepting:
            return
        self.accepting = on
        for s in self.sockets:
            if on:
                self.selector.register(s, selectors.EVENT_READ, _LISTENER)
            else:
                self.selector.unregister(s)

    def _accept(self, listener: Any) -> None:
        for _ in range(_ACCEPTS_PER_ROUND):
            if not self.alive or len(self.conns) >= self.max_conns:
                return
            try:
                client, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                # out of file descriptors or memory, or worse: wait a little rather than spin or die
                self.log.warning("accept failed (%s); not accepting for 0.5 s", exc)
                self.accept_resume = time.monotonic() + 0.5
                return
            client.setblocking(False)
            util.close_on_exec(client)
            conn = _Conn(client, addr, listener, RequestBuffer(self.max_body), time.monotonic() + self.header_timeout)
            stale = self.conns.get(conn.fd)
            if stale is not None:  # its socket was closed behind our back: forget it, close nothing
                self._close(stale, close_socket=False)
            self.conns[conn.fd] = conn
            self.selector.register(client, selectors.EVENT_READ, conn)
            self._read(conn)  # the request is often there already

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:  # the client gave up before its request was complete: nothing to answer
            self._close(conn)
            return
        buf = conn.buf
        had_head = buf.headers_complete
        self.buffered += len(data)
        result = buf.feed(data)
        if result is None and self.buffered > self.max_buffered:
            result = Reject(503, f"server busy: more than {self.max_buffered} request bytes in progress; retry later")
            self._reject(conn, result, "Retry-After: 5\r\n")
            return
        if buf.interim:
            self._send_quietly(conn.sock, buf.take_interim())
        if result is None:
            if buf.headers_complete and not had_head:
                conn.deadline = time.monotonic() + self.body_timeout
        elif isinstance(result, Complete):
            self._serve(conn, result)
        else:
            self._reject(conn, result)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self.conns.values() if c.deadline <= now]:
            if conn.closed:
                continue
            if conn.lingering:
                self._close(conn)
                continue
            self._read(conn)  # what arrived while this worker was busy counts as in time
            if conn.closed or conn.lingering or conn.deadline > now:
                continue
            if not conn.buf.data:
                self._close(conn)  # connected but never asked anything
                continue
            seconds = self.body_timeout if conn.buf.headers_complete else self.header_timeout
            self._reject(conn, Reject(408, conn.buf.timeout_message(seconds)))

    # -- answering --------------------------------------------------------------------------------
    def _serve(self, conn: _Conn, done: Complete) -> None:
        """The normal sync path (gunicorn's parser, then SyncWorker.handle_request) over the buffered bytes."""
        client, addr = conn.sock, conn.addr
        data = bytes(conn.buf.data[: done.end])
        self.buffered -= len(conn.buf.data)
        conn.buf.data = bytearray()
        # blocking again for the app and the answer; the timeout only guards against a client that
        # never reads its answer (the worker would otherwise hang until gunicorn kills it)
        client.settimeout(max(self.timeout, 1.0) if self.timeout else None)
        req = None
        try:
            parser = http.get_parser(self.cfg, [data], addr)  # the app reads the buffer, never the socket
            req = next(parser)
            req._expected_100_continue = False  # sent by the buffer already, or not needed: body is here
            self.handle_request(conn.listener, req, client, addr)
        except gerrors.NoMoreData as exc:
            self.log.debug("Ignored premature client disconnection. %s", exc)
        except StopIteration as exc:
            self.log.debug("Closing connection. %s", exc)
        except TimeoutError:
            self.log.warning(
                "client %s did not read its response within %s s; connection closed",
                addr[0] if addr else "",
                client.gettimeout(),
            )
            self._close(conn)
            return
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except BaseException as exc:  # noqa: BLE001 - as SyncWorker.handle: answer, then keep the loop
            self.handle_error(req, client, addr, exc)
        self._start_linger(conn)

    def _reject(self, conn: _Conn, reject: Reject, extra_headers: str = "") -> None:
        addr = conn.addr[0] if conn.addr else ""
        self.log.warning("Invalid request from ip=%s: %s %s", addr, reject.status, reject.message)
        self.buffered -= len(conn.buf.data)
        conn.buf.data = bytearray()
        self._send_quietly(conn.sock, json_error(reject.status, reject.message, extra_headers))
        conn.drain_max = max(REFUSED_BODY_DRAIN_BYTES, 2 * self.max_body)
        self._start_linger(conn)

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """gunicorn's parse errors answer JSON with gunicorn's status code; anything else 500 JSON."""
        known = gunicorn_error_status(exc)
        if known is not None:
            status, message = known
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        else:
            if getattr(req, "uri", None):
                self.log.exception("Error handling request %s %s", getattr(req, "method", ""), req.uri)
            else:
                self.log.exception("Error handling request (no URI read)")
            status, message = 500, f"internal server error ({type(exc).__name__})"
        try:
            client.sendall(json_error(status, message))
        except Exception:  # noqa: BLE001 - the client is gone
            self.log.debug("Failed to send error message.")

    # -- closing ----------------------------------------------------------------------------------
    def _send_quietly(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)  # small; a fresh connection's send buffer takes it whole
        except OSError:
            pass

    def _start_linger(self, conn: _Conn) -> None:
        """Send FIN after the answer, then discard what the client still sends until it closes
        (closing with unread input would reset the connection and could destroy the answer)."""
        sock = conn.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            self._close(conn)
            return
        conn.lingering = True
        conn.deadline = time.monotonic() + LINGER_SECONDS
        self._linger_read(conn)

    def _linger_read(self, conn: _Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            conn.drained += len(data)
            if not data or conn.drained >= conn.drain_max:
                self._close(conn)
                return

    def _close(self, conn: _Conn, close_socket: bool = True) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.fd, None)
        try:
            self.selector.unregister(conn.fd)  # by number: the socket may be closed already
        except (KeyError, ValueError):
            pass
        self.buffered -= len(conn.buf.data)
        conn.buf.data = bytearray()
        if close_socket:
            try:
                conn.sock.close()
            except OSError:
                pass
