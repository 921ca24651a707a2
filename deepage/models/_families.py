"""Imports every model family so that each registers its names (see :mod:`deepage.models.registry`)."""

from . import alresnet, arcface_mbf, classic, dlib_resnet, efficientnet, inception, mobilenet, resnet, simple, vgg  # noqa: F401
