"""False retrains of the drift watcher: how many retrains in-distribution traffic starts when the
watcher looks every minute.

The real serving app (Flask test client, SQLite store, the champion from MLflow) takes rows at a
steady rate; once a simulated minute the watcher's decision rule (`driftloop.retrain.episodes.decide`,
the code the trigger runs) reads `/drift/status`. Two rules on the same row stream:
- `fresh` — the project's rule: decide only on a full window that shares no row with the last decided
  one (at most one decision per `window_size` new rows);
- `every poll` — decide on whatever the window holds at each poll (overlapping windows), what a
  naive watcher does.
Labels are assumed to keep arriving (the storm rule never blocks), the worst case. A fire counts as
a false retrain (every row is in-distribution) and is followed by what a retrain does to the window:
a new episode (`POST /drift/reset` here, a new champion in production).
"""

from __future__ import annotations

import math
import tempfile
from typing import Any

import numpy as np

from bench.drift import make_window, reference_and_pool, serving_app
from driftloop.retrain.episodes import Look, decide

ADMIN = {"Authorization": "Bearer bench"}


def poisson_interval(count: int, exposure: float) -> tuple[float, float]:
    """95 % interval of a Poisson rate (`count` events over `exposure` units), exact (Garwood)."""
    from scipy import stats

    low = stats.chi2.ppf(0.025, 2 * count) / 2 if count else 0.0
    high = stats.chi2.ppf(0.975, 2 * count + 2) / 2
    return float(low) / exposure, float(high) / exposure


def _stream(client: Any, rule: str, rows: np.ndarray, per_minute: int) -> dict[str, int]:
    """Feed `rows` at `per_minute` rows a poll; run the rule once a poll; count decisions and fires."""
    state: dict[str, Any] = {}
    decisions = fires = polls = 0
    for start in range(0, len(rows), per_minute):
        batch = rows[start : start + per_minute].round(3).tolist()
        resp = client.post("/predict", json={"instances": batch})
        assert resp.status_code == 200, resp.get_json()
        polls += 1
        status = client.get("/drift/status").get_json()
        # Worst case for false retrains: new labels before every look, so the storm rule never blocks.
        status["labelled_rows"] = status["labelled_rows_since_served"] = polls
        if rule == "every poll":
            state.pop("decided", None)
        decision = decide(Look.from_status(status), state)
        state = decision.state
        decisions += decision.action != "wait"
        if decision.action == "fire":
            fires += 1
            assert client.post("/drift/reset", headers=ADMIN).status_code == 200
    return {"polls": polls, "decisions": decisions, "fires": fires}


def false_retrains(
    mlflow_tracking_uri: str,
    model_name: str,
    rates_per_minute: tuple[int, ...] = (10, 50, 200),
    rows_per_rate: int = 100_000,
    window_size: int = 100,
    seed: int = 2026,
) -> list[dict]:
    """Per rate and rule: decisions and false retrains per 10,000 in-distribution rows, with a 95 % interval."""
    _, pool = reference_and_pool()
    results = []
    for per_minute in rates_per_minute:
        rows = make_window(pool, np.random.default_rng(seed + per_minute), rows_per_rate, 0.0)
        for rule in ("fresh", "every poll"):
            with tempfile.TemporaryDirectory() as tmp:
                app = serving_app(mlflow_tracking_uri, model_name, tmp, window_size)
                counts = _stream(app.test_client(), rule, rows, per_minute)
            per_10k = len(rows) / 10_000
            low, high = poisson_interval(counts["fires"], per_10k)
            results.append(
                {
                    "rows_per_minute": per_minute,
                    "rule": rule,
                    "rows": len(rows),
                    **counts,
                    "decisions_per_10k_rows": round(counts["decisions"] / per_10k, 1),
                    "false_retrains_per_10k_rows": round(counts["fires"] / per_10k, 2),
                    "ci95": [round(low, 2), round(high, 2)],
                    "false_alarms_per_decision": round(counts["fires"] / counts["decisions"], 4)
                    if counts["decisions"]
                    else math.nan,
                }
            )
            print(f"  {results[-1]}", flush=True)
    return results
