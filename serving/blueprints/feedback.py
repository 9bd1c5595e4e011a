"""POST /feedback (labelled rows, feedback credential) and GET /feedback/export (admin, CSV for the
pipeline's load_data).

Labels decide what the next model learns, so posting them needs a credential of its own
(SERVING_FEEDBACK_TOKEN; the admin token is accepted too) and every stored row keeps where and when it
came from: the received time (UTC), the credential kind, the client address and an optional `source`.
"""

from __future__ import annotations

import csv
import io

from flask import Blueprint, current_app, g, request
from werkzeug.wrappers import Response

from driftloop.settings import parse_bool
from serving import metrics
from serving.http import (
    ApiError,
    ctx,
    json_response,
    require_admin,
    require_feedback_credential,
    require_model,
)
from serving.inputs import check_content_type, parse_feedback, parse_json_object
from serving.schemas import FeedbackStored
from serving.store import FeedbackProvenance
from serving.timestamps import iso_utc

bp = Blueprint("feedback", __name__)
LABEL_COLUMN = "target"
# extra columns of `GET /feedback/export?provenance=true`, after the features and the label
PROVENANCE_COLUMNS = ("received_at", "credential", "client_addr", "source", "model_version")


@bp.post("/feedback")
@require_feedback_credential
def feedback() -> Response:
    c = ctx()
    check_content_type(request.content_type)
    data = parse_json_object(request.get_data(cache=False))
    active = require_model()
    X, labels = parse_feedback(data, active.model.n_features, c.config.max_batch)
    provenance = FeedbackProvenance(
        credential=g.credential, client_addr=request.remote_addr, source=data.get("source")
    )  # validated by parse_feedback
    stored = c.store.add_feedback(c.config.model_name, active.model.version, X, labels, provenance)
    metrics.FEEDBACK_ROWS.inc(stored)
    body: FeedbackStored = {"status": "stored", "rows": stored, "total": c.store.count_feedback(c.config.model_name)}
    return json_response(body, 201)


def _flag(name: str) -> bool:
    """A boolean query parameter (absent or empty: false), spelt as every boolean setting is."""
    try:
        return parse_bool(request.args.get(name, "")[:40], f"query parameter {name}", default=False)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


@bp.get("/feedback/export")
@require_admin
def feedback_export() -> Response:
    c = ctx()
    unknown = sorted(set(request.args) - {"provenance"})
    if unknown:  # a misspelt option must not silently export something else than asked for
        raise ApiError(
            400,
            f"unknown query parameter(s) {[name[:40] for name in unknown[:5]]}: "
            "/feedback/export takes only 'provenance'",
        )
    with_provenance = _flag("provenance")
    active = require_model()
    names = list(active.model.feature_names)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*names, LABEL_COLUMN, *(PROVENANCE_COLUMNS if with_provenance else ())])
    rows = skipped = 0
    for rec in c.store.iter_feedback_records(c.config.model_name):
        if len(rec.features) != len(names):  # stored for a model with other features
            skipped += 1
            continue
        row = [*(repr(float(v)) for v in rec.features), rec.label]
        if with_provenance:  # rows stored before provenance was recorded have empty cells there
            row += [
                iso_utc(rec.created_at),
                rec.credential or "",
                rec.client_addr or "",
                rec.source or "",
                rec.model_version or "",
            ]
        writer.writerow(row)
        rows += 1
    resp = current_app.response_class(buf.getvalue(), status=200, mimetype="text/csv")
    resp.headers["X-Feedback-Rows"] = str(rows)
    resp.headers["X-Feedback-Skipped"] = str(skipped)
    resp.headers["Content-Disposition"] = "attachment; filename=feedback.csv"
    return resp
