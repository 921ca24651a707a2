"""Model zoo: ``create_model(name, head=..., num_classes=..., input_size=...)`` and ``list_models()``."""

from .heads import HEADS, HeadOutput
from .registry import AgeModel, ModelSpec, build_from_spec, create_model, list_models, model_info, register_model

__all__ = ["AgeModel", "HEADS", "HeadOutput", "ModelSpec", "build_from_spec", "create_model", "list_models",
           "model_info", "register_model"]
