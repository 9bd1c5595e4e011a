"""Loading the served model from the MLflow registry. No Flask here.

What the pipeline logs (driftloop/contract.py, docs/contracts.md): an sklearn model under `model`,
`drift/reference.csv` (REFERENCE_ARTIFACT: the training features, header = feature names), the run tag
`feature_names` (JSON list) and, when its predictions equal the sklearn model's, `onnx/model.onnx`
(ONNX_ARTIFACT) with the run tag `onnx_parity=true` (ONNX_PARITY_TAG).

The fast path runs the ONNX artifact with onnxruntime on one intra-op thread (a one-row forest
prediction costs microseconds instead of milliseconds with sklearn); without a verified ONNX
artifact the sklearn model is loaded through `mlflow.sklearn`.

The registry is the source of truth whenever it answers: every load asks MLflow first. Each version
loaded from MLflow is also kept as a local copy (serving/model_cache.py); only when MLflow cannot be
reached is the requested version rebuilt from its verified copy (`LoadedModel.source` says which).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from driftloop.contract import CHAMPION_ALIAS, ONNX_ARTIFACT, ONNX_PARITY_TAG, REFERENCE_ARTIFACT
from driftloop.settings import parse_bool
from serving.drift_stats import ReferenceStats, reference_stats
from serving.model_cache import Backend, CopyFiles, CopyUnusable, ModelCopies, VerifiedCopy
from serving.timestamps import iso_utc

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ModelSource = Literal["registry", "local copy"]  #: where a loaded model came from
REGISTRY: ModelSource = "registry"
LOCAL_COPY: ModelSource = "local copy"


class ModelLoadError(RuntimeError):
    """The model could not be loaded. kind: 'no_champion' | 'invalid' | 'unavailable'."""

    def __init__(self, message: str, kind: str = "invalid", version: str | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.version = version


Label = Any  # one prediction as the model gives it (an int, a float or a string)


class Predictor(Protocol):
    @property
    def backend(self) -> Backend: ...

    def predict(self, X: np.ndarray) -> list[Label]: ...


class OnnxPredictor:
    """onnxruntime session on one intra-op thread; feeds float32 or float64 as the graph wants."""

    backend: Backend = "onnx"

    def __init__(self, model_bytes: bytes, n_features: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        self.label_output = self.session.get_outputs()[0].name
        self._per_column = None
        if len(inputs) == 1:
            self.input_name = inputs[0].name
            self.dtype = np.float64 if inputs[0].type == "tensor(double)" else np.float32
            shape = inputs[0].shape
            width = shape[1] if len(shape) == 2 else None
            if isinstance(width, int) and width != n_features:
                raise ModelLoadError(f"the ONNX model takes {width} features, the run's feature names are {n_features}")
        elif len(inputs) == n_features:  # one input per column
            self._per_column = [(i.name, np.float64 if i.type == "tensor(double)" else np.float32) for i in inputs]
        else:
            raise ModelLoadError(f"the ONNX model has {len(inputs)} inputs for {n_features} features")

    def predict(self, X: np.ndarray) -> list[Label]:
        if self._per_column is None:
            feed = {self.input_name: X.astype(self.dtype, copy=False)}
        else:
            feed = {name: X[:, [i]].astype(dtype) for i, (name, dtype) in enumerate(self._per_column)}
        labels = self.session.run([self.label_output], feed)[0]
        return np.asarray(labels).ravel().tolist()


class SklearnPredictor:
    backend: Backend = "sklearn"

    def __init__(self, model: Any, feature_names: Sequence[str]):
        self.model = model
        fitted_names = getattr(model, "feature_names_in_", None)
        self.columns = list(fitted_names) if fitted_names is not None else None
        if self.columns is not None and list(self.columns) != list(feature_names):
            raise ModelLoadError(f"the sklearn model was fitted on {self.columns}, the run says {list(feature_names)}")

    def predict(self, X: np.ndarray) -> list[Label]:
        if self.columns is not None:
            import pandas as pd

            X = pd.DataFrame(X, columns=self.columns)
        return np.asarray(self.model.predict(X)).ravel().tolist()


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    alias: str
    run_id: str
    feature_names: tuple[str, ...]
    reference: np.ndarray = field(repr=False)
    predictor: Predictor = field(repr=False)
    loaded_at: str = ""
    backend_note: str | None = None
    source: ModelSource = REGISTRY  # REGISTRY, or LOCAL_COPY when MLflow was unreachable
    copy_saved_at: str | None = None  # when the local copy it came from was written
    # what every drift check needs from the reference, computed once when the version is loaded
    reference_stats: ReferenceStats = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reference_stats", reference_stats(self.reference))

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def backend(self) -> Backend:
        return self.predictor.backend

    def predict(self, X: np.ndarray) -> list[Label]:
        return self.predictor.predict(X)


def _is_connection_problem(exc: BaseException) -> bool:
    text = str(exc)
    markers = (
        "Max retries exceeded",
        "Connection refused",
        "ConnectionError",
        "timed out",
        "Failed to establish",
        "failed with exception",
        "Read timed out",
    )
    return any(m in text for m in markers)


def _classify(exc: BaseException, what: str, version: str | None = None) -> ModelLoadError:
    if isinstance(exc, ModelLoadError):
        return exc
    if _is_connection_problem(exc):
        return ModelLoadError(f"MLflow is not reachable while {what}: {exc}", "unavailable", version)
    return ModelLoadError(f"{what} failed: {exc}", "invalid", version)


class ModelLoader(Protocol):
    """What the manager needs from a loader (MlflowModelLoader; tests may give their own)."""

    model_name: str
    alias: str

    def resolve(self) -> tuple[str, str]: ...

    def load(self, version: str | None = None) -> LoadedModel: ...

    def load_from_registry(self, version: str | None = None) -> LoadedModel: ...


class MlflowModelLoader:
    """Resolves `models:/<name>@<alias>` and loads a version with its feature names and reference;
    with `copies`, keeps a local copy of each version it loads and falls back to it when MLflow
    cannot be reached."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        alias: str = CHAMPION_ALIAS,
        backend: str = "auto",
        copies: ModelCopies | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.alias = alias
        self.backend = backend.lower()
        self.copies = copies
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def resolve(self) -> tuple[str, str]:
        """(version, run_id) behind the alias; ModelLoadError('no_champion') when there is none."""
        try:
            mv = self.client.get_model_version_by_alias(self.model_name, self.alias)
        except Exception as exc:  # noqa: BLE001 - classified below
            if _is_connection_problem(exc):
                raise ModelLoadError(f"MLflow at {self.tracking_uri} is not reachable: {exc}", "unavailable") from exc
            raise ModelLoadError(
                f"no version of registered model '{self.model_name}' has alias '{self.alias}' "
                f"(MLflow at {self.tracking_uri}: {getattr(exc, 'message', exc)})",
                "no_champion",
            ) from exc
        return str(mv.version), self._run_id(mv)

    def _run_id(self, mv: Any) -> str:
        """The MLflow run of a model version (its `run_id`, or a `run_id` tag)."""
        run_id = mv.run_id or (mv.tags or {}).get("run_id")
        if not run_id:
            raise ModelLoadError(f"{self.model_name} version {mv.version} has no run id", "invalid", str(mv.version))
        return str(run_id)

    def load(self, version: str | None = None) -> LoadedModel:
        """Load `version` (the alias's version when None) from MLflow; when MLflow cannot be reached
        and a verified local copy of that version exists, from the copy. Raises ModelLoadError."""
        try:
            return self.load_from_registry(version)
        except ModelLoadError as exc:
            if exc.kind != "unavailable" or version is None or self.copies is None:
                raise
            return self._load_copy_instead(exc, self.copies, str(version))

    def _load_copy_instead(self, cause: ModelLoadError, copies: ModelCopies, version: str) -> LoadedModel:
        try:
            model = load_copy(copies, self.model_name, version, self.alias, self.backend)
        except CopyUnusable as exc:
            log.warning("the local copy of %s version %s is not used: %s", self.model_name, version, exc)
            raise ModelLoadError(
                f"{cause.message}; its local copy is not usable: {exc}", "unavailable", version
            ) from cause
        if model is None:
            raise ModelLoadError(
                f"{cause.message}; there is no local copy of version {version}", "unavailable", version
            ) from cause
        log.warning(
            "MLflow is unreachable: %s version %s is served from its local copy (saved %s)",
            self.model_name,
            version,
            model.copy_saved_at,
        )
        return model

    def load_from_registry(self, version: str | None = None) -> LoadedModel:
        """Load `version` (the alias's version when None) from MLflow only. Raises ModelLoadError."""
        if version is None:
            version, run_id = self.resolve()
        else:
            try:
                mv = self.client.get_model_version(self.model_name, str(version))
            except Exception as exc:  # noqa: BLE001
                raise _classify(exc, f"looking up {self.model_name} version {version}", version) from exc
            run_id = self._run_id(mv)
        try:
            return self._load(version, run_id)
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc, f"loading {self.model_name} version {version} (run {run_id})", version) from exc

    def _load(self, version: str, run_id: str) -> LoadedModel:
        import mlflow.artifacts

        run = self.client.get_run(run_id)
        tags = run.data.tags
        with tempfile.TemporaryDirectory(prefix="serving-model-") as tmp:
            try:
                ref_path = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=tmp, tracking_uri=self.tracking_uri
                )
            except Exception as exc:  # noqa: BLE001
                if _is_connection_problem(exc):
                    raise
                raise ModelLoadError(
                    f"run {run_id} has no readable {REFERENCE_ARTIFACT}: {exc}", "invalid", version
                ) from exc
            feature_names, reference = _read_reference(Path(ref_path))
            if "feature_names" in tags:
                try:
                    tagged = json.loads(tags["feature_names"])
                except ValueError as exc:
                    raise ModelLoadError(f"run tag feature_names is not JSON: {exc}", "invalid", version) from exc
                if list(tagged) != feature_names:
                    raise ModelLoadError(
                        f"run tag feature_names {tagged} differs from the reference header {feature_names}",
                        "invalid",
                        version,
                    )
            predictor, note, artifact = self._predictor(version, run_id, tags, feature_names, tmp)
            _check_predicts(predictor, reference, version)
            if self.copies is not None:
                self._save_copy(
                    self.copies,
                    version,
                    run_id,
                    feature_names,
                    CopyFiles(Path(ref_path), predictor.backend, artifact),
                    note,
                )
        return LoadedModel(
            self.model_name, version, self.alias, run_id, tuple(feature_names), reference, predictor, iso_utc(), note
        )

    def _save_copy(
        self,
        copies: ModelCopies,
        version: str,
        run_id: str,
        feature_names: Sequence[str],
        files: CopyFiles,
        note: str | None,
    ) -> None:
        """A copy that cannot be written costs nothing now (the model is served); it is missed only in
        a later MLflow outage, so say so in the log and go on."""
        try:
            copies.save(self.model_name, version, run_id, feature_names, files, note)
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "could not keep a local copy of %s version %s under %s: %s", self.model_name, version, copies.root, exc
            )

    def _predictor(
        self, version: str, run_id: str, tags: dict[str, str], feature_names: list[str], tmp: str
    ) -> tuple[Predictor, str | None, Path]:
        import mlflow.artifacts

        try:
            parity = parse_bool(tags.get(ONNX_PARITY_TAG), ONNX_PARITY_TAG, default=False)
        except ValueError:  # a tag that is no boolean: the parity was not checked
            parity = False
        note = None
        if self.backend == "onnx" or (self.backend == "auto" and parity):
            try:
                onnx_path = mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=ONNX_ARTIFACT,
                    dst_path=os.path.join(tmp, "onnx"),
                    tracking_uri=self.tracking_uri,
                )
                return OnnxPredictor(Path(onnx_path).read_bytes(), len(feature_names)), None, Path(onnx_path)
            except Exception as exc:  # noqa: BLE001
                if self.backend == "onnx" or _is_connection_problem(exc):
                    raise
                note = f"ONNX artifact unusable ({exc}); serving the sklearn model"
        elif self.backend == "auto":
            note = f"run has no {ONNX_PARITY_TAG}=true tag; serving the sklearn model"
        import mlflow.sklearn

        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{self.model_name}/{version}",
            dst_path=os.path.join(tmp, "model"),
            tracking_uri=self.tracking_uri,
        )
        model = mlflow.sklearn.load_model(local)
        return SklearnPredictor(model, feature_names), note, Path(local)


