"""DeepAge: age estimation from face images (UTKFace pipeline, the Deep Age study's models, AL-ResNet)."""

__version__ = "0.1.0"
