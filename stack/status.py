"""`make status`: one line per part of the embedded stack; exit 0 only when every part runs and is healthy."""

from __future__ import annotations

import logging
from argparse import Namespace

from stack.config import StackConfig, load_or_create_secrets
from stack.health import airflow_health, heartbeat_age, inspect_part, read_leader
from stack.services import AIRFLOW_COMPONENTS, service_specs

log = logging.getLogger(__name__)


def status(cfg: StackConfig, args: Namespace | None = None) -> int:
    if not cfg.root.exists():
        log.info("stack not started (no .stack/); `make run` starts it")
        return 1
    specs = service_specs(cfg, load_or_create_secrets(cfg))
    api = read_leader(cfg, "airflow-api-server")
    components = airflow_health(cfg) if api is not None and api.alive else {}
    states = [inspect_part(cfg, spec, components) for spec in specs]
    log.info("%-24s %8s  state", "part", "pid")
    for spec, st in zip(specs, states, strict=True):
        text = st.text
        if st.healthy and spec.name in AIRFLOW_COMPONENTS:
            text += f" ({heartbeat_age(components[AIRFLOW_COMPONENTS[spec.name]][1])})"
        log.info("%-24s %8s  %s", spec.name, st.pid or "-", text)
    database = components["metadatabase"][0] if components else "healthy"
    if database != "healthy":
        log.info("airflow metadatabase: %s", database)
    ok = all(st.kind == "running" and st.healthy for st in states) and database == "healthy"
    if not ok:
        log.info("not every part is healthy: `make run` restarts what is dead or stopped (logs: %s)", cfg.logs)
    return 0 if ok else 1
