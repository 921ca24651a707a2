"""Age label schemes: the study's 14 and 8 age groups, exact age, and custom bins.

Every place that turns an age into a class (ingest summaries, splits, training targets,
evaluation, prediction) goes through :func:`get_scheme`, so the bin rules live only here.

A scheme is defined by its lower bin edges: class ``k`` holds ages ``edges[k] <= age < edges[k+1]``
and the last class is open-ended. Ages below the first edge (age 0, if any) fall in class 0.

>>> get_scheme("utk14").names[:3], get_scheme("utk14").names[-1]
(('1-5', '6-10', '11-15'), '66+')
>>> int(get_scheme("utk8").classify(np.array([16]))[0])
2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LabelScheme", "get_scheme", "list_schemes", "MAX_AGE", "AGE_BINS"]

MAX_AGE = 100
"""Largest age a ``dex`` head predicts; older ages are clipped to it for the soft targets."""

AGE_BINS = MAX_AGE + 1  # ages 0..100


@dataclass(frozen=True)
class LabelScheme:
    """A partition of ages (years) into ordered classes.

    ``lower_edges`` holds each class's first age; class ``k`` covers ``[lower_edges[k], lower_edges[k+1])``.
    """

    name: str
    lower_edges: tuple[int, ...]

    def __post_init__(self) -> None:
        edges = self.lower_edges
        if len(edges) < 2:
            raise ValueError(f"label scheme {self.name!r}: needs at least two bins, got edges {edges}")
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"label scheme {self.name!r}: bin edges must increase strictly, got {edges}")

    @property
    def num_classes(self) -> int:
        return len(self.lower_edges)

    @property
    def names(self) -> tuple[str, ...]:
        """Readable class names: ``"26-30"``, last one ``"66+"``."""
        edges = self.lower_edges
        out = [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:], strict=False)]
        out.append(f"{edges[-1]}+")
        return tuple(out)

    def classify(self, ages):
        """Class index of each age (years): a NumPy array (or anything array-like) → ``np.ndarray``, a
        ``torch.Tensor`` → a tensor on its device; int64 either way."""
        if type(ages).__module__.startswith("torch"):  # a tensor: torch is loaded already (not imported here)
            import torch

            edges = torch.tensor(self.lower_edges[1:], dtype=ages.dtype, device=ages.device)
            return torch.bucketize(ages, edges, right=True).long()
        ages = np.asarray(ages)
        return np.searchsorted(np.asarray(self.lower_edges[1:]), ages, side="right").astype(np.int64)

    def age_to_class_matrix(self, max_age: int = MAX_AGE) -> np.ndarray:
        """``(max_age + 1, C)`` float32 0/1 matrix: row ``a`` is one-hot of the class of age ``a``.

        Multiplying ``(B, max_age + 1)`` age probabilities by it sums the mass per class.
        """
        classes = self.classify(np.arange(max_age + 1))
        return np.eye(self.num_classes, dtype=np.float32)[classes]

    def to_dict(self) -> dict:
        return {"name": self.name, "lower_edges": list(self.lower_edges)}


_SCHEMES: dict[str, LabelScheme] = {
    # The study's 14 groups: 1-5, 6-10, ..., 61-65, 66+ (age 0 joins the first group).
    "utk14": LabelScheme("utk14", (1, 6, 11, 16, 21, 26, 31, 36, 41, 46, 51, 56, 61, 66)),
    # The study's 8 groups: 1-5, 6-15, 16-25, 26-35, 36-45, 46-55, 56-65, 66+.
    "utk8": LabelScheme("utk8", (1, 6, 16, 26, 36, 46, 56, 66)),
}


def list_schemes() -> list[str]:
    """Names of the built-in class schemes (exact age is the separate target ``"age"``)."""
    return sorted(_SCHEMES)


def get_scheme(spec: str | LabelScheme | dict | list | tuple) -> LabelScheme:
    """A scheme from a name (``"utk14"``, ``"utk8"``), a dict from :meth:`LabelScheme.to_dict`,
    a list of lower edges, or a string of comma-separated lower edges (``"0,13,20,40,60"``)."""
    if isinstance(spec, LabelScheme):
        return spec
    if isinstance(spec, dict):
        return LabelScheme(str(spec["name"]), tuple(int(e) for e in spec["lower_edges"]))
    if isinstance(spec, list | tuple):
        return LabelScheme("custom:" + ",".join(str(int(e)) for e in spec), tuple(int(e) for e in spec))
    if spec in _SCHEMES:
        return _SCHEMES[spec]
    if isinstance(spec, str) and "," in spec:
        try:
            edges = [int(e) for e in spec.removeprefix("custom:").split(",")]
        except ValueError as exc:
            raise ValueError(f"custom bin edges must be integers, got {spec!r}") from exc
        return get_scheme(edges)
    raise ValueError(
        f"unknown label scheme {spec!r}; choose one of {list_schemes()} or give lower edges like '0,13,20,40,60'"
    )
