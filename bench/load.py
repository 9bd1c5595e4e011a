"""HTTP load from a separate process on loopback: wrk (Debian's package), fixed duration and
connection count, with its latency distribution parsed into numbers. And slow clients: connections
that send their headers a byte at a time (slowloris), with /health probed while they are connected."""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class LoadResult:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    non_2xx: int = 0  # answered, but not with 2xx/3xx (part of errors)

    def as_dict(self) -> dict:
        return asdict(self)


def ensure_wrk() -> str:
    """wrk's path; installs Debian's package when missing and we are root (as on this project's machines)."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
        path = shutil.which("wrk")
    if not path:
        raise RuntimeError("wrk not found: install it (Debian: apt-get install wrk)")
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(name: str, output: str) -> LoadResult:
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", output, re.M))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = int(non2xx.group(1)) if non2xx else 0
    errors = non_2xx + (sum(map(int, sockets.groups())) if sockets else 0)
    return LoadResult(name, rps, _ms(percentiles["50"]), _ms(percentiles["99"]), total, errors, non_2xx)


def run_load(
    name: str, url: str, body: dict, duration_s: int = 20, connections: int = 16, threads: int = 1, warmup_s: int = 3
) -> LoadResult:
    wrk = ensure_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        script.write(f"wrk.body = {json.dumps(json.dumps(body))}\n")
        script.write('wrk.headers["Content-Type"] = "application/json"\n')
    try:
        if warmup_s:
            subprocess.run(
                [wrk, "-t1", f"-c{connections}", f"-d{warmup_s}s", "-s", script.name, url],
                capture_output=True,
                text=True,
                check=False,
            )
        out = subprocess.run(
            [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    return parse_wrk(name, out)


SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Slow: "  # then one more "a" per tick, never ending


class SlowClients:
    """`n` connections to host:port that send a request head one byte every `interval` seconds and
    never finish it; a connection the server closes (or answers) is replaced at once, as a slowloris
    client keeps its connections. Use as a context manager; `answers` counts the status lines the
    server sent them (e.g. 408), `reconnects` the replaced connections."""

    def __init__(self, host: str, port: int, n: int = 50, interval: float = 0.5) -> None:
        self.host, self.port, self.n, self.interval = host, port, n, interval
        self.answers: Counter = Counter()
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._sel = selectors.DefaultSelector()
        self._sent: dict[socket.socket, int] = {}

    def __enter__(self) -> SlowClients:
        for _ in range(self.n):
            self._connect()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in list(self._sent):
            self._drop(sock)
        self._sel.close()

    @property
    def connected(self) -> int:
        return len(self._sent)

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.setblocking(False)
        self._sent[sock] = 0
        self._sel.register(sock, selectors.EVENT_READ)

    def _drop(self, sock: socket.socket) -> None:
        self._sent.pop(sock, None)
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def _replace(self, sock: socket.socket) -> None:
        self._drop(sock)
        if not self._stop.is_set():
            self.reconnects += 1
            try:
                self._connect()
            except OSError:
                pass  # the server refuses connections: the next tick tries again

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            for key, _ in self._sel.select(max(next_tick - time.monotonic(), 0.0)):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/"):
                    self.answers[data.split(b" ", 2)[1].decode("latin-1")] += 1
                self._replace(sock)
            if time.monotonic() < next_tick:
                continue
            next_tick += self.interval
            for _ in range(self.n - len(self._sent)):
                try:
                    self._connect()
                except OSError:
                    break
            for sock, sent in list(self._sent.items()):
                byte = SLOW_HEAD[sent : sent + 1] or b"a"
                try:
                    sock.send(byte)
                    self._sent[sock] = sent + 1
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._replace(sock)


@dataclass
class ProbeResult:
    probes: int = 0
    ok: int = 0  # 200 within the probe timeout
    failures: Counter = field(default_factory=Counter)

    @property
    def success_rate(self) -> float:
        return self.ok / self.probes if self.probes else 0.0


def probe(url: str, duration_s: float, interval: float = 0.5, timeout: float = 2.0) -> ProbeResult:
    """GET url every `interval` seconds for `duration_s` seconds, each on a new connection; counts the
    answers that were 200 within `timeout` seconds."""
    import requests

    result = ProbeResult()
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        started = time.monotonic()
        result.probes += 1
        try:
            resp = requests.get(url, timeout=timeout, headers={"Connection": "close"})
            if resp.status_code == 200 and time.monotonic() - started <= timeout:
                result.ok += 1
            else:
                result.failures[str(resp.status_code)] += 1
        except requests.RequestException as exc:
            result.failures[type(exc).__name__] += 1
        time.sleep(max(interval - (time.monotonic() - started), 0.0))
    return result
