"""driftloop.retrain.episodes: the drift watcher's decision rules, as a table (no Airflow, no I/O)."""

from __future__ import annotations

import json
import sys

import pytest
from drift_docs import status

from driftloop.retrain.episodes import BadStatus, Look, check_payload, decide, run_name


def look(**over) -> Look:
    return Look.from_status(status(**over))


FIRED_E3 = {"episode": "iris-model:6:3.0", "labelled_rows": 30, "at": "t0"}


@pytest.mark.parametrize(
    ("case", "over", "state", "action"),
    [
        ("collecting", {"samples": 99, "drift_detected": False}, {}, "wait"),
        ("full, nothing decided yet, no drift", {"drift_detected": False}, {}, "no_drift"),
        ("full, nothing decided yet, drift", {}, {}, "fire"),
        (
            "overlaps the last decided window",
            {"window_first_row": 150, "window_last_row": 249},
            {"decided": {"episode": "iris-model:6:3.0", "last_row": 200}},
            "wait",
        ),
        (
            "touches the last decided row",
            {"window_first_row": 200, "window_last_row": 299},
            {"decided": {"episode": "iris-model:6:3.0", "last_row": 200}},
            "wait",
        ),
        (
            "fresh window after the last decided one",
            {"window_first_row": 201, "window_last_row": 300},
            {"decided": {"episode": "iris-model:6:3.0", "last_row": 200}},
            "fire",
        ),
        (
            "another episode (a reset) decides at once",
            {"window_resets": 1, "window_first_row": 150, "window_last_row": 249},
            {"decided": {"episode": "iris-model:6:3.0", "last_row": 200}},
            "fire",
        ),
        (
            "a new champion (version + epoch) decides at once",
            {"model_version": "7", "window_epoch": 4, "window_first_row": 1, "window_last_row": 100},
            {"decided": {"episode": "iris-model:6:3.0", "last_row": 200}, "fired": FIRED_E3},
            "fire",
        ),
        ("drift, episode already fired", {"labelled_rows": 99}, {"fired": FIRED_E3}, "already_fired"),
        ("no drift after a fire", {"drift_detected": False}, {"fired": FIRED_E3}, "no_drift"),
        ("drift, no labels since served", {"labelled_rows_since_served": 0}, {}, "blocked"),
        (
            "drift in a new episode, no labels since the last fire",
            {"window_resets": 1, "labelled_rows": 30},
            {"fired": FIRED_E3},
            "blocked",
        ),
        (
            "drift in a new episode, new labels since the last fire",
            {"window_resets": 1, "labelled_rows": 31},
            {"fired": FIRED_E3},
            "fire",
        ),
    ],
)
def test_decide(case, over, state, action):
    decision = decide(look(**over), state)
    assert decision.action == action, (case, decision.message)
    assert (decision.event is not None) == (action == "fire"), case
    json.dumps(decision.state)  # plain JSON


def test_fire_payload_and_state():
    decision = decide(look(), {})
    assert decision.event == {
        "episode": "iris-model:6:3.0",
        "model_name": "iris-model",
        "model_version": "6",
        "window_epoch": 3,
        "window_resets": 0,
        "samples": 100,
        "window_first_row": 101,
        "window_last_row": 200,
        "drifted_features": ["petal_length"],
        "p_values": {"petal_length": 1e-6, "sepal_width": 0.7},
        "p_adjusted": {"petal_length": 4e-6, "sepal_width": 1.0},
        "correction": "bonferroni",
        "threshold": 0.05,
        "labelled_rows": 40,
        "labelled_rows_since_served": 10,
        "checked_at": "2026-12-02T10:00:00Z",
    }
    assert decision.state == {
        "decided": {"episode": "iris-model:6:3.0", "last_row": 200},
        "fired": {"episode": "iris-model:6:3.0", "labelled_rows": 40, "at": "2026-12-02T10:00:00Z"},
    }
    # the same look again (a restart, the next poll before fresh rows): nothing more
    again = decide(look(), decision.state)
    assert again.action == "wait" and again.state == decision.state
    # fresh rows, still drifting: the episode already fired
    later = decide(look(window_first_row=201, window_last_row=300), decision.state)
    assert later.action == "already_fired" and later.state["decided"]["last_row"] == 300


def test_decide_does_not_change_the_state_it_is_given():
    state = {"decided": {"episode": "iris-model:6:3.0", "last_row": 0}}
    before = json.dumps(state, sort_keys=True)
    decide(look(), state)
    assert json.dumps(state, sort_keys=True) == before


def test_blocked_alerts_once_per_episode_and_label_count():
    first = decide(look(labelled_rows_since_served=0), {})
    assert first.action == "blocked" and first.alert
    assert "no labelled feedback" in first.message and "POST /feedback" in first.message
    assert first.state["blocked"] == {"episode": "iris-model:6:3.0", "labelled_rows": 40}
    assert first.state["decided"]["last_row"] == 200  # a blocked window was decided on: fresh data next
    second = decide(look(labelled_rows_since_served=0, window_first_row=201, window_last_row=300), first.state)
    assert second.action == "blocked" and not second.alert
    # labels arrived (count changed) but none since served is impossible; a reset is a new episode: alert again
    third = decide(look(labelled_rows_since_served=0, window_resets=1), second.state)
    assert third.action == "blocked" and third.alert
    # labels since served: the next fresh window fires and the blocked mark is gone
    fired = decide(look(window_resets=1, window_first_row=301, window_last_row=400), third.state)
    assert fired.action == "fire" and "blocked" not in fired.state


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ([1, 2], "JSON object"),
        ({"error": "No model loaded"}, "model_name"),
        (status(window_epoch=None), "window_epoch"),
        ({k: v for k, v in status().items() if k != "window_resets"}, "no 'window_resets'"),
        (status(window_first_row="5"), "window_first_row"),
        (status(drift_detected="yes"), "drift_detected"),
        (status(labelled_rows=True), "labelled_rows"),
        (status(window_size=0), "window_size"),
        (status(window_first_row=None), "window_first_row"),
        (status(features=[1]), "features"),
    ],
)
def test_bad_status_names_what_is_wrong(doc, match):
    with pytest.raises(BadStatus, match=match):
        Look.from_status(doc)


def test_empty_window_is_valid_and_waits():
    empty = look(samples=0, window_first_row=None, window_last_row=None, drift_detected=False, features={})
    assert empty.window_first_row is None
    assert decide(empty, {}).action == "wait"


def test_episode_and_run_name():
    lk = look(model_name="Iris Model_X", model_version="12", window_epoch=5, window_resets=2)
    assert lk.episode == "Iris Model_X:12:5.2"
    payload = decide(lk, {}).event
    assert run_name(payload) == "drift-iris-model-x-v12-e5-r2"
    assert run_name(None) == "" and run_name({}) == ""
    assert check_payload(payload) is payload
    with pytest.raises(ValueError, match="model_version"):
        check_payload({**payload, "model_version": ""})
    with pytest.raises(ValueError, match="window_epoch"):
        check_payload({**payload, "window_epoch": "5"})


def test_episodes_imports_no_airflow():
    import subprocess

    code = "import sys, driftloop.retrain.episodes; print(any(m.startswith('airflow') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
