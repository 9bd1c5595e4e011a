"""`make run`, `make stop`, `make status`: the embedded stack's lifecycle.

Each service runs in its own process group; the group leader's pid is in `.stack/pids/<name>.pid`.
How a part is judged (its leader, then its health endpoint or Airflow's job heartbeat, never its
group, which orphans keep alive): stack/health.py.

`run` is idempotent and heals: healthy parts are left alone (same pids); a part whose leader is
gone has what is left of its process group stopped (SIGTERM, then SIGKILL: LocalExecutor workers
ignore SIGTERM) and is started alone. Processes that left the group on purpose are kept: a detached
pipeline run (airflow_kfp_provider/local_runs.py) outlives the scheduler and triggerer by design.
A part whose leader is alive but unhealthy:
- an Airflow component with a stale heartbeat (leader older than HEARTBEAT_GRACE) is restarted,
  since Airflow already counts it as dead: its tasks are reset and its triggers re-assigned;
- serving that answers "degraded" (the last reload failed, the state store is down) is left alone:
  it answers predictions, and a restart would lose the loaded model without fixing the cause;
- any other unhealthy part (no answer, not ready) stops the run with its reason and log; nothing is
  restarted behind the user's back.
`run` checks every port before it starts anything, bootstraps a first champion when the registry
has none (serving with MLflow down waits for MLflow, or starts on the version it served before), and
rolls back what it started when a part does not become healthy, printing that part's log from this
start. `stop` stops groups and then any straggler that carries the stack's marker variable.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

from stack.config import REPO_ROOT, StackConfig, load_or_create_secrets, mlflow_client_env, write_secret_file
from stack.health import PartState, airflow_health, heartbeat_age, inspect_part, pid_file, probe, read_leader
from stack.procs import port_in_use, start_process, stop_group, wait_http_ok
from stack.services import (AIRFLOW_COMPONENTS, SERVICE_NAMES, STACK_MARKER, ServiceSpec, airflow_env,
                            serving_state_file, service_specs)

# A component started this recently may not have sent its first heartbeat yet: not restarted for that.
HEARTBEAT_GRACE = 90.0
# How long `run` waits for an unreachable MLflow before serving can start (STACK_MLFLOW_WAIT overrides).
MLFLOW_WAIT_SECONDS = 120.0
# Seconds between SIGTERM and SIGKILL for what is left of a dead part's group.
DEAD_GROUP_GRACE = 5.0


def say(message: str) -> None:
    print(message, flush=True)


def stop_dead_part(cfg: StackConfig, state: PartState) -> None:
    """Stop what is left of a dead part's process group and forget its pid file."""
    if state.pid is not None and not (state.leader and state.leader.recycled):
        stop_group(state.pid, grace=DEAD_GROUP_GRACE)
    pid_file(cfg, state.name).unlink(missing_ok=True)


# ---------------------------------------------------------------- run

def ensure_venv() -> None:
    if not (REPO_ROOT / ".venv" / "bin" / "python").exists() and ".venv" not in sys.executable:
        raise SystemExit("error: no .venv; run `make install` (make run does it for you)")


@dataclass
class Started:
    """A part this run started: its process, where its log stood before, and when (UTC)."""
    spec: ServiceSpec
    proc: subprocess.Popen
    log_offset: int
    at: datetime


def start_service(cfg: StackConfig, spec: ServiceSpec) -> Started:
    log = cfg.logs / f"{spec.name}.log"
    offset = log.stat().st_size if log.exists() else 0
    at = datetime.now(timezone.utc)
    proc = start_process(spec.command, log, env=spec.env, cwd=REPO_ROOT)
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


def wait_airflow_components(cfg: StackConfig, wanted: dict[str, datetime | None],
                            procs: dict[str, subprocess.Popen] | None = None, timeout: float = 240) -> None:
    """Wait until every wanted component (Airflow's name) is healthy with a heartbeat not older than
    the time given for it (a restarted part: the dead job's heartbeat still looks fresh for 30 s).
    Fails at once when a process we started exits."""
    deadline = time.monotonic() + timeout
    pending: dict = {}
    while True:
        for name, proc in (procs or {}).items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} before its first heartbeat")
        health = airflow_health(cfg)
        if not health:
            pending = {"api-server": "does not answer"}
        else:
            pending = {part: health[part][0] for part in ("metadatabase",) if health[part][0] != "healthy"}
            for part, since in wanted.items():
                status, beat = health.get(part, (None, None))
                if status != "healthy" or (since is not None and (beat is None or beat < since)):
                    pending[part] = f"{status or 'not started'}, {heartbeat_age(beat)}"
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Airflow components not healthy after {timeout:.0f}s: "
                               + "; ".join(f"{k}: {v}" for k, v in pending.items()))
        time.sleep(2)


