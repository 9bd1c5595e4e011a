"""How `make run` heals a part that is not what it should be (see stack/start.py for when).

- A part whose leader is gone: what is left of its process group is stopped (SIGTERM, then SIGKILL:
  LocalExecutor workers ignore SIGTERM) and the part is started alone. Processes that left the group on
  purpose are kept: a detached pipeline run (airflow_kfp_provider/local_runs.py) outlives the scheduler
  and triggerer by design.
- An Airflow component whose leader lives but whose heartbeat is stale (leader older than
  HEARTBEAT_GRACE) is restarted, since Airflow already counts it as dead: its tasks are reset and its
  triggers re-assigned.
"""

from __future__ import annotations

import logging
import time

from stack.config import StackConfig
from stack.health import AirflowHealth, PartState, heartbeat_age, pid_file
from stack.procs import stop_group
from stack.services import AIRFLOW_COMPONENTS, ServiceSpec

log = logging.getLogger(__name__)

# A component started this recently may not have sent its first heartbeat yet: not restarted for that.
HEARTBEAT_GRACE = 90.0
# Seconds between SIGTERM and SIGKILL for what is left of a dead part's group.
DEAD_GROUP_GRACE = 5.0


def stop_dead_part(cfg: StackConfig, state: PartState) -> None:
    """Stop what is left of a dead part's process group and forget its pid file."""
    if state.pid is not None and not (state.leader and state.leader.recycled):
        stop_group(state.pid, grace=DEAD_GROUP_GRACE)
    pid_file(cfg, state.name).unlink(missing_ok=True)


def restart_if_stale(cfg: StackConfig, spec: ServiceSpec, state: PartState, components: AirflowHealth) -> bool:
    """An Airflow component whose leader lives: True when it must be restarted (its group is then
    stopped) because its heartbeat is stale; False when it is healthy or may still be starting."""
    if not components:
        raise RuntimeError(
            f"cannot tell whether {spec.name} (pid {state.pid}) works: the Airflow api-server at "
            f"{cfg.airflow_url} does not answer its health endpoint"
        )
    status, beat = components.get(AIRFLOW_COMPONENTS[spec.name], (None, None))
    if status == "healthy":
        log.info("  %s: already running (pid %s, %s)", spec.name, state.pid, heartbeat_age(beat))
        return False
    started_at = state.leader.started_at if state.leader else None
    age = time.time() - (started_at or 0)
    if age < HEARTBEAT_GRACE:
        log.info("  %s: started %.0fs ago (pid %s), waiting for its first heartbeat", spec.name, age, state.pid)
        return False
    log.info(
        "  %s: runs (pid %s) but Airflow says %s (%s); restarting it",
        spec.name,
        state.pid,
        status or "nothing",
        heartbeat_age(beat),
    )
    if state.pid is not None:
        stop_group(state.pid, grace=DEAD_GROUP_GRACE)
    pid_file(cfg, spec.name).unlink(missing_ok=True)
    return True
