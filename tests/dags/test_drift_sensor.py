"""DriftStatusSensor reads GET /drift/status through the serving_default HTTP connection."""

from __future__ import annotations

from unittest import mock

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from kfp_test_fixtures import free_port, set_conn

from driftloop.retrain.drift import DriftStatusSensor, summarize_drift


def sensor(**kwargs) -> DriftStatusSensor:
    return DriftStatusSensor(task_id="check_drift", **kwargs)


def test_drift_returns_the_report(serving):
    serving.set_drift(True)
    result = sensor().poke({})
    assert isinstance(result, PokeReturnValue) and result.is_done
    assert result.xcom_value["drift_detected"] is True
    assert serving.requests == ["/drift/status"]


def test_no_drift_skips(serving):
    serving.set_drift(False)
    with pytest.raises(AirflowSkipException, match="No drift: no feature drifted"):
        sensor().poke({})


def test_collecting_samples_skips_with_the_reason(serving):
    with pytest.raises(AirflowSkipException, match=r"Collecting samples \(3/100\)"):
        sensor().poke({})


def test_no_drift_can_wait_instead(serving):
    serving.set_drift(False)
    assert sensor(skip_when_no_drift=False).poke({}) is False


def test_skip_is_what_execute_raises_so_downstream_is_skipped(serving):
    serving.set_drift(False)
    with pytest.raises(AirflowSkipException):
        sensor(poke_interval=0.01, timeout=5).execute({"ti": mock.MagicMock()})


def test_unreachable_serving_fails_after_a_few_tries(monkeypatch):
    set_conn(monkeypatch, "serving_default", f"http://127.0.0.1:{free_port()}")
    s = sensor(max_unreachable=2, poke_interval=0.01)
    assert s.poke({}) is False  # first failure tolerated (a restarting app)
    with pytest.raises(AirflowFailException) as err:
        s.poke({})
    text = str(err.value)
    assert "Serving app unreachable at http://127.0.0.1:" in text and "/drift/status" in text
    assert "Nothing was submitted" in text and "AIRFLOW_CONN_SERVING_DEFAULT" in text


def test_missing_connection_says_how_to_define_it(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_SERVING_DEFAULT", raising=False)
    with pytest.raises(AirflowFailException, match="'serving_default' .* not defined.*AIRFLOW_CONN_SERVING_DEFAULT"):
        sensor().poke({})


@pytest.mark.parametrize(
    "status,body,needle",
    [
        (503, {"error": "no model loaded"}, "answered 503"),
        (200, "<html>hello</html>", "did not return a drift report"),
        (200, {"status": "ok"}, "did not return a drift report"),
    ],
)
def test_answers_that_are_not_a_drift_report_fail(serving, status, body, needle):
    serving.drift, serving.drift_status = body, status
    with pytest.raises(AirflowFailException, match=needle):
        sensor().poke({})


def test_summary_names_the_drifted_features():
    text = summarize_drift(
        {
            "samples": 100,
            "correction": "bonferroni",
            "features": {
                "petal_length": {"ks_stat": 0.6, "p_value": 0.0001, "drift": True},
                "sepal_width": {"ks_stat": 0.1, "p_value": 0.7, "drift": False},
            },
        }
    )
    assert "petal_length (p=0.0001" in text and "sepal_width" not in text and "correction=bonferroni" in text


def test_summary_of_drift_as_a_whole_gives_the_combined_p_value():
    text = summarize_drift(
        {
            "samples": 100,
            "correction": "acat",
            "combined_p_value": 0.0004,
            "features": {"petal_length": {"ks_stat": 0.1, "p_value": 0.04, "drift": False}},
        }
    )
    assert text.startswith("drifted features: none;") and "combined_p_value=0.0004" in text
