"""The local backend's run records: detached runner, files on disk, names, cancel, lost runners (psutil)."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
from kfp_test_fixtures import FAKE_RUNNER, wait_for

from airflow_kfp_provider.local_runs import LocalRunStore, RunNameTaken, RunNotFound, read_outcome


def _cmd(tmp_path, msg="ok"):
    yaml = tmp_path / "p.yaml"
    yaml.write_text("root: {}\n")
    return [sys.executable, str(FAKE_RUNNER), "--yaml", str(yaml), "--param", f"msg={msg}"]


def test_run_to_success_and_record_survives_a_new_store(tmp_path):
    store = LocalRunStore(tmp_path / "runs")
    rec = store.create_run("name-1", _cmd(tmp_path), params={"msg": "ok"})
    assert rec["state"] == "PENDING"
    rec = store.start(rec["run_id"])
    assert rec["supervisor_pid"]
    final = wait_for(lambda: (r := store.get(rec["run_id"]))["state"] in ("SUCCEEDED", "FAILED") and r)
    assert final["state"] == "SUCCEEDED", final
    assert final["outputs"]["outcome"]["decision"] == "accepted"  # from the runner's outcome file
    assert final["exit_code"] == 0 and final["started_at"] and final["finished_at"]
    # a new store object (think: Airflow restarted) sees the same record, by id and by name
    again = LocalRunStore(tmp_path / "runs")
    assert again.get(rec["run_id"])["state"] == "SUCCEEDED"
    assert again.find_by_name("name-1")["run_id"] == rec["run_id"]
    assert again.find_by_name("other") is None
    received = json.loads((store.run_dir(rec["run_id"]) / "received.json").read_text())
    assert received["params"] == {"msg": "ok"}


def test_failure_keeps_the_log_tail(tmp_path):
    store = LocalRunStore(tmp_path / "runs")
    rec = store.start(store.create_run("f", _cmd(tmp_path, "fail"))["run_id"])
    final = wait_for(lambda: (r := store.get(rec["run_id"]))["state"] in ("SUCCEEDED", "FAILED") and r)
    assert final["state"] == "FAILED"
    assert "exited with code 1" in final["error"] and "data_uri /nope.csv" in final["error"]


def test_a_name_is_claimed_once(tmp_path):
    store = LocalRunStore(tmp_path / "runs")
    first = store.create_run("same", _cmd(tmp_path))
    with pytest.raises(RunNameTaken) as taken:
        store.create_run("same", _cmd(tmp_path))
    assert taken.value.run_id == first["run_id"]
    assert len(store.list_runs()) == 1


def test_cancel_stops_the_runner(tmp_path):
    store = LocalRunStore(tmp_path / "runs")
    rec = store.start(store.create_run("slow", _cmd(tmp_path, "slow"))["run_id"])
    running = wait_for(lambda: (r := store.get(rec["run_id"]))["runner_pid"] and r["state"] == "RUNNING" and r)
    store.request_cancel(rec["run_id"])
    final = wait_for(lambda: (r := store.get(rec["run_id"]))["state"] == "CANCELED" and r, timeout=20)
    assert final["error"] == "canceled on request"
    with pytest.raises(ProcessLookupError):
        os.kill(running["runner_pid"], 0)


def test_a_vanished_supervisor_is_reported_not_waited_for(tmp_path):
    store = LocalRunStore(tmp_path / "runs")
    rec = store.start(store.create_run("lost", _cmd(tmp_path, "slow"))["run_id"])
    running = wait_for(lambda: (r := store.get(rec["run_id"]))["runner_pid"] and r)
    os.kill(running["supervisor_pid"], signal.SIGKILL)  # e.g. the machine restarted
    os.killpg(running["runner_pid"], signal.SIGKILL)
    final = wait_for(lambda: (r := store.get(rec["run_id"]))["state"] == "FAILED" and r, timeout=20)
    assert "gone without recording a result" in final["error"]


def test_unknown_run(tmp_path):
    with pytest.raises(RunNotFound):
        LocalRunStore(tmp_path).get("does-not-exist")


def test_read_outcome(tmp_path):
    assert read_outcome(tmp_path) is None
    (tmp_path / "outcome.json").write_text('{"decision": "rejected"}')
    assert read_outcome(tmp_path) == {"decision": "rejected"}
    (tmp_path / "outcome.json").write_text("OUTCOME not json")
    assert read_outcome(tmp_path) is None


def test_states_are_the_providers(tmp_path):
    from airflow_kfp_provider.states import STATES

    store = LocalRunStore(tmp_path / "runs")
    rec = store.start(store.create_run("s", _cmd(tmp_path))["run_id"])
    seen = {rec["state"]}
    final = wait_for(lambda: seen.add((r := store.get(rec["run_id"]))["state"]) or (r["state"] == "SUCCEEDED" and r))
    assert seen <= set(STATES) and final["exit_code"] == 0


def test_a_reused_pid_is_not_the_supervisor(tmp_path):
    """Liveness is pid AND creation time: another process with the same pid does not keep a run alive."""
    import json as _json

    store = LocalRunStore(tmp_path / "runs")
    rec = store.create_run("reused", _cmd(tmp_path))
    record_path = store.run_dir(rec["run_id"]) / "record.json"
    record = _json.loads(record_path.read_text())
    record.update(supervisor_pid=os.getpid(), supervisor_create_time=1.0)  # a live pid, another start time
    record_path.write_text(_json.dumps(record))
    assert store.get(rec["run_id"])["state"] == "FAILED"