def has_champion(cfg: StackConfig, secrets: dict) -> bool:
    import requests

    try:
        resp = requests.get(f"{cfg.mlflow_url}/api/2.0/mlflow/registered-models/alias",
                            params={"name": cfg.model_name, "alias": "champion"}, timeout=30,
                            auth=(secrets["MLFLOW_TRACKING_USERNAME"], secrets["MLFLOW_TRACKING_PASSWORD"]))
    except requests.RequestException as exc:
        raise RuntimeError(f"MLflow at {cfg.mlflow_url} did not answer ({type(exc).__name__}); "
                           "start it with `make mlflow` or `make run`") from None
    if resp.status_code in (401, 403):
        raise RuntimeError(f"MLflow at {cfg.mlflow_url} refused the stack's login (HTTP {resp.status_code}); "
                           f"the login in {cfg.root / 'secrets.env'} no longer matches {cfg.root / 'mlflow'}: "
                           "`make clean-stack` starts over")
    return resp.status_code == 200


def served_version(cfg: StackConfig) -> str | None:
    """The model version serving recorded as served in its state file (a previous run), read without
    writing anything; None when there is no such record or the file cannot be read."""
    path = serving_state_file(cfg)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT version FROM served WHERE model_name = ?", (cfg.model_name,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row and row[0] is not None else None


def mlflow_wait_seconds() -> float:
    try:
        return float(os.environ.get("STACK_MLFLOW_WAIT", MLFLOW_WAIT_SECONDS))
    except ValueError:
        return MLFLOW_WAIT_SECONDS


def local_model(cfg: StackConfig) -> tuple[str | None, str]:
    """(version, its directory) when serving can start without MLflow: a previous run recorded a
    served version and a verified local copy of it exists (serving/model_cache.py); else (None, why)."""
    from serving.model_cache import CopyUnusable, ModelCopies

    version = served_version(cfg)
    if version is None:
        return None, "serving has never served a model here"
    try:
        copy = ModelCopies(serving_state_file(cfg).parent / "models").open(cfg.model_name, version)
    except CopyUnusable as exc:
        return None, f"the local copy of version {version}, which it served before, is unusable: {exc}"
    if copy is None:
        return None, f"version {version}, which it served before, has no local copy"
    return version, str(copy.path)


def wait_for_mlflow(cfg: StackConfig, timeout: float, interval: float = 2.0, why_needed: str = "") -> None:
    """Block until MLflow's /health answers; RuntimeError saying what to do after `timeout` seconds."""
    ok, why = probe(f"{cfg.mlflow_url}/health")
    if ok:
        return
    needed = f" and serving needs it ({why_needed})" if why_needed else ""
    say(f"  MLflow at {cfg.mlflow_url} is not reachable ({why}){needed}; waiting up to {timeout:.0f}s "
        "(start it with `make mlflow` or `make run`)")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(min(interval, max(0.0, timeout - (time.monotonic() - t0))))
        ok, why = probe(f"{cfg.mlflow_url}/health")
        if ok:
            say(f"  MLflow answers ({time.monotonic() - t0:.0f}s)")
            return
    raise RuntimeError(f"MLflow at {cfg.mlflow_url} is still not reachable after {timeout:.0f}s ({why}); serving "
                       "needs it for its model: start it with `make mlflow` (or `make run`) and run this again")


def ensure_model_source(cfg: StackConfig, secrets: dict) -> None:
    """Before serving starts: a model it can load. With MLflow down, the verified local copy of the
    version a previous run served is enough; otherwise wait for MLflow. With MLflow up and no champion
    yet, bootstrap one. A state file serving would refuse (empty, damaged) stops the start here, in a
    second, whatever MLflow's state."""
    from serving.store.base import StateFileError
    from serving.store.sqlite import check_state_file

    try:
        check_state_file(serving_state_file(cfg))
    except StateFileError as exc:
        raise RuntimeError(str(exc)) from None
    ok, why = probe(f"{cfg.mlflow_url}/health")
    if not ok:
        version, where = local_model(cfg)
        if version is not None:
            say(f"  MLflow at {cfg.mlflow_url} is not reachable ({why}): serving starts on version {version} of "
                f"{cfg.model_name}, which it served before, from its local copy ({where})")
            return
        wait_for_mlflow(cfg, mlflow_wait_seconds(), why_needed=where)
    if not has_champion(cfg, secrets):
        t0 = time.monotonic()
        bootstrap_champion(cfg, secrets)
        say(f"  first champion registered in {time.monotonic() - t0:.0f}s")


