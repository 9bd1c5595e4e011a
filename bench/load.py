"""HTTP load from a separate process on loopback: wrk (Debian's package), fixed duration and
connection count, with its latency distribution parsed into numbers."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass


@dataclass
class LoadResult:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int

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
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    return LoadResult(name, rps, _ms(percentiles["50"]), _ms(percentiles["99"]), total, errors)


def run_load(name: str, url: str, body: dict, duration_s: int = 20, connections: int = 16,
             threads: int = 1, warmup_s: int = 3) -> LoadResult:
    wrk = ensure_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        script.write(f"wrk.body = {json.dumps(json.dumps(body))}\n")
        script.write('wrk.headers["Content-Type"] = "application/json"\n')
    try:
        if warmup_s:
            subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{warmup_s}s", "-s", script.name, url],
                           capture_output=True, text=True, check=False)
        out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
                              "-s", script.name, url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    return parse_wrk(name, out)
