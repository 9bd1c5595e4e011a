"""How a part of the embedded stack is judged: by the leader process its pid file names (alive, not a
zombie, not a recycled pid; never by its process group, which orphans keep alive after the leader
died), then by its health endpoint or, for Airflow's scheduler, dag-processor and triggerer, by the
job heartbeat Airflow records (what Airflow itself uses to decide that a component is dead)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

from stack.config import StackConfig
from stack.procs import LeaderState, leader_state
from stack.services import AIRFLOW_COMPONENTS, ServiceSpec

#: The api-server's view of the Airflow components: {component: (status, latest heartbeat or None)}.
AirflowHealth = dict[str, tuple[str | None, datetime | None]]


def pid_file(cfg: StackConfig, name: str) -> Path:
    return cfg.pids / f"{name}.pid"


def read_pid(cfg: StackConfig, name: str) -> int | None:
    try:
        return int(pid_file(cfg, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def read_leader(cfg: StackConfig, name: str) -> LeaderState | None:
    pid = read_pid(cfg, name)
    if pid is None:
        return None
    try:
        written = pid_file(cfg, name).stat().st_mtime
    except FileNotFoundError:
        written = None
    return leader_state(pid, not_after=written)


def probe(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """One GET of a health endpoint: (healthy, why not). A JSON body with a `status` other than
    ok/healthy (serving's "degraded", "not ready") is unhealthy even when the HTTP status is 2xx."""
    try:
        resp = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        return False, f"no answer at {url}: {type(exc).__name__}"
    try:
        body = resp.json()
    except ValueError:
        body = None
    status = body.get("status") if isinstance(body, dict) else None
    if resp.ok and (not isinstance(status, str) or status.lower() in ("ok", "healthy")):
        return True, ""
    why = f"HTTP {resp.status_code}" + (f", {status}" if isinstance(status, str) else "")
    if isinstance(body, dict) and body.get("reason"):
        why += f": {body['reason']}"
    return False, why


def airflow_health(cfg: StackConfig) -> AirflowHealth:
    """The api-server's view of the Airflow components: {component: (status, latest heartbeat or None)},
    plus "metadatabase"; {} when the api-server does not answer."""
    try:
        body = requests.get(f"{cfg.airflow_url}/api/v2/monitor/health", timeout=5).json()
    except (requests.RequestException, ValueError):
        return {}
    found: AirflowHealth = {}
    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        entry = body.get(part) or {}
        beat = entry.get(f"latest_{part}_heartbeat")
        found[part] = (entry.get("status"), datetime.fromisoformat(beat) if beat else None)
    return found


def heartbeat_age(beat: datetime | None) -> str:
    if beat is None:
        return "no heartbeat recorded"
    return f"last heartbeat {(datetime.now(UTC) - beat).total_seconds():.0f}s ago"


@dataclass
class PartState:
    """What `status` prints for one part and what `run` acts on. kind: stopped, dead or running."""

    name: str
    kind: str
    pid: int | None = None
    healthy: bool = False
    why: str = ""
    leader: LeaderState | None = None
    answers: bool = False  # it answered its health check with 2xx while reporting a problem (degraded)

    @property
    def text(self) -> str:
        if self.kind == "stopped":
            return "stopped"
        if self.kind == "dead":
            return f"dead ({self.leader.describe() if self.leader else 'no leader'})"
        return "running, healthy" if self.healthy else f"running, NOT healthy ({self.why})"


def inspect_part(cfg: StackConfig, spec: ServiceSpec, components: AirflowHealth | None) -> PartState:
    """`components`: airflow_health() (None when not fetched: Airflow components are then judged by
    their leader only and count as healthy)."""
    leader = read_leader(cfg, spec.name)
    if leader is None:
        return PartState(spec.name, "stopped")
    if not leader.alive:
        return PartState(spec.name, "dead", leader.pid, leader=leader)
    answers = False
    if spec.health_url:
        ok, why = probe(spec.health_url)
        answers = not ok and why.startswith("HTTP 2")
    elif spec.name in AIRFLOW_COMPONENTS and components is not None:
        status, beat = components.get(AIRFLOW_COMPONENTS[spec.name], (None, None))
        ok = status == "healthy"
        why = (
            "Airflow health unknown: the api-server does not answer"
            if not components
            else f"Airflow says {status or 'nothing'}, {heartbeat_age(beat)}"
        )
    else:
        ok, why = True, ""
    return PartState(spec.name, "running", leader.pid, ok, why, leader, answers)
