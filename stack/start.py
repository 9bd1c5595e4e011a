"""`make run`: start the embedded stack, or heal it, and wait until it is healthy.

Each service runs in its own process group; the group leader's pid is in `.stack/pids/<name>.pid`.
How a part is judged (its leader, then its health endpoint or Airflow's job heartbeat, never its
group, which orphans keep alive): stack/health.py.

`run` is idempotent and heals: healthy parts are left alone (same pids); a dead part, or an Airflow
component with a stale heartbeat, is stopped and started alone (stack/heal.py). A part whose leader
is alive but unhealthy otherwise:
- serving that answers "degraded" (the last reload failed, the state store is down) is left alone:
  it answers predictions, and a restart would lose the loaded model without fixing the cause;
- any other unhealthy part (no answer, not ready) stops the run with its reason and log; nothing is
  restarted behind the user's back.
`run` checks every port before it starts anything, makes sure serving has a model to load
(stack/model_source.py), and rolls back what it started when a part does not become healthy,
showing that part's log from this start.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from argparse import Namespace
from dataclasses import dataclass
from datetime import UTC, datetime

from driftloop.contract import MLFLOW_TRACKING_URI_ENV
from stack.config import REPO_ROOT, StackConfig, load_or_create_secrets, write_secret_file
from stack.heal import restart_if_stale, stop_dead_part
from stack.health import AirflowHealth, PartState, airflow_health, heartbeat_age, inspect_part, pid_file, probe
from stack.model_source import Bootstrap, ensure_model_source
from stack.procs import port_in_use, start_process, stop_group, wait_http_ok
from stack.services import AIRFLOW_COMPONENTS, STACK_MARKER, ServiceSpec, airflow_env, service_specs, venv_bin
from stack.waiting import NotYet, poll

log = logging.getLogger(__name__)

PORT_VARIABLES = {"mlflow": "MLFLOW_PORT", "serving": "SERVING_PORT"}  # the Airflow parts: AIRFLOW_PORT


class StartFailed(RuntimeError):
    """A part did not start or did not become healthy (the message says which and why)."""


@dataclass
class Started:
    """A part this run started: its process, where its log stood before, and when (UTC)."""

    spec: ServiceSpec
    proc: subprocess.Popen[bytes]
    log_offset: int
    at: datetime


def ensure_venv() -> None:
    if not (REPO_ROOT / ".venv" / "bin" / "python").exists() and ".venv" not in sys.executable:
        raise SystemExit("error: no .venv; run `make install` (make run does it for you)")


def start_service(cfg: StackConfig, spec: ServiceSpec) -> Started:
    path = cfg.logs / f"{spec.name}.log"
    offset = path.stat().st_size if path.exists() else 0
    at = datetime.now(UTC)
    proc = start_process(spec.command, path, env=spec.env, cwd=REPO_ROOT)
    cfg.pids.mkdir(parents=True, exist_ok=True)
    pid_file(cfg, spec.name).write_text(str(proc.pid))
    return Started(spec, proc, offset, at)


def log_tail(cfg: StackConfig, name: str, lines: int = 15, since: int = 0) -> str:
    """The last `lines` lines of a part's log, from byte `since` on (this start's output only)."""
    path = cfg.logs / f"{name}.log"
    if not path.exists():
        return "    (no log)"
    with open(path, "rb") as handle:
        handle.seek(since)
        text = handle.read().decode(errors="replace")
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) if tail else "    (the log is empty)"


def wait_airflow_components(
    cfg: StackConfig,
    wanted: dict[str, datetime | None],
    procs: dict[str, subprocess.Popen[bytes]] | None = None,
    timeout: float = 240,
) -> None:
    """Wait until every wanted component (Airflow's name) is healthy with a heartbeat not older than
    the time given for it (a restarted part: the dead job's heartbeat still looks fresh for 30 s).
    Fails at once when a process we started exits."""

    def healthy() -> None:
        for name, proc in (procs or {}).items():
            if proc.poll() is not None:
                raise StartFailed(f"{name} exited with code {proc.returncode} before its first heartbeat")
        health = airflow_health(cfg)
        if not health:
            raise NotYet("api-server: does not answer")
        pending = {part: str(health[part][0]) for part in ("metadatabase",) if health[part][0] != "healthy"}
        for part, since in wanted.items():
            status, beat = health.get(part, (None, None))
            if status != "healthy" or (since is not None and (beat is None or beat < since)):
                pending[part] = f"{status or 'not started'}, {heartbeat_age(beat)}"
        if pending:
            raise NotYet("; ".join(f"{k}: {v}" for k, v in pending.items()))

    try:
        poll(healthy, timeout=timeout, interval=2.0)
    except NotYet as exc:
        raise TimeoutError(f"Airflow components not healthy after {timeout:.0f}s: {exc}") from None


def airflow_db_migrate(cfg: StackConfig, secrets: dict[str, str]) -> None:
    out_path = cfg.logs / "airflow-db-migrate.log"
    env = {**os.environ, **airflow_env(cfg, secrets), STACK_MARKER: str(cfg.root)}
    with open(out_path, "ab") as out:
        code = subprocess.run(
            [venv_bin("airflow"), "db", "migrate"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        ).returncode
    if code != 0:
        raise StartFailed(f"airflow db migrate failed (exit {code}); see {out_path}")


def write_endpoints(cfg: StackConfig, secrets: dict[str, str]) -> None:
    write_secret_file(
        cfg.endpoints_file,
        {
            # under MLflow's own names, so that a script that sources this file can use the MLflow client
            MLFLOW_TRACKING_URI_ENV: cfg.mlflow_tracking_uri,
            "MLFLOW_TRACKING_USERNAME": secrets["MLFLOW_TRACKING_USERNAME"],
            "MLFLOW_TRACKING_PASSWORD": secrets["MLFLOW_TRACKING_PASSWORD"],
            "SERVING_URL": cfg.serving_url,
            "SERVING_ADMIN_TOKEN": secrets["SERVING_ADMIN_TOKEN"],
            "SERVING_FEEDBACK_TOKEN": secrets["SERVING_FEEDBACK_TOKEN"],
            "AIRFLOW_URL": cfg.airflow_url,
            "AIRFLOW_USER": secrets["AIRFLOW_USER"],
            "AIRFLOW_PASSWORD": secrets["AIRFLOW_PASSWORD"],
        },
    )


@dataclass
class Plan:
    """What `run` found before starting anything: each part's state, the degraded parts left alone and
    the parts healed (restarted) so far."""

    states: dict[str, PartState]
    degraded: list[str]
    healed: list[str]


def plan(cfg: StackConfig, specs: list[ServiceSpec]) -> Plan | None:
    """Judge every part and clear away dead ones; None (after saying why) when nothing may be started:
    a part runs but is unhealthy, or a port is taken by another process."""
    # Airflow components are judged by their leader here; their heartbeat once the api-server is up.
    states = {s.name: inspect_part(cfg, s, None) for s in specs}
    unhealthy = [st for st in states.values() if st.kind == "running" and not st.healthy]
    degraded = [st.name for st in unhealthy if st.name == "serving" and st.answers]
    for st in unhealthy:
        if st.name in degraded:
            log.info("  serving: running (pid %s) but %s; left as it is: it answers predictions", st.pid, st.why)
    unhealthy = [st for st in unhealthy if st.name not in degraded]
    if unhealthy:
        for st in unhealthy:
            log.error(
                "error: %s runs (pid %s) but is not healthy (%s); `make stop` then `make run` restarts it\n"
                "  --- last lines of %s.log ---\n%s",
                st.name,
                st.pid,
                st.why,
                st.name,
                log_tail(cfg, st.name),
            )
        log.error("nothing was started")
        return None
    healed = []
    for spec in specs:
        state = states[spec.name]
        if state.kind == "dead":
            why = state.leader.describe() if state.leader else "no leader"
            log.info("  %s: dead (%s); stopping what is left of its process group", spec.name, why)
            stop_dead_part(cfg, state)
            healed.append(spec.name)
    busy = [s for s in specs if states[s.name].kind != "running" and s.port and port_in_use(s.port, cfg.host)]
    if busy:
        for spec in busy:
            var = PORT_VARIABLES.get(spec.name, "AIRFLOW_PORT")
            port = spec.port or 0
            log.error(
                "error: port %s for %s is already in use by another process; stop that process or choose "
                "another port, e.g. `%s=%s make run`",
                port,
                spec.name,
                var,
                port + 1,
            )
        log.error("nothing was started")
        return None
    return Plan(states, degraded, healed)


def start_part(
    cfg: StackConfig, spec: ServiceSpec, secrets: dict[str, str], started: list[Started], degraded: list[str]
) -> Bootstrap | None:
    """Start one part (after what it needs first) and wait until its health endpoint answers; serving
    without a champion yet is not waited for: the bootstrap retrain is returned, running."""
    bootstrap = ensure_model_source(cfg, secrets) if spec.name == "serving" else None
    if spec.name == "airflow-api-server":
        log.info("  airflow: migrating the metadata database")
        airflow_db_migrate(cfg, secrets)
    t0 = time.monotonic()
    log.info("  %s: starting", spec.name)
    part = start_service(cfg, spec)
    started.append(part)
    if bootstrap is not None:
        log.info("  %s: loads the first champion once the bootstrap retrain registered it", spec.name)
        return bootstrap
    wait_healthy(cfg, part, degraded, t0)
    return None


def wait_healthy(cfg: StackConfig, part: Started, degraded: list[str], t0: float) -> None:
    """Wait until the started part's health endpoint answers 2xx; a part that answers but not "ok"
    is noted as degraded."""
    spec = part.spec
    if not spec.health_url:
        return
    try:
        wait_http_ok(spec.health_url, timeout=spec.start_timeout, proc=part.proc)
    except (RuntimeError, TimeoutError) as exc:
        raise type(exc)(f"{spec.name} did not become healthy: {exc}") from None
    ok, why = probe(spec.health_url)
    if not ok:
        degraded.append(spec.name)
    where = cfg.airflow_url if spec.name == "airflow-api-server" else spec.health_url.rsplit("/", 1)[0]
    log.info(
        "  %s: %s at %s (%.0fs)%s",
        spec.name,
        "healthy" if ok else "answers",
        where,
        time.monotonic() - t0,
        "" if ok else f", but {why}",
    )


def start_parts(
    cfg: StackConfig, specs: list[ServiceSpec], secrets: dict[str, str], found: Plan, started: list[Started]
) -> None:
    """Start what does not run (and restart stale Airflow components), then wait for Airflow's heartbeats
    and, when it ran, for the bootstrap retrain and serving's first model."""
    components: AirflowHealth | None = None
    bootstrap: Bootstrap | None = None
    try:
        for spec in specs:
            state = found.states[spec.name]
            if state.kind == "running":
                if spec.name not in AIRFLOW_COMPONENTS:
                    if spec.name not in found.degraded:
                        log.info("  %s: already running (pid %s)", spec.name, state.pid)
                    continue
                components = airflow_health(cfg) if components is None else components
                if not restart_if_stale(cfg, spec, state, components):
                    continue
                found.healed.append(spec.name)
            bootstrap = start_part(cfg, spec, secrets, started, found.degraded) or bootstrap
        wait_airflow_parts(cfg, specs, started)
        if bootstrap is not None:
            serving = next(p for p in started if p.spec.name == "serving")
            if serving.proc.poll() is not None:
                raise RuntimeError(f"serving exited with code {serving.proc.returncode} before its first model")
            bootstrap.finish(cfg, secrets)
            wait_healthy(cfg, serving, found.degraded, bootstrap.started)
    finally:
        if bootstrap is not None:
            bootstrap.stop()  # only when something above failed: a finished retrain has exited


def wait_airflow_parts(cfg: StackConfig, specs: list[ServiceSpec], started: list[Started]) -> None:
    """Wait for the heartbeat of every Airflow component (a restarted one: newer than its start)."""
    waited: dict[str, datetime | None] = {
        AIRFLOW_COMPONENTS[s.name]: None for s in specs if s.name in AIRFLOW_COMPONENTS
    }
    if waited:
        t0 = time.monotonic()
        restarted = [p for p in started if p.spec.name in AIRFLOW_COMPONENTS]
        waited.update({AIRFLOW_COMPONENTS[p.spec.name]: p.at for p in restarted})
        log.info("  airflow: waiting for %s (heartbeat)", ", ".join(waited))
        wait_airflow_components(cfg, waited, {p.spec.name: p.proc for p in restarted})
        log.info("  airflow: all components healthy (%.0fs)", time.monotonic() - t0)


def roll_back(cfg: StackConfig, started: list[Started]) -> None:
    """Show this start's log of each part this run started, then stop it again."""
    for part in reversed(started):
        lines = 40 if part is started[-1] else 10
        log.error(
            "  --- last lines of %s.log (this start) ---\n%s",
            part.spec.name,
            log_tail(cfg, part.spec.name, lines, since=part.log_offset),
        )
        stop_group(part.proc.pid)
        pid_file(cfg, part.spec.name).unlink(missing_ok=True)
    log.error(
        "what this run started was stopped again; fix the cause above and run `make run` again"
        if started
        else "nothing was started"
    )


def run(cfg: StackConfig, args: Namespace | None = None) -> int:
    ensure_venv()
    started_at = time.monotonic()
    cfg.root.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.root, 0o700)
    secrets = load_or_create_secrets(cfg)
    specs = service_specs(cfg, secrets)
    only = getattr(args, "only", None) if args is not None else None
    if only:
        wanted = only.split(",")
        specs = [s for s in specs if any(s.name.startswith(w) for w in wanted)]

    log.info("==> driftloop embedded stack in %s", cfg.root)
    found = plan(cfg, specs)
    if found is None:
        return 1
    started: list[Started] = []
    try:
        start_parts(cfg, specs, secrets, found, started)
    except (RuntimeError, TimeoutError) as exc:
        log.error("error: %s", exc)
        roll_back(cfg, started)
        return 1

    write_endpoints(cfg, secrets)
    elapsed = time.monotonic() - started_at
    if started:
        (cfg.root / "last-start-seconds").write_text(f"{elapsed:.1f}\n")
    degraded, healed = found.degraded, found.healed
    done = f"stack running, {', '.join(degraded)} degraded (see above)" if degraded else "stack healthy"
    if healed:
        log.info("==> %s in %.0fs (restarted: %s; the other parts kept running)", done, elapsed, ", ".join(healed))
    elif started:
        log.info("==> %s in %.0fs", done, elapsed)
    else:
        log.info("==> %s; nothing changed", done if degraded else "stack already running")
    log.info(
        """
  MLflow     %s   user %s, password in %s
  Serving    %s   (admin token in %s)
  Airflow    %s   user %s, password %s
  Logs       %s
  Data       %s   (`make clean-stack` deletes it)
  Next       make e2e   |   make status   |   make stop""",
        cfg.mlflow_tracking_uri,
        secrets["MLFLOW_TRACKING_USERNAME"],
        cfg.endpoints_file,
        cfg.serving_url,
        cfg.endpoints_file,
        cfg.airflow_url,
        secrets["AIRFLOW_USER"],
        secrets["AIRFLOW_PASSWORD"],
        cfg.logs,
        cfg.root,
    )
    return 0
