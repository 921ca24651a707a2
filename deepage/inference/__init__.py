"""Using a model: face finding and alignment, the :class:`Predictor` API, ONNX export.

>>> from deepage.inference import Predictor
>>> Predictor.from_checkpoint("runs/NAME/best.pt").predict_one("photo.jpg").faces  # doctest: +SKIP
"""

from ..faces import DetectedFace, FaceAligner, NoFaceError
from .predictor import FacePrediction, GroupPrediction, ImagePrediction, Predictor

__all__ = ["Predictor", "ImagePrediction", "FacePrediction", "GroupPrediction", "FaceAligner", "DetectedFace",
           "NoFaceError"]
