"""serving/worker.py without a gunicorn master or a model: RequestBuffer (where a request ends and which
requests are refused before the app, fed byte by byte and all at once), the JSON answers of gunicorn's
own parse errors, and the worker loop run in this process with a trivial app (connection limit, buffer
budget, timeouts, graceful stop)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.http import errors as gerrors

from serving.worker import (
    CONTINUE,
    BufferingSyncWorker,
    Complete,
    Reject,
    RequestBuffer,
    gunicorn_error_status,
    json_error,
)

LIMIT = 1000


def feed(raw: bytes, *, bytewise: bool = False, max_body: int = LIMIT):
    buf = RequestBuffer(max_body)
    result = None
    for part in [raw[i : i + 1] for i in range(len(raw))] if bytewise else [raw]:
        result = buf.feed(part)
        if result is not None:
            break
    return buf, result


def post(body: bytes, *headers: str) -> bytes:
    head = "".join(h + "\r\n" for h in ("POST /predict HTTP/1.1", "Host: x", *headers))
    return head.encode() + b"\r\n" + body


@pytest.mark.parametrize("bytewise", [False, True])
def test_headers_only_request_ends_at_the_blank_line(bytewise):
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    buf, result = feed(raw + b"GET /next HTTP/1.1\r\n\r\n", bytewise=bytewise)
    assert result == Complete(len(raw)) and buf.headers_complete
    assert buf.data[: result.end] == raw  # a pipelined request after it is left out


def test_incomplete_head_waits_and_says_what_arrived():
    buf, result = feed(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    assert result is None and not buf.headers_complete
    assert buf.timeout_message(10) == "request headers incomplete: 31 bytes arrived within 10 s"


@pytest.mark.parametrize("bytewise", [False, True])
def test_content_length_body(bytewise):
    body = b'{"features": [1, 2, 3, 4]}'
    raw = post(body, "Content-Type: application/json", f"Content-Length: {len(body)}")
    buf, result = feed(raw, bytewise=bytewise)
    assert result == Complete(len(raw)) and buf.body_received == len(body)


def test_short_body_waits_and_says_how_much_arrived():
    buf, result = feed(post(b"x" * 40, "Content-Length: 100"))
    assert result is None and buf.headers_complete and buf.body_received == 40
    assert buf.timeout_message(10) == "request body incomplete: Content-Length 100 but 40 bytes arrived within 10 s"


def test_content_length_zero_is_complete_at_the_blank_line():
    raw = post(b"", "Content-Length: 0")
    assert feed(raw)[1] == Complete(len(raw))


@pytest.mark.parametrize("value", ["-1", "+5", "1e3", "0x10", "5 5", "5,5", "", "١٢"])
def test_invalid_content_length_is_400(value):
    result = feed(post(b"", f"Content-Length: {value}".encode().decode("latin-1")))[1]
    assert isinstance(result, Reject) and result.status == 400 and "Content-Length" in result.message


@pytest.mark.parametrize("second", ["5", "6"])
def test_content_length_twice_is_400(second):
    result = feed(post(b"hello", "Content-Length: 5", f"content-length: {second}"))[1]
    assert result == Reject(400, "Content-Length given more than once")


def test_content_length_over_the_limit_is_413_before_the_body():
    buf, result = feed(post(b"", f"Content-Length: {LIMIT + 1}"))
    assert result == Reject(413, f"request body of {LIMIT + 1} bytes is over the limit of {LIMIT} bytes")
    at_limit = post(b"x" * LIMIT, f"Content-Length: {LIMIT}")
    assert feed(at_limit)[1] == Complete(len(at_limit))


def test_content_length_and_chunked_together_is_400():
    result = feed(post(b"0\r\n\r\n", "Content-Length: 5", "Transfer-Encoding: chunked"))[1]
    assert isinstance(result, Reject) and result.status == 400 and "ambiguous" in result.message


def chunked(*chunks: bytes, trailer: bytes = b"", ext: str = "") -> bytes:
    out = b"".join(f"{len(c):x}{ext}\r\n".encode() + c + b"\r\n" for c in chunks)
    return out + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("ext,trailer", [("", b""), (";name=value", b""), (" ;x", b"X-Checksum: 1\r\n")])
def test_chunked_body_ends_after_the_last_chunk_and_trailers(bytewise, ext, trailer):
    raw = post(chunked(b"a" * 10, b"b" * 300, trailer=trailer, ext=ext), "Transfer-Encoding: chunked")
    buf, result = feed(raw + b"GET / HTTP/1.1\r\n\r\n", bytewise=bytewise)
    assert result == Complete(len(raw)) and buf.chunked and buf.body_received == 310


def test_chunked_hex_sizes_and_codings_before_chunked():
    raw = post(b"A\r\n" + b"x" * 10 + b"\r\n0\r\n\r\n", "Transfer-Encoding: gzip, chunked")
    assert feed(raw)[1] == Complete(len(raw))


def test_chunked_without_its_last_chunk_waits():
    buf, result = feed(post(b"a\r\n" + b"x" * 10 + b"\r\n", "Transfer-Encoding: chunked"))
    assert result is None and buf.body_received == 10
    assert "chunked body without its last chunk, 10 bytes" in buf.timeout_message(2)


@pytest.mark.parametrize(
    "body,what",
    [
        (b"zz\r\nxx\r\n0\r\n\r\n", "invalid chunk size"),
        (b"\r\n0\r\n\r\n", "invalid chunk size"),
        (b"-1\r\nx\r\n0\r\n\r\n", "invalid chunk size"),
        (b"2\r\nxxx\r\n0\r\n\r\n", "not followed by CRLF"),
        (b"1;a\rb\r\nx\r\n0\r\n\r\n", "bare CR"),
        (b"1" * (5000), "chunk size line longer"),
    ],
)
def test_malformed_chunked_body_is_400(body, what):
    result = feed(post(body, "Transfer-Encoding: chunked"))[1]
    assert isinstance(result, Reject) and result.status == 400 and what in result.message, result


@pytest.mark.parametrize(
    "te,status", [("chunked, gzip", 400), ("chunked, chunked", 400), ("gzip", 400), ("foo, chunked", 501)]
)
def test_transfer_encodings_not_ending_in_one_chunked(te, status):
    result = feed(post(b"0\r\n\r\n", f"Transfer-Encoding: {te}"))[1]
    assert isinstance(result, Reject) and result.status == status


def test_chunked_needs_http_1_1():
    raw = b"POST /predict HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert feed(raw)[1].status == 400


@pytest.mark.parametrize("bytewise", [False, True])
def test_chunked_body_over_the_limit_is_413_at_the_chunk_that_crosses_it(bytewise):
    raw = post(chunked(b"x" * 600, b"y" * 600), "Transfer-Encoding: chunked")
    buf, result = feed(raw, bytewise=bytewise)
    assert result == Reject(413, f"chunked request body over the limit of {LIMIT} bytes")
    assert buf.body_received == 600  # refused on the second size line, before its data


def test_oversized_head_is_431_and_bare_lf_is_400():
    result = feed(b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70_000)[1]
    assert result.status == 431
    result = feed(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(700)) + b"\r\n")[1]
    assert result.status == 431
    assert feed(b"GET / HTTP/1.1\nHost: x\n\n")[1].status == 400
    raw = post(chunked(b"x"), "Transfer-Encoding: chunked")[:-2] + b"X-T: " + b"t" * 70_000
    assert feed(raw)[1].status == 431


def test_expect_100_continue_is_answered_once_while_the_body_is_to_come():
    buf = RequestBuffer(LIMIT)
    assert buf.feed(post(b"", "Content-Length: 10", "Expect: 100-continue")) is None
    assert buf.take_interim() == CONTINUE and buf.take_interim() == b""
    assert buf.feed(b"12345") is None and buf.interim == b""
    assert isinstance(buf.feed(b"67890"), Complete)


def test_expect_100_continue_not_sent_when_the_body_is_there_refused_or_absent():
    buf, result = feed(post(b"0123456789", "Content-Length: 10", "Expect: 100-continue"))
    assert isinstance(result, Complete) and buf.interim == b""
    buf, result = feed(post(b"", f"Content-Length: {LIMIT + 1}", "Expect: 100-continue"))
    assert result.status == 413 and buf.interim == b""
    buf, result = feed(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
    assert isinstance(result, Complete) and buf.interim == b""
    buf, result = feed(b"POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert result is None and buf.interim == b""  # HTTP/1.0: the expectation is ignored (RFC 9110)


def test_other_expectations_are_417():
    result = feed(post(b"", "Content-Length: 3", "Expect: something-else"))[1]
    assert result.status == 417


def test_garbage_request_line_is_left_to_gunicorn():
    raw = b"NOT A VALID HTTP LINE AT ALL\r\nHost: x\r\n\r\n"
    assert feed(raw)[1] == Complete(len(raw))


def test_result_is_final():
    buf = RequestBuffer(LIMIT)
    first = buf.feed(post(b"", f"Content-Length: {LIMIT + 5}"))
    assert buf.feed(b"more") is first


def test_json_error_is_a_complete_closing_response():
    raw = json_error(408, 'late "client"')
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 408 Request Timeout"
    assert "Content-Type: application/json" in lines and "Connection: close" in lines
    assert f"Content-Length: {len(body)}" in lines and json.loads(body) == {"error": 'late "client"'}


@pytest.mark.parametrize(
    "exc,status",
    [
        (gerrors.InvalidRequestLine("xx"), 400),
        (gerrors.InvalidHeader("X"), 400),
        (gerrors.InvalidHeaderName("X Y"), 400),
        (gerrors.LimitRequestLine(9000, 4094), 400),
        (gerrors.LimitRequestHeaders("too many"), 431),
        (gerrors.ExpectationFailed("x"), 417),
        (gerrors.UnsupportedTransferCoding("br"), 501),
        (gerrors.InvalidHTTPVersion("HTTP/9"), 400),
    ],
)
def test_gunicorn_parse_errors_keep_gunicorns_status(exc, status):
    got, message = gunicorn_error_status(exc)
    assert got == status and message
    assert gunicorn_error_status(RuntimeError("boom")) is None


# -- the worker loop in this process (a trivial WSGI app, no gunicorn master): the bounds ---------------


class RunningWorker:
    """A BufferingSyncWorker on a loopback listener, run() in a thread; stopped as gunicorn's SIGTERM does."""

    def __init__(self, monkeypatch, worker_connections: int = 1000, **env: str) -> None:
        monkeypatch.setenv("SERVING_STATE_DIR", "/nonexistent")  # read by ServingConfig, never opened
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        cfg = Config()
        cfg.set("worker_connections", worker_connections)
        cfg.set("graceful_timeout", 30)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.worker = BufferingSyncWorker(1, os.getppid(), [self.listener], None, 15, cfg, Logger(cfg))
        self.worker.PIPE = os.pipe()
        for fd in self.worker.PIPE:
            os.set_blocking(fd, False)
        self.worker.wsgi = self.app
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def app(self, environ, start_response):
        self.seen.append(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    def stop(self) -> float:
        started = time.monotonic()
        self.worker.alive = False
        os.write(self.worker.PIPE[1], b".")
        self.thread.join(10)
        took = time.monotonic() - started
        self.listener.close()
        for fd in self.worker.PIPE:
            os.close(fd)
        self.worker.tmp.close()
        return took


def connect(worker: RunningWorker, data: bytes = b""):
    sock = socket.create_connection(worker.address, timeout=5)
    if data:
        sock.sendall(data)
    return sock


def answer(sock, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    sock.close()
    return out


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_worker_answers_and_the_app_reads_the_buffered_body(monkeypatch):
    w = RunningWorker(monkeypatch)
    try:
        assert answer(connect(w, GET)).startswith(b"HTTP/1.1 200 OK")
        raw = answer(connect(w, post(b"hello", "Content-Length: 5")))
        assert raw.startswith(b"HTTP/1.1 200 OK") and raw.endswith(b"ok")
        answer(connect(w, post(chunked(b"hel", b"lo"), "Transfer-Encoding: chunked")))
        assert w.seen == [b"", b"hello", b"hello"]
    finally:
        w.stop()


def test_worker_stops_accepting_while_full(monkeypatch):
    w = RunningWorker(monkeypatch, worker_connections=3, SERVING_HEADER_TIMEOUT_SECONDS="30")
    idle = [connect(w, b"GET / HT") for _ in range(3)]
    try:
        time.sleep(0.3)
        waiting = connect(w, GET)  # the kernel queues it; the worker does not take it
        waiting.settimeout(0.5)
        with pytest.raises(TimeoutError):
            waiting.recv(1)
        idle.pop().close()  # a slot frees: the queued request is taken and answered
        assert answer(waiting).startswith(b"HTTP/1.1 200 OK")
    finally:
        for sock in idle:
            sock.close()
        w.stop()


def test_worker_refuses_beyond_its_buffer_budget(monkeypatch):
    half = post(b"x" * 50, "Content-Length: 100")
    monkeypatch.setattr(BufferingSyncWorker, "MIN_BUFFER_BUDGET", 8 * len(half) + 10)  # 8 of them fit
    w = RunningWorker(monkeypatch, SERVING_MAX_BODY_BYTES="100")
    try:
        held = [connect(w, half) for _ in range(8)]
        raw = answer(connect(w, half))
        assert raw.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in raw and b"server busy" in raw
        held[0].sendall(b"y" * 50)  # one that was in budget completes normally
        assert answer(held[0]).startswith(b"HTTP/1.1 200 OK")
        for sock in held[1:]:
            sock.close()
    finally:
        w.stop()


def test_worker_times_out_slow_requests_and_stops_gracefully(monkeypatch):
    monkeypatch.setattr("serving.worker.DRAIN_SECONDS", 0.5)
    w = RunningWorker(monkeypatch, SERVING_HEADER_TIMEOUT_SECONDS="0.5", SERVING_BODY_TIMEOUT_SECONDS="0.5")
    try:
        started = time.monotonic()
        raw = answer(connect(w, post(b"x" * 4, "Content-Length: 10")))
        assert raw.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 1.5
        assert b"Content-Length 10 but 4 bytes arrived within 0.5 s" in raw
        silent = connect(w)
        assert answer(silent) == b""  # connected, never asked: closed without an answer
    finally:
        slow = connect(w, b"GET / HT")
        assert w.stop() < 1.5 and not w.thread.is_alive()  # a graceful stop gives slow clients DRAIN_SECONDS
        slow.close()
    assert w.seen == []
