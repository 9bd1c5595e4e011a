"""OpenAPI-driven fuzzing of the app in-process (schemathesis): no 5xx, no response that breaks the
document, for valid and invalid inputs, with and without the admin token."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.serving.conftest import ADMIN_TOKEN, FEEDBACK_TOKEN, make_app

EXAMPLES = 40


@pytest.fixture(scope="module")
def fuzz_app(mlflow_server, model_name, champion, tmp_path_factory):
    return make_app(mlflow_server, model_name, tmp_path_factory.mktemp("fuzz-state"), SERVING_MAX_BATCH="20")


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)


ADMIN_PATHS = {"/drift/reset", "/model/reload", "/feedback/export"}


def test_document_describes_the_served_model(fuzz_app):
    doc = fuzz_app.test_client().get("/openapi.json").json
    assert doc["openapi"].startswith("3.0")
    row = doc["components"]["schemas"]["Row"]
    assert row["minItems"] == row["maxItems"] == 4
    assert set(doc["paths"]) >= {
        "/health",
        "/model/info",
        "/predict",
        "/drift/status",
        "/drift/reset",
        "/model/reload",
        "/metrics",
        "/openapi.json",
        "/feedback",
        "/feedback/export",
    }
    # every endpoint that changes state or reads the training data names its credential
    assert doc["paths"]["/feedback"]["post"]["security"] == [{"feedbackAuth": []}, {"bearerAuth": []}]
    for path, method in (("/drift/reset", "post"), ("/model/reload", "post"), ("/feedback/export", "get")):
        assert doc["paths"][path][method]["security"] == [{"bearerAuth": []}]
    assert set(doc["components"]["securitySchemes"]) == {"bearerAuth", "feedbackAuth"}
    source = doc["components"]["schemas"]["FeedbackRequest"]["oneOf"][0]["properties"]["source"]
    assert source["maxLength"] == 64 and source["pattern"].startswith("^")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_every_operation(api_schema, mode):
    """Every operation, valid (positive) and invalid (negative) inputs; all default checks."""
    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10  # all paths but the document itself
    for operation in operations:
        headers = (
            {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            if operation.path in ADMIN_PATHS
            else {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
            if operation.path == "/feedback"
            else None
        )

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            body = case.body
            if (
                mode == GenerationMode.POSITIVE
                and isinstance(body, dict)
                and isinstance(body.get("instances"), list)
                and isinstance(body.get("labels"), list)
            ):
                # 'one label per row' is a rule JSON Schema cannot state: keep generated bodies valid
                n = len(body["instances"])
                body["labels"] = (body["labels"] + [0] * n)[:n]
            case.call_and_validate(headers=headers)  # noqa: B023 - run() is called in this iteration

        try:
            run()
        except Unsatisfiable:  # nothing invalid to send (an operation without parameters or body)
            assert mode == GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # noqa: BLE001 - collect all operations' failures, then report
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
