"""HTTP endpoints, one blueprint per concern."""

from serving.blueprints.drift import bp as drift_bp
from serving.blueprints.feedback import bp as feedback_bp
from serving.blueprints.meta import bp as meta_bp
from serving.blueprints.model import bp as model_bp

ALL = (model_bp, drift_bp, feedback_bp, meta_bp)
