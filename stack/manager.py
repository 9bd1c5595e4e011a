"""`make run`, `make stop`, `make status`: the embedded stack's lifecycle.

Each service runs in its own process group, recorded in `.stack/pids/<name>.pid`. `run` is
idempotent (what runs and is healthy is left alone), checks every port before it starts anything,
bootstraps a first champion when the registry has none, and rolls back what it started when a part
does not become healthy. `stop` stops groups (SIGTERM, then SIGKILL) and then any straggler that
carries the stack's marker variable.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stack.config import REPO_ROOT, StackConfig, load_or_create_secrets, mlflow_client_env, write_secret_file
from stack.procs import group_alive, port_in_use, start_process, stop_group, wait_http_ok
from stack.services import SERVICE_NAMES, STACK_MARKER, ServiceSpec, airflow_env, service_specs


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- pid files

def pid_file(cfg: StackConfig, name: str) -> Path:
    return cfg.pids / f"{name}.pid"


def read_pid(cfg: StackConfig, name: str) -> int | None:
    try:
        return int(pid_file(cfg, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def running_pid(cfg: StackConfig, name: str) -> int | None:
    """The service's process group when it is alive; a stale pid file is removed (and reported)."""
    pid = read_pid(cfg, name)
    if pid is None:
        return None
    if group_alive(pid):
        return pid
    say(f"  {name}: stale pid file (process {pid} is gone), removed")
    pid_file(cfg, name).unlink(missing_ok=True)
    return None


def healthy(spec: ServiceSpec) -> bool:
    if not spec.health_url:
        return True
    try:
        wait_http_ok(spec.health_url, timeout=3, interval=1)
        return True
    except (TimeoutError, RuntimeError):
        return False


# ---------------------------------------------------------------- run

def ensure_venv() -> None:
    if not (REPO_ROOT / ".venv" / "bin" / "python").exists() and ".venv" not in sys.executable:
        raise SystemExit("error: no .venv; run `make install` (make run does it for you)")


def start_service(cfg: StackConfig, spec: ServiceSpec) -> subprocess.Popen:
    proc = start_process(spec.command, cfg.logs / f"{spec.name}.log", env=spec.env, cwd=REPO_ROOT)
    cfg.pids.mkdir(parents=True, exist_ok=True)
    pid_file(cfg, spec.name).write_text(str(proc.pid))
    return proc


def log_tail(cfg: StackConfig, name: str, lines: int = 15) -> str:
    path = cfg.logs / f"{name}.log"
    if not path.exists():
        return "(no log)"
    return "\n".join("    " + l for l in path.read_text(errors="replace").splitlines()[-lines:])


