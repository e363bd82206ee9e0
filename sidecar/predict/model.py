"""The access predictor: an ONNX classifier scored with onnxruntime, checked against the feature schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .features import FEATURES

# Keys of the ONNX model's metadata_props written by training and read here.
META_FEATURES = "sidecar.features"     # JSON list of feature names, in column order
META_HORIZON = "sidecar.horizon"       # seconds: the label is "read within this long"
META_METRICS = "sidecar.metrics"       # JSON: held-out AUC, precision, recall, sample counts
META_TRAINED_ON = "sidecar.trained_on"  # where the training data came from


class ModelError(Exception):
    """The model file is missing or is not a model this code can run."""


class ModelSchemaError(ModelError):
    """The model was trained on other features than the code computes."""


def shipped_model_path() -> Path:
    """``<repo>/models/predictor.onnx`` (the image has it at /opt/sidecar/models/predictor.onnx)."""
    return Path(__file__).resolve().parents[2] / "models" / "predictor.onnx"


class Predictor:
    """P(object read within the horizon) for rows of ``FeatureTracker.matrix``."""

    features: tuple[str, ...]

    def __init__(self, session, path: Path, features: tuple[str, ...], horizon: float | None,
                 metadata: dict[str, str]) -> None:
        self._session = session
        self.path = path
        self.features = features
        self.horizon = horizon
        self.metadata = metadata
        self._input = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        self._output = "probabilities" if "probabilities" in outputs else outputs[-1]

    @classmethod
    def load(cls, path: Path | None = None) -> Predictor:
        """Load ``path`` (None: the shipped model); ModelSchemaError if its features are not FEATURES."""
        import onnxruntime as ort

        path = Path(path) if path is not None else shipped_model_path()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelError(f"cannot read the predictor model {path}: {e.strerror or e}") from None
        opts = ort.SessionOptions()
        # The loop scores once per interval; one thread keeps it off the request path's cores.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"{path} is not a model onnxruntime can load: {e}") from None
        meta = dict(session.get_modelmeta().custom_metadata_map)
        raw = meta.get(META_FEATURES)
        if raw is None:
            raise ModelSchemaError(
                f"{path} has no feature schema ({META_FEATURES} in its metadata); expected features "
                f"{list(FEATURES)}; retrain it with `sidecar train`")
        try:
            found = tuple(json.loads(raw))
        except (ValueError, TypeError):
            raise ModelSchemaError(f"{path}: unreadable feature schema {raw!r}; expected features "
                                   f"{list(FEATURES)}") from None
        if found != FEATURES:
            missing = [f for f in FEATURES if f not in found]
            extra = [f for f in found if f not in FEATURES]
            detail = []
            if missing:
                detail.append(f"missing {missing}")
            if extra:
                detail.append(f"unknown {extra}")
            if not detail:
                detail.append("same names in another order")
            raise ModelSchemaError(
                f"{path} was trained on other features than this sidecar computes "
                f"({'; '.join(detail)}): expected {list(FEATURES)}, found {list(found)}; "
                f"retrain it with `sidecar train`")
        shape = session.get_inputs()[0].shape
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] != len(FEATURES):
            raise ModelSchemaError(f"{path} takes {shape[1]} input columns but its schema names "
                                   f"{len(found)}; expected {list(FEATURES)}")
        try:
            horizon = float(meta[META_HORIZON]) if META_HORIZON in meta else None
        except ValueError:
            horizon = None
        return cls(session, path, found, horizon, meta)

    def metrics(self) -> dict:
        try:
            return json.loads(self.metadata.get(META_METRICS, "{}"))
        except ValueError:
            return {}

    def score(self, X: np.ndarray) -> np.ndarray:
        """P(read within the horizon) per row, float32 of shape (n,)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"the predictor takes (n, {len(self.features)}) features, not {X.shape}")
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        out = self._session.run([self._output], {self._input: X})[0]
        out = np.asarray(out)
        if out.ndim == 2:
            out = out[:, -1]
        return out.astype(np.float32, copy=False)
