"""How much age a face network's frozen output carries: the issue-15 table's protocol.

The same 4,000 training and 2,000 validation faces for every trunk (drawn with ``--seed`` from the split
stored in ``--data``); each trunk's output feature, frozen, standardised; then ridge regression on age
(alpha by cross-validation), an MLP (256 hidden units) on age and logistic regression on the 14 classes,
scored on the validation faces. ``A+B`` rows concatenate two trunks' features: a gain over both says that
the two carry different age information (what an ensemble of the two fine-tuned can use).

    python scripts/frozen_probe.py --data work/utk200.h5 --trunks dlib_resnet arcface_mbf dlib_resnet+arcface_mbf
"""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler

from deepage.labels import get_scheme
from deepage.models import create_model
from deepage.preprocessing import images_to_batch

# trunk -> (input size, what the features are)
TRUNKS = {"dlib_resnet": (150, "descriptor"), "arcface_mbf": (112, "embedding")}


def trunk_features(name: str, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 chips → ``(N, F)``: the whole chip resized to the trunk's native size."""
    size, _ = TRUNKS[name]
    model = create_model(name, input_size=size, stored_size=size, crop_pct=1.0, pretrained=True).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = images_to_batch(list(images[i:i + batch]), model.spec.preprocessing)  # resized as ingest does
            out.append((model.backbone.descriptor(x) if name == "dlib_resnet" else model.backbone(x)).numpy())
    return np.concatenate(out)


def probe(train_x: np.ndarray, test_x: np.ndarray, train_age: np.ndarray, test_age: np.ndarray) -> dict:
    scaler = StandardScaler().fit(train_x)
    a, b = scaler.transform(train_x), scaler.transform(test_x)
    ridge = RidgeCV(alphas=np.logspace(-1, 4, 12)).fit(a, train_age)
    mlp = MLPRegressor(hidden_layer_sizes=(256,), max_iter=400, early_stopping=True, random_state=0).fit(a, train_age)
    scheme = get_scheme("utk14")
    logistic = LogisticRegression(max_iter=3000, C=0.1).fit(a, scheme.classify(train_age))
    return {"ridge_mae": float(np.abs(ridge.predict(b) - test_age).mean()),
            "mlp_mae": float(np.abs(mlp.predict(b) - test_age).mean()),
            "utk14": float((logistic.predict(b) == scheme.classify(test_age)).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="work/utk200.h5")
    parser.add_argument("--trunks", nargs="+", default=["dlib_resnet", "arcface_mbf", "dlib_resnet+arcface_mbf"])
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with h5py.File(args.data, "r") as h5:
        split = h5["split"][:]
        rng = np.random.default_rng(args.seed)
        train_idx = np.sort(rng.choice(np.flatnonzero(split == 0), args.train, replace=False))
        test_idx = np.sort(rng.choice(np.flatnonzero(split == 1), args.test, replace=False))
        train_img, test_img = h5["images"][train_idx], h5["images"][test_idx]
        train_age, test_age = h5["age"][train_idx].astype(float), h5["age"][test_idx].astype(float)
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    print("| frozen features | dim | ridge MAE | MLP MAE | 14 classes (logistic) |\n|---|---|---|---|---|")
    for row in args.trunks:
        parts = row.split("+")
        for name in parts:
            if name not in TRUNKS:
                raise SystemExit(f"--trunks: unknown trunk {name!r}; known: {', '.join(TRUNKS)}")
            if name not in cache:
                cache[name] = (trunk_features(name, train_img), trunk_features(name, test_img))
        train_x = np.hstack([cache[n][0] for n in parts])
        test_x = np.hstack([cache[n][1] for n in parts])
        r = probe(train_x, test_x, train_age, test_age)
        label = " + ".join(f"{n} ({TRUNKS[n][1]}, {TRUNKS[n][0]} px)" for n in parts)
        print(f"| {label} | {train_x.shape[1]} | {r['ridge_mae']:.2f} | {r['mlp_mae']:.2f} | "
              f"{100 * r['utk14']:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
