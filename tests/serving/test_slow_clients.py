"""Slow and broken clients against a real gunicorn (2 workers, serving/worker.py's BufferingSyncWorker,
2 s header and body timeouts): they cost a connection, not a worker. /health keeps answering while 50
connections trickle their headers; short, oversized and malformed requests get a JSON 4xx quickly and
change nothing stored; well-formed requests (Expect: 100-continue, chunked, pipelined) still work."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bench.load import SlowClients, probe
from tests.serving.conftest import start_gunicorn, stop_gunicorn

pytestmark = pytest.mark.faults

TIMEOUT_S = 2
MAX_BODY = 64 * 1024
PREDICT = b'{"features": [5.1, 3.5, 1.4, 0.2]}'


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("slow-clients-state")


@pytest.fixture(scope="module")
def server(mlflow_server, model_name, champion, state_dir):
    srv = start_gunicorn(
        state_dir,
        model_name,
        mlflow_server,
        workers=2,
        extra_env={
            "SERVING_HEADER_TIMEOUT_SECONDS": str(TIMEOUT_S),
            "SERVING_BODY_TIMEOUT_SECONDS": str(TIMEOUT_S),
            "SERVING_MAX_BODY_BYTES": str(MAX_BODY),
            "GUNICORN_WORKER_CLASS": "serving.worker.BufferingSyncWorker",
        },
    )
    yield srv
    stop_gunicorn(srv)


def address(srv) -> tuple[str, int]:
    host, port = srv.url.rsplit("//", 1)[1].split(":")
    return host, int(port)


def exchange(srv, *parts: bytes, pause: float = 0.0, timeout: float = 10.0):
    """Send `parts` on one connection (pausing between them), read until the server closes.
    Returns (status, headers, body, seconds from the last part to the answer, raw answer)."""
    with socket.create_connection(address(srv), timeout=timeout) as sock:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            sock.sendall(part)
        sent = time.monotonic()
        raw = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            raw += data
        elapsed = time.monotonic() - sent
    return (*parse(raw), elapsed, raw)


def parse(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def assert_json_error(status, headers, body, expected_status, *words):
    assert status == expected_status, (status, body[:300])
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    message = json.loads(body)["error"]
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def window_rows(state_dir) -> tuple[int, int]:
    with sqlite3.connect(state_dir / "serving.sqlite3") as conn:
        return conn.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM window_rows").fetchone()


def post_head(length: int | None = None, *extra: str, path: str = "/predict") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_health_answers_while_50_slow_clients_hold_connections(server):
    with SlowClients(*address(server), n=50, interval=0.5) as slow:
        time.sleep(0.5)
        result = probe(server.url + "/health", duration_s=2 * TIMEOUT_S + 1, interval=0.25, timeout=2.0)
        assert slow.connected == 50
    assert result.probes >= 10 and result.ok == result.probes, result
    # the server cut the slow ones at the header timeout (and they came back, as such clients do)
    assert slow.answers["408"] >= 50 and slow.reconnects >= 50, (slow.answers, slow.reconnects)


def test_body_shorter_than_content_length_is_408_json_within_the_timeout(server, state_dir):
    before = window_rows(state_dir)
    status, headers, body, elapsed, _ = exchange(server, post_head(100) + b"x" * 40)
    assert_json_error(status, headers, body, 408, "Content-Length 100 but 40 bytes arrived within 2 s")
    assert TIMEOUT_S - 0.5 <= elapsed <= TIMEOUT_S + 1.0, elapsed
    assert server.post("/predict", data=PREDICT, headers={"Content-Type": "application/json"}).status_code == 200
    after = window_rows(state_dir)
    assert after[1] == before[1] + 1  # only the complete request was recorded


def test_headers_never_finished_are_408_json(server):
    status, headers, body, elapsed, _ = exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n")
    assert_json_error(status, headers, body, 408, "request headers incomplete")
    assert elapsed <= TIMEOUT_S + 1.0


def test_content_length_over_the_limit_is_413_without_sending_the_body(server):
    started = time.monotonic()
    status, headers, body, _, _ = exchange(server, post_head(10 * MAX_BODY))
    assert_json_error(status, headers, body, 413, f"over the limit of {MAX_BODY} bytes")
    assert time.monotonic() - started < 1.0
    # a client that sends the whole body before it reads (as requests does) still gets the 413
    resp = requests.post(
        server.url + "/predict", data=b"x" * (5 * MAX_BODY), headers={"Content-Type": "application/json"}, timeout=10
    )
    assert resp.status_code == 413 and "over the limit" in resp.json()["error"]


def test_chunked_body_over_the_limit_is_413_not_malformed_json(server):
    chunks = (b'{"instances": [' + b"[1.0, 2.0, 3.0, 4.0], " * 400 for _ in range(10))  # ~80 KiB in 10 chunks
    resp = requests.post(server.url + "/predict", data=chunks, headers={"Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 413 and resp.headers["Content-Type"] == "application/json"
    assert "chunked request body over the limit" in resp.json()["error"]


def test_chunked_body_within_the_limit_is_predicted(server):
    resp = requests.post(
        server.url + "/predict",
        data=iter([PREDICT[:10], PREDICT[10:]]),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 200 and resp.json()["prediction"] == 0


@pytest.mark.parametrize(
    "raw,status,word",
    [
        (b"GARBAGE\r\n\r\n", 400, "invalid request line"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", 400, "Header"),
        (b"GET /health HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, "Header"),
        (b"GET /health HTTP/9.9\r\n\r\n", 400, "HTTP Version"),
        (b"POST /predict HTTP/1.1\r\nContent-Length: 4x\r\n\r\n", 400, "invalid Content-Length"),
        (
            b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "ambiguous",
        ),
        (b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "invalid chunk size"),
        (b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, "larger than"),
    ],
)
def test_malformed_requests_get_json_not_html(server, raw, status, word):
    answer = exchange(server, raw)
    assert_json_error(*answer[:3], status, word)


def test_expect_100_continue_is_answered_before_the_body(server):
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(post_head(len(PREDICT), "Expect: 100-continue"))
        interim = sock.recv(1024)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(PREDICT)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status, headers, body = parse(raw)
    assert status == 200 and json.loads(body)["prediction"] == 0


def test_pipelined_and_plain_requests_still_work(server):
    one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    status, headers, body, _, raw = exchange(server, one + one)
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert raw.count(b"HTTP/1.1 ") == 1 and headers["connection"] == "close"  # sync worker: one per connection
    split = exchange(server, one[:10], one[10:], pause=0.3)  # a head in two writes
    assert split[0] == 200
    with requests.Session() as session:
        for _ in range(10):
            assert (
                session.post(
                    server.url + "/predict", data=PREDICT, headers={"Content-Type": "application/json"}, timeout=10
                ).status_code
                == 200
            )


def test_rejected_requests_change_nothing_and_no_worker_was_replaced(server, state_dir):
    before = window_rows(state_dir)
    samples = server.get("/drift/status").json()["samples"]
    requests_ = [
        post_head(len(PREDICT) + 10) + PREDICT,  # 10 bytes short: 408
        post_head(MAX_BODY + 1) + PREDICT,  # 413 at once
        post_head(None, "Transfer-Encoding: chunked") + b"5\r\n" + PREDICT[:5] + b"\r\n",  # 408
        post_head(len(PREDICT), "Expect: nothing") + PREDICT,
    ]  # 417
    with ThreadPoolExecutor(len(requests_)) as pool:
        statuses = [answer[0] for answer in pool.map(lambda raw: exchange(server, raw), requests_)]
    assert statuses == [408, 413, 408, 417]
    assert window_rows(state_dir) == before
    assert server.get("/drift/status").json()["samples"] == samples
    assert server.proc.poll() is None
    log = server.log_text()
    assert log.count("Booting worker") == 2, log[-3000:]
    assert "WORKER TIMEOUT" not in log