def bootstrap_champion(cfg: StackConfig, secrets: dict) -> None:
    """First run: train and register a champion so that serving has a model (not deployed: serving
    starts after this and loads it)."""
    log = cfg.logs / "bootstrap-retrain.log"
    say(f"  registry has no champion for {cfg.model_name}: running the retrain pipeline once (log: {log})")
    cmd = [sys.executable, "-m", "kfp_components.run_local", "--pipeline-root", str(cfg.root / "kfp-local"),
           "--param", f"mlflow_uri={cfg.mlflow_url}", "--param", f"model_name={cfg.model_name}",
           "--param", "deploy_target=none", "--param", "min_accuracy=0.0", "--param", "run_tag=bootstrap"]
    with open(log, "ab") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                              env={**os.environ, STACK_MARKER: str(cfg.root), **mlflow_client_env(secrets, cfg.mlflow_url),
                                   "SERVING_ADMIN_TOKEN": secrets["SERVING_ADMIN_TOKEN"]}).returncode
    if code != 0:
        raise RuntimeError(f"bootstrap retrain failed (exit {code}); see {log}")


def airflow_db_migrate(cfg: StackConfig, secrets: dict) -> None:
    log = cfg.logs / "airflow-db-migrate.log"
    env = {**os.environ, **airflow_env(cfg, secrets), STACK_MARKER: str(cfg.root)}
    with open(log, "ab") as out:
        code = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], stdout=out,
                              stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT).returncode
    if code != 0:
        raise RuntimeError(f"airflow db migrate failed (exit {code}); see {log}")


def write_endpoints(cfg: StackConfig, secrets: dict) -> None:
    write_secret_file(cfg.endpoints_file, {
        "MLFLOW_URL": cfg.mlflow_url,
        # under MLflow's own names, so that a script that sources this file can use the MLflow client
        "MLFLOW_TRACKING_URI": cfg.mlflow_url,
        "MLFLOW_TRACKING_USERNAME": secrets["MLFLOW_TRACKING_USERNAME"],
        "MLFLOW_TRACKING_PASSWORD": secrets["MLFLOW_TRACKING_PASSWORD"],
        "SERVING_URL": cfg.serving_url,
        "SERVING_ADMIN_TOKEN": secrets["SERVING_ADMIN_TOKEN"],
        "SERVING_FEEDBACK_TOKEN": secrets["SERVING_FEEDBACK_TOKEN"],
        "AIRFLOW_URL": cfg.airflow_url,
        "AIRFLOW_USER": secrets["AIRFLOW_USER"],
        "AIRFLOW_PASSWORD": secrets["AIRFLOW_PASSWORD"],
    })


def restart_if_stale(cfg: StackConfig, spec: ServiceSpec, state: PartState, components: dict) -> bool:
    """An Airflow component whose leader lives: True when it must be restarted (its group is then
    stopped) because its heartbeat is stale; False when it is healthy or may still be starting."""
    if not components:
        raise RuntimeError(f"cannot tell whether {spec.name} (pid {state.pid}) works: the Airflow api-server at "
                           f"{cfg.airflow_url} does not answer its health endpoint")
    status, beat = components.get(AIRFLOW_COMPONENTS[spec.name], (None, None))
    if status == "healthy":
        say(f"  {spec.name}: already running (pid {state.pid}, {heartbeat_age(beat)})")
        return False
    age = time.time() - (state.leader.started_at or 0)
    if age < HEARTBEAT_GRACE:
        say(f"  {spec.name}: started {age:.0f}s ago (pid {state.pid}), waiting for its first heartbeat")
        return False
    say(f"  {spec.name}: runs (pid {state.pid}) but Airflow says {status or 'nothing'} ({heartbeat_age(beat)}); "
        "restarting it")
    stop_group(state.pid, grace=DEAD_GROUP_GRACE)
    pid_file(cfg, spec.name).unlink(missing_ok=True)
    return True


