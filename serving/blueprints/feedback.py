"""POST /feedback (labelled rows) and GET /feedback/export (admin, CSV for the pipeline's load_data)."""
from __future__ import annotations

import csv
import io

from flask import Blueprint, request

from serving import metrics
from serving.http import ctx, json_response, require_admin, require_model
from serving.inputs import check_content_type, parse_feedback, parse_json_object

bp = Blueprint("feedback", __name__)
LABEL_COLUMN = "target"


@bp.post("/feedback")
def feedback():
    c = ctx()
    check_content_type(request.content_type)
    data = parse_json_object(request.get_data(cache=False))
    active = require_model()
    X, labels = parse_feedback(data, active.model.n_features, c.config.max_batch)
    stored = c.store.add_feedback(c.config.model_name, active.model.version, X, labels)
    metrics.FEEDBACK_ROWS.inc(stored)
    return json_response({"status": "stored", "rows": stored, "total": c.store.count_feedback(c.config.model_name)}, 201)


@bp.get("/feedback/export")
@require_admin
def feedback_export():
    c = ctx()
    active = require_model()
    names = list(active.model.feature_names)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*names, LABEL_COLUMN])
    rows = skipped = 0
    for features, label in c.store.iter_feedback(c.config.model_name):
        if len(features) != len(names):  # stored for a model with other features
            skipped += 1
            continue
        writer.writerow([*(repr(float(v)) for v in features), label])
        rows += 1
    resp = c_response(buf.getvalue())
    resp.headers["X-Feedback-Rows"] = str(rows)
    resp.headers["X-Feedback-Skipped"] = str(skipped)
    resp.headers["Content-Disposition"] = "attachment; filename=feedback.csv"
    return resp


def c_response(text: str):
    from flask import current_app

    return current_app.response_class(text, status=200, mimetype="text/csv")
