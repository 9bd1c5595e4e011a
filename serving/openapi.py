"""The OpenAPI 3.0 document of the serving app, built for the model being served (the feature count
and the batch limit are part of what the app accepts). Tested against the app with schemathesis."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from serving.inputs import SOURCE_MAX_LENGTH, SOURCE_PATTERN_JSON
from serving.model import LOCAL_COPY, REGISTRY

NUMBER = {"type": "number"}
FLOAT_LIMIT = float(np.finfo(np.float32).max)
FEATURE_VALUE = {"type": "number", "minimum": -FLOAT_LIMIT, "maximum": FLOAT_LIMIT}
LABEL = {"anyOf": [{"type": "integer"}, {"type": "number"}, {"type": "string"}]}
NULLABLE_STR = {"type": "string", "nullable": True}


def _error_ref() -> dict:
    return {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _errors(*codes: int) -> dict:
    text = {400: "Invalid input", 401: "Missing or invalid bearer token (WWW-Authenticate: Bearer)",
            403: "Endpoint disabled: its token (SERVING_ADMIN_TOKEN, SERVING_FEEDBACK_TOKEN) is not set",
            409: "The champion cannot be loaded (the previous model keeps serving)", 413: "Body or batch too large",
            415: "Content-Type is not application/json", 503: "No model loaded, or MLflow unreachable"}
    return {str(c): {"description": text[c], **_error_ref()} for c in codes}


def build_openapi(feature_names: Sequence[str] | None, max_batch: int, max_body_bytes: int) -> dict:
    n = len(feature_names) if feature_names else None
    row: dict = {"type": "array", "items": FEATURE_VALUE,
                 "description": "One row: the feature values in the order of the model's feature names"
                 + (f" ({', '.join(feature_names)})" if feature_names else "")}
    if n is not None:
        row["minItems"] = n
        row["maxItems"] = n
    features_body = {"type": "object", "required": ["features"], "additionalProperties": False,
                     "properties": {"features": {"$ref": "#/components/schemas/Row"}}}
    instances_body = {"type": "object", "required": ["instances"], "additionalProperties": False,
                      "properties": {"instances": {"type": "array", "minItems": 1, "maxItems": max_batch,
                                                   "items": {"$ref": "#/components/schemas/Row"}}}}
    label_scalar = {"anyOf": [{"type": "integer"}, {"type": "string", "minLength": 1, "maxLength": 200}]}
    source = {"type": "string", "minLength": 1, "maxLength": SOURCE_MAX_LENGTH, "pattern": SOURCE_PATTERN_JSON,
              "description": "optional: who or what labelled the rows (stored with them as provenance)"}
    feedback_one = {"type": "object", "required": ["features", "label"], "additionalProperties": False,
                    "properties": {"features": {"$ref": "#/components/schemas/Row"}, "label": label_scalar,
                                   "source": source}}
    feedback_many = {"type": "object", "required": ["instances", "labels"], "additionalProperties": False,
                     "properties": {"instances": {"type": "array", "minItems": 1, "maxItems": max_batch,
                                                  "items": {"$ref": "#/components/schemas/Row"}},
                                    "labels": {"type": "array", "items": label_scalar,
                                               "description": "one label per row, same length as instances"},
                                    "source": source}}
    error_info = {"type": "object", "nullable": True,
                  "properties": {"message": {"type": "string"}, "kind": {"type": "string"},
                                 "version": NULLABLE_STR, "at": {"type": "string"}}}
    reload_info = {"type": "object", "nullable": True,
                   "properties": {"ok": {"type": "boolean"}, "version": NULLABLE_STR, "message": NULLABLE_STR,
                                  "at": {"type": "string"}}}
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Row": row,
        "PredictRequest": {"oneOf": [features_body, instances_body]},
        "Prediction": {
            "type": "object", "required": ["model_name", "model_version", "backend"],
            "properties": {"prediction": LABEL, "predictions": {"type": "array", "items": LABEL},
                           "model_name": {"type": "string"}, "model_version": {"type": "string"},
                           "backend": {"type": "string", "enum": ["onnx", "sklearn"]},
                           "count": {"type": "integer"}}},
        "Health": {
            "type": "object", "required": ["status", "ready", "model_name"],
            "properties": {"status": {"type": "string", "enum": ["ok", "degraded", "not ready"]},
                           "ready": {"type": "boolean"}, "model_name": {"type": "string"},
                           "model_version": NULLABLE_STR, "backend": NULLABLE_STR, "reason": {"type": "string"},
                           "model_source": {"type": "string", "enum": [REGISTRY, LOCAL_COPY]},
                           "following": {"type": "boolean", "description": (
                               "this worker is loading the version the served record names (after a reload "
                               "elsewhere); a prediction waits for it, this probe does not")},
                           "load_error": error_info, "last_reload": reload_info}},
        "ModelInfo": {
            "type": "object",
            "required": ["name", "version", "alias", "run_id", "feature_names", "loaded_at"],
            "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "alias": {"type": "string"},
                           "run_id": {"type": "string"},
                           "feature_names": {"type": "array", "items": {"type": "string"}},
                           "n_features": {"type": "integer"}, "loaded_at": {"type": "string"},
                           "backend": {"type": "string"}, "backend_note": NULLABLE_STR,
                           "source": {"type": "string", "enum": [REGISTRY, LOCAL_COPY]},
                           "reference_samples": {"type": "integer"}, "window_started_at": {"type": "string"},
                           "load_error": error_info, "last_reload": reload_info}},
        "FeatureDrift": {
            "type": "object", "required": ["ks_stat", "p_value", "drift"],
            "properties": {"name": {"type": "string"}, "ks_stat": NUMBER, "p_value": NUMBER,
                           "p_adjusted": NUMBER, "drift": {"type": "boolean"}}},
        "DriftStatus": {
            "type": "object", "required": ["drift_detected", "threshold", "samples", "features"],
            "properties": {
                "drift_detected": {"type": "boolean"}, "threshold": NUMBER, "samples": {"type": "integer"},
                "reason": {"type": "string", "description": "present while collecting samples"},
                "features": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/FeatureDrift"}},
                "feature_names": {"type": "array", "items": {"type": "string"}},
                "drifted_features": {"type": "array", "items": {"type": "string"}},
                "correction": {"type": "string", "enum": ["bonferroni", "bh", "none"]},
                "adjusted_threshold": NUMBER, "window_size": {"type": "integer"},
                "min_samples": {"type": "integer"}, "reference_samples": {"type": "integer"},
                "model_name": {"type": "string"}, "model_version": {"type": "string"},
                "run_id": {"type": "string"}, "window_started_at": {"type": "string"},
                "checked_at": {"type": "string"}}},
        "DriftReset": {
            "type": "object", "required": ["status", "dropped"],
            "properties": {"status": {"type": "string", "enum": ["reset"]}, "dropped": {"type": "integer"},
                           "model_version": {"type": "string"}}},
        "Reload": {
            "type": "object", "required": ["status", "version"],
            "properties": {"status": {"type": "string", "enum": ["reloaded"]}, "name": {"type": "string"},
                           "version": {"type": "string"}, "previous_version": NULLABLE_STR,
                           "changed": {"type": "boolean"}, "run_id": {"type": "string"},
                           "alias": {"type": "string"}, "backend": {"type": "string"},
                           "loaded_at": {"type": "string"}, "window_restarted": {"type": "boolean"},
                           "generation": {"type": "integer"}}},
        "FeedbackRequest": {"oneOf": [feedback_one, feedback_many]},
        "FeedbackStored": {
            "type": "object", "required": ["status", "rows"],
            "properties": {"status": {"type": "string", "enum": ["stored"]}, "rows": {"type": "integer"},
                           "total": {"type": "integer"}}},
    }

    def json_body(ref: str) -> dict:
        return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}

    def ok(ref: str, description: str = "OK", code: str = "200") -> dict:
        return {code: {"description": description,
                       "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}}

    admin = [{"bearerAuth": []}]
    labeller = [{"feedbackAuth": []}, {"bearerAuth": []}]  # either token
    paths = {
        "/health": {"get": {
            "summary": "Readiness: 200 while a model is served (status ok or degraded), 503 before",
            "operationId": "health",
            "responses": {**ok("Health"), "503": {"description": "Not ready", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}}}},
        "/health/live": {"get": {
            "summary": "Liveness: 200 while the worker answers", "operationId": "liveness",
            "responses": {"200": {"description": "Alive", "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}}}}}}},
        "/model/info": {"get": {"summary": "The served model", "operationId": "modelInfo",
                                "responses": {**ok("ModelInfo"), **_errors(503)}}},
        "/predict": {"post": {
            "summary": "Predict one row (features) or a batch (instances)", "operationId": "predict",
            "requestBody": json_body("PredictRequest"),
            "responses": {**ok("Prediction"), **_errors(400, 413, 415, 503)}}},
        "/drift/status": {"get": {"summary": "Drift of the recent inputs against the model's reference",
                                  "operationId": "driftStatus",
                                  "responses": {**ok("DriftStatus"), **_errors(503)}}},
        "/drift/reset": {"post": {"summary": "Empty the drift window (admin)", "operationId": "driftReset",
                                  "security": admin,
                                  "responses": {**ok("DriftReset"), **_errors(401, 403, 503)}}},
        "/model/reload": {"post": {
            "summary": "Move every worker to the current champion (admin)", "operationId": "modelReload",
            "security": admin, "responses": {**ok("Reload"), **_errors(401, 403, 409, 503)}}},
        "/feedback": {"post": {
            "summary": "Store labelled rows for retraining (feedback token or admin token); each row keeps "
                       "its received time, credential kind, client address and optional source",
            "operationId": "feedback", "security": labeller,
            "requestBody": json_body("FeedbackRequest"),
            "responses": {**ok("FeedbackStored", "Stored", "201"), **_errors(400, 401, 403, 413, 415, 503)}}},
        "/feedback/export": {"get": {
            "summary": "All feedback rows as CSV: the served model's feature names + target (admin); with "
                       "provenance=true also received_at, credential, client_addr, source, model_version",
            "operationId": "feedbackExport", "security": admin,
            "parameters": [{"name": "provenance", "in": "query", "required": False,
                            "schema": {"type": "boolean", "default": False},
                            "description": "add the provenance columns after target"}],
            "responses": {"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                          **_errors(400, 401, 403, 503)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics of all workers", "operationId": "metrics",
                             "responses": {"200": {"description": "Prometheus text format", "content": {
                                 "text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                  "responses": {"200": {"description": "OpenAPI 3.0 document", "content": {
                                      "application/json": {"schema": {"type": "object"}}}}}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "driftloop serving", "version": "1.0.0",
                 "description": f"Serves the champion model; request bodies up to {max_body_bytes} bytes."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {
                           "bearerAuth": {"type": "http", "scheme": "bearer",
                                          "description": "the admin token, SERVING_ADMIN_TOKEN"},
                           "feedbackAuth": {"type": "http", "scheme": "bearer",
                                            "description": "the labelling service's token, SERVING_FEEDBACK_TOKEN"}}},
    }