def run(cfg: StackConfig, args=None) -> int:
    ensure_venv()
    started_at = time.monotonic()
    cfg.root.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.root, 0o700)
    secrets = load_or_create_secrets(cfg)
    specs = service_specs(cfg, secrets)
    if args is not None and getattr(args, "only", None):
        wanted = args.only.split(",")
        specs = [s for s in specs if any(s.name.startswith(w) for w in wanted)]

    say(f"==> driftloop embedded stack in {cfg.root}")
    # Airflow components are judged by their leader here; their heartbeat once the api-server is up.
    states = {s.name: inspect_part(cfg, s, None) for s in specs}
    unhealthy = [st for st in states.values() if st.kind == "running" and not st.healthy]
    degraded = [st.name for st in unhealthy if st.name == "serving" and st.answers]
    for st in unhealthy:
        if st.name in degraded:
            say(f"  serving: running (pid {st.pid}) but {st.why}; left as it is: it answers predictions")
    unhealthy = [st for st in unhealthy if st.name not in degraded]
    if unhealthy:
        for st in unhealthy:
            say(f"error: {st.name} runs (pid {st.pid}) but is not healthy ({st.why}); `make stop` then `make run` "
                f"restarts it\n  --- last lines of {st.name}.log ---\n{log_tail(cfg, st.name)}")
        say("nothing was started")
        return 1
    healed = []
    for spec in specs:
        state = states[spec.name]
        if state.kind == "dead":
            say(f"  {spec.name}: dead ({state.leader.describe()}); stopping what is left of its process group")
            stop_dead_part(cfg, state)
            healed.append(spec.name)
    busy = [s for s in specs if states[s.name].kind != "running" and s.port and port_in_use(s.port, cfg.host)]
    if busy:
        for spec in busy:
            var = {"mlflow": "MLFLOW_PORT", "serving": "SERVING_PORT"}.get(spec.name, "AIRFLOW_PORT")
            say(f"error: port {spec.port} for {spec.name} is already in use by another process; "
                f"stop that process or choose another port, e.g. `{var}={spec.port + 1} make run`")
        say("nothing was started")
        return 1

    started: list[Started] = []
    components = None
    try:
        for spec in specs:
            state = states[spec.name]
            if state.kind == "running":
                if spec.name not in AIRFLOW_COMPONENTS:
                    if spec.name not in degraded:
                        say(f"  {spec.name}: already running (pid {state.pid})")
                    continue
                components = airflow_health(cfg) if components is None else components
                if not restart_if_stale(cfg, spec, state, components):
                    continue
                healed.append(spec.name)
            if spec.name == "serving":
                ensure_model_source(cfg, secrets)
            if spec.name == "airflow-api-server":
                say("  airflow: migrating the metadata database")
                airflow_db_migrate(cfg, secrets)
            t0 = time.monotonic()
            say(f"  {spec.name}: starting")
            part = start_service(cfg, spec)
            started.append(part)
            if spec.health_url:
                try:
                    wait_http_ok(spec.health_url, timeout=spec.start_timeout, proc=part.proc)
                except (RuntimeError, TimeoutError) as exc:
                    raise type(exc)(f"{spec.name} did not become healthy: {exc}") from None
                ok, why = probe(spec.health_url)
                if not ok:
                    degraded.append(spec.name)
                say(f"  {spec.name}: {'healthy' if ok else 'answers'} at "
                    f"{spec.health_url.rsplit('/', 1)[0] if spec.name != 'airflow-api-server' else cfg.airflow_url} "
                    f"({time.monotonic() - t0:.0f}s)" + ("" if ok else f", but {why}"))
        waited = {AIRFLOW_COMPONENTS[s.name]: None for s in specs if s.name in AIRFLOW_COMPONENTS}
        if waited:
            t0 = time.monotonic()
            restarted = [p for p in started if p.spec.name in AIRFLOW_COMPONENTS]
            waited.update({AIRFLOW_COMPONENTS[p.spec.name]: p.at for p in restarted})
            say("  airflow: waiting for " + ", ".join(waited) + " (heartbeat)")
            wait_airflow_components(cfg, waited, {p.spec.name: p.proc for p in restarted})
            say(f"  airflow: all components healthy ({time.monotonic() - t0:.0f}s)")
    except (RuntimeError, TimeoutError) as exc:
        say(f"error: {exc}")
        for part in reversed(started):
            lines = 40 if part is started[-1] else 10
            say(f"  --- last lines of {part.spec.name}.log (this start) ---\n"
                f"{log_tail(cfg, part.spec.name, lines, since=part.log_offset)}")
            stop_group(part.proc.pid)
            pid_file(cfg, part.spec.name).unlink(missing_ok=True)
        say("what this run started was stopped again; fix the cause above and run `make run` again"
            if started else "nothing was started")
        return 1

    write_endpoints(cfg, secrets)
    elapsed = time.monotonic() - started_at
    if started:
        (cfg.root / "last-start-seconds").write_text(f"{elapsed:.1f}\n")
    done = f"stack running, {', '.join(degraded)} degraded (see above)" if degraded else "stack healthy"
    if healed:
        say(f"==> {done} in {elapsed:.0f}s (restarted: {', '.join(healed)}; the other parts kept running)")
    elif started:
        say(f"==> {done} in {elapsed:.0f}s")
    else:
        say(f"==> {done if degraded else 'stack already running'}; nothing changed")
    say(f"""
  MLflow     {cfg.mlflow_url}   user {secrets['MLFLOW_TRACKING_USERNAME']}, password in {cfg.endpoints_file}
  Serving    {cfg.serving_url}   (admin token in {cfg.endpoints_file})
  Airflow    {cfg.airflow_url}   user {secrets['AIRFLOW_USER']}, password {secrets['AIRFLOW_PASSWORD']}
  Logs       {cfg.logs}
  Data       {cfg.root}   (`make clean-stack` deletes it)
  Next       make e2e   |   make status   |   make stop""")
    return 0


