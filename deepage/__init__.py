"""DeepAge: age estimation from face images (UTKFace pipeline, the Deep Age study's models, AL-ResNet).

The public API, imported on first use (PEP 562), so that ``import deepage`` and ``deepage --help`` stay
instant (no torch)::

    from deepage import Predictor, create_model, list_models, train, evaluate_checkpoint, ingest

    Predictor.default().predict_one("photo.jpg").faces[0].age       # the bundled model
    ingest("UTKFace.tar.gz", "work/utk128.h5", size=128)            # images → HDF5
    train(TrainConfig(data="work/utk128.h5", model="resnet18"))     # a run folder
    list(predict_on_ray(["photos/"], address="auto"))               # on a Ray cluster (extra 'ray')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Predictor": "deepage.inference.predictor",
    "create_model": "deepage.models.registry",
    "list_models": "deepage.models.registry",
    "TrainConfig": "deepage.config",
    "load_config": "deepage.config",
    "train": "deepage.training.engine",
    "evaluate_checkpoint": "deepage.evaluation.evaluate",
    "calibrate_checkpoint": "deepage.evaluation.calibrate",
    "ingest": "deepage.data.ingest",
    "load_checkpoint": "deepage.checkpoint",
    "model_from_checkpoint": "deepage.checkpoint",
    "predict_on_ray": "deepage.inference.ray_batch",
}
"""Public name → the module that defines it."""

__all__ = ["__version__", "Predictor", "create_model", "list_models", "TrainConfig", "load_config", "train",
           "evaluate_checkpoint", "calibrate_checkpoint", "ingest", "load_checkpoint", "model_from_checkpoint",
           "predict_on_ray"]  # = _LAZY (a test checks)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .config import TrainConfig, load_config
    from .data.ingest import ingest
    from .evaluation.calibrate import calibrate_checkpoint
    from .evaluation.evaluate import evaluate_checkpoint
    from .inference.predictor import Predictor
    from .inference.ray_batch import predict_on_ray
    from .models.registry import create_model, list_models
    from .training.engine import train


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'deepage' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # imported once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