def airflow_health_ok(cfg: StackConfig) -> dict:
    import requests

    try:
        body = requests.get(f"{cfg.airflow_url}/api/v2/monitor/health", timeout=5).json()
    except (requests.RequestException, ValueError):
        return {}
    return {part: (body.get(part) or {}).get("status") for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")}


def wait_airflow_components(cfg: StackConfig, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    state = {}
    while time.monotonic() < deadline:
        state = airflow_health_ok(cfg)
        if state and all(v == "healthy" for v in state.values()):
            return
        time.sleep(2)
    raise TimeoutError(f"Airflow components not all healthy after {timeout:.0f}s: {state}")


def has_champion(cfg: StackConfig, secrets: dict) -> bool:
    import requests

    resp = requests.get(f"{cfg.mlflow_url}/api/2.0/mlflow/registered-models/alias",
                        params={"name": cfg.model_name, "alias": "champion"}, timeout=30,
                        auth=(secrets["MLFLOW_TRACKING_USERNAME"], secrets["MLFLOW_TRACKING_PASSWORD"]))
    if resp.status_code in (401, 403):
        raise RuntimeError(f"MLflow at {cfg.mlflow_url} refused the stack's login (HTTP {resp.status_code}); "
                           f"the login in {cfg.root / 'secrets.env'} no longer matches {cfg.root / 'mlflow'}: "
                           "`make clean-stack` starts over")
    return resp.status_code == 200


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
    running = {s.name: running_pid(cfg, s.name) for s in specs}
    for spec in specs:
        if running[spec.name]:
            say(f"  {spec.name}: already running (pid {running[spec.name]})")
    busy = [s for s in specs if not running[s.name] and s.port and port_in_use(s.port, cfg.host)]
    if busy:
        for spec in busy:
            var = {"mlflow": "MLFLOW_PORT", "serving": "SERVING_PORT"}.get(spec.name, "AIRFLOW_PORT")
            say(f"error: port {spec.port} for {spec.name} is already in use by another process; "
                f"stop that process or choose another port, e.g. `{var}={spec.port + 1} make run`")
        say("nothing was started")
        return 1

    started: list[ServiceSpec] = []
    try:
        for spec in specs:
            if spec.name == "serving" and not running[spec.name] and not has_champion(cfg, secrets):
                t0 = time.monotonic()
                bootstrap_champion(cfg, secrets)
                say(f"  first champion registered in {time.monotonic() - t0:.0f}s")
            if spec.name == "airflow-api-server" and not running[spec.name]:
                say("  airflow: migrating the metadata database")
                airflow_db_migrate(cfg, secrets)
            if running[spec.name]:
                if not healthy(spec):
                    raise RuntimeError(f"{spec.name} runs (pid {running[spec.name]}) but is not healthy; "
                                       f"`make stop` then `make run`, log: {cfg.logs / (spec.name + '.log')}")
                continue
            t0 = time.monotonic()
            say(f"  {spec.name}: starting")
            proc = start_service(cfg, spec)
            started.append(spec)
            if spec.health_url:
                wait_http_ok(spec.health_url, timeout=spec.start_timeout, proc=proc)
                say(f"  {spec.name}: healthy at {spec.health_url.rsplit('/', 1)[0] if spec.name != 'airflow-api-server' else cfg.airflow_url} "
                    f"({time.monotonic() - t0:.0f}s)")
        if any(s.name.startswith("airflow") for s in specs):
            t0 = time.monotonic()
            say("  airflow: waiting for scheduler, dag-processor and triggerer")
            wait_airflow_components(cfg)
            say(f"  airflow: all components healthy ({time.monotonic() - t0:.0f}s)")
    except (RuntimeError, TimeoutError) as exc:
        say(f"error: {exc}")
        for spec in reversed(started):
            say(f"  --- last lines of {spec.name}.log ---\n{log_tail(cfg, spec.name)}")
            pid = read_pid(cfg, spec.name)
            if pid:
                stop_group(pid)
            pid_file(cfg, spec.name).unlink(missing_ok=True)
        say("what this run started was stopped again; fix the cause above and run `make run` again")
        return 1

    write_endpoints(cfg, secrets)
    elapsed = time.monotonic() - started_at
    if started:
        (cfg.root / "last-start-seconds").write_text(f"{elapsed:.1f}\n")
    say(f"==> stack healthy in {elapsed:.0f}s" if started else "==> stack already running; nothing changed")
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
    """PIDs of processes that carry this stack's marker variable (any process group)."""
    needle = f"{STACK_MARKER}={cfg.root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
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
        pid = read_pid(cfg, name)
        if pid is None:
            continue
        if stop_group(pid):
            say(f"  {name}: stopped (process group {pid})")
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
    if not cfg.root.exists():
        say("stack not started (no .stack/); `make run` starts it")
        return 1
    specs = service_specs(cfg, load_or_create_secrets(cfg))
    ok = True
    say(f"{'part':24} {'pid':>8}  state")
    for spec in specs:
        pid = read_pid(cfg, spec.name)
        if pid is None:
            state, ok = "stopped", False
        elif not group_alive(pid):
            state, ok = f"crashed (stale pid file; see {cfg.logs / (spec.name + '.log')}; `make stop && make run`)", False
        elif spec.health_url and not healthy(spec):
            state, ok = "running, NOT healthy", False
        else:
            state = "running, healthy" if spec.health_url else "running"
        say(f"{spec.name:24} {pid or '-':>8}  {state}")
    if read_pid(cfg, "airflow-api-server"):
        components = airflow_health_ok(cfg)
        if components:
            say("airflow components: " + ", ".join(f"{k} {v}" for k, v in components.items()))
    return 0 if ok else 1


def e2e(cfg: StackConfig, args=None) -> int:
    from stack.e2e import main as e2e_main

    return e2e_main(cfg)