# ---------------------------------------------------------------- stop / status

def stack_stragglers(cfg: StackConfig) -> list[int]:
    """PIDs of processes that carry this stack's marker variable (any process group). A process that
    sets its title (gunicorn, Airflow) overwrites what /proc shows of its environment: those are
    found through their process group instead."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["environ"]):
        environ = proc.info.get("environ") or {}
        if proc.pid != me and environ.get(STACK_MARKER) == str(cfg.root):
            found.append(proc.pid)
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop(cfg: StackConfig, args=None) -> int:
    stopped_any = False
    for name in reversed(SERVICE_NAMES):
        leader = read_leader(cfg, name)
        if leader is None:
            continue
        if not leader.recycled and stop_group(leader.pid):
            say(f"  {name}: stopped (process group {leader.pid})")
            stopped_any = True
        else:
            say(f"  {name}: was not running (stale pid file removed)")
        pid_file(cfg, name).unlink(missing_ok=True)
    leftovers = stack_stragglers(cfg)
    signal_all(leftovers, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.3)
        leftovers = stack_stragglers(cfg)
    signal_all(leftovers, signal.SIGKILL)
    if leftovers:
        say(f"  killed {len(leftovers)} leftover process(es) of the stack")
    say("==> stack stopped; data kept in " + str(cfg.root) if stopped_any or leftovers else "==> nothing was running")
    return 0


def status(cfg: StackConfig, args=None) -> int:
    """One line per part; exit 0 only when every part runs and is healthy."""
    if not cfg.root.exists():
        say("stack not started (no .stack/); `make run` starts it")
        return 1
    specs = service_specs(cfg, load_or_create_secrets(cfg))
    api = read_leader(cfg, "airflow-api-server")
    components = airflow_health(cfg) if api is not None and api.alive else {}
    states = [inspect_part(cfg, spec, components) for spec in specs]
    say(f"{'part':24} {'pid':>8}  state")
    for spec, st in zip(specs, states):
        text = st.text
        if st.healthy and spec.name in AIRFLOW_COMPONENTS:
            text += f" ({heartbeat_age(components[AIRFLOW_COMPONENTS[spec.name]][1])})"
        say(f"{spec.name:24} {st.pid or '-':>8}  {text}")
    if components and components["metadatabase"][0] != "healthy":
        say(f"airflow metadatabase: {components['metadatabase'][0]}")
    ok = all(st.kind == "running" and st.healthy for st in states) and (
        not components or components["metadatabase"][0] == "healthy")
    if not ok:
        say(f"not every part is healthy: `make run` restarts what is dead or stopped (logs: {cfg.logs})")
    return 0 if ok else 1


def e2e(cfg: StackConfig, args=None) -> int:
    from stack.e2e import main as e2e_main

    return e2e_main(cfg)
