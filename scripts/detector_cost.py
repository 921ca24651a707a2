"""What the face finder costs and finds, with BlazeFace first (``detector="auto"``, the default) and with the HOG
looks alone (``detector="dlib"``), on ``bench/predict_batch.py``'s three kinds of input, in this process.

For each: CPU milliseconds per image of :class:`~deepage.crops.CropMaker` (decode, find, align, resize: what
a worker process does for each image) and the share of images with a face. On the real photos made from
scikit-image's astronaut (her landmarks on the source photo, by HOG, carried by the known transform) also
whether her face was found, the boxes elsewhere (wrong faces), and how far the landmarks placed from the
found box fall from the true ones, in eye distances.

    python scripts/detector_cost.py --data work/utk128.h5
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from predict_batch import ARCHIVE, paste_on_background, read_chips, real_photo_and_matrix, real_sources  # noqa: E402

from deepage.crops import CropMaker  # noqa: E402
from deepage.faces import FaceAligner  # noqa: E402
from deepage.imageio import decode_image  # noqa: E402


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=quality)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", default=str(ARCHIVE))
    parser.add_argument("--data", default=None, help="ingested HDF5: the chips come from its test split")
    parser.add_argument("--n", type=int, default=200, help="images of each kind (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    chips = read_chips(Path(args.archive), 2 * args.n, args.seed, Path(args.data) if args.data else None)
    rng = np.random.default_rng(args.seed + 1)
    sets = {"chips": [data for _, data in chips[:args.n]],
            "pasted": [jpeg(paste_on_background(decode_image(data), rng)) for _, data in chips[args.n:]]}
    sources, rng = real_sources(), np.random.default_rng(args.seed + 2)
    real = [real_photo_and_matrix(sources[k % 2], rng) for k in range(args.n)]
    sets["real"] = [jpeg(photo) for photo, _ in real]
    her = FaceAligner(detector="dlib").detect(sources[0])[0].landmarks
    print(f"{'detector':<22}{'input':<8}{'ms CPU/img':>11}{'with a face':>13}   astronaut photos: her face found, "
          "boxes elsewhere, landmark error")
    for detector in ("dlib", "auto"):
        aligner = FaceAligner(output_size=200, detector=detector)
        maker = CropMaker(aligner, 128)
        maker(sets["chips"][0]), maker(sets["real"][0])  # builds the detectors (BlazeFace: on a larger photo)
        for name, items in sets.items():
            t = time.process_time()
            prepared = [maker(x) for x in items]
            ms = 1000 * (time.process_time() - t) / len(items)
            found = np.mean([bool(p.crops) for p in prepared])
            extra = ""
            if name == "real":
                hits = wrong = 0
                errors = []
                for k in range(0, len(real), 2):  # the astronaut's copies
                    photo, matrix = real[k]
                    true = her @ matrix[:, :2].T + matrix[:, 2]
                    if matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0] < 0:  # mirrored
                        true = true[[2, 3, 0, 1, 4]]
                    cx, cy = true.mean(0)
                    if not (0 <= cx < photo.shape[1] and 0 <= cy < photo.shape[0]):
                        continue
                    faces = aligner.detect(photo)
                    on = [f for f in faces if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
                    hits, wrong = hits + bool(on), wrong + len(faces) - len(on)
                    if on and on[0].landmarks is not None:
                        eyes = np.linalg.norm(true[:2].mean(0) - true[2:4].mean(0))
                        errors.append(np.linalg.norm(on[0].landmarks - true, axis=1).mean() / eyes)
                extra = f"   {hits}, {wrong}, {np.median(errors):.3f} (median)"
            print(f"{aligner.method:<22}{name:<8}{ms:>11.1f}{found:>13.1%}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
