"""Where DeepAge keeps files it can rebuild (exported ONNX graphs, dlib's serialized face detector): one rule,
no heavy imports, so the base layer and ``inference`` share it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(kind: str) -> Path:
    """``$DEEPAGE_CACHE_DIR`` (every kind in that one folder), else ``$XDG_CACHE_HOME/deepage/KIND``, else
    ``~/.cache/deepage/KIND``. Not created here: a writer makes it, and a cache that cannot be written is
    passed over by its callers."""
    if os.environ.get("DEEPAGE_CACHE_DIR"):
        return Path(os.environ["DEEPAGE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deepage" / kind
