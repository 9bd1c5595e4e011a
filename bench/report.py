"""The benchmark results as the Markdown tables the README quotes."""

from __future__ import annotations


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}×" if b else "n/a"


def _rate(q: dict) -> str:
    return f"{q['rate']:.1%} ({q['ci95'][0]:.1%}-{q['ci95'][1]:.1%})"


def retrain_tables(c: dict) -> list[str]:
    """`make retrain` beside the tutorial's pipeline, step by step, then the split of each of our steps."""
    ours, tutorial = c["ours"], c["tutorial"]
    out = [
        f"### `make retrain` beside the tutorial's pipeline (same local runner, venv and MLflow server with "
        f"basic auth; median of {c['rounds']} alternating runs after one warm-up each)",
        "",
        "| | this project | tutorial (bench/tutorial_pipeline.py) | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| pipeline, wall | {ours['wall_s']:.1f} s | {tutorial['wall_s']:.1f} s | "
        f"**{c['ratio']:.2f}×** (goal ≤ 0.5×) |",
    ]
    for ours_step, tutorial_step in zip(ours["steps_s"], tutorial["steps_s"], strict=False):
        a, b = ours["steps_s"][ours_step], tutorial["steps_s"][tutorial_step]
        out.append(f"| &nbsp;&nbsp;step {ours_step} | {a:.1f} s | {b:.1f} s | {_ratio(a, b)} |")
    out.append(
        f"| &nbsp;&nbsp;runner (start-up, loading the pipeline, the outcome) | {ours['runner_s']:.1f} s | "
        f"{tutorial['runner_s']:.1f} s | |"
    )
    out.append(
        f"| every run, wall | {', '.join(f'{w:.1f}' for w in c['ours_walls_s'])} s | "
        f"{', '.join(f'{w:.1f}' for w in c['tutorial_walls_s'])} s | |"
    )
    out += [
        "",
        "Each step of this project's pipeline, split (one more run under `-X importtime`, which slows imports "
        "by about a tenth): start-up = the runner spawns the process until KFP's executor loads the "
        "component; imports = every top-level import after that, lazy ones included; own work = the rest.",
        "",
        "| step | wall | start-up | imports | own work |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for step, v in c["split"].items():
        out.append(
            f"| {step} | {v['total_s']:.2f} s | {v['start_up_s']:.2f} s | {v['imports_s']:.2f} s | "
            f"{v['work_s']:.2f} s |"
        )
    return [*out, ""]


def detection_tables(d: dict) -> list[str]:
    """Goals, then every protocol × data set × shift with each detector's rate and 95 % interval, then
    the cost per check."""
    from bench.detection import DETECTORS

    out = [
        "### Drift detection: goals (iris, windows of 100, the bench protocol; false alarms also held-out)",
        "",
        "| measure | goal | acat (default) | KS + Bonferroni (before) | met |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for g in d["goals"]:
        if g.get("unit") == "ms":
            cells = [f"{g['acat']:.1f} ms", f"{g['bonferroni']:.1f} ms"]
        else:
            cells = [
                f"{g[k]:.1%}" + (f" ({g[k + '_where']})" if g["measure"].endswith("(every data set)") else "")
                for k in ("acat", "bonferroni")
            ]
        out.append(f"| {g['measure']} | {g['goal']} | {cells[0]} | {cells[1]} | {'yes' if g['met'] else 'NO'} |")
    out += ["", "### Drift detection rates (95 % intervals; rate = share of windows where drift was reported)", ""]
    head = " | ".join(DETECTORS.values())
    out += [
        f"| protocol | data | shift | rows | windows | {head} |",
        "| --- | --- | --- | ---: | ---: |" + " ---: |" * len(DETECTORS),
    ]
    cells: dict[tuple, dict] = {}
    for q in d["quality"]:
        cells.setdefault((q["protocol"], q["data"], q["shift"]), {})[q["detector"]] = q
    for (protocol, data, shift), by in cells.items():
        first = next(iter(by.values()))
        out.append(
            f"| {protocol} | {data} | {shift} | {first['mean_window_rows']:g} | {first['windows']} | "
            + " | ".join(_rate(by[k]) for k in DETECTORS)
            + " |"
        )
    out += [
        "",
        "### Drift check cost (`drift_report`, median ms; reference statistics once per model version)",
        "",
        "| data | features | reference rows | reference stats ms | window | acat ms | KS + Bonferroni ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    costs: dict[tuple, dict] = {}
    for c in d["cost"]:
        costs.setdefault((c["data"], c["window_rows"]), {})[c["detector"]] = c
    for (data, rows), by in costs.items():
        c = by["acat"]
        out.append(
            f"| {data} | {c['features']} | {c['reference_rows']:,} | {c['reference_stats_ms']:.1f} | {rows:,} | "
            f"{c['median_ms']:.1f} | {by['bonferroni']['median_ms']:.1f} |"
        )
    out.append("")
    return out


def markdown(r: dict) -> str:
    out = [f"Measured {r['date']} on {r['machine']}; `make bench` wall time {r['bench_wall_s']:.0f} s.", ""]
    serving = r.get("serving", [])
    if serving:
        mlflow_row = next((s for s in serving if s["name"].startswith("mlflow")), None)
        out += [
            "### Serving (same champion, wrk, 16 connections, 2 workers)",
            "",
            "| server | req/s | p50 ms | p99 ms | errors | peak PSS MB | vs mlflow serve |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for s in serving:
            ratio = _ratio(s["requests_per_s"], mlflow_row["requests_per_s"]) if mlflow_row else "n/a"
            out.append(
                f"| {s['name']} | {s['requests_per_s']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                f"{s['errors']} | {s['peak_pss_mb']:.0f} | {ratio} |"
            )
        from bench.serving_bench import postgres_vs_sqlite

        pg_ratio = postgres_vs_sqlite(serving)
        if pg_ratio is not None:
            out += [
                "",
                f"PostgreSQL store (local server, one window for all replicas) vs SQLite store: "
                f"{pg_ratio:.1%} of the throughput (goal ≥ 80 %).",
            ]
        out.append("")
    faults = r.get("serving_faults") or {}
    if faults.get("load"):
        first = faults["load"][0]
        out += [
            f"### Load: {first['connections']} connections, {first['workers']} workers, "
            f"{first['duration_s']} s (driftloop /predict, SQLite store)",
            "",
            "| worker | req/s | p50 ms | p99 ms | errors | answered | recorded in the window |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        out += [
            f"| {row['name'].split(', ', 1)[-1]} | {row['requests_per_s']:.0f} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['errors']} | {row['answered']:,} | {row['recorded']:,} |"
            for row in faults["load"]
        ]
        lost = [row for row in faults["load"] if row["recorded"] < row["answered"]]
        extra = " and ".join(str(r["recorded"] - r["answered"]) for r in faults["load"])
        out += [
            "",
            "Every answered prediction recorded: "
            + (
                f"yes; recorded − answered = {extra}: requests still in flight when wrk stopped counting "
                f"(at most one per connection)."
                if not lost
                else "NO: " + ", ".join(f"{r['name']}: {r['answered'] - r['recorded']} missing" for r in lost)
            ),
            "",
        ]
    if faults.get("slow_clients"):
        first = faults["slow_clients"][0]
        out += [
            f"### `/health` under {first['slow_connections']} slow connections (headers a byte every 0.5 s, "
            f"{first['duration_s']} s; a probe counts when answered 200 within 2 s; goal 100 %)",
            "",
            "| worker | probes | answered 200 | success | slow connections cut by the server |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for row in faults["slow_clients"]:
            cut = ", ".join(f"{n} × {status}" for status, n in sorted(row["slow_answers"].items())) or "none"
            out.append(
                f"| {row['name'].split(', ', 1)[-1]} | {row['probes']} | {row['ok']} | "
                f"{row['success_rate']:.0%} | {cut} |"
            )
        out.append("")
    if r.get("drift_detection"):
        out += detection_tables(r["drift_detection"])
    if r.get("false_retrains"):
        baseline = next(
            (
                q["rate"]
                for q in (r.get("drift_detection") or {}).get("quality", [])
                if q["protocol"] == "bench" and q["detector"] == "acat" and q["shift"].startswith("none")
            ),
            None,
        )
        goal = f" (goal ≤ {baseline * 100:.1f}: the per-decision false-alarm rate × 100 windows)" if baseline else ""
        out += [
            "### False retrains of the drift watcher (in-distribution rows, one look a minute, windows of 100)",
            "",
            f"Per 10,000 rows{goal}; labels assumed to arrive before every look (the storm rule never blocks).",
            "",
            "| rows a minute | rule | decisions per 10k rows | false retrains per 10k rows | 95 % interval |",
            "| ---: | --- | ---: | ---: | --- |",
        ]
        out += [
            f"| {f['rows_per_minute']} | {f['rule']} | {f['decisions_per_10k_rows']:.0f} | "
            f"{f['false_retrains_per_10k_rows']:.2f} | {f['ci95'][0]:.2f}-{f['ci95'][1]:.2f} |"
            for f in r["false_retrains"]
        ]
        out.append("")
    if r.get("drift_status_latency"):
        out += [
            "### `/drift/status` latency by window size (in-process, SQLite store)",
            "",
            "| window | median ms | max ms |",
            "| ---: | ---: | ---: |",
        ]
        out += [
            f"| {d['window_size']:,} | {d['median_ms']:.1f} | {d['max_ms']:.1f} |" for d in r["drift_status_latency"]
        ]
        out.append("")
    if r.get("retrain_vs_tutorial"):
        out += retrain_tables(r["retrain_vs_tutorial"])
    out += ["### Loop", "", "| measure | value |", "| --- | ---: |"]
    if r.get("pipeline"):
        out.append(
            f"| retrain pipeline on the local runner (MLflow without auth), wall | {r['pipeline']['wall_s']:.1f} s |"
        )
        out += [f"| &nbsp;&nbsp;step {k} | {v:.1f} s |" for k, v in r["pipeline"]["steps_s"].items()]
    for module, seconds in r.get("import_cost_s", {}).items():
        out.append(f"| import {module} in a fresh process | {seconds:.2f} s |")
    if r.get("dag_parse"):
        out.append(
            f"| DAG file parse (median of {r['dag_parse']['repeats']}) | {r['dag_parse']['median_s'] * 1000:.0f} ms |"
        )
    stack = r.get("stack") or {}
    if "make_run_to_healthy_s" in stack:
        out.append(f"| `make run` (installed venv) → healthy | {stack['make_run_to_healthy_s']:.0f} s |")
    if "forced_trigger_to_new_champion_s" in stack:
        out.append(f"| forced DAG trigger → new champion served | {stack['forced_trigger_to_new_champion_s']:.0f} s |")
    if "drift_to_new_champion_s" in stack:
        out.append(
            f"| drift (last of 100 shifted rows) → new champion served, asset event | "
            f"{stack['drift_to_new_champion_s']:.0f} s |"
        )
    if "stack_peak_pss_mb" in stack:
        out.append(f"| whole embedded stack, peak PSS | {stack['stack_peak_pss_mb']:.0f} MB |")
    return "\n".join(out) + "\n"
