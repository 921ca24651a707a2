"""Imports every model family so that each registers its names (see :mod:`deepage.models.registry`)."""

from . import mobilenet, resnet  # noqa: F401