def _check_predicts(predictor: Predictor, reference: np.ndarray, version: str) -> None:
    """A model that cannot predict its own reference is not worth swapping to."""
    try:
        predictor.predict(reference[:2])
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"the {predictor.backend} model fails to predict: {exc}", "invalid", version) from exc


def load_copy(copies: ModelCopies, name: str, version: str, alias: str, backend: str = "auto") -> LoadedModel | None:
    """The version rebuilt from its local copy, after checking every digest; None when there is no
    copy. CopyUnusable when the copy must not be served (damaged, or not the backend asked for)."""
    copy = copies.open(name, version)
    if copy is None:
        return None
    if backend != "auto" and copy.backend != backend:
        raise CopyUnusable(f"{copy.path}: holds the {copy.backend} model, SERVING_PREDICT_BACKEND asks for {backend}")
    try:
        return _build_from_copy(copy, alias)
    except Exception as exc:  # noqa: BLE001 - whatever it is, this copy is not served
        message = exc.message if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
        raise CopyUnusable(f"{copy.path}: {message}") from exc


def _build_from_copy(copy: VerifiedCopy, alias: str) -> LoadedModel:
    feature_names, reference = _read_reference(copy.reference)
    if tuple(feature_names) != copy.feature_names:
        raise ModelLoadError(
            f"its reference header {feature_names} differs from the manifest's {list(copy.feature_names)}"
        )
    if copy.backend == "onnx":
        predictor: Predictor = OnnxPredictor(copy.artifact.read_bytes(), len(feature_names))
    else:
        import mlflow.sklearn

        predictor = SklearnPredictor(mlflow.sklearn.load_model(str(copy.artifact)), feature_names)
    _check_predicts(predictor, reference, copy.version)
    return LoadedModel(
        copy.name,
        copy.version,
        alias,
        copy.run_id,
        tuple(feature_names),
        reference,
        predictor,
        iso_utc(),
        copy.backend_note,
        LOCAL_COPY,
        copy.saved_at,
    )


def _read_reference(path: Path) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{REFERENCE_ARTIFACT} is not a readable CSV: {exc}") from exc
    names = [str(c) for c in frame.columns]
    if not names or len(frame) < 2:
        raise ModelLoadError(f"{REFERENCE_ARTIFACT} needs a header and at least two rows")
    try:
        values = frame.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{REFERENCE_ARTIFACT} has non-numeric values: {exc}") from exc
    if not np.isfinite(values).all():
        raise ModelLoadError(f"{REFERENCE_ARTIFACT} has missing or infinite values")
    return names, values
