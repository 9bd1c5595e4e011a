"""The OpenAPI 3.0 document of the serving app, built for the model being served (the feature count
and the batch limit are part of what the app accepts). The schemas come from the models of
serving/schemas.py, which also validate the requests; this module adds the operations. Tested
against the app with schemathesis (tests/serving/test_openapi_fuzz.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving.schemas import components, request_models


def _error_ref() -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid input",
        401: "Missing or invalid bearer token (WWW-Authenticate: Bearer)",
        403: "Endpoint disabled: its token (SERVING_ADMIN_TOKEN, SERVING_FEEDBACK_TOKEN) is not set",
        409: "The champion cannot be loaded (the previous model keeps serving)",
        413: "Body or batch too large",
        415: "Content-Type is not application/json",
        503: "No model loaded, or MLflow unreachable",
    }
    return {str(c): {"description": text[c], **_error_ref()} for c in codes}


def build_openapi(feature_names: Sequence[str] | None, max_batch: int, max_body_bytes: int) -> dict[str, Any]:
    names = tuple(feature_names) if feature_names else None
    schemas = components(request_models(len(names) if names else None, max_batch, names))

    def json_body(ref: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}

    def ok(ref: str, description: str = "OK", code: str = "200") -> dict[str, Any]:
        return {
            code: {
                "description": description,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
            }
        }

    admin: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    labeller: list[dict[str, list[str]]] = [{"feedbackAuth": []}, {"bearerAuth": []}]  # either token
    paths = {
        "/health": {
            "get": {
                "summary": "Readiness: 200 while a model is served (status ok or degraded), 503 before",
                "operationId": "health",
                "responses": {
                    **ok("Health"),
                    "503": {
                        "description": "Not ready",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                    },
                },
            }
        },
        "/health/live": {
            "get": {
                "summary": "Liveness: 200 while the worker answers",
                "operationId": "liveness",
                "responses": ok("Liveness", "Alive"),
            }
        },
        "/model/info": {
            "get": {
                "summary": "The served model",
                "operationId": "modelInfo",
                "responses": {**ok("ModelInfo"), **_errors(503)},
            }
        },
        "/predict": {
            "post": {
                "summary": "Predict one row (features) or a batch (instances)",
                "operationId": "predict",
                "requestBody": json_body("PredictRequest"),
                "responses": {**ok("Prediction"), **_errors(400, 413, 415, 503)},
            }
        },
        "/drift/status": {
            "get": {
                "summary": "Drift of the recent inputs against the model's reference",
                "operationId": "driftStatus",
                "responses": {**ok("DriftStatus"), **_errors(503)},
            }
        },
        "/drift/report": {
            "get": {
                "summary": "The drift status as a self-contained HTML page: per feature the reference and window "
                "distributions (inline SVG), the KS statistic, raw and corrected p-values and the decision",
                "operationId": "driftReport",
                "responses": {
                    "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}},
                    **_errors(503),
                },
            }
        },
        "/drift/reset": {
            "post": {
                "summary": "Empty the drift window (admin)",
                "operationId": "driftReset",
                "security": admin,
                "responses": {**ok("DriftReset"), **_errors(401, 403, 503)},
            }
        },
        "/model/reload": {
            "post": {
                "summary": "Move every worker to the current champion (admin)",
                "operationId": "modelReload",
                "security": admin,
                "responses": {**ok("Reload"), **_errors(401, 403, 409, 503)},
            }
        },
        "/feedback": {
            "post": {
                "summary": "Store labelled rows for retraining (feedback token or admin token); each row keeps "
                "its received time, credential kind, client address and optional source",
                "operationId": "feedback",
                "security": labeller,
                "requestBody": json_body("FeedbackRequest"),
                "responses": {**ok("FeedbackStored", "Stored", "201"), **_errors(400, 401, 403, 413, 415, 503)},
            }
        },
        "/feedback/export": {
            "get": {
                "summary": "All feedback rows as CSV: the served model's feature names + target (admin); with "
                "provenance=true also received_at, credential, client_addr, source, model_version",
                "operationId": "feedbackExport",
                "security": admin,
                "parameters": [
                    {
                        "name": "provenance",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "boolean", "default": False},
                        "description": "add the provenance columns after target",
                    }
                ],
                "responses": {
                    "200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                    **_errors(400, 401, 403, 503),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of all workers",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.0 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "driftloop serving",
            "version": "1.0.0",
            "description": f"Serves the champion model; request bodies up to {max_body_bytes} bytes.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the admin token, SERVING_ADMIN_TOKEN",
                },
                "feedbackAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the labelling service's token, SERVING_FEEDBACK_TOKEN",
                },
            },
        },
    }
