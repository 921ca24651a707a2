"""``deepage info``: what an ingested HDF5 file holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..labels import get_scheme
from .duplicates import conflicting_rows
from .h5file import open_h5
from .split import SPLIT_NAMES, read_split

__all__ = ["dataset_info", "format_info"]


def dataset_info(path: str | Path) -> dict:
    """Images per split and per class, age range, duplicate groups and skipped files, as plain data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open_h5(path) as f:
        if "age" not in f:
            raise ValueError(f"{path} is not a DeepAge ingest file (no 'age' dataset)")
        ages = f["age"][:]
        split, fp = read_split(f)
        skipped = list(zip(f["skipped"]["filename"].asstr()[:], f["skipped"]["reason"].asstr()[:], strict=True))
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if hasattr(v, "item") else v)
                 for k, v in f.attrs.items()}
        groups = f["dup_group"][:] if "dup_group" in f else None
    info: dict = {
        "file": str(path), "complete": bool(attrs.get("complete", False)), "n_images": int(len(ages)),
        "image_size": int(attrs.get("size", 0)),
        "age": {"min": int(ages.min()) if len(ages) else None, "max": int(ages.max()) if len(ages) else None,
                "mean": round(float(ages.mean()), 2) if len(ages) else None},
        "settings": {k: attrs[k] for k in ("source", "color_order", "resize_method", "deepage_version") if k in attrs},
        "skipped": {"count": len(skipped), "files": [{"filename": n, "reason": r} for n, r in skipped]},
        "split": None,
    }
    parts = {"all": np.ones(len(ages), bool)}
    if split is not None:
        parts.update({name: split == k for k, name in enumerate(SPLIT_NAMES)})
        info["split"] = {"fingerprint": fp, "seed": attrs.get("split_seed"), "fractions": attrs.get("split_fractions"),
                         "stratify": attrs.get("split_stratify"),
                         "near_duplicate_threshold_bits": attrs.get("split_near_threshold"),
                         "pixel_check": attrs.get("split_pixel_check", False),
                         "counts": {name: int(mask.sum()) for name, mask in parts.items() if name != "all"}}
    if groups is not None:
        sizes = np.bincount(groups)
        multi = np.flatnonzero(sizes > 1)
        mixed_ages = len(np.unique(groups[conflicting_rows(groups, ages)]))  # the audit's rule
        info["duplicates"] = {"groups_with_copies": int(len(multi)), "images_in_such_groups": int(sizes[multi].sum()),
                              "largest_group": int(sizes.max()), "groups_with_different_ages": int(mixed_ages)}
    info["classes"] = {}
    for scheme_name in ("utk14", "utk8"):
        scheme = get_scheme(scheme_name)
        classes = np.asarray(scheme.classify(ages))
        info["classes"][scheme_name] = {
            part: dict(zip(scheme.names, np.bincount(classes[mask], minlength=scheme.num_classes).tolist(),
                           strict=True))
            for part, mask in parts.items()
        }
    return info


def format_info(info: dict) -> str:
    """A readable text version of :func:`dataset_info`."""
    lines = [f"{info['file']}: {info['n_images']} images at {info['image_size']} px"
             + ("" if info["complete"] else " (UNFINISHED ingest)"),
             f"ages {info['age']['min']}-{info['age']['max']} (mean {info['age']['mean']})",
             f"skipped at ingest: {info['skipped']['count']}"]
    lines += [f"  {s['filename']}: {s['reason']}" for s in info["skipped"]["files"][:20]]
    if info["skipped"]["count"] > 20:
        lines.append(f"  … {info['skipped']['count'] - 20} more (use --json)")
    if info["split"]:
        s = info["split"]
        lines.append(f"split {s['fingerprint']} (seed {s['seed']}, stratified by {s['stratify']}): "
                     + ", ".join(f"{k} {v}" for k, v in s["counts"].items()))
    else:
        lines.append("no saved split (run deepage split)")
    if "duplicates" in info:
        d = info["duplicates"]
        lines.append(f"duplicate groups: {d['groups_with_copies']} ({d['images_in_such_groups']} images, largest "
                     f"{d['largest_group']}, {d['groups_with_different_ages']} with different ages on copies)")
    for scheme_name, table in info["classes"].items():
        parts = list(table)
        names = list(table["all"])
        lines.append(f"\n{scheme_name:<8}" + "".join(f"{p:>8}" for p in parts))
        for name in names:
            lines.append(f"{name:<8}" + "".join(f"{table[p][name]:>8}" for p in parts))
    return "\n".join(lines)
